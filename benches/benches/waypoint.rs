//! The waypoint (L7) on a local mesh of network namespaces, against the same client and server
//! pods on three other paths, in one run, interleaved, as ratios to direct:
//!
//! - direct: client → server on a port that bypasses capture;
//! - ztunnel: client → a service without a waypoint, through both ztunnels (L4);
//! - waypoint: client → a service with `ambit.io/use-waypoint`: ztunnel → waypoint → ztunnel;
//! - nginx: Debian's nginx as a plain reverse proxy (one worker, keepalive upstream, no TLS) in
//!   the waypoint's namespace, to the server's bypass port: the comparator users know.
//!
//! One server process for every path: ambit's http-echo (HTTP/1.1 and h2c on each port). Load
//! from Debian's `wrk` (HTTP/1.1) and `h2load` (HTTP/2, h2c prior knowledge) in the client pod;
//! CPU and memory of the proxies from `/proc`. Mesh: `benches/meshes/waypoint.yaml`.
//!
//! Needs root, the tools (`benches/tools.sh` installs them) and release binaries:
//! `cargo build --release --bins && cargo bench -p ambit-benches --bench waypoint [-- --rounds 3
//! --seconds 5 --workers 2 --nginx-access-log --json]`.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ambit_benches::local::{BenchMesh, running_as_root};
use ambit_benches::procfs::{anon_rss_mb, cpu_seconds, family_cpu_seconds, memory_mb};
use ambit_benches::tools::{self, Load, h2load, wait_port, wrk, wrk_script};
use ambit_benches::{Args, median, report};
use ambit_cli::local::{BENCH_DIRECT_PORT, Binaries, LocalMesh};
use ambit_testbed::Netns;

const MESH: &str = include_str!("../meshes/waypoint.yaml");
const SERVER_IP: &str = "10.244.2.2";
/// The waypoint's address: nginx runs in its namespace, on the bypass port.
const NGINX_IP: &str = "10.244.1.100";
const PLAIN_VIP: &str = "10.96.1.10";
const L7_VIP: &str = "10.96.1.11";
const L7_H2_VIP: &str = "10.96.1.12";
/// The paced runs: 10 connections, each waiting 10 ms after every answer (wrk's `delay()`).
const PACED_CONNECTIONS: usize = 10;
const PACED_DELAY_MS: u32 = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Direct,
    Ztunnel,
    Waypoint,
    Nginx,
}
const PATHS: [Via; 4] = [Via::Direct, Via::Ztunnel, Via::Waypoint, Via::Nginx];

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Ztunnel => "ztunnel",
            Via::Waypoint => "waypoint",
            Via::Nginx => "nginx",
        }
    }

    fn url(self, h2: bool) -> String {
        match self {
            Via::Direct => format!("http://{SERVER_IP}:{BENCH_DIRECT_PORT}/"),
            Via::Ztunnel => format!("http://{PLAIN_VIP}/"),
            Via::Waypoint => format!("http://{}/", if h2 { L7_H2_VIP } else { L7_VIP }),
            Via::Nginx => format!("http://{NGINX_IP}:{BENCH_DIRECT_PORT}/"),
        }
    }
}

struct Opts {
    rounds: usize,
    seconds: u64,
    workers: usize,
    nginx_access_log: bool,
    json: bool,
}

fn opts() -> Opts {
    let args = Args::from_env();
    Opts {
        rounds: args.value("--rounds", 3).max(1),
        seconds: args.value("--seconds", 5).max(1),
        workers: args.value("--workers", 2).max(1),
        nginx_access_log: args.flag("--nginx-access-log"),
        json: args.flag("--json"),
    }
}

/// The waypoint's memory in MB: idle after start, at ~1k req/s before any peak load (RSS and
/// its anonymous part), and its high-water mark at the end.
#[derive(Debug, Default)]
struct Memory {
    idle: f64,
    fresh: f64,
    fresh_anon: f64,
    peak: f64,
}

/// Medians per figure and path, and everything that went wrong.
#[derive(Default)]
struct Figures {
    values: BTreeMap<String, Vec<f64>>,
    errors: BTreeMap<String, u64>,
}

impl Figures {
    fn add(&mut self, figure: &str, via: Via, value: f64) {
        let key = format!("{figure}.{}", via.name());
        self.values.entry(key).or_default().push(value);
    }

    fn get(&self, figure: &str, via: Via) -> f64 {
        let key = format!("{figure}.{}", via.name());
        self.values
            .get(&key)
            .map_or(f64::NAN, |v| median(v.clone()))
    }

