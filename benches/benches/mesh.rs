//! The L4 data path end to end, set up as DESIGN.md's reference figures for Istio's ztunnel
//! were measured: a client pod on node-a and a server pod on node-b, each captured by its
//! node's ztunnel, against the same two pods on a port that bypasses capture (direct), in one
//! run, interleaved, medians, as ratios. Debian's tools on both ends: nginx with one worker
//! answering a small 200, then iperf3, in the server pod; wrk and iperf3 in the client pod.
//! Each ztunnel's CPU and memory come from `/proc`, with `--pods` pods in the mesh.
//!
//! Needs root, the tools (`benches/tools.sh` installs them) and release binaries:
//! `cargo build --release --bins && cargo bench -p ambit-benches --bench mesh [-- --rounds 5
//! --seconds 15 --pods 100 --workers 2 --istio <binary> --json]`. `--seconds` sets every run's
//! length (default: 15 s for wrk, 10 s for iperf3). `--istio` measures Istio's ztunnel on the
//! same pods afterwards ([`istio`]) and sets each figure beside Ambit's.

#[path = "mesh/istio.rs"]
mod istio;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_benches::iperf3;
use ambit_benches::local::{BenchMesh, running_as_root};
use ambit_benches::procfs::memory_mb;
use ambit_benches::record::{Record, cpu_over};
use ambit_benches::tools::{self, wrk, wrk_script};
use ambit_benches::{Args, report};
use ambit_cli::local::{BENCH_DIRECT_PORT, BENCH_MESH_PORT, LocalMesh};
use ambit_testbed::Netns;
use serde_json::{Value, json};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
/// The paced runs: 10 connections, each waiting 10 ms after every answer: ~1k req/s.
const PACED_CONNECTIONS: usize = 10;
const PACED_DELAY_MS: u32 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Mesh,
    Direct,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Mesh => "mesh",
            Via::Direct => "direct",
        }
    }

    fn target(self) -> SocketAddr {
        let port = match self {
            Via::Mesh => BENCH_MESH_PORT,
            Via::Direct => BENCH_DIRECT_PORT,
        };
        SocketAddr::from((SERVER_IP, port))
    }

    /// Direct first in even rounds, so neither path always runs on a warmer machine.
    fn order(round: usize) -> [Via; 2] {
        if round.is_multiple_of(2) {
            [Via::Direct, Via::Mesh]
        } else {
            [Via::Mesh, Via::Direct]
        }
    }
}

struct Opts {
    rounds: usize,
    wrk_seconds: u64,
    iperf3_seconds: u64,
    pods: usize,
    workers: usize,
    istio: Option<PathBuf>,
    json: bool,
}

fn opts() -> Opts {
    let args = Args::from_env();
    let seconds: Option<u64> = args.text("--seconds").and_then(|s| s.parse().ok());
    Opts {
        rounds: args.value("--rounds", 5).max(1),
        wrk_seconds: seconds.unwrap_or(15).max(1),
        iperf3_seconds: seconds.unwrap_or(10).max(1),
        pods: args.value("--pods", 100).max(2),
        workers: args.value("--workers", 2).max(1),
        istio: args.text("--istio").map(PathBuf::from),
        json: args.flag("--json"),
    }
}

/// Two nodes; client on node-a, server on node-b, the rest idle pods spread over both. In
/// Ambit's mesh (`ambient`), or left out of it for Istio's ztunnels to carry.
fn mesh_file(pods: usize, ambient: bool) -> String {
    let labels = if ambient {
        "{ambit.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    let mut y = format!(
        "trustDomain: cluster.local\n\
         nodes:\n  - {{name: node-a, bootstrapToken: bench-a}}\n  - {{name: node-b, bootstrapToken: bench-b}}\n\
         namespaces:\n  - name: bench\n    labels: {labels}\n\
         pods:\n\
         \x20 - {{name: client, namespace: bench, node: node-a, serviceAccount: client, ipv4: {CLIENT_IP}, ipv6: \"fd00:10:244:1::2\"}}\n\
         \x20 - {{name: server, namespace: bench, node: node-b, serviceAccount: server, ipv4: {SERVER_IP}, ipv6: \"fd00:10:244:2::2\", ports: [{BENCH_MESH_PORT}]}}\n",
    );
    for i in 0..pods.saturating_sub(2) {
        let node = 1 + i % 2;
        let host = 10 + i / 2;
        y.push_str(&format!(
            "  - {{name: idle-{i}, namespace: bench, node: node-{}, serviceAccount: idle, ipv4: 10.244.{node}.{host}, ipv6: \"fd00:10:244:{node}::{host:x}\"}}\n",
            if node == 1 { "a" } else { "b" }
        ));
    }
    y
}

