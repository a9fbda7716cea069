//! The L4 data path end to end, set up as DESIGN.md's reference figures for Istio's ztunnel
//! were measured: a client pod on node-a and a server pod on node-b, each captured by its
//! node's ztunnel, against the same two pods on a port that bypasses capture (direct), in one
//! run, interleaved, medians, as ratios. Debian's tools on both ends: nginx with one worker
//! answering a small 200, then iperf3, in the server pod; wrk and iperf3 in the client pod.
//! Each ztunnel's CPU and memory come from `/proc`, with `--pods` pods in the mesh.
//!
//! Needs root, the tools (`benches/tools.sh` installs them) and release binaries:
//! `cargo build --release --bins && cargo bench -p ambit-benches --bench mesh [-- --rounds 5
//! --seconds 15 --pods 100 --workers 2 --istio <binary> --relay --json]`. `--seconds` sets every run's
//! length (default: 15 s for wrk, 10 s for iperf3). `--istio` adds a path carried by Istio's
//! ztunnel ([`istio`]), and `--relay` one carried by a pair of plain TCP relays, the floor a
//! user-space proxy cannot go below ([`relay`]); each is interleaved with the others in every
//! round, and its figures set beside Ambit's.

#[path = "mesh/istio.rs"]
mod istio;
#[path = "mesh/relay.rs"]
mod relay;
#[path = "mesh/summary.rs"]
mod summary;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ambit_benches::Args;
use ambit_benches::iperf3;
use ambit_benches::local::{BenchMesh, running_as_root};
use ambit_benches::procfs::memory_mb;
use ambit_benches::record::{Record, cpu_over};
use ambit_benches::tools::{self, wrk, wrk_script};
use ambit_cli::local::{BENCH_DIRECT_PORT, BENCH_MESH_PORT, LocalMesh};
use ambit_testbed::Netns;
use serde_json::json;

const NAMESPACE: &str = "bench";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
/// The pods Istio's ztunnels carry (`--istio`): on the same nodes, left out of Ambit's mesh.
const ISTIO_NAMESPACE: &str = "bench-istio";
const ISTIO_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const ISTIO_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
/// The pods the plain relays carry (`--relay`), also left out of Ambit's mesh.
const RELAY_NAMESPACE: &str = "bench-relay";
const RELAY_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const RELAY_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 4);
/// The paced runs: 10 connections, each waiting 10 ms after every answer: ~1k req/s.
const PACED_CONNECTIONS: usize = 10;
const PACED_DELAY_MS: u32 = 10;

/// How a run's connections reach the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Ambit's pods on the port that bypasses capture: every ratio's baseline.
    Direct,
    /// Ambit's pods through Ambit's ztunnels.
    Mesh,
    /// Istio's pods through Istio's ztunnels.
    Istio,
    /// The relay pods through two plain TCP relays.
    Relay,
}

/// The paths there are, for arrays indexed by `Via as usize`.
const PATHS: usize = 4;

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Mesh => "mesh",
            Via::Istio => "istio",
            Via::Relay => "relay",
        }
    }

    /// The name a proxied path's figures take in its own record, so that Ambit's and Istio's
    /// records read alike: `mesh` beside `direct`.
    fn key(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Mesh | Via::Istio | Via::Relay => "mesh",
        }
    }

    fn target(self) -> SocketAddr {
        match self {
            Via::Direct => SocketAddr::from((SERVER_IP, BENCH_DIRECT_PORT)),
            Via::Mesh => SocketAddr::from((SERVER_IP, BENCH_MESH_PORT)),
            Via::Istio => SocketAddr::from((ISTIO_SERVER_IP, BENCH_MESH_PORT)),
            Via::Relay => SocketAddr::from((RELAY_SERVER_IP, BENCH_MESH_PORT)),
        }
    }

    /// `paths` turned by one each round, so that no path always runs first, on a warmer or a
    /// colder machine (with two paths: direct first in even rounds).
    fn order(round: usize, paths: &[Via]) -> Vec<Via> {
        let mut order = paths.to_vec();
        order.rotate_left(round % paths.len().max(1));
        order
    }
}

struct Opts {
    rounds: usize,
    wrk_seconds: u64,
    iperf3_seconds: u64,
    pods: usize,
    workers: usize,
    istio: Option<PathBuf>,
    relay: bool,
    json: bool,
}

