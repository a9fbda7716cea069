//! HTTP abuse costs only the abuser: raw clients (tests/abuse/abuse.py, speaking HTTP/2 frame
//! by frame or HTTP/1.1 on a bare socket) reach the waypoint's HTTP server through a relay
//! that carries each of their connections in an HBONE tunnel, as a ztunnel would, and break
//! one per-connection limit each. Each loses its own connection (or, for what HTTP/2 scopes
//! to a stream, that stream), the refusal is counted under the limit it broke, and a steady
//! client beside it, on HTTP/2 and HTTP/1.1 connections of its own and on new ones, gets a
//! 200 for every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ambit_waypoint::http_limits::{HttpLimits, Refusal};
use http::StatusCode;

use crate::support::relay::relay;
use crate::support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/abuse/abuse.py");
/// How long one script may run before it is killed and the test fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
const AUTHORITY: &str = "reviews-v1.demo.svc.cluster.local";

/// Whether `python3` with `h2` is here: under CI its absence fails the test, elsewhere the
/// test is skipped with a note.
fn python_ready(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import h2, hpack, hyperframe"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: python3 with the h2 package is missing, and CI must run this test"
        );
        eprintln!("{test}: skipped: python3 with h2 is not available (`pip install h2`)");
    }
    found
}

/// The waypoint with short enough limits that the slow attacks end quickly.
fn mesh_setup() -> Setup {
    Setup {
        http_limits: HttpLimits {
            header_timeout: Duration::from_secs(2),
            http2_max_concurrent_streams: 10,
            ..HttpLimits::default()
        },
        ..Setup::default()
    }
}

/// What a script printed, `key=value` lines.
#[derive(Debug)]
struct Seen(BTreeMap<String, String>);

impl Seen {
    fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the script printed no {key}=: {self:?}"))
    }
}

/// Runs one scenario against `target`, off the runtime.
async fn script(scenario: &str, target: SocketAddr, arg: &str) -> Seen {
    let args = vec![
        scenario.to_string(),
        target.to_string(),
        AUTHORITY.to_string(),
        arg.to_string(),
    ];
    tokio::task::spawn_blocking(move || run_script(&args))
        .await
        .expect("the script runner panicked")
}