fn main() -> anyhow::Result<()> {
    if !running_as_root("mesh") {
        return Ok(());
    }
    let o = opts();
    tools::ensure_installed()?;
    let bench = BenchMesh::up("mesh", &mesh_file(o.pods, true), false, o.workers)?;
    let result = measure(&bench.mesh, &bench.dir, &o);
    let down = bench.down();
    let mut r = result?;
    down?;
    print_summary(&r, &o, "Ambit's ztunnels");
    if let Some(binary) = &o.istio {
        let bench = BenchMesh::up("mesh-istio", &mesh_file(o.pods, false), false, o.workers)?;
        let result = measure_istio(binary, &bench.mesh, &bench.dir, &o);
        let down = bench.down();
        let istio = result?;
        down?;
        print_summary(&istio, &o, "Istio's ztunnels (dedicated mode, one per pod)");
        print_against_istio(&r, &istio);
        r.set("istio", istio.to_json());
    }
    if o.json {
        println!("{}", r.to_json());
    }
    Ok(())
}

/// What every part of the run uses: the pods' namespaces, the ztunnels, the options.
struct Bench<'a> {
    z: Vec<(String, u32)>,
    client: Netns,
    server: Netns,
    dir: &'a Path,
    o: &'a Opts,
}

fn measure(mesh: &LocalMesh, dir: &Path, o: &Opts) -> anyhow::Result<Record> {
    let z = mesh.state().nodes.into_iter().map(|n| match n.pid {
        Some(pid) => Ok((n.name.replace('-', "_"), pid)),
        None => Err(anyhow::anyhow!("the ztunnel of {} is not running", n.name)),
    });
    let b = Bench {
        z: z.collect::<anyhow::Result<_>>()?,
        client: mesh.pod("bench", "client")?.netns().clone(),
        server: mesh.pod("bench", "server")?.netns().clone(),
        dir,
        o,
    };
    let mut r = run(&b)?;
    let now: Vec<Option<u32>> = mesh.state().nodes.iter().map(|n| n.pid).collect();
    let restarted = b.z.iter().zip(&now).any(|((_, pid), n)| *n != Some(*pid));
    r.set("ztunnel_restarted", restarted);
    Ok(r)
}

/// The same measures with Istio's ztunnels carrying the pods of a mesh that leaves them out.
fn measure_istio(binary: &Path, mesh: &LocalMesh, dir: &Path, o: &Opts) -> anyhow::Result<Record> {
    let (client, server) = (
        mesh.pod("bench", "client")?.netns().clone(),
        mesh.pod("bench", "server")?.netns().clone(),
    );
    let pod = |netns, name, ip, node| istio::Pod {
        netns,
        name,
        service_account: name,
        ip,
        node,
    };
    let c = pod(&client, "client", CLIENT_IP, "node_a");
    let s = pod(&server, "server", SERVER_IP, "node_b");
    let mut proxies = istio::IstioZtunnels::start(binary, dir, o.workers, &c, &s)?;
    let b = Bench {
        z: proxies.pids(&c, &s),
        client: client.clone(),
        server: server.clone(),
        dir,
        o,
    };
    let mut r = run(&b)?;
    r.set("ztunnel_restarted", proxies.exited());
    Ok(r)
}