fn opts() -> anyhow::Result<Opts> {
    let args = Args::from_env();
    let seconds: Option<u64> = args.text("--seconds").and_then(|s| s.parse().ok());
    let istio = args.text("--istio").map(PathBuf::from);
    if let Some(binary) = &istio {
        // Refused now, not after the mesh is up and other runs have taken minutes.
        let executable = std::fs::metadata(binary)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        // cargo runs a bench in its package's directory, not where cargo was started.
        let relative = if binary.is_relative() {
            " (a relative path is taken from benches/, where cargo runs the bench)"
        } else {
            ""
        };
        anyhow::ensure!(
            executable,
            "--istio {}: not an executable file{relative}; build Istio's ztunnel with \
             `bash benches/istio-ztunnel.sh` and pass the absolute path it prints",
            binary.display()
        );
    }
    Ok(Opts {
        rounds: args.value("--rounds", 5).max(1),
        wrk_seconds: seconds.unwrap_or(15).max(1),
        iperf3_seconds: seconds.unwrap_or(10).max(1),
        pods: args.value("--pods", 100).max(2),
        workers: args.value("--workers", 2).max(1),
        istio,
        relay: args.flag("--relay"),
        json: args.flag("--json"),
    })
}

/// Two nodes; client on node-a, server on node-b, the rest idle pods spread over both, all in
/// Ambit's mesh. With `istio` and `relay`, a second (third) client and server in a namespace
/// the mesh leaves out, for Istio's ztunnels (the relays) to carry.
fn mesh_file(pods: usize, istio: bool, relay: bool) -> String {
    let outside = [
        (istio, ISTIO_NAMESPACE, ISTIO_CLIENT_IP, ISTIO_SERVER_IP),
        (relay, RELAY_NAMESPACE, RELAY_CLIENT_IP, RELAY_SERVER_IP),
    ];
    let mut y = format!(
        "trustDomain: cluster.local\n\
         nodes:\n  - {{name: node-a, bootstrapToken: bench-a}}\n  - {{name: node-b, bootstrapToken: bench-b}}\n\
         namespaces:\n  - name: {NAMESPACE}\n    labels: {{ambit.io/dataplane-mode: ambient}}\n"
    );
    for (_, namespace, ..) in outside.iter().filter(|o| o.0) {
        y.push_str(&format!("  - name: {namespace}\n    labels: {{}}\n"));
    }
    y.push_str(&format!(
        "pods:\n\
         \x20 - {{name: client, namespace: {NAMESPACE}, node: node-a, serviceAccount: client, ipv4: {CLIENT_IP}, ipv6: \"fd00:10:244:1::2\"}}\n\
         \x20 - {{name: server, namespace: {NAMESPACE}, node: node-b, serviceAccount: server, ipv4: {SERVER_IP}, ipv6: \"fd00:10:244:2::2\", ports: [{BENCH_MESH_PORT}]}}\n",
    ));
    for (_, namespace, client, server) in outside.iter().filter(|o| o.0) {
        let host = |ip: &Ipv4Addr| ip.octets()[3];
        y.push_str(&format!(
            "\x20 - {{name: client, namespace: {namespace}, node: node-a, serviceAccount: client, ipv4: {client}, ipv6: \"fd00:10:244:1::{:x}\"}}\n\
             \x20 - {{name: server, namespace: {namespace}, node: node-b, serviceAccount: server, ipv4: {server}, ipv6: \"fd00:10:244:2::{:x}\"}}\n",
            host(client),
            host(server),
        ));
    }
    for i in 0..pods.saturating_sub(2) {
        let node = 1 + i % 2;
        let host = 10 + i / 2;
        y.push_str(&format!(
            "  - {{name: idle-{i}, namespace: {NAMESPACE}, node: node-{}, serviceAccount: idle, ipv4: 10.244.{node}.{host}, ipv6: \"fd00:10:244:{node}::{host:x}\"}}\n",
            if node == 1 { "a" } else { "b" }
        ));
    }
    y
}

