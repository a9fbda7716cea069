//! Issue 17's "must show" for `ambit stat` and `ambit tap`: on the demo mesh, with the client
//! calling reviews through the waypoint, the proxies' reports reach the controller and the
//! commands show the flows with non-zero rates and identities.
//!
//! Needs the proxies' side of telemetry (ztunnel's and the waypoint's report streams).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ambit_cli::local::apps::request;
use ambit_controller::telemetry::api::{FlowRecord, Graph, StatRow};
use ambit_e2e::{can_run, get, in_pod, start};

use ambit_e2e::up::ambit;

const REVIEWS: &str = "http://10.96.0.10:9080/";

fn call_reviews(mesh: &ambit_cli::local::LocalMesh, times: usize) -> anyhow::Result<()> {
    for _ in 0..times {
        let r = in_pod(mesh, "demo", "client", || request(REVIEWS, &[]))?
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(r.status == 200, "{r:?}");
    }
    Ok(())
}

fn stat(api: &str, resource: &str) -> anyhow::Result<Vec<StatRow>> {
    let out = ambit()
        .args([
            "stat", resource, "-n", "demo", "--window", "30s", "-o", "json", "--api", api,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ambit stat {resource}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_tap_show_the_demos_flows() -> anyhow::Result<()> {
    if !can_run("stat_and_tap_show_the_demos_flows") {
        return Ok(());
    }
    let mesh = start("observe", None).await?;
    let api = mesh
        .state()
        .controller_api
        .expect("ambit up gives the controller an observation API")
        .to_string();

    // Traffic until the reports show it: requests through the waypoint, connections below.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (services, workloads) = loop {
        call_reviews(&mesh, 5)?;
        let services = stat(&api, "services")?;
        let workloads = stat(&api, "workloads")?;
        // Requests through the waypoint count against the backend the route chose (Istio's
        // destination_service): reviews-v1 and reviews-v2, not reviews itself.
        let reviews_rps = services
            .iter()
            .any(|r| r.name == "reviews-v1" && r.requests_per_second > 0.0);
        let connections = workloads
            .iter()
            .any(|r| r.name.starts_with("reviews-") && r.tcp_connections_per_second > 0.0);
        if (reviews_rps && connections) || Instant::now() > deadline {
            break (services, workloads);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let reviews = services.iter().find(|r| r.name == "reviews-v1");
    assert!(
        reviews.is_some_and(|r| r.requests_per_second > 0.0 && r.success_rate == Some(1.0)),
        "{services:#?}"
    );
    assert!(
        workloads.iter().any(|r| r.name.starts_with("reviews-")
            && r.meshed
            && r.tcp_connections_per_second > 0.0),
        "{workloads:#?}"
    );
    let (status, body) = get(&format!("http://{api}/api/graph?window=30s")).await?;
    assert_eq!(status, 200, "{body}");
    let graph: Graph = serde_json::from_str(&body)?;
    assert!(
        graph
            .edges
            .iter()
            .any(|e| e.source == "workload:demo/client"
                && e.destination == "service:reviews-v1.demo.svc.cluster.local"
                && e.requests_per_second > 0.0
                && e.mutual_tls),
        "{graph:#?}"
    );

    // A tap on the client: its requests come back with identities while it runs.
    let mut tap = ambit()
        .args([
            "tap",
            "workload/client",
            "-n",
            "demo",
            "--duration",
            "20s",
            "-o",
            "json",
            "--api",
            &api,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = tap.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<FlowRecord>(&l).ok())
            .find(|r| r.source.identity == "spiffe://cluster.local/ns/demo/sa/client" && !r.failed)
    });
    // The tap reaches the proxies with their next report.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !reader.is_finished() && Instant::now() < deadline {
        call_reviews(&mesh, 2)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = tap.kill();
    let _ = tap.wait();
    let seen = reader.join().expect("the reader thread");
    assert!(seen.is_some(), "ambit tap showed no flow of the client");
    mesh.down()?;
    Ok(())
}