/// Every measure, with `b.z`'s proxies on the mesh path.
fn run(b: &Bench) -> anyhow::Result<Record> {
    let o = b.o;
    let mut r = Record::default();
    r.set("rounds", o.rounds);
    r.set("wrk_seconds", o.wrk_seconds);
    r.set("iperf3_seconds", o.iperf3_seconds);
    r.set("pods", o.pods);
    r.set("workers", o.workers);
    // Let the ztunnels settle after taking their config and capturing the pods.
    std::thread::sleep(Duration::from_secs(3));
    for (node, pid) in &b.z {
        r.set(&format!("rss_idle_mb_{node}"), memory_mb(*pid).0);
    }
    http(&mut r, b)?;
    throughput(&mut r, b)?;
    // What the proxies keep once the load is over (buffers, pools), and their high-water mark.
    std::thread::sleep(Duration::from_secs(3));
    for (node, pid) in &b.z {
        let (rss, hwm) = memory_mb(*pid);
        r.set(&format!("rss_after_load_mb_{node}"), rss);
        r.set(&format!("rss_peak_mb_{node}"), hwm);
    }
    for (test, figure) in RATIOS {
        let median = |path: &str| r.median(&format!("{test}_{figure}_{path}"));
        r.set(&format!("{test}_ratio"), median("mesh") / median("direct"));
    }
    for q in ["p50", "p99"] {
        let median = |path: &str| r.median(&format!("paced_{q}_ms_{path}"));
        r.set(
            &format!("paced_{q}_added_ms"),
            median("mesh") - median("direct"),
        );
    }
    Ok(r)
}

/// The figures reported as mesh / direct: test and figure, as in the JSON keys.
const RATIOS: [(&str, &str); 4] = [
    ("wrk_c1", "rps"),
    ("wrk_c64", "rps"),
    ("iperf3_up", "gbps"),
    ("iperf3_down", "gbps"),
];

/// wrk against nginx: 1 and 64 connections at full speed, then paced at ~1k req/s.
fn http(r: &mut Record, b: &Bench) -> anyhow::Result<()> {
    let _nginx = tools::nginx_ok(
        &b.server,
        b.dir,
        &[Via::Mesh.target(), Via::Direct.target()],
    )?;
    let full = wrk_script(b.dir, None)?;
    let paced = wrk_script(b.dir, Some(PACED_DELAY_MS))?;
    let url = |via: Via| format!("http://{}/", via.target());
    // The mesh path's first connections also set up the HBONE pool; keep that out of round 0.
    for via in [Via::Direct, Via::Mesh] {
        wrk(&b.client, &full, &url(via), 64, 1, &mut || {})?;
    }
    let mut errors = [0u64; 2];
    for round in 0..b.o.rounds {
        for via in Via::order(round) {
            for (test, connections, script) in [
                ("wrk_c1", 1, &full),
                ("wrk_c64", 64, &full),
                ("wrk_paced", PACED_CONNECTIONS, &paced),
            ] {
                let (load, cpu) = cpu_over(&b.z, || {
                    wrk(
                        &b.client,
                        script,
                        &url(via),
                        connections,
                        b.o.wrk_seconds,
                        &mut || {},
                    )
                })?;
                r.sample_with_cpu(
                    json!({"round": round, "path": via.name(), "test": test,
                        "connections": connections, "rps": load.rps(), "requests": load.ok,
                        "seconds": load.seconds, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                        "max_ms": load.max_ms, "errors": load.errors, "non_2xx": load.non_2xx}),
                    &cpu,
                );
                errors[via as usize] += load.errors + load.non_2xx;
                let path = via.name();
                r.add(&format!("{test}_rps_{path}"), load.rps());
                if test == "wrk_paced" {
                    r.add(&format!("paced_p50_ms_{path}"), load.p50_ms);
                    r.add(&format!("paced_p99_ms_{path}"), load.p99_ms);
                }
                if test == "wrk_c64" && via == Via::Mesh {
                    let per_request = |cpu: f64| cpu / load.ok.max(1) as f64 * 1e6;
                    for (node, seconds) in &cpu {
                        r.add(&format!("cpu_us_per_request_{node}"), per_request(*seconds));
                    }
                    let total: f64 = cpu.iter().map(|(_, s)| s).sum();
                    let per_proxy = per_request(total) / cpu.len() as f64;
                    r.add("cpu_us_per_request_per_proxy", per_proxy);
                }
            }
        }
    }
    r.set("errors_mesh", errors[Via::Mesh as usize]);
    r.set("errors_direct", errors[Via::Direct as usize]);
    Ok(())
}

