//! The reporter against an in-test controller: a real tonic `Telemetry` server on loopback
//! behind the controller's TLS, reached over a `ControllerLink` as a proxy reaches it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_proto::api::discovery::ProxyKind;
use ambit_proto::api::telemetry::telemetry_server::{Telemetry, TelemetryServer};
use ambit_proto::api::telemetry::{Party, Tap};
use ambit_proto::control;
use ambit_proto::drain::{self, DrainTrigger};
use ambit_proto::identity::{CertManager, CertificateAuthority};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::client::subscriber;
use crate::link::ControllerLink;

const TD: &str = "cluster.local";
/// How long a test waits for anything the reporter should send.
const PATIENCE: Duration = Duration::from_secs(5);

/// One stream the controller accepted: what the proxy sends, and a way to answer.
struct Opened {
    requests: mpsc::UnboundedReceiver<ReportRequest>,
    answers: mpsc::Sender<Result<ReportResponse, Status>>,
}

impl Opened {
    async fn next(&mut self) -> ReportRequest {
        tokio::time::timeout(PATIENCE, self.requests.recv())
            .await
            .expect("a report in time")
            .expect("the stream is open")
    }

    /// Reports until one satisfies `found`, failing after [`PATIENCE`].
    async fn until(&mut self, found: impl Fn(&ReportRequest) -> bool) -> ReportRequest {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "the report never came");
            let r = self.next().await;
            if found(&r) {
                return r;
            }
        }
    }

    /// Every event sent within `window`, and the drops counted in those messages.
    async fn events_within(&mut self, window: Duration) -> (Vec<FlowEvent>, u64) {
        let deadline = tokio::time::Instant::now() + window;
        let (mut events, mut dropped) = (Vec::new(), 0);
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.requests.recv()).await {
            events.extend(r.events);
            dropped += r.events_dropped;
        }
        (events, dropped)
    }

    async fn answer(&self, answer: ReportResponse) {
        self.answers.send(Ok(answer)).await.unwrap();
    }
}

struct Server {
    opened: mpsc::UnboundedSender<Opened>,
    /// Never reads what the proxy sends: a controller that hangs.
    stall: bool,
}

use ambit_proto::api::telemetry::{ReportRequest, ReportResponse};

#[tonic::async_trait]
impl Telemetry for Server {
    type ReportStream = tokio_stream::wrappers::ReceiverStream<Result<ReportResponse, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<ReportRequest>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = request.into_inner();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (answers, answers_rx) = mpsc::channel(8);
        let stall = self.stall;
        tokio::spawn(async move {
            if stall {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(inbound);
                return;
            }
            while let Ok(Some(m)) = inbound.message().await {
                if requests_tx.send(m).is_err() {
                    return;
                }
            }
        });
        let _ = self.opened.send(Opened { requests, answers });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            answers_rx,
        )))
    }
}

struct Controller {
    ca: CertificateAuthority,
    address: SocketAddr,
    opened: mpsc::UnboundedReceiver<Opened>,
    _certs: CertManager,
    _stop: oneshot::Sender<()>,
}

impl Controller {
    async fn start(ca: CertificateAuthority, at: SocketAddr, stall: bool) -> Controller {
        let certs = CertManager::with_local_ca(
            CertificateAuthority::from_pem(TD, ca.root_pem(), &ca.root_key_pem()).unwrap(),
            Duration::from_secs(3600),
        );
        let identity = control::default_controller_identity(TD).unwrap();
        let tls = control::server_config(certs.watch(&identity).await.unwrap()).unwrap();
        // The address may have been ours a moment ago: bind until the old one is gone.
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(at).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("binding {at}: {e}"),
            }
        };
        let address = listener.local_addr().unwrap();
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = control::incoming(listener, Arc::new(tls));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TelemetryServer::new(Server {
                    opened: opened_tx,
                    stall,
                }))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Controller {
            ca,
            address,
            opened,
            _certs: certs,
            _stop: stop,
        }
    }

    async fn new(stall: bool) -> Controller {
        let ca = CertificateAuthority::generate(TD).unwrap();
        Controller::start(ca, "127.0.0.1:0".parse().unwrap(), stall).await
    }

    async fn opened(&mut self) -> Opened {
        tokio::time::timeout(PATIENCE, self.opened.recv())
            .await
            .expect("the proxy opens a stream in time")
            .unwrap()
    }
}