    fn count(&mut self, what: &str, via: Via, load: &Load) {
        let key = format!("{what}.{}", via.name());
        *self.errors.entry(format!("{key}.errors")).or_default() += load.errors;
        *self.errors.entry(format!("{key}.non_2xx")).or_default() += load.non_2xx;
    }
}

/// GET over HTTP/1.0 from the host (the waypoint's relayed metrics port).
fn get(addr: SocketAddr, path: &str) -> String {
    let mut body = String::new();
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        let _ = s.read_to_string(&mut body);
    }
    body
}

fn main() -> anyhow::Result<()> {
    if !running_as_root("waypoint") {
        return Ok(());
    }
    let o = opts();
    tools::ensure_installed()?;
    let bench = BenchMesh::up("waypoint", MESH, false, o.workers)?;
    let result = measure(&bench.mesh, &bench.binaries, &bench.dir, &o);
    bench.down()?;
    result
}

fn measure(mesh: &LocalMesh, binaries: &Binaries, dir: &Path, o: &Opts) -> anyhow::Result<()> {
    let client = mesh.pod("bench", "client")?.netns().clone();
    let server = mesh.pod("bench", "server")?.netns().clone();
    let wp = mesh.waypoint("bench", "waypoint")?;
    let wp_netns = Netns::existing(&wp.netns);
    let wp_pid = mesh
        .waypoint_pid("bench", "waypoint")?
        .ok_or_else(|| anyhow::anyhow!("the waypoint is not running"))?;
    let ztunnels = [
        mesh.ztunnel_pid("node-a")?.unwrap_or(0),
        mesh.ztunnel_pid("node-b")?.unwrap_or(0),
    ];
    let _server = server.spawn(
        Command::new(&binaries.ambit)
            .args(["app", "serve", "--kind", "http-echo", "--name", "server"])
            .args(["--port", "8080", "--port", &BENCH_DIRECT_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    for port in [8080, BENCH_DIRECT_PORT] {
        wait_port(&server, SocketAddr::new(SERVER_IP.parse()?, port))?;
    }
    let report_lua = wrk_script(dir, None)?;
    let paced_lua = wrk_script(dir, Some(PACED_DELAY_MS))?;
    std::thread::sleep(Duration::from_secs(1));
    let mut memory = Memory {
        idle: memory_mb(wp_pid).0,
        ..Memory::default()
    };
    let secs = o.seconds;
    let mut f = Figures::default();
    let cpu = |via: Via, nginx_pid: u32| match via {
        Via::Waypoint => cpu_seconds(wp_pid),
        Via::Nginx => family_cpu_seconds(nginx_pid),
        _ => 0.0,
    };
    let ztunnel_cpu = || ztunnels.iter().map(|p| cpu_seconds(*p)).sum::<f64>();

    for h2 in [false, true] {
        let nginx = tools::nginx(
            &wp_netns,
            dir,
            SocketAddr::new(NGINX_IP.parse()?, BENCH_DIRECT_PORT),
            SocketAddr::new(SERVER_IP.parse()?, BENCH_DIRECT_PORT),
            h2,
            o.nginx_access_log,
        )?;
        let nginx_pid = nginx.id();
        let proto = if h2 { "h2" } else { "h1" };
        if !h2 {
            // Memory at ~1k req/s before the waypoint has seen a peak load.
            let paced = wrk(
                &client,
                &paced_lua,
                &Via::Waypoint.url(false),
                PACED_CONNECTIONS,
                secs,
                &mut || {
                    (memory.fresh, memory.fresh_anon) = (memory_mb(wp_pid).0, anon_rss_mb(wp_pid))
                },
            )?;
            f.count("h1_paced_fresh", Via::Waypoint, &paced);
        }
        for via in PATHS {
            // Warm-up: pools, tunnels and connections everywhere on the path.
            if h2 {
                h2load(&client, &via.url(true), 4, 16, 1)?;
            } else {
                wrk(&client, &report_lua, &via.url(false), 64, 1, &mut || {})?;
            }
        }
        for round in 0..o.rounds {
            for i in 0..PATHS.len() {
                let via = PATHS[(i + round) % PATHS.len()];
                let url = via.url(h2);
                let one = if h2 {
                    h2load(&client, &url, 1, 1, secs)?
                } else {
                    wrk(&client, &report_lua, &url, 1, secs, &mut || {})?
                };
                let (c0, z0) = (cpu(via, nginx_pid), ztunnel_cpu());
                let many = if h2 {
                    h2load(&client, &url, 4, 16, secs)?
                } else {
                    wrk(&client, &report_lua, &url, 64, secs, &mut || {})?
                };
                let (c1, z1) = (cpu(via, nginx_pid), ztunnel_cpu());
                f.add(&format!("{proto}_c1_rps"), via, one.rps());
                f.add(&format!("{proto}_c64_rps"), via, many.rps());
                let per_request = |cpu: f64| cpu / many.ok.max(1) as f64 * 1e6;
                f.add(&format!("{proto}_proxy_cpu_us"), via, per_request(c1 - c0));
                f.add(
                    &format!("{proto}_ztunnel_cpu_us"),
                    via,
                    per_request(z1 - z0) / 2.0,
                );
                f.count(&format!("{proto}_c1"), via, &one);
                f.count(&format!("{proto}_c64"), via, &many);
                if !h2 {
                    let (mut rss, mut anon) = (0.0, 0.0);
                    let paced = wrk(
                        &client,
                        &paced_lua,
                        &url,
                        PACED_CONNECTIONS,
                        secs,
                        &mut || (rss, anon) = (memory_mb(wp_pid).0, anon_rss_mb(wp_pid)),
                    )?;
                    f.add("paced_rps", via, paced.rps());
                    f.add("paced_p50_ms", via, paced.p50_ms);
                    f.add("paced_p99_ms", via, paced.p99_ms);
                    f.add("paced_max_ms", via, paced.max_ms);
                    if via == Via::Waypoint {
                        f.add("paced_rss_mb", via, rss);
                        f.add("paced_anon_mb", via, anon);
                    }
                    f.count("h1_paced", via, &paced);
                }
            }
        }
        nginx.kill()?;
    }
    memory.peak = memory_mb(wp_pid).1;
    let restarted = mesh.waypoint_pid("bench", "waypoint")? != Some(wp_pid);
    print_report(&f, o, &memory);

    // What the waypoint itself says about the requests it answered.
    let metrics = get(wp.metrics, "/metrics");
    let label = |line: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        line.split_once(&key)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or(String::new(), |(v, _)| v.to_string())
    };
    println!("waypoint's istio_requests_total (service, code, flags: count):");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        println!(
            "  {} {} {}: {}",
            label(line, "destination_service"),
            label(line, "response_code"),
            label(line, "response_flags"),
            line.rsplit(' ').next().unwrap_or("")
        );
    }
    // Its log holds an access-log line (JSON) per request: read it as a stream.
    let (mut lines, mut bytes, mut warnings, mut first) = (0u64, 0u64, 0u64, None);
    if let Ok(file) = std::fs::File::open(&wp.log) {
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            lines += 1;
            bytes += line.len() as u64 + 1;
            if !line.starts_with('{') && (line.contains("WARN") || line.contains("ERROR")) {
                warnings += 1;
                first.get_or_insert(line);
            }
        }
    }
    println!(
        "waypoint log: {} lines, {:.1} MB, {} warnings or errors{}{}",
        lines,
        bytes as f64 / 1e6,
        warnings,
        if restarted {
            "; THE WAYPOINT RESTARTED DURING THE RUN"
        } else {
            ""
        },
        first.map(|w| format!("; first: {w}")).unwrap_or_default()
    );
    if o.json {
        let mut json = serde_json::Map::new();
        for key in f.values.keys() {
            json.insert(key.clone(), median(f.values[key].clone()).into());
        }
        for (key, n) in &f.errors {
            json.insert(key.clone(), (*n).into());
        }
        json.insert("waypoint_idle_rss_mb".into(), memory.idle.into());
        json.insert("waypoint_fresh_paced_rss_mb".into(), memory.fresh.into());
        json.insert("waypoint_peak_rss_mb".into(), memory.peak.into());
        println!("{}", serde_json::Value::Object(json));
    }
    Ok(())
}