/// iperf3, one stream up then one down, per path; nginx is gone by now.
fn throughput(r: &mut Record, b: &Bench) -> anyhow::Result<()> {
    let _servers = [
        iperf3::server(&b.server, Via::Mesh.target())?,
        iperf3::server(&b.server, Via::Direct.target())?,
    ];
    for round in 0..b.o.rounds {
        for via in Via::order(round) {
            let (mut cpu_total, mut bytes) = (0.0, 0u64);
            for (test, reverse) in [("iperf3_up", false), ("iperf3_down", true)] {
                let (t, cpu) = iperf3::retrying(iperf3::ATTEMPTS, iperf3::BACKOFF, || {
                    cpu_over(&b.z, || {
                        iperf3::run(&b.client, via.target(), b.o.iperf3_seconds, reverse)
                    })
                })?;
                r.sample_with_cpu(
                    json!({"round": round, "path": via.name(), "test": test, "gbps": t.gbps(),
                        "bytes": t.bytes, "seconds": t.seconds, "retransmits": t.retransmits}),
                    &cpu,
                );
                r.add(&format!("{test}_gbps_{}", via.name()), t.gbps());
                cpu_total += cpu.iter().map(|(_, s)| s).sum::<f64>();
                bytes += t.bytes;
            }
            if via == Via::Mesh {
                r.add("cpu_core_s_per_gb", cpu_total / (bytes.max(1) as f64 / 1e9));
            }
        }
    }
    Ok(())
}

fn print_summary(r: &Record, o: &Opts, proxies: &str) {
    println!(
        "mesh bench: client@node-a -> server@node-b (nginx 1 worker, small 200; iperf3) through \
         {proxies} ({} worker threads each) vs direct (port {BENCH_DIRECT_PORT}, not captured); {} pods; \
         {} rounds interleaved, wrk {} s, iperf3 {} s; medians",
        o.workers, o.pods, o.rounds, o.wrk_seconds, o.iperf3_seconds
    );
    let labels = [
        ("wrk max rate, 1 connection (-t1 -c1)", "req/s", ">= 0.65"),
        (
            "wrk max rate, 64 connections (-t2 -c64)",
            "req/s",
            ">= 0.55",
        ),
        (
            "iperf3 one stream up (client -> server)",
            "Gbit/s",
            ">= 0.50",
        ),
        ("iperf3 one stream down (-R)", "Gbit/s", ">= 0.50"),
    ];
    for ((test, figure), (label, unit, target)) in RATIOS.iter().zip(labels) {
        let median = |path: &str| r.median(&format!("{test}_{figure}_{path}"));
        report(label, unit, median("mesh"), median("direct"), Some(target));
    }
    let rate = r.median("wrk_paced_rps_direct");
    for (q, target) in [
        ("p50", "<= +0.25 ms"),
        ("p99", "<= 0.7x Istio's +0.65 / +0.96 ms"),
    ] {
        let (m, d) = (
            r.median(&format!("paced_{q}_ms_mesh")),
            r.median(&format!("paced_{q}_ms_direct")),
        );
        println!(
            "{:<44} mesh {m:>12.3} ms       direct {d:>12.3} ms       added {:+.3} ms  (target {target})",
            format!("{q} at ~{rate:.0} req/s (paced, {PACED_CONNECTIONS} conns)"),
            m - d
        );
    }
    println!(
        "{:<44} {:.1} us per request per proxy (node-a {:.1}, node-b {:.1})  (target <= 0.7x Istio's: ~10 / 19.4 us)",
        "CPU, wrk 64 connections",
        r.median("cpu_us_per_request_per_proxy"),
        r.median("cpu_us_per_request_node_a"),
        r.median("cpu_us_per_request_node_b"),
    );
    println!(
        "{:<44} {:.2} core-s per GB, both proxies  (target <= 0.7x Istio's: ~1.25 / 1.6 core-s)",
        "CPU, iperf3 up and down",
        r.median("cpu_core_s_per_gb")
    );
    let field = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    for node in ["node_a", "node_b"] {
        println!(
            "{:<44} idle {:.1} MB, after load {:.1} MB, peak {:.1} MB  (targets <= 8 / <= 12 / <= 20 MB)",
            format!(
                "ztunnel {} RSS ({} pods in mesh)",
                node.replace('_', "-"),
                o.pods
            ),
            field(&format!("rss_idle_mb_{node}")),
            field(&format!("rss_after_load_mb_{node}")),
            field(&format!("rss_peak_mb_{node}")),
        );
    }
    let restarted = r.get("ztunnel_restarted") == Some(&Value::Bool(true));
    println!(
        "wrk errors and non-2xx answers: mesh {}, direct {}{}",
        field("errors_mesh"),
        field("errors_direct"),
        if restarted {
            "; A ZTUNNEL RESTARTED DURING THE RUN"
        } else {
            ""
        }
    );
}

