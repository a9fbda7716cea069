//! The default demo with reviews behind namespace demo's waypoint: the pods' ztunnels see the
//! waypoint, not the client, so the L4 DENY policy on denied-client must be enforced by the
//! waypoint, and its refusal must name the policy; an allowed client still gets through, and
//! nothing of the refused client's reaches the reviews pods.

use std::collections::BTreeSet;

use ambit_cli::local::apps::request;
use ambit_e2e::{access_log, can_run, in_pod, start};
use ambit_ztunnel::admin::ConfigDump;

const REVIEWS: &str = "http://10.96.0.10:9080/";
const POLICY: &str = "deny-denied-client";

/// The refusals node-a's ztunnel recorded for denied-client's connections (a waypoint that
/// refuses the tunnel itself, with 401, is seen there).
async fn ztunnel_refusals(mesh: &ambit_cli::local::LocalMesh) -> anyhow::Result<String> {
    let admin = mesh.node_state("node-a")?.admin;
    let (_, body) = ambit_e2e::get(&format!("http://{admin}/config_dump")).await?;
    let dump: ConfigDump = serde_json::from_str(&body)?;
    let uid = ambit_e2e::uid(mesh, "demo", "denied-client");
    Ok(dump
        .connections
        .into_iter()
        .filter(|c| c.pod == uid)
        .filter_map(|c| c.error)
        .collect::<Vec<_>>()
        .join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_refuses_denied_client_and_names_the_policy() -> anyhow::Result<()> {
    if !can_run("the_waypoint_refuses_denied_client") {
        return Ok(());
    }
    let mesh = start("waypoint-demo", None).await?;
    let served = |m: &ambit_cli::local::LocalMesh| {
        access_log(m, "demo", "reviews-v1").len() + access_log(m, "demo", "reviews-v2").len()
    };

    let allowed =
        in_pod(&mesh, "demo", "client", || request(REVIEWS, &[]))?.map_err(anyhow::Error::msg)?;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert!(
        allowed.body.starts_with("hello from reviews-v"),
        "{allowed:?}"
    );

    let before = served(&mesh);
    let mut answers = BTreeSet::new();
    for _ in 0..10 {
        let reply = in_pod(&mesh, "demo", "denied-client", || request(REVIEWS, &[]))?;
        match reply {
            // Refused at L7: 403, flag RBAC, and the policy in the answer or in the waypoint's
            // log.
            Ok(r) => {
                assert_eq!(r.status, 403, "denied-client got through: {r:?}");
                assert!(
                    r.flags.as_deref().is_some_and(|f| f.contains("RBAC")),
                    "a refusal without the RBAC flag: {r:?}"
                );
                answers.insert(r.body.trim().to_string());
            }
            // Refused as a connection: the client's ztunnel says which policy.
            Err(e) => {
                answers.insert(format!("connection refused: {e}"));
            }
        }
    }
    assert_eq!(
        served(&mesh),
        before,
        "a refused request reached a reviews pod"
    );

    let waypoint_log = std::fs::read_to_string(mesh.waypoint("demo", "waypoint")?.log)?;
    let named_in_log = waypoint_log
        .lines()
        .any(|l| l.contains(POLICY) && l.contains("denied-client"));
    let named_in_answer = answers.iter().any(|a| a.contains(POLICY));
    let named_by_ztunnel = ztunnel_refusals(&mesh).await?.contains(POLICY);
    assert!(
        named_in_answer || named_in_log || named_by_ztunnel,
        "the refusal names no policy; answers: {answers:?}\nwaypoint log:\n{waypoint_log}"
    );

    // The allowed client is still allowed afterwards.
    let again =
        in_pod(&mesh, "demo", "client", || request(REVIEWS, &[]))?.map_err(anyhow::Error::msg)?;
    assert_eq!(again.status, 200, "{again:?}");
    mesh.down()?;
    Ok(())
}