/// Sends the connections `client` makes to `server`'s bench port to `port` on `client` itself
/// (the client-side proxy), as the capture of a mesh does.
fn redirect(client: &Netns, server: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let server = server.to_string();
    let (bench_port, port) = (BENCH_MESH_PORT.to_string(), port.to_string());
    let out = client.output(Command::new("iptables").args([
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &server,
        "--dport",
        &bench_port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]))?;
    anyhow::ensure!(
        out.status.success(),
        "iptables in {}: {}",
        client.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if !running_as_root("mesh") {
        return Ok(());
    }
    let o = opts()?;
    tools::ensure_installed()?;
    let bench = BenchMesh::up(
        "mesh",
        &mesh_file(o.pods, o.istio.is_some(), o.relay),
        false,
        o.workers,
    )?;
    let result = measure(&bench.mesh, &bench.dir, &o);
    let down = bench.down();
    let Records {
        mut ambit,
        istio,
        relay,
    } = result?;
    down?;
    summary::print(&ambit, &o, summary::Proxies::Ambit);
    if let Some(istio) = &istio {
        summary::print(istio, &o, summary::Proxies::Istio);
    }
    if let Some(relay) = &relay {
        summary::print(relay, &o, summary::Proxies::Relay);
    }
    summary::compare(&ambit, istio.as_ref(), relay.as_ref());
    for (key, record) in [("istio", istio), ("relay", relay)] {
        if let Some(record) = record {
            ambit.set(key, record.to_json());
        }
    }
    if o.json {
        println!("{}", ambit.to_json());
    }
    Ok(())
}

/// A proxied path: the pods it runs between, the proxies that carry it, and its figures (each
/// beside the direct path's, which every record shares).
struct Proxied {
    via: Via,
    client: Netns,
    server: Netns,
    z: Vec<(String, u32)>,
    record: Record,
}

/// What every part of the run uses: Ambit's path first, then Istio's when measured.
struct Bench<'a> {
    paths: Vec<Proxied>,
    dir: &'a Path,
    o: &'a Opts,
}

impl Bench<'_> {
    /// Every path, in the order of the first round.
    fn vias(&self) -> Vec<Via> {
        let mut vias = vec![Via::Direct];
        vias.extend(self.paths.iter().map(|p| p.via));
        vias
    }

    /// The pod a run of `via` starts from, and the proxies whose CPU it counts (Ambit's for
    /// direct, which crosses none).
    fn leg(&self, via: Via) -> (&Netns, &[(String, u32)]) {
        let path = match via {
            Via::Direct => &self.paths[0],
            _ => self.proxied(via),
        };
        (&path.client, &path.z)
    }

    fn proxied(&self, via: Via) -> &Proxied {
        self.paths
            .iter()
            .find(|p| p.via == via)
            .expect("a path is run only when measured")
    }

    /// The records a run of `via` goes to: its own, or every one for direct.
    fn records(&mut self, via: Via) -> impl Iterator<Item = &mut Record> {
        self.paths
            .iter_mut()
            .filter(move |p| via == Via::Direct || p.via == via)
            .map(|p| &mut p.record)
    }
}

/// One record per path measured: Ambit's, and Istio's and the relays' when asked for.
struct Records {
    ambit: Record,
    istio: Option<Record>,
    relay: Option<Record>,
}