/// Each figure of Ambit's run beside Istio's from the same run, and the multiple DESIGN.md and
/// issue 15 set as the target.
fn print_against_istio(ambit: &Record, istio: &Record) {
    let field = |r: &Record, k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let median = |r: &Record, k: &str| r.median(k);
    let rows: [(&str, f64, f64, &str); 10] = [
        (
            "wrk 1 connection, mesh / direct",
            field(ambit, "wrk_c1_ratio"),
            field(istio, "wrk_c1_ratio"),
            ">= 1.3",
        ),
        (
            "wrk 64 connections, mesh / direct",
            field(ambit, "wrk_c64_ratio"),
            field(istio, "wrk_c64_ratio"),
            ">= 1.3",
        ),
        (
            "iperf3 one stream up, mesh / direct",
            field(ambit, "iperf3_up_ratio"),
            field(istio, "iperf3_up_ratio"),
            ">= 1.4",
        ),
        (
            "iperf3 one stream down, mesh / direct",
            field(ambit, "iperf3_down_ratio"),
            field(istio, "iperf3_down_ratio"),
            ">= 1.4",
        ),
        (
            "added p50 at ~1k req/s, ms",
            field(ambit, "paced_p50_added_ms"),
            field(istio, "paced_p50_added_ms"),
            "<= 0.7",
        ),
        (
            "added p99 at ~1k req/s, ms",
            field(ambit, "paced_p99_added_ms"),
            field(istio, "paced_p99_added_ms"),
            "<= 0.7",
        ),
        (
            "CPU us per request per proxy, 64 conns",
            median(ambit, "cpu_us_per_request_per_proxy"),
            median(istio, "cpu_us_per_request_per_proxy"),
            "<= 0.7",
        ),
        (
            "CPU core-s per GB, both proxies",
            median(ambit, "cpu_core_s_per_gb"),
            median(istio, "cpu_core_s_per_gb"),
            "<= 0.7",
        ),
        (
            "RSS idle, node-a, MB",
            field(ambit, "rss_idle_mb_node_a"),
            field(istio, "rss_idle_mb_node_a"),
            "",
        ),
        (
            "RSS peak, node-a, MB",
            field(ambit, "rss_peak_mb_node_a"),
            field(istio, "rss_peak_mb_node_a"),
            "",
        ),
    ];
    println!("same run, Ambit against Istio's ztunnel:");
    for (label, a, i, target) in rows {
        let target = if target.is_empty() {
            String::new()
        } else {
            format!("  (target {target})")
        };
        println!(
            "{label:<44} Ambit {a:>9.2}   Istio {i:>9.2}   Ambit / Istio {:.2}{target}",
            a / i
        );
    }
}
