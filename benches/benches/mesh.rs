//! The data path end to end, on a local mesh of network namespaces: a client pod on node-a
//! and a server pod on node-b, each captured by its node's ztunnel, against the same two pods
//! talking directly (a port that bypasses capture), in one run, interleaved, as ratios; plus
//! each ztunnel's CPU and memory with `--pods` pods on the nodes (100 by default).
//!
//! Needs root and release binaries: `cargo build --release --bins && cargo bench -p
//! ambit-benches --bench mesh [-- --rounds 3 --seconds 5 --pods 100 --workers 2]`.

use std::process::{Command, Stdio};
use std::time::Duration;

use ambit_benches::procfs::{cpu_seconds, memory_mb};
use ambit_benches::{Args, median, report};
use ambit_controller::local::apps::LoadResult;
use ambit_controller::local::{
    BENCH_DIRECT_PORT, BENCH_MESH_PORT, Binaries, LocalMesh, Options, load,
};

struct Opts {
    rounds: usize,
    seconds: u64,
    pods: usize,
    megabytes: u64,
    workers: usize,
}

fn opts() -> Opts {
    let args = Args::from_env();
    Opts {
        rounds: args.value("--rounds", 3).max(1),
        seconds: args.value("--seconds", 5).max(1),
        pods: args.value("--pods", 100).max(2),
        megabytes: args.value("--megabytes", 1024),
        workers: args.value("--workers", 2).max(1),
    }
}

