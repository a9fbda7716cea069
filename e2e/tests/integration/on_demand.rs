//! Issue 18's on-demand destinations, over three netns nodes: a ztunnel holds its own node's
//! part up front and learns a destination at its pods' first connection there (which goes over
//! HBONE at once); a change to a destination (an endpoint added, then removed) reaches the
//! ztunnels that hold it and no other; one no connection used for the idle time is released.
//! (With the controller down, a new destination is refused and known ones keep working:
//! lifecycle.rs.)

use std::time::Duration;

use ambit_cli::local::LocalMesh;
use ambit_e2e::{can_run, curl, eventually, get, start_with_flags};
use serde_json::Value;

const MESH: &str = include_str!("../../meshes/on_demand.yaml");
const REVIEWS: &str = "http://10.96.0.10:9080/";
/// The idle time the ztunnels here release a destination after (5 minutes by default).
const IDLE: &str = "3s";
/// A change or a release shows in a dump this long after it was due, at most.
const WITHIN: Duration = Duration::from_secs(15);

async fn dump(mesh: &LocalMesh, node: &str) -> anyhow::Result<Value> {
    let admin = mesh.node_state(node)?.admin;
    let (status, body) = get(&format!("http://{admin}/config_dump")).await?;
    anyhow::ensure!(status == 200, "config dump of {node}: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The names of the workloads and services a ztunnel holds, sorted.
fn held(dump: &Value) -> (Vec<String>, Vec<String>) {
    let names = |list: &str, field: &str| {
        let mut names: Vec<String> = dump[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v[field].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    (names("workloads", "name"), names("services", "name"))
}

async fn holds(mesh: &LocalMesh, node: &str) -> (Vec<String>, Vec<String>) {
    held(&dump(mesh, node).await.expect("config dump"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnels_learn_destinations_on_demand_and_release_them() -> anyhow::Result<()> {
    if !can_run("ztunnels_learn_destinations_on_demand") {
        return Ok(());
    }
    let flags = vec!["--destination-idle-timeout".to_string(), IDLE.to_string()];
    let mesh = start_with_flags("on-demand", Some(MESH), false, flags).await?;

    // Up front, each node holds its own part only: node-a its client, nothing of reviews.
    assert_eq!(
        holds(&mesh, "node-a").await,
        (vec!["client".into()], vec![])
    );
    assert_eq!(
        holds(&mesh, "node-b").await,
        (vec!["reviews-v1".into()], vec!["demo/reviews".into()])
    );

    // The first connection to reviews, which node-a never held, succeeds over HBONE.
    let r = curl(&mesh, "demo", "client", REVIEWS)?;
    assert_eq!(r.stdout.trim(), "hello from reviews-v1", "{r:?}");
    let metrics = mesh.node_state("node-a")?.metrics;
    let (_, text) = get(&format!("http://{metrics}/metrics")).await?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("destination_workload=\"reviews-v1\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "no mutual TLS connection to reviews-v1 counted on node-a:\n{text}"
    );
    let a = dump(&mesh, "node-a").await?;
    assert_eq!(
        held(&a),
        (
            vec!["client".into(), "reviews-v1".into()],
            vec!["demo/reviews".into()]
        ),
        "node-a holds its own part and the destination used, nothing else"
    );
    assert!(
        a["lookups"].as_array().is_some_and(|l| l
            .iter()
            .any(|e| e["address"] == "10.96.0.10" && e["answer"] == "known")),
        "the dump lists the lookup: {}",
        a["lookups"]
    );
    // node-c, whose pod never called reviews, holds nothing of it.
    assert_eq!(
        holds(&mesh, "node-c").await,
        (vec!["bystander".into()], vec!["demo/bystander".into()])
    );

    // A new endpoint of reviews (a pod only in the config) reaches node-a, which holds
    // reviews, and not node-c, which does not.
    let text = std::fs::read_to_string(mesh.mesh_path())?;
    let v2 = "  - name: reviews-v2\n    namespace: demo\n    node: node-b\n    serviceAccount: reviews\n    labels: {app: reviews, version: v2}\n    ipv4: 10.244.2.3\n";
    let changed = text.replacen("pods:\n", &format!("pods:\n{v2}"), 1);
    assert_ne!(
        text, changed,
        "the mesh file changed shape; update this test"
    );
    std::fs::write(mesh.mesh_path(), changed)?;
    let reached = eventually(WITHIN, async || {
        let (workloads, _) = holds(&mesh, "node-a").await;
        workloads.contains(&"reviews-v2".to_string()).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "reviews' new endpoint never reached node-a"
    );
    assert_eq!(
        holds(&mesh, "node-c").await,
        (vec!["bystander".into()], vec!["demo/bystander".into()]),
        "node-c was sent a change to a destination it never used"
    );

    // The endpoint gone again: its removal reaches node-a, which keeps reviews (each look
    // connects to it, so the idle time cannot be what takes reviews-v2 away; a connection that
    // picks reviews-v2 before its removal arrives finds no pod there, hence no check of it),
    // and node-c still holds nothing of reviews.
    std::fs::write(mesh.mesh_path(), &text)?;
    let removed = eventually(WITHIN, async || {
        let _ = curl(&mesh, "demo", "client", REVIEWS);
        let now = holds(&mesh, "node-a").await;
        let want = (
            vec!["client".to_string(), "reviews-v1".to_string()],
            vec!["demo/reviews".to_string()],
        );
        (now == want).then_some(())
    })
    .await;
    assert!(
        removed.is_some(),
        "reviews' removed endpoint never left node-a, which holds {:?}",
        holds(&mesh, "node-a").await
    );
    assert_eq!(
        holds(&mesh, "node-c").await,
        (vec!["bystander".into()], vec!["demo/bystander".into()]),
        "node-c was sent a change to a destination it never used"
    );

    // Unused for the idle time: released, and node-a is back to its own part.
    let released = eventually(WITHIN, async || {
        let now = holds(&mesh, "node-a").await;
        (now == (vec!["client".into()], vec![])).then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "reviews was not released after {IDLE} unused: node-a holds {:?}",
        holds(&mesh, "node-a").await
    );
    // And learnt again at the next connection, by pod address this time (reviews-v2 has no
    // pod to answer, so not by the VIP).
    let r = curl(&mesh, "demo", "client", "http://10.244.2.2:8080/")?;
    assert_eq!(r.stdout.trim(), "hello from reviews-v1", "{r:?}");
    mesh.down()?;
    Ok(())
}
