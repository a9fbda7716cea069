//! Debian's load tools and nginx, run inside a testbed namespace: `wrk` (HTTP/1.1 keep-alive
//! load), `h2load` (HTTP/2, h2c prior knowledge), nginx as a plain reverse proxy (the
//! comparator users know) or as a server answering a small 200 (what the reference figures
//! were measured against). iperf3 is in [`crate::iperf3`]. `benches/tools.sh` installs
//! whichever is missing.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_testbed::{Netns, NetnsChild};

/// Installs wrk, h2load, nginx, iperf3 and bpftrace with apt-get if any is missing
/// (`benches/tools.sh`).
pub fn ensure_installed() -> io::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools.sh");
    if Command::new("sh").arg(&script).status()?.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "wrk, h2load, nginx, iperf3 or bpftrace is missing and {} could not install them",
            script.display()
        )))
    }
}

/// One load run, as wrk or h2load counted it.
#[derive(Debug, Default, Clone)]
pub struct Load {
    /// 2xx answers.
    pub ok: u64,
    pub seconds: f64,
    /// Connect, read, write errors and timeouts (wrk); failed, errored, timed out (h2load).
    pub errors: u64,
    /// Answers that were not 2xx (wrk: not 2xx or 3xx).
    pub non_2xx: u64,
    /// Latencies (wrk only).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Load {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

pub(crate) fn error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Runs a tool in `netns` to its end and returns its stdout; `midway` runs halfway through
/// its `seconds` (to sample a proxy under load).
pub(crate) fn run_tool(
    netns: &Netns,
    cmd: &mut Command,
    seconds: u64,
    midway: &mut dyn FnMut(),
) -> io::Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = netns.spawn(cmd).map_err(error)?;
    std::thread::sleep(Duration::from_millis(seconds * 500));
    midway();
    let out = child.wait_with_output().map_err(error)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(error(format!(
            "{cmd:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(stdout)
}

/// wrk's summary as one JSON line (its `done` hook).
const WRK_REPORT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// Writes the Lua script [`wrk`] needs into `dir`: with `pause_ms`, each connection waits that
/// long after every answer (wrk's `delay()`), which paces the load.
pub fn wrk_script(dir: &Path, pause_ms: Option<u32>) -> io::Result<PathBuf> {
    let (name, text) = match pause_ms {
        Some(ms) => (
            format!("wrk-paced-{ms}.lua"),
            format!("delay = function() return {ms} end\n{WRK_REPORT}"),
        ),
        None => ("wrk.lua".to_string(), WRK_REPORT.to_string()),
    };
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// HTTP/1.1 keep-alive load with wrk (up to 2 threads); `script` from [`wrk_script`].
pub fn wrk(
    netns: &Netns,
    script: &Path,
    url: &str,
    connections: usize,
    seconds: u64,
    midway: &mut dyn FnMut(),
) -> io::Result<Load> {
    let threads = connections.min(2);
    let out = run_tool(
        netns,
        Command::new("wrk")
            .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
            .args(["-d", &format!("{seconds}s"), "-s"])
            .arg(script)
            .arg(url),
        seconds,
        midway,
    )?;
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(line).map_err(error)?;
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let non_2xx = n("status") as u64;
    Ok(Load {
        // wrk counts answers other than 2xx/3xx among its requests, and as status errors.
        ok: (n("requests") as u64).saturating_sub(non_2xx),
        seconds: n("duration_us") / 1e6,
        errors: (n("connect") + n("read") + n("write") + n("timeout")) as u64,
        non_2xx,
        p50_ms: n("p50_us") / 1e3,
        p99_ms: n("p99_us") / 1e3,
        max_ms: n("max_us") / 1e3,
    })
}

/// HTTP/2 load with h2load, h2c prior knowledge: `connections` × `streams` requests at once.
pub fn h2load(
    netns: &Netns,
    url: &str,
    connections: usize,
    streams: usize,
    seconds: u64,
) -> io::Result<Load> {
    let out = run_tool(
        netns,
        Command::new("h2load")
            .args(["-c", &connections.to_string(), "-m", &streams.to_string()])
            .args(["-t", &connections.min(2).to_string()])
            .args(["-D", &seconds.to_string(), url]),
        seconds,
        &mut || {},
    )?;
    Ok(parse_h2load(&out, seconds as f64))
}

/// "finished in 5.00s, 12345.67 req/s, ..."; "requests: 10 total, 10 started, 10 done,
/// 10 succeeded, 0 failed, 0 errored, 0 timeout"; "status codes: 10 2xx, 0 3xx, 0 4xx, 0 5xx".
fn parse_h2load(out: &str, seconds: f64) -> Load {
    let field = |line: &str, name: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(line)).unwrap_or("");
        line.split(',')
            .find(|p| p.trim_end().ends_with(name))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let seconds = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(seconds);
    let two = field("status codes:", "2xx");
    let all: u64 = ["2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|c| field("status codes:", c))
        .sum();
    Load {
        ok: two,
        seconds,
        errors: ["failed", "errored", "timeout"]
            .iter()
            .map(|k| field("requests:", k))
            .sum(),
        non_2xx: all - two,
        ..Load::default()
    }
}

/// nginx as a plain reverse proxy from `listen` to `upstream`: one worker, no access log
/// unless `access_log`, a keepalive pool of HTTP/1.1 connections upstream, keep-alive without
/// a request limit on both sides. With `h2` its port speaks HTTP/2 with prior knowledge
/// instead of HTTP/1.1 (nginx 1.22, Debian 12's, cannot serve both on one cleartext port).
/// Its files go in `dir`; it runs in `netns`, in the foreground, until the handle is dropped
/// or killed (which kills its worker with it).
pub fn nginx(
    netns: &Netns,
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    h2: bool,
    access_log: bool,
) -> io::Result<NetnsChild> {
    let servers = proxy_servers(listen, upstream, h2);
    let name = if h2 { "nginx-h2" } else { "nginx" };
    start_nginx(netns, dir, name, access_log, &servers, &[listen])
}

fn proxy_servers(listen: SocketAddr, upstream: SocketAddr, h2: bool) -> String {
    let http2 = if h2 { " http2" } else { "" };
    format!(
        "  upstream server {{ server {upstream}; keepalive 128; keepalive_requests 1000000; }}\n\
         \x20 server {{\n    listen {listen}{http2};\n\
         \x20   location / {{ proxy_pass http://server; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }}\n  }}\n"
    )
}

/// nginx answering every request on each of `listen` with a small 200 (`ok`), one worker, no
/// access log, keep-alive without a request limit: the server Istio's ztunnel figures in
/// DESIGN.md were measured against. Runs like [`nginx`], until the handle goes.
pub fn nginx_ok(netns: &Netns, dir: &Path, listen: &[SocketAddr]) -> io::Result<NetnsChild> {
    start_nginx(netns, dir, "nginx-ok", false, &ok_servers(listen), listen)
}

fn ok_servers(listen: &[SocketAddr]) -> String {
    let listens: String = listen.iter().map(|a| format!(" listen {a};")).collect();
    format!("  server {{{listens} location / {{ return 200 \"ok\\n\"; }} }}\n")
}

/// Writes `<dir>/<name>.conf` (one worker, every path nginx writes kept in `dir`, so it runs
/// beside a system nginx without touching its files) and starts nginx on it in the foreground.
fn start_nginx(
    netns: &Netns,
    dir: &Path,
    name: &str,
    access_log: bool,
    servers: &str,
    listen: &[SocketAddr],
) -> io::Result<NetnsChild> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, nginx_conf(dir, name, access_log, servers))?;
    let child = netns
        .spawn(
            Command::new("nginx")
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join(format!("{name}-error.log")))
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .map_err(error)?;
    for addr in listen {
        wait_port(netns, *addr)?;
    }
    Ok(child)
}

fn nginx_conf(dir: &Path, name: &str, access_log: bool, servers: &str) -> String {
    let d = dir.display();
    let log = if access_log {
        format!("{d}/{name}-access.log")
    } else {
        "off".into()
    };
    format!(
        "worker_processes 1;\npid {d}/{name}.pid;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log {log};\n  client_body_temp_path {d}/nginx-body;\n\
         \x20 proxy_temp_path {d}/nginx-proxy;\n  fastcgi_temp_path {d}/nginx-fastcgi;\n\
         \x20 uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
         \x20 keepalive_requests 1000000;\n{servers}}}\n"
    )
}