/// A reporter running against `address`, and the drain that stops it.
fn reporter_to(
    ca: &CertificateAuthority,
    address: SocketAddr,
    settings: Settings,
    metrics: impl MetricsSource,
) -> (Reporter, DrainTrigger) {
    let link = ControllerLink::new(
        &format!("https://{address}"),
        control::default_controller_identity(TD).unwrap(),
        &ca.trust_bundle(),
        Some("node-a"),
        None,
    )
    .unwrap();
    let (reporter, stream) = channel(settings);
    let (trigger, watch) = drain::channel();
    tokio::spawn(stream.run(
        link,
        subscriber(ProxyKind::Ztunnel, "node-a", ""),
        Arc::new(metrics),
        watch,
    ));
    (reporter, trigger)
}

fn quick() -> Settings {
    Settings {
        interval: Duration::from_millis(300),
        flush: Duration::from_millis(50),
        ..Settings::default()
    }
}

fn flow(source: &str, destination: &str, failed: bool) -> FlowEvent {
    let party = |name: &str| Party {
        workload: name.into(),
        namespace: "demo".into(),
        ..Default::default()
    };
    FlowEvent {
        source: Some(party(source)),
        destination: Some(party(destination)),
        failed,
        reason: if failed {
            format!("connection to {destination} refused")
        } else {
            String::new()
        },
        ..Default::default()
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_and_shapes_arrive_every_interval_and_a_failure_untagged() {
    let mut c = Controller::new(false).await;
    let (reporter, _drain) = reporter_to(&c.ca, c.address, quick(), || {
        "istio_tcp_connections_opened_total 3\n".to_string()
    });
    let mut s = c.opened().await;
    let first = s.next().await;
    let who = first
        .reporter
        .expect("the first message names the reporter");
    assert_eq!(
        (who.kind, who.name.as_str()),
        (ProxyKind::Ztunnel as i32, "node-a")
    );
    reporter.shapes().count(
        &ShapeView {
            source_identity: "spiffe://cluster.local/ns/demo/sa/client",
            destination_workload: "reviews-v1",
            destination_namespace: "demo",
            destination_port: 8080,
            ..Default::default()
        },
        false,
    );
    let with_metrics = |r: &ReportRequest| !r.metrics.is_empty();
    let a = s.until(with_metrics).await;
    let at = Instant::now();
    let b = s.until(with_metrics).await;
    let between = at.elapsed();
    assert!(
        between >= Duration::from_millis(200) && between < Duration::from_secs(2),
        "{between:?}"
    );
    assert_eq!(b.metrics, "istio_tcp_connections_opened_total 3\n");
    assert!(b.unix_ms >= a.unix_ms);
    let shape = &b.shapes[0];
    assert_eq!(
        (shape.destination_workload.as_str(), shape.count),
        ("reviews-v1", 1)
    );

    // Nothing is tapped: a healthy flow is not wanted, a failed one is, and goes untagged.
    assert!(!reporter.wants(false) && reporter.wants(true));
    reporter.report(flow("client", "reviews-v1", true));
    let sent = s.until(|r| !r.events.is_empty()).await;
    let e = &sent.events[0];
    assert!(e.failed && e.taps.is_empty(), "{e:?}");
    assert_eq!(e.reason, "connection to reviews-v1 refused");
}

#[tokio::test]
async fn a_tap_tags_what_it_selects_until_it_stops() {
    let mut c = Controller::new(false).await;
    let (reporter, _drain) = reporter_to(&c.ca, c.address, quick(), String::new);
    let mut s = c.opened().await;
    s.next().await;
    s.answer(ReportResponse {
        start: vec![Tap {
            id: 7,
            workload: "ratings".into(),
            max_per_second: 3,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await;
    eventually("the tap runs", || reporter.running_taps() == vec![7]).await;
    assert!(
        reporter.wants(false),
        "a running tap wants healthy flows too"
    );
    for _ in 0..10 {
        reporter.report(flow("client", "ratings", false));
    }
    reporter.report(flow("client", "reviews-v1", false));
    let (events, dropped) = s.events_within(Duration::from_millis(600)).await;
    assert_eq!(events.len(), 3, "the tap's rate: {events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.taps == vec![7] && e.destination.as_ref().unwrap().workload == "ratings")
    );
    assert_eq!(dropped, 0, "a tap's surplus is not a dropped failure");

    s.answer(ReportResponse {
        stop: vec![7],
        ..Default::default()
    })
    .await;
    eventually("the tap stops", || reporter.running_taps().is_empty()).await;
    assert!(!reporter.wants(false));
    reporter.report(flow("client", "ratings", false));
    reporter.report(flow("client", "ratings", true));
    let (events, _) = s.events_within(Duration::from_millis(400)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].failed && events[0].taps.is_empty());
}

#[tokio::test]
async fn failures_past_the_rate_are_dropped_and_counted() {
    let mut c = Controller::new(false).await;
    let settings = Settings {
        failed_per_second: 5,
        ..quick()
    };
    let (reporter, _drain) = reporter_to(&c.ca, c.address, settings, String::new);
    let mut s = c.opened().await;
    s.next().await;
    for _ in 0..40 {
        reporter.report(flow("client", "reviews-v1", true));
    }
    let (events, dropped) = s.events_within(Duration::from_millis(800)).await;
    // The budget is per second: a burst that straddles a second gets two.
    assert!((5..=10).contains(&events.len()), "{}", events.len());
    assert_eq!(events.len() as u64 + dropped, 40);
}

#[tokio::test]
async fn reconnects_when_the_controller_comes_and_when_it_ends_the_stream() {
    // Nothing listens there yet.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = free.local_addr().unwrap();
    drop(free);
    let ca = CertificateAuthority::generate(TD).unwrap();
    let (reporter, _drain) = reporter_to(&ca, at, quick(), String::new);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut c = Controller::start(ca, at, false).await;
    let mut s = c.opened().await;
    assert!(s.next().await.reporter.is_some());
    s.answer(ReportResponse {
        start: vec![Tap {
            id: 1,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await;
    eventually("the tap runs", || !reporter.running_taps().is_empty()).await;

    // The controller ends the stream: the taps go with it, and the proxy opens another.
    drop(s);
    let mut again = c.opened().await;
    assert!(again.next().await.reporter.is_some(), "subscribed again");
    assert!(reporter.running_taps().is_empty());
    reporter.report(flow("client", "reviews-v1", true));
    let sent = again.until(|r| !r.events.is_empty()).await;
    assert!(sent.events[0].failed);
}

#[tokio::test]
async fn the_controller_sets_the_interval() {
    let mut c = Controller::new(false).await;
    let (_reporter, _drain) = reporter_to(&c.ca, c.address, quick(), || "m 1\n".to_string());
    let mut s = c.opened().await;
    s.next().await;
    s.answer(ReportResponse {
        report_interval_seconds: 1,
        ..Default::default()
    })
    .await;
    let with_metrics = |r: &ReportRequest| !r.metrics.is_empty();
    // A report may have been on its way at the old interval; then they come a second apart.
    s.until(with_metrics).await;
    s.until(with_metrics).await;
    let at = Instant::now();
    s.until(with_metrics).await;
    let between = at.elapsed();
    assert!(
        between >= Duration::from_millis(900) && between < Duration::from_millis(1500),
        "{between:?}"
    );
}

#[tokio::test]
async fn a_stalled_controller_never_holds_up_the_data_path_and_is_left_for_a_new_stream() {
    let mut c = Controller::new(true).await;
    let settings = Settings {
        queue: 16,
        failed_per_second: 1_000_000,
        interval: Duration::from_millis(100),
        flush: Duration::from_millis(10),
        send_timeout: Duration::from_millis(500),
        ..Settings::default()
    };
    // Big reports fill the stream's window soon after the controller stops reading.
    let (reporter, _drain) = reporter_to(&c.ca, c.address, settings, || "x".repeat(1 << 20));
    let _s = c.opened().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for _ in 0..100_000 {
        if reporter.wants(true) {
            reporter.report(flow("client", "reviews-v1", true));
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        reporter.shared.dropped.load(Ordering::Relaxed) > 90_000,
        "a full queue drops and counts"
    );
    // The stalled stream is given up (send timeout) and another opened.
    let _again = c.opened().await;
}
