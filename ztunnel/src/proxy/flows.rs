//! What ztunnel tells the controller about a connection when it ends ([`ambit_discovery::telemetry`]):
//! a `FlowEvent` when the reporter wants one (it failed, or a tap runs; otherwise nothing is
//! built), and on the inbound side its count in the shape table (source identity, destination
//! workload, port), which `ambit policy suggest` proposes rules from.

use std::net::SocketAddr;
use std::time::Instant;

use ambit_discovery::telemetry::{Reporter, ShapeView, unix_ms};
use ambit_proto::api::telemetry::{FlowEvent, Party, Protocol};
use ambit_proto::identity::SpiffeId;

use crate::metrics::{self, ConnectionCounters, FailureReason, Parties, Security, Side};

/// What a connection's report is made from, gathered as it starts; it borrows what the
/// connection's handler holds anyway.
pub(crate) struct Flow<'a> {
    pub parties: &'a Parties,
    /// The client's address.
    pub peer: SocketAddr,
    /// Where it went: the pod's address and port (inbound), the original destination
    /// (outbound).
    pub target: SocketAddr,
    /// The client dialled a service VIP (outbound): the event names the service.
    pub dialled_service: bool,
    pub started: Instant,
    /// Observer mode: the policy that would have denied it, and why.
    pub would_deny: Option<&'a (Box<str>, String)>,
}

/// Why a flow failed, in words for an application developer.
pub(crate) struct Failure<'a> {
    /// Envoy's response flag for it.
    pub flags: &'static str,
    pub reason: String,
    pub policy: Option<&'a str>,
}

impl<'a> Failure<'a> {
    pub(crate) fn new(why: FailureReason, reason: String) -> Self {
        Failure {
            flags: why.response_flag(),
            reason,
            policy: None,
        }
    }

    /// Carried for a while, then aborted by one side.
    pub(crate) fn reset(e: &std::io::Error) -> Self {
        Failure {
            flags: "UC",
            reason: format!("the connection was reset while open: {e}"),
            policy: None,
        }
    }
}

impl Flow<'_> {
    /// The connection ended: reported if wanted, counted in the shapes if inbound. `counters`
    /// are the pair's (a carried connection), whose shape is kept beside them.
    pub(crate) fn ended(
        &self,
        reporter: &Reporter,
        counters: Option<&ConnectionCounters>,
        sent: u64,
        received: u64,
        failure: Option<Failure<'_>>,
    ) {
        let failed = failure.is_some();
        if self.parties.reporter == metrics::Reporter::Destination {
            self.count_shape(reporter, counters, failed);
        }
        if !reporter.wants(failed) {
            return;
        }
        reporter.report(self.event(sent, received, failure));
    }

    fn count_shape(
        &self,
        reporter: &Reporter,
        counters: Option<&ConnectionCounters>,
        failed: bool,
    ) {
        let Some(workload) = &self.parties.destination.workload else {
            return;
        };
        let view = ShapeView {
            source_identity: self
                .parties
                .source
                .principal
                .as_ref()
                .map_or("", SpiffeId::as_str),
            destination_workload: workload.name(),
            destination_namespace: &workload.shared.namespace,
            destination_port: self.target.port().into(),
            ..Default::default()
        };
        let shapes = reporter.shapes();
        match counters {
            // The pair's counters keep the shape of the port they first carried: a pair
            // talks to one port nearly always, and then this is two atomic adds.
            Some(c) => match c.shape(self.target.port()) {
                Some(shape) => shapes.record(shape, failed),
                None => {
                    let shape = shapes.get(&view);
                    shapes.record(&shape, failed);
                    c.keep_shape(self.target.port(), shape);
                }
            },
            None => shapes.count(&view, failed),
        }
    }

    fn event(&self, sent: u64, received: u64, failure: Option<Failure<'_>>) -> FlowEvent {
        let p = self.parties;
        let elapsed = self.started.elapsed();
        let (failed, flags, mut reason, mut policy) = match failure {
            Some(f) => (
                true,
                f.flags,
                f.reason,
                f.policy.map(str::to_string).unwrap_or_default(),
            ),
            None => (false, "-", String::new(), String::new()),
        };
        let would_deny = !failed && self.would_deny.is_some();
        if let (false, Some((name, why))) = (failed, self.would_deny) {
            policy = name.to_string();
            reason = format!(
                "authorization policy {name} would deny it, but it is in observer mode (ambit.io/policy-mode: audit): {why}"
            );
        }
        FlowEvent {
            taps: Vec::new(),
            start_unix_ms: unix_ms() - elapsed.as_millis() as i64,
            duration_us: elapsed.as_micros() as u64,
            protocol: Protocol::Tcp.into(),
            source: Some(party(&p.source, self.peer)),
            destination: Some(party(&p.destination, self.target)),
            destination_service: match (&p.service, self.dialled_service) {
                (Some(s), true) => s.hostname.to_string(),
                _ => String::new(),
            },
            destination_port: self.target.port().into(),
            mutual_tls: p.security == Security::MutualTls,
            grpc_status: -1,
            response_flags: flags.into(),
            bytes_sent: sent,
            bytes_received: received,
            failed,
            reason,
            policy,
            would_deny,
            ..Default::default()
        }
    }
}