/// Every measure, on Ambit's path and on the others asked for: one record each.
fn measure(mesh: &LocalMesh, dir: &Path, o: &Opts) -> anyhow::Result<Records> {
    let z = mesh.state().nodes.into_iter().map(|n| match n.pid {
        Some(pid) => Ok((n.name.replace('-', "_"), pid)),
        None => Err(anyhow::anyhow!("the ztunnel of {} is not running", n.name)),
    });
    let pod_netns = |namespace, name| -> anyhow::Result<Netns> {
        Ok(mesh.pod(namespace, name)?.netns().clone())
    };
    let mut paths = vec![Proxied {
        via: Via::Mesh,
        client: pod_netns(NAMESPACE, "client")?,
        server: pod_netns(NAMESPACE, "server")?,
        z: z.collect::<anyhow::Result<_>>()?,
        record: Record::default(),
    }];
    let mut istio = None;
    if let Some(binary) = &o.istio {
        let (client, server) = (
            pod_netns(ISTIO_NAMESPACE, "client")?,
            pod_netns(ISTIO_NAMESPACE, "server")?,
        );
        let pod = |netns, name, ip, node| istio::Pod {
            netns,
            namespace: ISTIO_NAMESPACE,
            name,
            service_account: name,
            ip,
            node,
        };
        let c = pod(&client, "client", ISTIO_CLIENT_IP, "node_a");
        let s = pod(&server, "server", ISTIO_SERVER_IP, "node_b");
        let proxies = istio::IstioZtunnels::start(binary, dir, o.workers, &c, &s)?;
        paths.push(Proxied {
            via: Via::Istio,
            z: proxies.pids(&c, &s),
            client: client.clone(),
            server: server.clone(),
            record: Record::default(),
        });
        istio = Some(proxies);
    }
    let mut relays = None;
    if o.relay {
        let (client, server) = (
            pod_netns(RELAY_NAMESPACE, "client")?,
            pod_netns(RELAY_NAMESPACE, "server")?,
        );
        let started =
            relay::Relays::start(dir, (&client, RELAY_CLIENT_IP), (&server, RELAY_SERVER_IP))?;
        paths.push(Proxied {
            via: Via::Relay,
            z: started.pids(),
            client,
            server,
            record: Record::default(),
        });
        relays = Some(started);
    }
    let mut b = Bench { paths, dir, o };
    run(&mut b)?;
    let now: Vec<Option<u32>> = mesh.state().nodes.iter().map(|n| n.pid).collect();
    let mut records = Records {
        ambit: Record::default(),
        istio: None,
        relay: None,
    };
    for mut path in b.paths {
        match path.via {
            Via::Mesh => {
                let restarted = path
                    .z
                    .iter()
                    .zip(&now)
                    .any(|((_, pid), n)| *n != Some(*pid));
                path.record.set("ztunnel_restarted", restarted);
                records.ambit = path.record;
            }
            Via::Istio => {
                let exited = istio.as_mut().is_some_and(|p| p.exited());
                path.record.set("ztunnel_restarted", exited);
                records.istio = Some(path.record);
            }
            Via::Relay => {
                let exited = relays.as_mut().is_some_and(|r| r.exited());
                path.record.set("ztunnel_restarted", exited);
                records.relay = Some(path.record);
            }
            Via::Direct => unreachable!("direct is no proxied path"),
        }
    }
    Ok(records)
}

/// Every measure, each round running every path in turn.
fn run(b: &mut Bench) -> anyhow::Result<()> {
    let o = b.o;
    for p in &mut b.paths {
        let r = &mut p.record;
        r.set("rounds", o.rounds);
        r.set("wrk_seconds", o.wrk_seconds);
        r.set("iperf3_seconds", o.iperf3_seconds);
        r.set("pods", o.pods);
        r.set("workers", o.workers);
    }
    // Let the ztunnels settle after taking their config and capturing the pods.
    std::thread::sleep(Duration::from_secs(3));
    for p in &mut b.paths {
        for (node, pid) in &p.z {
            p.record
                .set(&format!("rss_idle_mb_{node}"), memory_mb(*pid).0);
        }
    }
    http(b)?;
    throughput(b)?;
    // What the proxies keep once the load is over (buffers, pools), and their high-water mark.
    std::thread::sleep(Duration::from_secs(3));
    for p in &mut b.paths {
        let r = &mut p.record;
        for (node, pid) in &p.z {
            let (rss, hwm) = memory_mb(*pid);
            r.set(&format!("rss_after_load_mb_{node}"), rss);
            r.set(&format!("rss_peak_mb_{node}"), hwm);
        }
        for (test, figure) in RATIOS {
            let median = |path: &str| r.median(&format!("{test}_{figure}_{path}"));
            let ratio = median("mesh") / median("direct");
            r.set(&format!("{test}_ratio"), ratio);
        }
        for q in ["p50", "p99"] {
            let median = |path: &str| r.median(&format!("paced_{q}_ms_{path}"));
            let added = median("mesh") - median("direct");
            r.set(&format!("paced_{q}_added_ms"), added);
        }
    }
    Ok(())
}

/// The figures reported as mesh / direct: test and figure, as in the JSON keys.
const RATIOS: [(&str, &str); 4] = [
    ("wrk_c1", "rps"),
    ("wrk_c64", "rps"),
    ("iperf3_up", "gbps"),
    ("iperf3_down", "gbps"),
];