fn run_script(args: &[String]) -> Seen {
    let what = format!("python3 abuse.py {}", args.join(" "));
    let mut child = Command::new("python3")
        .args(["-u", "-B", SCRIPT])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{what}`: {e}"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not end within {SCRIPT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The scripts print a few short lines: nothing is left blocked on a full pipe.
    let output = child.wait_with_output().expect("the script's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let seen: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        output.status.success() && seen.get("result").map(String::as_str) == Some("done"),
        "`{what}` failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Seen(seen)
}

/// A well-behaved client beside the attack: requests on its own HTTP/2 and HTTP/1.1
/// connections and on a new connection each round, until stopped; every answer must be 200.
struct Steady {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Steady {
    async fn start(mesh: &Mesh) -> Steady {
        let client = mesh.client();
        let mut h2 = client.http2(REVIEWS_V2).await;
        let mut h1 = client.http1(REVIEWS_V2).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut ok = 0;
            // One more round once stopped: the last begins after the attack ended.
            loop {
                let last = stopped.load(Ordering::SeqCst);
                let fresh = client.http1(REVIEWS_V2).await.get("/steady").await;
                for reply in [h2.get("/steady").await, h1.get("/steady").await, fresh] {
                    assert_eq!(
                        reply.status,
                        StatusCode::OK,
                        "the steady client got {}: {}",
                        reply.status,
                        reply.text()
                    );
                    ok += 1;
                }
                if last {
                    return ok;
                }
            }
        });
        Steady { stop, task }
    }

    /// Stops it; panics unless every one of its requests got a 200.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let ok = tokio::time::timeout(PATIENCE * 3, self.task)
            .await
            .expect("the steady client finishes its round")
            .expect("every request of the steady client got a 200");
        assert!(ok >= 3);
        ok
    }
}

/// Runs `scenario` beside the steady client; what the script saw.
async fn attack(mesh: &Mesh, scenario: &str, arg: &str) -> Seen {
    let target = relay(mesh.client_as("attacker"), REVIEWS_V1).await;
    let steady = Steady::start(mesh).await;
    let seen = script(scenario, target, arg).await;
    steady.stop().await;
    seen
}

/// Refusals of this kind, as the metrics page shows them (and as counted).
async fn refused(mesh: &Mesh, refusal: Refusal) -> u64 {
    let count = mesh.http.refusals().count(refusal);
    let limit = format!("limit=\"{}\"", refusal.name());
    let line = mesh
        .metric_line("ambit_http_refusals_total", &[&limit])
        .await;
    assert_eq!(
        crate::breaker::value(&line),
        count as f64,
        "the metrics page disagrees with the count of {refusal}"
    );
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_loses_its_connection_to_goaway() {
    if !python_ready("rapid_reset_loses_its_connection_to_goaway") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    let seen = attack(&mesh, "rapid-reset", "1000").await;
    assert_eq!(seen.get("goaway"), "ENHANCE_YOUR_CALM", "{seen:?}");
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    assert_eq!(refused(&mesh, Refusal::RapidReset).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_resets_of_started_requests_close_the_connection() {
    if !python_ready("paced_resets_of_started_requests_close_the_connection") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    // Requests that would wait long for their answer: each one the client cancels was
    // started by the waypoint (routed, forwarded) and then thrown away.
    mesh.app("reviews-v1")
        .set(Behavior::Delay(Duration::from_secs(60)));
    let seen = attack(&mesh, "paced-reset", "400").await;
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    let sent: u64 = seen.get("sent").parse().unwrap();
    let max = HttpLimits::default().http2_max_premature_resets;
    assert!(
        sent > max && sent < 400,
        "the connection must close after {max} cancelled requests, it closed after {sent}"
    );
    assert_eq!(refused(&mesh, Refusal::PrematureResets).await, 1);
    assert_eq!(refused(&mesh, Refusal::RapidReset).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_loses_its_connection_to_goaway() {
    if !python_ready("a_continuation_flood_loses_its_connection_to_goaway") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    let seen = attack(&mesh, "continuation", "20000").await;
    assert_eq!(seen.get("goaway"), "ENHANCE_YOUR_CALM", "{seen:?}");
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    assert_eq!(refused(&mesh, Refusal::ContinuationFlood).await, 1);
    assert_eq!(mesh.app("reviews-v1").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_streams_are_refused_then_the_connection_closed() {
    if !python_ready("stacked_streams_are_refused_then_the_connection_closed") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    // 10 may be open at once; the other 390 are refused, more than the 256 refusals a
    // connection may cost.
    let seen = attack(&mesh, "stacking", "400").await;
    let refused_streams: u64 = seen.get("refused").parse().unwrap();
    assert!(refused_streams > 0, "{seen:?}");
    assert_eq!(seen.get("goaway"), "ENHANCE_YOUR_CALM", "{seen:?}");
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    assert_eq!(refused(&mesh, Refusal::StreamErrors).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http2_headers_cost_only_their_stream() {
    if !python_ready("oversized_http2_headers_cost_only_their_stream") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    let over = HttpLimits::default().max_header_bytes + 4096;
    let seen = attack(&mesh, "oversized-h2", &over.to_string()).await;
    // RFC 9113 §10.5.1: a 431, or a reset of that stream; the connection goes on.
    assert!(
        seen.get("big_status") == "431" || seen.get("big_reset") != "None",
        "{seen:?}"
    );
    assert_eq!(seen.get("next_status"), "200", "{seen:?}");
    assert_eq!(seen.get("closed"), "0", "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http2_header_block_loses_its_connection() {
    if !python_ready("a_slow_http2_header_block_loses_its_connection") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    let seen = attack(&mesh, "slow-h2", "0").await;
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    assert_eq!(refused(&mesh, Refusal::SlowHeaders).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_lose_their_connection_before_anything_is_forwarded() {
    if !python_ready("smuggling_attempts_get_400") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    // hyper serves both Content-Length and Transfer-Encoding by the latter and closes after;
    // the waypoint refuses them itself. The other shapes hyper refuses.
    let shapes = [
        ("cl-te", Refusal::AmbiguousLength, 1),
        ("te-cl", Refusal::AmbiguousLength, 2),
        ("cl-cl", Refusal::MalformedRequest, 1),
        ("bad-te", Refusal::MalformedRequest, 2),
        ("te-space", Refusal::MalformedRequest, 3),
    ];
    for (shape, refusal, count) in shapes {
        let seen = attack(&mesh, "smuggle", shape).await;
        assert_eq!(seen.get("statuses"), "400", "{shape}: {seen:?}");
        assert_eq!(seen.get("closed"), "1", "{shape}: {seen:?}");
        assert_eq!(refused(&mesh, refusal).await, count, "{shape}");
    }
    // Neither the attempt nor what it hid reached a backend.
    assert_eq!(mesh.app("reviews-v1").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_http1_heads_lose_their_connection() {
    if !python_ready("oversized_and_slow_http1_heads_lose_their_connection") {
        return;
    }
    let mesh = Mesh::start(mesh_setup()).await;
    let over = HttpLimits::default().max_header_bytes + 4096;
    let seen = attack(&mesh, "oversized-h1", &over.to_string()).await;
    assert_eq!(seen.get("statuses"), "431", "{seen:?}");
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    let seen = attack(&mesh, "many-headers-h1", "150").await;
    assert_eq!(seen.get("statuses"), "431", "{seen:?}");
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    assert_eq!(refused(&mesh, Refusal::OversizedHeaders).await, 2);

    // A head trickled a line a second never ends: closed at the header timeout, unanswered.
    let seen = attack(&mesh, "slow-h1", "0").await;
    assert_eq!(seen.get("statuses"), "", "{seen:?}");
    assert_eq!(seen.get("closed"), "1", "{seen:?}");
    assert_eq!(refused(&mesh, Refusal::SlowHeaders).await, 1);
    assert_eq!(mesh.app("reviews-v1").requests(), 0);
}