/// Two nodes; client on node-a, server on node-b, the rest idle pods spread over both.
fn mesh_file(pods: usize) -> String {
    let mut y = String::from(
        "trustDomain: cluster.local\n\
         nodes:\n  - {name: node-a, bootstrapToken: bench-a}\n  - {name: node-b, bootstrapToken: bench-b}\n\
         namespaces:\n  - name: bench\n    labels: {ambit.io/dataplane-mode: ambient}\n\
         pods:\n\
         \x20 - {name: client, namespace: bench, node: node-a, serviceAccount: client, ipv4: 10.244.1.2, ipv6: \"fd00:10:244:1::2\"}\n\
         \x20 - {name: server, namespace: bench, node: node-b, serviceAccount: server, ipv4: 10.244.2.2, ipv6: \"fd00:10:244:2::2\", ports: [8080], app: http-echo}\n",
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
    if !nix_root() {
        eprintln!("mesh bench: skipped, it builds network namespaces and needs root");
        return Ok(());
    }
    let o = opts();
    let binaries = Binaries::locate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let work_dir = std::env::temp_dir().join(format!("ambit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let file = work_dir.join("bench-mesh.yaml");
    std::fs::write(&file, mesh_file(o.pods))?;
    let mesh = runtime.block_on(LocalMesh::up(
        Options {
            mesh_file: Some(file),
            work_dir: work_dir.join("run"),
            binaries: binaries.clone(),
            start_apps: true,
            record_current: false,
            ztunnel_workers: Some(o.workers),
        },
        &|step| eprintln!("mesh bench: {step}"),
    ))?;
    let pids: Vec<u32> = mesh.state().nodes.iter().filter_map(|n| n.pid).collect();
    let client = mesh.pod("bench", "client")?.netns().clone();
    let server_pod = mesh.pod("bench", "server")?;
    let server_ip = server_pod.ipv4();
    let server = server_pod.netns().clone();
    std::thread::sleep(Duration::from_secs(1));
    let idle: Vec<(f64, f64)> = pids.iter().map(|p| memory_mb(*p)).collect();

    let spawn_server = |kind: &str| {
        server.spawn(
            Command::new(&binaries.ambit)
                .args(["app", "serve", "--kind", kind, "--name", "server"])
                .args(["--port", &BENCH_MESH_PORT.to_string()])
                .args(["--port", &BENCH_DIRECT_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let url = |port: u16| format!("http://{server_ip}:{port}/");
    let secs = Duration::from_secs(o.seconds);
    let port = |mesh: bool| {
        if mesh {
            BENCH_MESH_PORT
        } else {
            BENCH_DIRECT_PORT
        }
    };

    let http = spawn_server("http-echo")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut rps1 = (vec![], vec![]);
    let mut rps64 = (vec![], vec![]);
    let mut paced = (vec![], vec![]);
    let mut cpu_per_request = vec![];
    for round in 0..o.rounds {
        for via_mesh in [round % 2 == 1, round % 2 == 0] {
            let run = |c: usize, rate: Option<u32>| -> anyhow::Result<LoadResult> {
                Ok(load::http_load(
                    &binaries.ambit,
                    &client,
                    &url(port(via_mesh)),
                    c,
                    secs,
                    rate,
                )?)
            };
            let one = run(1, None)?;
            let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
            let many = run(64, None)?;
            let cpu_after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
            let slow = run(10, Some(1000))?;
            let (r1, r64, rp) = if via_mesh {
                cpu_per_request.push(
                    (cpu_after - cpu_before) / pids.len() as f64 / many.requests.max(1) as f64
                        * 1e6,
                );
                (&mut rps1.0, &mut rps64.0, &mut paced.0)
            } else {
                (&mut rps1.1, &mut rps64.1, &mut paced.1)
            };
            r1.push(one.rps);
            r64.push(many.rps);
            rp.push((slow.p50_ms, slow.p99_ms));
        }
    }
    drop(http);
    let sink = spawn_server("sink")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut gbps = (vec![], vec![]);
    let mut cpu_per_gb = vec![];
    for round in 0..o.rounds {
        for via_mesh in [round % 2 == 1, round % 2 == 0] {
            let target = std::net::SocketAddr::from((server_ip, port(via_mesh)));
            let before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
            let r = load::blast(&binaries.ambit, &client, target, o.megabytes)?;
            let after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
            if via_mesh {
                gbps.0.push(r.gbps);
                cpu_per_gb.push((after - before) / (r.bytes as f64 / 1e9));
            } else {
                gbps.1.push(r.gbps);
            }
        }
    }
    drop(sink);
    let peak: Vec<(f64, f64)> = pids.iter().map(|p| memory_mb(*p)).collect();

    println!(
        "mesh bench: client@node-a -> server@node-b through two ztunnels ({} worker threads each) vs direct; {} pods; {} rounds of {}s; medians",
        o.workers, o.pods, o.rounds, o.seconds
    );
    report(
        "HTTP max rate, 1 connection",
        "req/s",
        median(rps1.0),
        median(rps1.1),
        Some(">= 0.65"),
    );
    report(
        "HTTP max rate, 64 connections",
        "req/s",
        median(rps64.0),
        median(rps64.1),
        Some(">= 0.55"),
    );
    report(
        "one stream throughput",
        "Gbit/s",
        median(gbps.0),
        median(gbps.1),
        Some(">= 0.50"),
    );
    let p50 = |v: &[(f64, f64)]| median(v.iter().map(|p| p.0).collect());
    let p99 = |v: &[(f64, f64)]| median(v.iter().map(|p| p.1).collect());
    let (mp, dp) = (p50(&paced.0), p50(&paced.1));
    println!(
        "{:<44} mesh {mp:>12.3} ms       direct {dp:>12.3} ms       added {:+.3} ms  (target <= +0.25 ms)",
        "p50 at 1000 req/s (paced, 10 connections)",
        mp - dp
    );
    let (mp, dp) = (p99(&paced.0), p99(&paced.1));
    println!(
        "{:<44} mesh {mp:>12.3} ms       direct {dp:>12.3} ms       added {:+.3} ms",
        "p99 at 1000 req/s (paced, 10 connections)",
        mp - dp
    );
    println!(
        "{:<44} {:.1} us per request per proxy  (target <= 7 us)",
        "CPU, 64 connections",
        median(cpu_per_request)
    );
    println!(
        "{:<44} {:.2} core-s per GB, both proxies  (target <= 0.9)",
        "CPU, one stream",
        median(cpu_per_gb)
    );
    for ((node, (rss, _)), (_, hwm)) in mesh.state().nodes.iter().zip(&idle).zip(&peak) {
        println!(
            "{:<44} idle {rss:.1} MB, peak {hwm:.1} MB  (targets <= 8 / <= 20 MB)",
            format!("ztunnel {} memory ({} pods in mesh)", node.name, o.pods)
        );
    }
    mesh.down()?;
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}

fn nix_root() -> bool {
    nix::unistd::geteuid().is_root()
}
