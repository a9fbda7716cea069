//! The sample workloads of a local mesh: a small HTTP server and a load driver, run inside pod
//! namespaces as modes of the `ambit` binary (`ambit app serve`, `ambit app drive`), so a
//! local mesh needs no downloads. Both are ordinary programs that know nothing of the mesh.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

/// What a sample server does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Answers every HTTP request with `hello from <name>`.
    HttpEcho,
    /// Sends back whatever it receives.
    TcpEcho,
    /// Reads everything until the client half-closes, then answers with the byte count (8
    /// bytes, big-endian): the far end of a throughput test.
    Sink,
}

/// Serves on all addresses (v4 and v6) of each port until killed.
pub async fn serve(kind: ServerKind, ports: Vec<u16>, name: String) -> std::io::Result<()> {
    let name: &'static str = Box::leak(name.into_boxed_str());
    let mut listeners = Vec::new();
    for port in ports {
        listeners.push(TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?);
        // IPv6 only when the pod has it; v4 alone still serves.
        let v6 = tokio::net::TcpSocket::new_v6().and_then(|s| {
            socket2::SockRef::from(&s).set_only_v6(true)?;
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::from(([0u16; 8], port)))?;
            s.listen(1024)
        });
        if let Ok(l) = v6 {
            listeners.push(l);
        }
    }
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, kind, name)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, kind: ServerKind, name: &'static str) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            match kind {
                ServerKind::HttpEcho => {
                    let service = hyper::service::service_fn(
                        move |_req: Request<hyper::body::Incoming>| async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "hello from {name}\n"
                            )))))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                ServerKind::TcpEcho => {
                    let (mut rd, mut wr) = stream.into_split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                }
                ServerKind::Sink => {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut stream = stream;
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total: u64 = 0;
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = stream.write_all(&total.to_be_bytes()).await;
                }
            }
        });
    }
}

/// One second of a driver's view of one target, printed as a JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DriveReport {
    pub target: String,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The last failure's text, e.g. "connection reset by peer".
    pub last_error: Option<String>,
    /// How often each answer (its first line, e.g. "hello from reviews-v2") came back.
    #[serde(default)]
    pub answers: std::collections::BTreeMap<String, u64>,
}

/// Sends `rate` requests per second to each target, each on a new connection (so every
/// request crosses the mesh's connection setup and policy), printing one report per target
/// per second, for `duration`.
pub async fn drive(targets: Vec<String>, rate: u32, duration: Duration) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|target| tokio::spawn(drive_one(target, interval, duration)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn drive_one(target: String, interval: Duration, duration: Duration) {
    let end = Instant::now() + duration;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = DriveReport {
        target: target.clone(),
        ..Default::default()
    };
    let mut latencies: Vec<Duration> = Vec::new();
    let mut window_end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        ticker.tick().await;
        let start = Instant::now();
        match tokio::time::timeout(Duration::from_secs(2), get(&target)).await {
            Ok(Ok(answer)) => {
                report.ok += 1;
                latencies.push(start.elapsed());
                let first = answer.lines().next().unwrap_or_default().to_string();
                *report.answers.entry(first).or_default() += 1;
            }
            Ok(Err(e)) => {
                report.failed += 1;
                report.last_error = Some(e);
            }
            Err(_) => {
                report.failed += 1;
                report.last_error = Some("timed out after 2s".into());
            }
        }
        if Instant::now() >= window_end {
            emit(&mut report, &mut latencies);
            window_end = Instant::now() + Duration::from_secs(1);
        }
    }
    emit(&mut report, &mut latencies);
}

fn emit(report: &mut DriveReport, latencies: &mut Vec<Duration>) {
    latencies.sort_unstable();
    let q = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i].as_secs_f64() * 1000.0
        }
    };
    report.p50_ms = q(0.50);
    report.p99_ms = q(0.99);
    let line = serde_json::to_string(report).expect("reports serialize");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    let target = std::mem::take(&mut report.target);
    *report = DriveReport {
        target,
        ..Default::default()
    };
    latencies.clear();
}

/// One GET on a new connection; the error text is what an application would see.
async fn get(url: &str) -> Result<String, String> {
    let (status, body) = fetch(url).await?;
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}"));
    }
    Ok(body)
}

/// GET `url` (an IP-literal http URL) on a new connection: the status and body.
pub async fn fetch(url: &str) -> Result<(u16, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url} has no host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("URL {url} must name an IP address"))?;
    let stream = TcpStream::connect(SocketAddr::new(ip, port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header("host", authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// hyper's errors hide the I/O error that an app would report ("connection reset by peer").
fn describe(e: &hyper::Error) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.to_string();
        }
        cur = err.source();
    }
    e.to_string()
}

/// What `ambit app load` prints: keep-alive HTTP load against one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// `connections` keep-alive connections, each sending requests back to back for `duration`,
/// or, with `rate`, spreading that many requests per second over the connections (paced, for
/// latency at a given load rather than at saturation).
pub async fn load(
    target: String,
    connections: usize,
    duration: Duration,
    rate: Option<u32>,
) -> LoadResult {
    let start = Instant::now();
    let connections = connections.max(1);
    let pace = rate.map(|r| Duration::from_secs_f64(connections as f64 / f64::from(r.max(1))));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move { load_one(&target, start + duration, pace).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let q = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    LoadResult {
        requests: latencies.len() as u64,
        errors,
        seconds,
        rps: latencies.len() as f64 / seconds,
        p50_ms: q(0.50),
        p90_ms: q(0.90),
        p99_ms: q(0.99),
    }
}

async fn load_one(target: &str, end: Instant, pace: Option<Duration>) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut ticker = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    while Instant::now() < end {
        // One connection for as long as it lasts; a new one if it breaks.
        let Ok((mut sender, host, path)) = open(target).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while Instant::now() < end {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let request = Request::get(path.as_str())
                .header("host", host.as_str())
                .body(Empty::<Bytes>::new())
                .expect("static request parts");
            let t = Instant::now();
            let ok = match sender.send_request(request).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    ok && resp.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            if ok {
                latencies.push(t.elapsed());
            } else {
                errors += 1;
                break;
            }
        }
    }
    (latencies, errors)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(url: &str) -> Result<(Sender, String, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let authority = uri.authority().ok_or("no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().map_err(|_| "URL must name an IP address")?;
    let stream = TcpStream::connect(SocketAddr::new(ip, authority.port_u16().unwrap_or(80)))
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok((sender, authority.to_string(), path))
}

/// What `ambit app blast` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BlastResult {
    pub bytes: u64,
    pub seconds: f64,
    pub gbps: f64,
}

/// Sends `bytes` to a sink server on one connection and waits for its count.
pub async fn blast(target: SocketAddr, bytes: u64) -> std::io::Result<BlastResult> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let mut stream = TcpStream::connect(target).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let received = u64::from_be_bytes(count);
    if received != bytes {
        return Err(std::io::Error::other(format!(
            "the sink counted {received} bytes of {bytes}"
        )));
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BlastResult {
        bytes,
        seconds,
        gbps: bytes as f64 * 8.0 / seconds / 1e9,
    })
}
