//! A large config update while traffic flows: how long node-a's ztunnel makes a request wait
//! while the controller pushes it `--workloads` more workloads (50k by default, pods that exist
//! only in the mesh file), against the same requests before the update, in one run.
//!
//! A client on node-a calls a service on node-b with a new connection per request (each looked
//! up in the config being replaced), `--rate` a second over four drivers; each driver reports
//! every second (answers, failures, p99 and slowest). The seconds that overlap the update (from
//! the file change until ztunnel holds every new workload, plus one) are set against the
//! `--baseline` seconds before it. The controller runs niced (19) for the measurement: on a
//! cluster it runs on another node, and here its own CPU would otherwise be counted as ztunnel's
//! stall (`--no-renice` keeps it at normal priority).
//!
//! Needs root and release binaries: `cargo build --release --bins && cargo bench -p
//! ambit-benches --bench config_apply [-- --workloads 50000 --rate 400 --baseline 10 --json]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_benches::local::{BenchMesh, running_as_root};
use ambit_benches::procfs::{cpu_seconds, memory_mb};
use ambit_benches::{Args, median};
use ambit_controller::local::apps::DriveReport;
use ambit_controller::local::bulk::with_bulk_pods;
use ambit_controller::local::{Binaries, LocalMesh, apps, load, metrics};

const MESH: &str = include_str!("../meshes/apply.yaml");
const TARGET: &str = "http://10.96.1.10/";
const DRIVERS: u32 = 4;
/// How long the controller and ztunnel get for the update.
const APPLY_WITHIN: Duration = Duration::from_secs(300);

struct Opts {
    workloads: usize,
    rate: u32,
    baseline: u64,
    renice: bool,
    json: bool,
}

fn opts() -> Opts {
    let args = Args::from_env();
    Opts {
        workloads: args.value("--workloads", 50_000),
        rate: args.value("--rate", 400).max(DRIVERS),
        baseline: args.value("--baseline", 10).max(2),
        renice: !args.flag("--no-renice"),
        json: args.flag("--json"),
    }
}

/// The per-second reports that arrived in a window, summed up.
#[derive(Debug)]
struct Window {
    /// Reports: one per driver per second.
    reports: usize,
    ok: u64,
    failed: u64,
    /// Median over the seconds of each second's p99.
    p99_ms: f64,
    /// The slowest answer in the window.
    max_ms: f64,
}

impl Window {
    fn of(reports: &[&DriveReport]) -> Self {
        Window {
            reports: reports.len(),
            ok: reports.iter().map(|r| r.ok).sum(),
            failed: reports.iter().map(|r| r.failed).sum(),
            p99_ms: median(reports.iter().map(|r| r.p99_ms).collect()),
            max_ms: reports.iter().map(|r| r.max_ms).fold(0.0, f64::max),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "reports": self.reports, "ok": self.ok, "failed": self.failed,
            "p99_ms": self.p99_ms, "max_ms": self.max_ms,
        })
    }
}

fn main() -> anyhow::Result<()> {
    if !running_as_root("config_apply") {
        return Ok(());
    }
    let o = opts();
    let bench = BenchMesh::up("config_apply", MESH, true, 2)?;
    let result = measure(&o, &bench.mesh, &bench.binaries, &bench.runtime);
    bench.down()?;
    result
}

