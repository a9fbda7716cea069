//! Issue 3's "must show", over the default mesh's L4 form (meshes/l4.yaml): unmodified
//! programs (curl and a small HTTP server) talk by pod IP and by service VIP, on one node and
//! across two, IPv4 and IPv6; what crosses the nodes is TLS; a DENY policy refuses one identity and no other;
//! a namespace that did not opt in is left alone.

use std::collections::BTreeSet;

use ambit_e2e::{can_run, capture, curl, has_capture_rules, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_through_the_mesh() -> anyhow::Result<()> {
    if !can_run("pods_talk_through_the_mesh") {
        return Ok(());
    }
    let mesh = start("traffic", Some(ambit_e2e::L4_MESH)).await?;

    // By service VIP: both endpoints answer, reviews-v1 on the client's node and reviews-v2
    // on the other, IPv4 and IPv6. The endpoint is picked per connection, so ask until both
    // have answered: if either were never picked, 64 calls would all miss it with probability
    // 2^-63 under a fair choice, so the bound only stops a broken mesh, never a working one.
    let both = BTreeSet::from([
        "hello from reviews-v1".to_string(),
        "hello from reviews-v2".to_string(),
    ]);
    for vip in ["http://10.96.0.10:9080/", "http://[fd00:10:96::10]:9080/"] {
        let mut answers = BTreeSet::new();
        for _ in 0..64 {
            let r = curl(&mesh, "demo", "client", vip)?;
            assert!(r.ok(), "curl {vip} failed: {r:?}");
            answers.insert(r.stdout.trim().to_string());
            if answers == both {
                break;
            }
        }
        assert_eq!(
            answers, both,
            "{vip}: 64 calls did not reach both endpoints"
        );
    }
    // By pod IP, same node and cross node, IPv4 and IPv6.
    for (url, who) in [
        ("http://10.244.1.4:8080/", "reviews-v1"),
        ("http://10.244.2.2:8080/", "reviews-v2"),
        ("http://[fd00:10:244:1::4]:8080/", "reviews-v1"),
        ("http://[fd00:10:244:2::2]:8080/", "reviews-v2"),
    ] {
        let r = curl(&mesh, "demo", "client", url)?;
        assert_eq!(r.stdout.trim(), format!("hello from {who}"), "{url}: {r:?}");
    }

    // What crosses from node-a to node-b is TLS on 15008: the server's answer is never seen
    // in clear on node-b's links, yet the client gets it.
    let node_b = mesh.testbed().node("node-b")?.netns().clone();
    let (frames, answer) = capture::frames_during(&node_b, || {
        curl(&mesh, "demo", "client", "http://10.244.2.2:8080/").map(|r| r.stdout)
    })?;
    assert_eq!(answer?.trim(), "hello from reviews-v2");
    assert!(
        capture::has_tcp_port(&frames, 15008),
        "no HBONE (15008) traffic seen on node-b"
    );
    for f in &frames {
        assert!(
            !capture::contains(f, b"hello from reviews-v2")
                && !capture::contains(f, b"GET / HTTP/1.1"),
            "plaintext crossed node-b's links"
        );
    }

    // The DENY policy refuses denied-client's identity, and only it.
    let denied = curl(&mesh, "demo", "denied-client", "http://10.96.0.10:9080/")?;
    assert!(!denied.ok(), "denied-client reached reviews: {denied:?}");
    let allowed = curl(&mesh, "demo", "client", "http://10.96.0.10:9080/")?;
    assert!(allowed.ok(), "{allowed:?}");
    let metrics = ambit_cli::local::apps::fetch(&format!(
        "http://{}/metrics",
        mesh.node_state("node-a")?.metrics
    ))
    .await
    .map_err(anyhow::Error::msg)?
    .1;
    // Both reviews pods' ztunnels refuse; node-a's (reviews-v1) is the one on this node.
    let dest = ambit_cli::local::apps::fetch(&format!(
        "http://{}/metrics",
        mesh.node_state("node-b")?.metrics
    ))
    .await
    .map_err(anyhow::Error::msg)?
    .1;
    assert!(
        format!("{metrics}{dest}").lines().any(|l| l
            .starts_with("ambit_connection_failures_total")
            && l.contains("reason=\"policy_denied\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/denied-client\"")),
        "no policy denial recorded for denied-client"
    );
    assert!(
        dest.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "node-b did not record the client's mTLS connections:\n{dest}"
    );

    // legacy did not opt in: reached as plain TCP, and its pod holds no rules of ours.
    let r = curl(&mesh, "demo", "client", "http://10.96.0.20:8080/")?;
    assert_eq!(r.stdout.trim(), "hello from legacy", "{r:?}");
    assert!(!has_capture_rules(&mesh, "legacy", "legacy")?);
    assert!(has_capture_rules(&mesh, "demo", "client")?);
    let denied_to_legacy = curl(&mesh, "demo", "denied-client", "http://10.244.2.3:8080/")?;
    assert!(
        denied_to_legacy.ok(),
        "the policy covers reviews only: {denied_to_legacy:?}"
    );

    mesh.down()?;
    Ok(())
}