fn party(side: &Side, address: SocketAddr) -> Party {
    let identity = side.principal.as_ref();
    let mut party = Party {
        identity: identity.map_or_else(String::new, SpiffeId::to_string),
        namespace: identity.map_or_else(String::new, |id| id.namespace().to_string()),
        address: address.to_string(),
        ..Default::default()
    };
    if let Some(w) = &side.workload {
        party.workload = w.name().to_string();
        party.namespace = w.shared.namespace.to_string();
        party.app = w.canonical_or_name().to_string();
        party.version = w.shared.canonical_revision.to_string();
    }
    party
}

/// A failed connect in words: "connection to 10.244.2.2:8080 refused".
pub(crate) fn connect_failure(target: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("connection to {target} refused"),
        std::io::ErrorKind::TimedOut => format!("no answer from {target} (connect timed out)"),
        _ => format!("could not connect to {target}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ambit_discovery::telemetry::{self, Settings};
    use ambit_proto::api::telemetry::Tap;
    use socket2::SockRef;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::connections::{ConnectionInfo, ConnectionTracker, Direction};
    use crate::metrics::Metrics;
    use crate::metrics::tests::parties;
    use crate::proxy::splice::carry;

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    /// An inbound connection from client to reviews-v1 carried over loopback: the tunnel's
    /// end is `client`, the app's is `app`.
    async fn carried(
        reporter: &Reporter,
        metrics: &Metrics,
        tracker: &Arc<ConnectionTracker>,
        exchange: impl AsyncFnOnce(TcpStream, TcpStream),
    ) {
        let p = parties();
        let (client, tunnel) = tcp_pair().await;
        let (app_side, app) = tcp_pair().await;
        let (peer, target) = (
            "10.244.1.2:40000".parse().unwrap(),
            "10.244.1.4:8080".parse().unwrap(),
        );
        let flow = Flow {
            parties: &p,
            peer,
            target,
            dialled_service: false,
            started: Instant::now(),
            would_deny: None,
        };
        let info =
            ConnectionInfo::starting(Direction::Inbound, "reviews-v1", peer, target, "HBONE");
        let carry = carry(
            app_side,
            tunnel,
            true,
            metrics.connection_opened(&p),
            tracker.track(info),
            reporter,
            flow,
        );
        tokio::join!(carry, exchange(client, app));
    }

    #[tokio::test]
    async fn a_carried_connection_reports_its_flow_and_counts_its_shape() {
        let (reporter, mut stream) = telemetry::channel(Settings::default());
        let (metrics, tracker) = (Metrics::new(), Arc::new(ConnectionTracker::default()));
        reporter.start_tap(Tap {
            id: 3,
            workload: "reviews-v1".into(),
            ..Default::default()
        });

        carried(
            &reporter,
            &metrics,
            &tracker,
            async |mut client, mut app| {
                client.write_all(&[1; 1000]).await.unwrap();
                let mut got = [0; 1000];
                app.read_exact(&mut got).await.unwrap();
                app.write_all(&[2; 300]).await.unwrap();
                client.read_exact(&mut got[..300]).await.unwrap();
                drop((client, app));
            },
        )
        .await;
        let events = stream.queued();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e.taps, vec![3]);
        assert_eq!((e.bytes_sent, e.bytes_received), (1000, 300));
        assert_eq!(e.protocol, Protocol::Tcp as i32);
        assert!(e.mutual_tls && !e.failed && e.response_flags == "-");
        let (src, dst) = (e.source.as_ref().unwrap(), e.destination.as_ref().unwrap());
        assert_eq!(
            (
                src.workload.as_str(),
                src.identity.as_str(),
                src.address.as_str()
            ),
            (
                "client",
                "spiffe://cluster.local/ns/demo/sa/client",
                "10.244.1.2:40000"
            )
        );
        assert_eq!(
            (dst.workload.as_str(), dst.version.as_str()),
            ("reviews-v1", "v1")
        );
        assert_eq!(e.destination_port, 8080);
        assert!(
            e.destination_service.is_empty(),
            "the client dialled the pod"
        );

        // The app resets the next one: failed, flagged, said in words, counted in the shape.
        carried(&reporter, &metrics, &tracker, async |mut client, app| {
            client.write_all(b"hello").await.unwrap();
            SockRef::from(&app)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(app);
            let mut buf = [0; 8];
            let _ = client.read(&mut buf).await;
        })
        .await;
        let events = stream.queued();
        let e = &events[0];
        assert!(e.failed && e.response_flags == "UC", "{e:?}");
        assert!(e.reason.contains("reset"), "{}", e.reason);
        let shapes = reporter.shapes().snapshot();
        assert_eq!(shapes.len(), 1, "{shapes:?}");
        let s = &shapes[0];
        assert_eq!(
            (
                s.source_identity.as_str(),
                s.destination_workload.as_str(),
                s.destination_namespace.as_str(),
                s.destination_port,
                s.count,
                s.failed,
            ),
            (
                "spiffe://cluster.local/ns/demo/sa/client",
                "reviews-v1",
                "demo",
                8080,
                2,
                1
            )
        );

        // Untapped and healthy: nothing is built, the shape still counts.
        let stopped = telemetry::channel(Settings::default());
        let (quiet, mut quiet_stream) = stopped;
        carried(&quiet, &metrics, &tracker, async |client, app| {
            drop((client, app))
        })
        .await;
        assert!(quiet_stream.queued().is_empty());
        assert_eq!(quiet.shapes().snapshot()[0].count, 1);
    }
}
