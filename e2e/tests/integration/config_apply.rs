//! Issue 15's "must show": a large config update is applied while the data path keeps serving.
//! The controller pushes 20,000 more workloads to node-a's ztunnel (pods that exist only in the
//! mesh file) while a client on node-a opens a new connection per request to a service, 100 a
//! second, each looked up in the config being replaced: every request succeeds, and no second
//! the apply spans goes without answers. (How long a request waits meanwhile is a bench
//! figure: `cargo bench -p ambit-benches --bench config_apply`.)

use std::time::{Duration, Instant};

use ambit_cli::local::apps::DriveReport;
use ambit_cli::local::bulk::with_bulk_pods;
use ambit_cli::local::{Binaries, load, metrics};
use ambit_e2e::{can_run, get, start};

const BULK: usize = 20_000;
/// How long the controller (a debug build here) and ztunnel get for the update.
const APPLY_WITHIN: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_path_keeps_serving_while_a_large_config_is_applied() -> anyhow::Result<()> {
    if !can_run("the_data_path_keeps_serving_while_a_large_config_is_applied") {
        return Ok(());
    }
    let mesh = start("config-apply", Some(ambit_e2e::L4_MESH)).await?;
    let node_a = mesh.node_state("node-a")?.metrics;
    let metric = async |name: &str| -> anyhow::Result<f64> {
        let (_, text) = get(&format!("http://{node_a}/metrics")).await?;
        Ok(metrics::sum(&text, name, &[]))
    };

    let driver = load::drive(
        &Binaries::locate()?.ambit,
        mesh.pod("demo", "client")?.netns(),
        &["http://10.96.0.10:9080/"],
        100,
    )?;
    let reports = &driver.reports;
    let mut seen: Vec<(Instant, DriveReport)> = Vec::new();
    // The mesh serves before the update: two seconds of answers.
    while seen.iter().filter(|(_, r)| r.ok > 0).count() < 2 {
        seen.push(reports.recv_timeout(Duration::from_secs(10))?);
    }

    let updates_before = metric("ambit_config_updates_total").await?;
    let workloads_before = metric("ambit_config_workloads").await?;
    let original = std::fs::read_to_string(mesh.mesh_path())?;
    let bulk = with_bulk_pods(&original, "bulk", "node-a", BULK).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    std::fs::write(mesh.mesh_path(), bulk)?;
    let applied = loop {
        if metric("ambit_config_workloads").await? >= workloads_before + BULK as f64 {
            break Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < APPLY_WITHIN,
            "node-a's ztunnel did not get the {BULK} workloads within {APPLY_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metric("ambit_config_updates_total").await? > updates_before);
    // A second more of answers after the update, then the driver stops.
    while seen
        .last()
        .is_none_or(|(at, _)| *at < applied + Duration::from_secs(2))
    {
        seen.push(reports.recv_timeout(Duration::from_secs(10))?);
    }
    drop(driver);

    for (_, r) in &seen {
        assert_eq!(
            r.failed, 0,
            "requests failed around the update: {:?}",
            r.last_error
        );
    }
    // A report covers the second before it arrived: each one that overlaps the update had
    // answers.
    let during: Vec<&DriveReport> = seen
        .iter()
        .filter(|(at, _)| *at > started && *at <= applied + Duration::from_secs(1))
        .map(|(_, r)| r)
        .collect();
    assert!(!during.is_empty(), "no report covered the update");
    for r in &during {
        assert!(
            r.ok > 0,
            "a second of the update went without answers: {during:?}"
        );
    }
    eprintln!(
        "config_apply: {BULK} workloads reached node-a's ztunnel {:.1} s after the file changed; answers per second meanwhile: {:?}, slowest (ms): {:?}",
        (applied - started).as_secs_f64(),
        during.iter().map(|r| r.ok).collect::<Vec<_>>(),
        during
            .iter()
            .map(|r| (r.max_ms * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    mesh.down()?;
    Ok(())
}
