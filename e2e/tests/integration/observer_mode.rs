//! Observer mode (`ambit up --observe`: `policyMode: audit`): a flow a policy would deny goes
//! through, and the would-deny is logged and counted as
//! `ambit_policy_decisions_total{mode="audit",decision="deny",policy=...}`, by ztunnel at L4 and
//! by the waypoint at L7; a flow the policy allows is not counted.

use ambit_cli::local::LocalMesh;
use ambit_cli::local::apps::request;
use ambit_e2e::{can_run, curl, get, in_pod, start_with};

const REVIEWS: &str = "http://10.96.0.10:9080/";
const POLICY: &str = "demo/deny-denied-client";

/// The sum of the would-deny counters of `POLICY` in a Prometheus text.
fn would_denies(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("ambit_policy_decisions_total{")
                && l.contains(&format!("policy=\"{POLICY}\""))
                && l.contains("decision=\"deny\"")
                && l.contains("mode=\"audit\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn ztunnel_metrics(mesh: &LocalMesh) -> anyhow::Result<String> {
    let mut all = String::new();
    for node in ["node-a", "node-b"] {
        let url = format!("http://{}/metrics", mesh.node_state(node)?.metrics);
        all += &get(&url).await?.1;
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_lets_a_flow_its_policy_would_deny_through_and_counts_it() -> anyhow::Result<()> {
    if !can_run("ztunnel_lets_a_flow_its_policy_would_deny_through_and_counts_it") {
        return Ok(());
    }
    let mesh = start_with("observer-l4", Some(ambit_e2e::L4_MESH), true).await?;
    // Enforced, the DENY policy refuses denied-client at reviews' ztunnels (traffic.rs).
    for _ in 0..3 {
        let r = curl(&mesh, "demo", "denied-client", REVIEWS)?;
        assert!(r.ok(), "observer mode blocked denied-client: {r:?}");
        let r = curl(&mesh, "demo", "client", REVIEWS)?;
        assert!(r.ok(), "{r:?}");
    }
    // One would-deny per denied-client connection, none for client's.
    let metrics = ztunnel_metrics(&mesh).await?;
    assert_eq!(would_denies(&metrics), 3.0, "{metrics}");
    let logs: String = ["node-a", "node-b"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(ambit_e2e::work_dir(&mesh).join(format!("ztunnel-{n}.log")))
        })
        .collect::<Result<_, _>>()?;
    assert!(
        logs.lines().any(|l| l.contains("would be denied")
            && l.contains(POLICY)
            && l.contains("denied-client")),
        "no would-deny in ztunnel's logs"
    );
    mesh.down()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_lets_a_request_its_policy_would_deny_through_and_counts_it()
-> anyhow::Result<()> {
    if !can_run("the_waypoint_lets_a_request_its_policy_would_deny_through_and_counts_it") {
        return Ok(());
    }
    // The default demo: reviews behind the waypoint, which enforces the DENY (waypoint_demo.rs).
    let mesh = start_with("observer-l7", None, true).await?;
    for _ in 0..3 {
        let r = in_pod(&mesh, "demo", "denied-client", || request(REVIEWS, &[]))?
            .map_err(anyhow::Error::msg)?;
        assert_eq!(r.status, 200, "observer mode blocked denied-client: {r:?}");
        let r = in_pod(&mesh, "demo", "client", || request(REVIEWS, &[]))?
            .map_err(anyhow::Error::msg)?;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let waypoint = mesh.waypoint("demo", "waypoint")?;
    let metrics = get(&format!("http://{}/metrics", waypoint.metrics))
        .await?
        .1;
    assert_eq!(would_denies(&metrics), 3.0, "{metrics}");
    let log = std::fs::read_to_string(&waypoint.log)?;
    assert!(
        log.lines()
            .any(|l| l.contains("would be denied") && l.contains(POLICY)),
        "no would-deny in the waypoint's log:\n{log}"
    );
    mesh.down()?;
    Ok(())
}