fn measure(
    o: &Opts,
    mesh: &LocalMesh,
    binaries: &Binaries,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let state = mesh.state();
    let node_a = mesh.node_state("node-a")?;
    let ztunnel = node_a
        .pid
        .ok_or_else(|| anyhow::anyhow!("node-a's ztunnel has no pid"))?;
    let proxies: Vec<u32> = state
        .nodes
        .iter()
        .filter_map(|n| n.pid)
        .chain(state.waypoints.iter().filter_map(|w| w.pid))
        .collect();
    if o.renice {
        // The controller is the run's one pid that is not a proxy's.
        for pid in state.pids.iter().filter(|p| !proxies.contains(p)) {
            renice_threads(*pid, 19)?;
        }
    }
    // How many workloads node-a's ztunnel serves with, from its metrics; `None` from a
    // ztunnel built before it had that gauge (a before/after comparison), whose log says
    // instead how many resources each update it applied changed.
    let ztunnel_log = state.work_dir.join("ztunnel-node-a.log");
    let workloads = || -> anyhow::Result<Option<f64>> {
        let (_, text) = runtime
            .block_on(apps::fetch(&format!("http://{}/metrics", node_a.metrics)))
            .map_err(|e| anyhow::anyhow!("reading node-a's ztunnel metrics: {e}"))?;
        Ok(
            (!metrics::samples(&text, "ambit_config_workloads").is_empty())
                .then(|| metrics::sum(&text, "ambit_config_workloads", &[])),
        )
    };
    let largest_logged_update = || -> anyhow::Result<f64> {
        let log = std::fs::read_to_string(&ztunnel_log)?;
        Ok(log
            .lines()
            .filter(|l| l.contains("applied config"))
            .filter_map(|l| {
                let plain = without_colours(l);
                let rest = plain.split("changed=").nth(1)?;
                rest.split(' ').next()?.parse::<f64>().ok()
            })
            .fold(0.0, f64::max))
    };
    let driver = load::drive(
        &binaries.ambit,
        mesh.pod("bench", "client")?.netns(),
        &[TARGET; DRIVERS as usize],
        o.rate / DRIVERS,
    )?;
    let reports = &driver.reports;
    let mut seen: Vec<(Instant, DriveReport)> = Vec::new();
    let warm = Instant::now() + Duration::from_secs(2);
    let baseline_from = warm;
    while seen
        .last()
        .is_none_or(|(at, _)| *at < warm + Duration::from_secs(o.baseline))
    {
        seen.push(reports.recv_timeout(Duration::from_secs(10))?);
    }

    let (rss_before, _) = memory_mb(ztunnel);
    let workloads_before = workloads()?;
    let holds_bulk = || -> anyhow::Result<bool> {
        let bulk = o.workloads as f64;
        Ok(match (workloads_before, workloads()?) {
            (Some(before), Some(now)) => now >= before + bulk,
            _ => largest_logged_update()? >= bulk,
        })
    };
    let cpu_before = cpu_seconds(ztunnel);
    let text = with_bulk_pods(MESH, "bulk", "node-a", o.workloads).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    std::fs::write(mesh.mesh_path(), text)?;
    let applied = loop {
        if holds_bulk()? {
            break Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < APPLY_WITHIN,
            "node-a's ztunnel did not get the {} workloads within {APPLY_WITHIN:?}",
            o.workloads
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let cpu_apply = cpu_seconds(ztunnel) - cpu_before;
    while seen
        .last()
        .is_none_or(|(at, _)| *at < applied + Duration::from_secs(3))
    {
        seen.push(reports.recv_timeout(Duration::from_secs(10))?);
    }
    drop(driver);
    std::thread::sleep(Duration::from_secs(1));
    let (rss_after, hwm) = memory_mb(ztunnel);

    let window = |from: Instant, to: Instant| {
        let picked: Vec<&DriveReport> = seen
            .iter()
            .filter(|(at, _)| *at > from && *at <= to)
            .map(|(_, r)| r)
            .collect();
        Window::of(&picked)
    };
    let base = window(baseline_from, started);
    let during = window(started, applied + Duration::from_secs(1));
    let apply_s = (applied - started).as_secs_f64();
    let per_workload = (rss_after - rss_before) * f64::from(1 << 20) / o.workloads as f64;

    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "workloads": o.workloads, "rate": o.rate, "controller_reniced": o.renice,
                "apply_seconds": apply_s, "ztunnel_cpu_seconds": cpu_apply,
                "baseline": base.json(), "during": during.json(),
                "rss_mb": {"before": rss_before, "after": rss_after, "peak": hwm},
                "rss_bytes_per_workload": per_workload,
            })
        );
    }
    println!(
        "config_apply bench: {} workloads pushed to node-a's ztunnel while its client calls a service ({} req/s, a new connection each){}",
        o.workloads,
        o.rate,
        if o.renice { "; controller niced" } else { "" }
    );
    println!(
        "{:<44} {apply_s:.2} s (controller build and push included), ztunnel CPU {cpu_apply:.2} s",
        "file change -> ztunnel holds them"
    );
    for (name, w) in [("before the update", &base), ("during the update", &during)] {
        println!(
            "{name:<44} {} answers, {} failed; p99 (median second) {:.2} ms, slowest {:.2} ms",
            w.ok, w.failed, w.p99_ms, w.max_ms
        );
    }
    println!(
        "{:<44} {:+.2} ms  (target: a worker never stalls more than 1 ms)",
        "slowest answer, during - before",
        during.max_ms - base.max_ms
    );
    println!(
        "{:<44} {rss_before:.1} -> {rss_after:.1} MB (peak {hwm:.1}), {per_workload:.0} B per workload  (target <= 250 B)",
        "ztunnel RSS"
    );
    Ok(())
}

/// Lowers every thread of `pid` (a nice value is per thread on Linux).
fn renice_threads(pid: u32, nice: i32) -> anyhow::Result<()> {
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    let status = Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&tids)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "renice of pid {pid} failed");
    Ok(())
}

/// A log line without its terminal colour codes (`ESC [ ... m`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
