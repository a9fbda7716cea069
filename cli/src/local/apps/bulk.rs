//! Load for `ambit bench` and the benchmarks: keep-alive HTTP requests back to back (or paced)
//! on a few connections ([`load`]), and one bulk transfer to a sink ([`blast`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

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
