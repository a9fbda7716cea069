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
//! The stall itself is measured where it happens, in the kernel's scheduler (bpftrace,
//! `src/sched.rs`): for node-a's data-path worker threads (`ztunnel-data`), the longest time one
//! was ready to run but did not, and the longest uninterruptible sleep, over the same windows.
//! The answers' latencies include the client's and the server's own scheduling on this shared
//! 2-core machine; the workers' waits do not.
//!
//! Needs root and release binaries: `cargo build --release --bins && cargo bench -p
//! ambit-benches --bench config_apply [-- --workloads 50000 --rate 400 --baseline 10 --json]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_benches::local::{BenchMesh, running_as_root};
use ambit_benches::procfs::{cpu_seconds, memory_mb};
use ambit_benches::sched::{Over, SchedSecond, SchedWatch};
use ambit_benches::{Args, median, tools};
use ambit_cli::local::apps::DriveReport;
use ambit_cli::local::bulk::with_bulk_pods;
use ambit_cli::local::{Binaries, LocalMesh, apps, load, metrics};

const MESH: &str = include_str!("../meshes/apply.yaml");
const TARGET: &str = "http://10.96.1.10/";
const DRIVERS: u32 = 4;
/// How long the controller and ztunnel get for the update.
const APPLY_WITHIN: Duration = Duration::from_secs(300);
/// The data-path runtime's threads (ztunnel/src/main.rs).
const DATA_THREADS: &str = "ztunnel-data";

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
    tools::ensure_installed()?;
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
    let sched = SchedWatch::start(ztunnel, DATA_THREADS)?;
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
    let sched_seconds: Vec<(Instant, SchedSecond)> = sched.seconds.try_iter().collect();
    drop(sched);
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
    let sched_window = |from: Instant, to: Instant| {
        let picked: Vec<SchedSecond> = sched_seconds
            .iter()
            .filter(|(at, _)| *at > from && *at <= to)
            .map(|(_, s)| s.clone())
            .collect();
        SchedSecond::worst(&picked)
    };
    let base = window(baseline_from, started);
    let during = window(started, applied + Duration::from_secs(1));
    let sched_base = sched_window(baseline_from, started);
    let sched_during = sched_window(started, applied + Duration::from_secs(1));
    let apply_s = (applied - started).as_secs_f64();
    let per_workload = (rss_after - rss_before) * f64::from(1 << 20) / o.workloads as f64;

    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "workloads": o.workloads, "rate": o.rate, "controller_reniced": o.renice,
                "apply_seconds": apply_s, "ztunnel_cpu_seconds": cpu_apply,
                "baseline": base.json(), "during": during.json(),
                "worker_sched": {"baseline": sched_json(&sched_base), "during": sched_json(&sched_during)},
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
        "{:<56} {apply_s:.2} s (controller build and push included), ztunnel CPU {cpu_apply:.2} s",
        "file change -> ztunnel holds them"
    );
    for (name, w) in [("before the update", &base), ("during the update", &during)] {
        println!(
            "{name:<56} {} answers, {} failed; p99 (median second) {:.2} ms, slowest {:.2} ms",
            w.ok, w.failed, w.p99_ms, w.max_ms
        );
    }
    println!(
        "{:<56} {:+.2} ms  (client, both ztunnels and server: all scheduling counted)",
        "slowest answer, during - before",
        during.max_ms - base.max_ms
    );
    print_worker_waits(&sched_base, &sched_during);
    println!(
        "{:<56} {rss_before:.1} -> {rss_after:.1} MB (peak {hwm:.1}), {per_workload:.0} B per workload  (target <= 250 B)",
        "ztunnel RSS"
    );
    Ok(())
}

fn print_worker_waits(base: &SchedSecond, during: &SchedSecond) {
    let ms = |us: u64| us as f64 / 1e3;
    let rows = [
        (
            "data-path worker's longest wait to run, before / during",
            format!(
                "{:.2} / {:.2} ms  (target: <= 1 ms during)",
                ms(base.longest_wait_us),
                ms(during.longest_wait_us)
            ),
        ),
        (
            "  waits over 1 ms, before / during",
            format!(
                "{} of {} / {} of {}",
                base.waits_over_1ms, base.waits, during.waits_over_1ms, during.waits
            ),
        ),
        (
            "  waits over 1 ms before, ended by",
            after_text(&base.over_1ms_after),
        ),
        (
            "  waits over 1 ms during, ended by",
            after_text(&during.over_1ms_after),
        ),
        (
            "  longest uninterruptible sleep, before / during",
            format!(
                "{:.2} / {:.2} ms",
                ms(base.longest_blocked_us),
                ms(during.longest_blocked_us)
            ),
        ),
    ];
    for (name, value) in rows {
        println!("{name:<56} {value}");
    }
}

fn sched_json(s: &SchedSecond) -> serde_json::Value {
    serde_json::json!({
        "waits": s.waits, "longest_wait_us": s.longest_wait_us,
        "waits_over_1ms": s.waits_over_1ms, "longest_blocked_us": s.longest_blocked_us,
        "over_1ms_after": s.over_1ms_after.iter()
            .map(|(name, o)| (name.clone(), serde_json::json!({"count": o.count, "longest_us": o.longest_us})))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// "nginx 3 (≤ 2.1 ms), ambit 1 (≤ 1.2 ms)": which threads held the CPU as long waits ended,
/// most often first.
fn after_text(after: &std::collections::BTreeMap<String, Over>) -> String {
    let mut named: Vec<(&String, &Over)> = after.iter().collect();
    named.sort_by_key(|(_, o)| std::cmp::Reverse(o.count));
    let text: Vec<String> = named
        .iter()
        .map(|(n, o)| format!("{n} {} (≤ {:.1} ms)", o.count, o.longest_us as f64 / 1e3))
        .collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join(", ")
    }
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
