//! Issue 12: ztunnel's ports as on a cluster, each answering only its own routes. Each node's
//! ztunnel has its own loopback address (they share the host's network here) with the usual
//! ports: 15020 serves /metrics and nothing else, 15021 /healthz/ready and nothing else, and
//! the config dump (the mesh's whole config) is only on the admin port 15000, which like every
//! port of ztunnel's in the host's network listens on loopback only.

use std::net::SocketAddr;
use std::process::Command;

use ambit_cli::local::ports::{ZTUNNEL_ADMIN_PORT, ZTUNNEL_METRICS_PORT, ZTUNNEL_READINESS_PORT};
use ambit_e2e::{can_run, curl, get, start};

/// The routes ztunnel serves on one port or another.
const ROUTES: [&str; 3] = ["/config_dump", "/metrics", "/healthz/ready"];

/// Every TCP address a process listens on in the host's network namespace (`ss -p`).
fn listening(pid: u32) -> anyhow::Result<Vec<SocketAddr>> {
    let out = Command::new("ss").args(["-Hltnp"]).output()?;
    anyhow::ensure!(out.status.success(), "ss failed: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ztunnel_port_answers_only_its_own_routes() -> anyhow::Result<()> {
    if !can_run("each_ztunnel_port_answers_only_its_own_routes") {
        return Ok(());
    }
    let mesh = start("ports", Some(ambit_e2e::L4_MESH)).await?;
    // A call across both nodes, so each ztunnel has metrics to show.
    let r = curl(&mesh, "demo", "client", "http://10.244.2.2:8080/")?;
    assert!(r.ok(), "{r:?}");
    let state = mesh.state();
    let mut ips = Vec::new();
    for node in &state.nodes {
        // Its own loopback address, the cluster's port numbers.
        assert!(node.admin.ip().is_loopback(), "{node:?}");
        assert!(
            node.metrics.ip() == node.admin.ip() && node.readiness.ip() == node.admin.ip(),
            "{node:?}"
        );
        assert_eq!(
            [
                node.admin.port(),
                node.metrics.port(),
                node.readiness.port()
            ],
            [
                ZTUNNEL_ADMIN_PORT,
                ZTUNNEL_METRICS_PORT,
                ZTUNNEL_READINESS_PORT
            ]
        );
        ips.push(node.admin.ip());

        for (addr, own) in [
            (node.admin, "/config_dump"),
            (node.metrics, "/metrics"),
            (node.readiness, "/healthz/ready"),
        ] {
            let (status, body) = get(&format!("http://{addr}{own}")).await?;
            assert_eq!(status, 200, "{own} on {addr} ({}): {body}", node.name);
            match own {
                "/config_dump" => {
                    let dump: serde_json::Value = serde_json::from_str(&body)?;
                    assert_eq!(dump["node"], node.name.as_str(), "{addr}");
                }
                "/metrics" => assert!(
                    body.lines().any(|l| l.starts_with("istio_")),
                    "no Istio metrics on {addr}:\n{body}"
                ),
                _ => {}
            }
        }
        // The metrics and readiness ports answer nothing else: above all no config dump.
        for (addr, own) in [
            (node.metrics, "/metrics"),
            (node.readiness, "/healthz/ready"),
        ] {
            for route in ROUTES.iter().chain(&["/", "/debug/pprof"]) {
                if *route == own {
                    continue;
                }
                let (status, body) = get(&format!("http://{addr}{route}")).await?;
                assert_eq!(status, 404, "{route} on {addr} ({}): {body}", node.name);
            }
        }
        // ztunnel listens in the host's network on loopback only (in-pod sockets live in the
        // pods' namespaces and are not listed here).
        let pid = node.pid.expect("running");
        let addrs = listening(pid)?;
        assert!(
            addrs.contains(&node.admin),
            "{} is not listening on {}: {addrs:?}",
            node.name,
            node.admin
        );
        for addr in &addrs {
            assert!(
                addr.ip().is_loopback(),
                "{}'s ztunnel listens on {addr} in the host",
                node.name
            );
        }
    }
    ips.sort();
    ips.dedup();
    assert_eq!(
        ips.len(),
        state.nodes.len(),
        "nodes share a loopback address"
    );
    mesh.down()?;
    Ok(())
}
