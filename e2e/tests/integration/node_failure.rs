//! Issue 12's dead ztunnel: when a node's ztunnel dies, its pods fail closed, the other nodes
//! stop choosing its endpoints for a service within a stated time (the client side skips
//! endpoints whose connects fail, and the controller marks a node's workloads unhealthy once
//! its ztunnel has been gone for a grace period), and the local mesh's supervisor notices a
//! crash, reaps it, starts the ztunnel (or the controller) again on the same ports, gives a
//! ztunnel its pods back, and traffic returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ambit_cli::local::AfterKill;
use ambit_controller::push::SyncStatus;
use ambit_e2e::probe::reaped;
use ambit_e2e::{can_run, curl, eventually, get, start};

/// Endpoints on the dead node are no longer chosen this long after its ztunnel died: the
/// controller's grace before it marks the node's workloads unhealthy (10–15 s) and a push.
const ROUTED_AROUND_WITHIN: Duration = Duration::from_secs(20);
/// Calls in a row that must all succeed for the VIP to count as routed around the dead node.
const IN_A_ROW: usize = 20;
/// A restarted ztunnel is serving its pods again within this: noticed within a fraction of a
/// second, ready within about one, then its pods handed back.
const BACK_WITHIN: Duration = Duration::from_secs(15);

const VIP: &str = "http://10.96.0.10:9080/";
const REVIEWS_V2: &str = "http://10.244.2.2:8080/";

fn answer(mesh: &ambit_cli::local::LocalMesh, url: &str) -> Option<String> {
    let r = curl(mesh, "demo", "client", url).ok()?;
    r.ok().then(|| r.stdout.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_ztunnel_is_routed_around_then_restarted() -> anyhow::Result<()> {
    if !can_run("a_dead_ztunnel_is_routed_around") {
        return Ok(());
    }
    let mesh = start("node-failure", Some(ambit_e2e::L4_MESH)).await?;
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..64 {
        *seen
            .entry(answer(&mesh, VIP).unwrap_or_default())
            .or_default() += 1;
        if seen.len() == 2 && !seen.contains_key("") {
            break;
        }
    }
    assert!(
        seen.contains_key("hello from reviews-v2") && !seen.contains_key(""),
        "both endpoints should answer before the kill: {seen:?}"
    );

    // node-b's ztunnel dies and stays down (a node whose proxy is gone).
    let killed = Instant::now();
    mesh.kill_ztunnel("node-b", AfterKill::StayDown)?;
    assert_eq!(
        answer(&mesh, REVIEWS_V2),
        None,
        "reviews-v2 answered with its node's ztunnel dead: its pods must fail closed"
    );
    // Calls to the service from node-a go to the live endpoint only, within the stated time.
    let mut in_a_row = 0;
    let mut failures = 0;
    while in_a_row < IN_A_ROW {
        assert!(
            killed.elapsed() < ROUTED_AROUND_WITHIN,
            "{VIP} still failed {failures} times, the last within {IN_A_ROW} calls of \
             {ROUTED_AROUND_WITHIN:?}, after node-b's ztunnel died"
        );
        match answer(&mesh, VIP).as_deref() {
            Some("hello from reviews-v1") => in_a_row += 1,
            other => {
                assert_ne!(
                    other,
                    Some("hello from reviews-v2"),
                    "the dead node answered"
                );
                failures += 1;
                in_a_row = 0;
            }
        }
    }
    eprintln!(
        "{VIP} routed around node-b {:?} after the kill ({failures} calls failed meanwhile)",
        killed.elapsed()
    );

    // Let the supervisor start it again: it gets its pods back, and traffic to them returns.
    mesh.start_ztunnel("node-b")?;
    let back = eventually(BACK_WITHIN, async || answer(&mesh, REVIEWS_V2)).await;
    assert_eq!(
        back.as_deref(),
        Some("hello from reviews-v2"),
        "reviews-v2 did not answer within {BACK_WITHIN:?} of starting its ztunnel again; \
         supervisor: {:?}",
        mesh.events()
    );
    // Its endpoint becomes a choice for the service again.
    let v2_again = eventually(ROUTED_AROUND_WITHIN, async || {
        (answer(&mesh, VIP)? == "hello from reviews-v2").then_some(())
    })
    .await;
    assert!(
        v2_again.is_some(),
        "the VIP never chose reviews-v2 again within {ROUTED_AROUND_WITHIN:?} of its return"
    );

    // A crash nobody asked for: SIGKILL from outside. The supervisor reaps it, says so,
    // starts it again with the same ports, and gives it its pods back.
    let old = mesh.ztunnel_pid("node-b")?.expect("running again");
    kill9(old);
    let new = eventually(BACK_WITHIN, async || {
        mesh.ztunnel_pid("node-b").ok()?.filter(|p| *p != old)
    })
    .await;
    assert!(
        new.is_some(),
        "node-b's ztunnel was not restarted: {:?}",
        mesh.events()
    );
    assert!(reaped(old), "the killed ztunnel {old} was left a zombie");
    // Said so: at once, or after a pause when it had been up only seconds (a crash loop).
    let events: Vec<String> = mesh.events().iter().map(|e| e.text.clone()).collect();
    let crash = events
        .iter()
        .rposition(|e| e.starts_with("ztunnel on node-b exited (signal 9)"));
    assert!(
        crash.is_some_and(|i| events[i..]
            .iter()
            .any(|e| e.starts_with("ztunnel on node-b exited") && e.ends_with("; restarted"))),
        "{events:#?}"
    );
    let back = eventually(BACK_WITHIN, async || answer(&mesh, REVIEWS_V2)).await;
    assert_eq!(
        back.as_deref(),
        Some("hello from reviews-v2"),
        "{:?}",
        mesh.events()
    );
    let node_b = mesh.node_state("node-b")?;
    let (status, _) = get(&format!("http://{}/healthz/ready", node_b.readiness)).await?;
    assert_eq!(
        status, 200,
        "the restarted ztunnel is not on its old readiness port"
    );

    // The controller too: restarted on its ports, and both ztunnels subscribe again.
    let old = mesh.controller_pid().expect("the controller runs");
    kill9(old);
    let syncz = format!("http://{}/debug/syncz", mesh.state().controller_metrics);
    let subscribed = eventually(BACK_WITHIN, async || {
        let (_, body) = get(&syncz).await.ok()?;
        let rows: Vec<SyncStatus> = serde_json::from_str(&body).ok()?;
        let synced = |node: &str| rows.iter().any(|r| r.name == node && r.in_sync());
        (synced("node-a") && synced("node-b")).then_some(rows)
    })
    .await;
    assert!(
        subscribed.is_some(),
        "the ztunnels were not in sync with the restarted controller within {BACK_WITHIN:?}: {:?}",
        mesh.events()
    );
    assert_ne!(mesh.controller_pid(), Some(old));
    assert!(reaped(old), "the killed controller {old} was left a zombie");
    assert_eq!(
        answer(&mesh, REVIEWS_V2).as_deref(),
        Some("hello from reviews-v2")
    );
    mesh.down()?;
    Ok(())
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL a process this test started");
}