/// Waits up to 10 s for something to accept connections on `addr` inside `netns`.
pub fn wait_port(netns: &Netns, addr: SocketAddr) -> io::Result<()> {
    let start = Instant::now();
    while netns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .map_err(error)?
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(error(format!(
                "nothing listens on {addr} in {}",
                netns.name()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_output_is_read() {
        let out = "finished in 5.00s, 12345.60 req/s, 1.17MB/s\n\
                   requests: 61728 total, 61792 started, 61728 done, 61700 succeeded, 28 failed, 1 errored, 2 timeout\n\
                   status codes: 61700 2xx, 0 3xx, 3 4xx, 25 5xx\n";
        let load = parse_h2load(out, 4.0);
        assert_eq!((load.ok, load.errors, load.non_2xx), (61700, 31, 28));
        assert_eq!(load.seconds, 5.0);
        assert_eq!(parse_h2load("", 4.0).seconds, 4.0);
    }

    /// What we write is what nginx reads: `nginx -t` on each config (skipped without nginx).
    #[test]
    fn nginx_accepts_its_configs() {
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|n| Command::new(n).arg("-v").output().is_ok());
        let Some(nginx) = nginx else {
            eprintln!("nginx is not installed: config check skipped");
            return;
        };
        let dir = std::env::temp_dir().join(format!("ambit-nginx-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: SocketAddr = "127.0.0.1:15098".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:15099".parse().unwrap();
        let configs = [
            ("proxy", proxy_servers(a, b, false)),
            ("proxy-h2", proxy_servers(a, b, true)),
            ("ok", ok_servers(&[a, b])),
        ];
        for (name, servers) in configs {
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(&conf, nginx_conf(&dir, name, false, &servers)).unwrap();
            let out = Command::new(nginx)
                .args(["-t", "-q", "-c"])
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