/// wrk against nginx: 1 and 64 connections at full speed, then paced at ~1k req/s.
fn http(b: &mut Bench) -> anyhow::Result<()> {
    // One nginx per server pod, each in a directory of its own (its pid and temporary files).
    let mut nginx = Vec::new();
    for p in &b.paths {
        let dir = b.dir.join(format!("nginx-{}", p.via.name()));
        std::fs::create_dir_all(&dir)?;
        let mut listen = vec![p.via.target()];
        if p.via == Via::Mesh {
            listen.push(Via::Direct.target());
        }
        nginx.push(tools::nginx_ok(&p.server, &dir, &listen)?);
    }
    let full = wrk_script(b.dir, None)?;
    let paced = wrk_script(b.dir, Some(PACED_DELAY_MS))?;
    let url = |via: Via| format!("http://{}/", via.target());
    let vias = b.vias();
    // A proxied path's first connections also set up its HBONE pool; keep that out of round 0.
    for &via in &vias {
        wrk(b.leg(via).0, &full, &url(via), 64, 1, &mut || {})?;
    }
    let mut errors = [0u64; PATHS];
    for round in 0..b.o.rounds {
        for via in Via::order(round, &vias) {
            for (test, connections, script) in [
                ("wrk_c1", 1, &full),
                ("wrk_c64", 64, &full),
                ("wrk_paced", PACED_CONNECTIONS, &paced),
            ] {
                let (client, z) = b.leg(via);
                let (load, cpu) = cpu_over(z, || {
                    wrk(
                        client,
                        script,
                        &url(via),
                        connections,
                        b.o.wrk_seconds,
                        &mut || {},
                    )
                })?;
                errors[via as usize] += load.errors + load.non_2xx;
                let sample = json!({"round": round, "path": via.name(), "test": test,
                    "connections": connections, "rps": load.rps(), "requests": load.ok,
                    "seconds": load.seconds, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                    "max_ms": load.max_ms, "errors": load.errors, "non_2xx": load.non_2xx});
                let path = via.key();
                for r in b.records(via) {
                    r.sample_with_cpu(sample.clone(), &cpu);
                    r.add(&format!("{test}_rps_{path}"), load.rps());
                    if test == "wrk_paced" {
                        r.add(&format!("paced_p50_ms_{path}"), load.p50_ms);
                        r.add(&format!("paced_p99_ms_{path}"), load.p99_ms);
                    }
                    if test == "wrk_c64" && via != Via::Direct {
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
    }
    for p in &mut b.paths {
        p.record.set("errors_mesh", errors[p.via as usize]);
        p.record.set("errors_direct", errors[Via::Direct as usize]);
    }
    drop(nginx);
    Ok(())
}

/// iperf3, one stream up then one down, per path; nginx is gone by now.
fn throughput(b: &mut Bench) -> anyhow::Result<()> {
    let mut servers = Vec::new();
    for p in &b.paths {
        servers.push(iperf3::server(&p.server, p.via.target())?);
        if p.via == Via::Mesh {
            servers.push(iperf3::server(&p.server, Via::Direct.target())?);
        }
    }
    let vias = b.vias();
    for round in 0..b.o.rounds {
        for via in Via::order(round, &vias) {
            let (mut cpu_total, mut bytes) = (0.0, 0u64);
            for (test, reverse) in [("iperf3_up", false), ("iperf3_down", true)] {
                let (client, z) = b.leg(via);
                let (t, cpu) = iperf3::retrying(iperf3::ATTEMPTS, iperf3::BACKOFF, || {
                    cpu_over(z, || {
                        iperf3::run(client, via.target(), b.o.iperf3_seconds, reverse)
                    })
                })?;
                let sample = json!({"round": round, "path": via.name(), "test": test,
                    "gbps": t.gbps(), "bytes": t.bytes, "seconds": t.seconds,
                    "retransmits": t.retransmits});
                for r in b.records(via) {
                    r.sample_with_cpu(sample.clone(), &cpu);
                    r.add(&format!("{test}_gbps_{}", via.key()), t.gbps());
                }
                cpu_total += cpu.iter().map(|(_, s)| s).sum::<f64>();
                bytes += t.bytes;
            }
            if via != Via::Direct {
                for r in b.records(via) {
                    r.add("cpu_core_s_per_gb", cpu_total / (bytes.max(1) as f64 / 1e9));
                }
            }
        }
    }
    drop(servers);
    Ok(())
}