fn print_report(f: &Figures, o: &Opts, memory: &Memory) {
    println!(
        "waypoint bench: client@node-a -> server@node-b (ambit http-echo); paths: direct (bypass port), \
         ztunnel (both ztunnels, L4), waypoint (ztunnel -> waypoint -> ztunnel), nginx (1 worker in \
         the waypoint's netns, keepalive upstream to the bypass port{}); ztunnels {} workers, \
         waypoint 2; {} rounds of {}s, interleaved; medians; ratios to direct",
        if o.nginx_access_log {
            ", access log on"
        } else {
            ", access log off"
        },
        o.workers,
        o.rounds,
        o.seconds
    );
    let targets = [
        (Via::Ztunnel, ">= 0.65", ">= 0.55"),
        (Via::Waypoint, "", ""),
        (Via::Nginx, "", ""),
    ];
    for (proto, tool, one, many) in [
        ("h1", "HTTP/1.1 (wrk)", "1 conn", "64 conns"),
        (
            "h2",
            "HTTP/2 (h2load)",
            "1 conn x 1 stream",
            "4 conns x 16 streams",
        ),
    ] {
        for (label, figure) in [(one, "c1_rps"), (many, "c64_rps")] {
            for (via, t1, t64) in targets {
                let t = if figure == "c1_rps" { t1 } else { t64 };
                report(
                    &format!("{tool} {label}: {}", via.name()),
                    "req/s",
                    f.get(&format!("{proto}_{figure}"), via),
                    f.get(&format!("{proto}_{figure}"), Via::Direct),
                    (proto == "h1" && !t.is_empty()).then_some(t),
                );
            }
        }
    }
    println!(
        "latency at ~1k req/s (wrk, {PACED_CONNECTIONS} conns each pausing {PACED_DELAY_MS} ms after every answer):"
    );
    let (d50, d99) = (
        f.get("paced_p50_ms", Via::Direct),
        f.get("paced_p99_ms", Via::Direct),
    );
    let (z50, z99) = (
        f.get("paced_p50_ms", Via::Ztunnel),
        f.get("paced_p99_ms", Via::Ztunnel),
    );
    for via in PATHS {
        let (p50, p99) = (f.get("paced_p50_ms", via), f.get("paced_p99_ms", via));
        println!(
            "  {:<9} {:>6.0} req/s  p50 {p50:.3} ms  p99 {p99:.3} ms  max {:.2} ms  added to direct: p50 {:+.3} ms, p99 {:+.3} ms{}",
            via.name(),
            f.get("paced_rps", via),
            f.get("paced_max_ms", via),
            p50 - d50,
            p99 - d99,
            match via {
                Via::Ztunnel => "  (L4 target <= +0.25 ms p50)".to_string(),
                Via::Waypoint => format!(
                    "; waypoint's own (to ztunnel): p50 {:+.3} ms, p99 {:+.3} ms  (target p99 <= +1 ms)",
                    p50 - z50,
                    p99 - z99
                ),
                _ => String::new(),
            }
        );
    }
    for (proto, load) in [("h1", "HTTP/1.1, 64 conns"), ("h2", "HTTP/2, 4x16 streams")] {
        let w = f.get(&format!("{proto}_proxy_cpu_us"), Via::Waypoint);
        let n = f.get(&format!("{proto}_proxy_cpu_us"), Via::Nginx);
        println!(
            "CPU per request, {load}: waypoint {w:.1} us, nginx {n:.1} us, ratio {:.2}  (target <= 2.0; nginx ~19 us in DESIGN); \
             ztunnels per proxy: {:.1} us on the ztunnel path, {:.1} us on the waypoint path",
            w / n,
            f.get(&format!("{proto}_ztunnel_cpu_us"), Via::Ztunnel),
            f.get(&format!("{proto}_ztunnel_cpu_us"), Via::Waypoint),
        );
    }
    println!(
        "waypoint req/s per core, HTTP/1.1 64 conns: {:.0}  (target >= 20000)",
        1e6 / f.get("h1_proxy_cpu_us", Via::Waypoint)
    );
    let rounds = |key: &str| {
        f.values
            .get(key)
            .map(|v| {
                v.iter()
                    .map(|m| format!("{m:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!(
        "waypoint RSS at ~1k req/s: {:.1} MB before any peak load ({:.1} anonymous), {:.1} MB \
         after peaks (rounds: {}; anonymous {})  (target <= 20 MB); idle at start {:.1} MB, peak {:.1} MB",
        memory.fresh,
        memory.fresh_anon,
        f.get("paced_rss_mb", Via::Waypoint),
        rounds("paced_rss_mb.waypoint"),
        rounds("paced_anon_mb.waypoint"),
        memory.idle,
        memory.peak
    );
    let failures: Vec<String> = f
        .errors
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "errors and non-2xx answers: {}",
        if failures.is_empty() {
            "none".to_string()
        } else {
            failures.join(", ")
        }
    );
}
