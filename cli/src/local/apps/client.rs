//! The client side: one HTTP/1.1 request on a new connection ([`fetch`], [`request`]), and the
//! driver `ambit up` runs in each client pod ([`drive`]).
//!
//! A driver's target is a URL, optionally followed by request headers, each after a `|`:
//! `http://10.96.0.10:9080/|x-canary: 1`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// One second of a driver's view of one target, printed as a JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DriveReport {
    pub target: String,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The slowest answer of the second: a stall shows here first.
    #[serde(default)]
    pub max_ms: f64,
    /// The last failure's text, e.g. "connection reset by peer", or for an HTTP error its
    /// status, the proxy's `x-ambit-flags` and the first line of the body: "HTTP 403 [RBAC]:
    /// denied by policy demo/deny-denied-client".
    pub last_error: Option<String>,
    /// How often each answer (its first line, e.g. "hello from reviews-v2") came back.
    #[serde(default)]
    pub answers: BTreeMap<String, u64>,
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

/// A target's URL and headers.
fn split_target(target: &str) -> (String, Vec<(String, String)>) {
    let mut parts = target.split('|');
    let url = parts.next().unwrap_or_default().to_string();
    let headers = parts
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (url, headers)
}

async fn drive_one(target: String, interval: Duration, duration: Duration) {
    let (url, headers) = split_target(&target);
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
        match tokio::time::timeout(Duration::from_secs(2), get(&url, &headers)).await {
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
    report.max_ms = latencies.last().map_or(0.0, |l| l.as_secs_f64() * 1000.0);
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
async fn get(url: &str, headers: &[(String, String)]) -> Result<String, String> {
    let reply = request(url, headers).await?;
    if !(200..300).contains(&reply.status) {
        let flags = reply
            .flags
            .as_deref()
            .map(|f| format!(" [{f}]"))
            .unwrap_or_default();
        let first = reply.body.lines().next().unwrap_or_default();
        return Err(format!("HTTP {}{flags}: {first}", reply.status));
    }
    Ok(reply.body)
}

/// An HTTP answer: its status, the proxy's `x-ambit-flags` if any, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub flags: Option<String>,
    pub body: String,
}

/// GET `url` (an IP-literal http URL) on a new connection: the status and body.
pub async fn fetch(url: &str) -> Result<(u16, String), String> {
    request(url, &[]).await.map(|r| (r.status, r.body))
}

/// GET `url` (an IP-literal http URL) with `headers`, on a new connection, over HTTP/1.1.
pub async fn request(url: &str, headers: &[(String, String)]) -> Result<Reply, String> {
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
    let mut builder = Request::get(path).header("host", authority.as_str());
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let flags = response
        .headers()
        .get("x-ambit-flags")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        flags,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `n` GETs of `url` (an IP-literal http URL) one after another on one HTTP/2 connection with
/// prior knowledge (h2c): each answer's status and body.
pub async fn h2_requests(url: &str, n: usize) -> Result<Vec<(u16, String)>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url} has no host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("URL {url} must name an IP address"))?;
    let stream = TcpStream::connect(SocketAddr::new(ip, authority.port_u16().unwrap_or(80)))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| describe(&e))?;
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for _ in 0..n {
        let request = Request::get(uri.clone())
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
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(answers)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_carries_its_headers() {
        assert_eq!(
            split_target("http://10.96.0.10:9080/|x-canary: 1|x-b:2"),
            (
                "http://10.96.0.10:9080/".to_string(),
                vec![
                    ("x-canary".to_string(), "1".to_string()),
                    ("x-b".to_string(), "2".to_string())
                ]
            )
        );
        assert_eq!(split_target("http://a/"), ("http://a/".to_string(), vec![]));
    }
}
