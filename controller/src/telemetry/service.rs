//! `ambit.telemetry.v1.Telemetry/Report`: each proxy's report stream. The reporter is
//! authenticated and authorized exactly as its discovery subscription is ([`SubscriberAccess`]),
//! with the same refusals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_proto::api::discovery::{ProxyKind, Subscriber};
use ambit_proto::api::telemetry::telemetry_server::{Telemetry, TelemetryServer};
use ambit_proto::api::telemetry::{ReportRequest, ReportResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::TelemetryStore;
use super::exposition;
use super::records::flow_record;
use super::series::ReportMetrics;
use super::store::{Failure, Report, ReporterId, ReporterKind};
use crate::push::SubscriberAccess;

/// How long a new stream may take to send its first message (who reports).
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an open stream's credentials are checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(300);
/// Samples kept from one report; a ztunnel of a busy node writes a few thousand.
const MAX_SAMPLES: usize = 200_000;
/// A report's metrics text, at most (tonic's own limit is raised to this).
const MAX_MESSAGE_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub struct TelemetryService {
    store: TelemetryStore,
    access: Option<Arc<SubscriberAccess>>,
    shutdown: CancellationToken,
}

impl TelemetryService {
    /// Anyone may report until [`Self::authenticate_with`] says who may (the binary always
    /// does).
    pub fn new(store: TelemetryStore, shutdown: CancellationToken) -> Self {
        TelemetryService {
            store,
            access: None,
            shutdown,
        }
    }

    pub fn authenticate_with(mut self, access: SubscriberAccess) -> Self {
        self.access = Some(Arc::new(access));
        self
    }

    pub fn into_server(self) -> TelemetryServer<Self> {
        TelemetryServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn reporter_id(s: &Option<Subscriber>) -> Result<ReporterId, Status> {
    let s = s.as_ref().ok_or_else(|| {
        Status::invalid_argument(
            "the first ReportRequest must name the reporter (kind, name, and namespace for a waypoint), as a discovery subscription does",
        )
    })?;
    match ProxyKind::try_from(s.kind) {
        Ok(ProxyKind::Ztunnel) if !s.name.is_empty() => Ok(ReporterId {
            kind: ReporterKind::Ztunnel,
            name: s.name.clone(),
        }),
        Ok(ProxyKind::Waypoint) if !s.name.is_empty() && !s.namespace.is_empty() => {
            Ok(ReporterId {
                kind: ReporterKind::Waypoint,
                name: format!("{}/{}", s.namespace, s.name),
            })
        }
        _ => Err(Status::invalid_argument(
            "reporter must be a ZTUNNEL with its node name, or a WAYPOINT with its name and namespace",
        )),
    }
}

fn refused(who: &str, status: Status) -> Status {
    metrics::counter!("ambit_controller_telemetry_refusals_total").increment(1);
    tracing::warn!(reporter = %who, code = ?status.code(), error = %status.message(), "refused a telemetry stream");
    status
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type ReportStream = ReceiverStream<Result<ReportResponse, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<ReportRequest>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".into(), |p| p.to_string());
        let (metadata, _, mut inbound) = request.into_parts();
        // Before the first message is read, as a subscription: an anonymous caller cannot make
        // the controller read a large report.
        let caller = match &self.access {
            Some(access) => match access.authenticate(&metadata).await {
                Ok(caller) => Some(caller),
                Err(denied) => return Err(refused(&format!("caller at {peer}"), denied.status)),
            },
            None => None,
        };
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no first ReportRequest within {FIRST_MESSAGE_TIMEOUT:?}"
                ))
            })??
            .ok_or_else(|| {
                Status::invalid_argument("the stream ended before the first ReportRequest")
            })?;
        let id = reporter_id(&first.reporter)?;
        let subscriber = first.reporter.clone().unwrap_or_default();
        let who = format!("{} {} at {peer}", id.kind.as_str(), id.name);
        if let (Some(access), Some(caller)) = (&self.access, &caller)
            && let Err(denied) = access.authorize(caller, &subscriber)
        {
            return Err(refused(&who, denied.status));
        }
        self.store
            .reports
            .opened(&id, Instant::now())
            .map_err(|e| refused(&who, Status::resource_exhausted(e.to_string())))?;
        tracing::info!(reporter = %who, "telemetry stream opened");
        let (tx, rx) = mpsc::channel(4);
        let stream = ReportStream {
            store: self.store.clone(),
            access: self.access.clone().map(|a| (a, metadata, subscriber)),
            id,
            who,
            tx,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(first, inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct ReportStream {
    store: TelemetryStore,
    access: Option<(Arc<SubscriberAccess>, MetadataMap, Subscriber)>,
    id: ReporterId,
    who: String,
    tx: mpsc::Sender<Result<ReportResponse, Status>>,
    shutdown: CancellationToken,
}

impl ReportStream {
    async fn run(self, first: ReportRequest, inbound: Streaming<ReportRequest>) {
        metrics::gauge!("ambit_controller_telemetry_streams").increment(1.0);
        let ended = self.serve(first, inbound).await;
        metrics::gauge!("ambit_controller_telemetry_streams").decrement(1.0);
        self.store.reports.closed(&self.id, Instant::now());
        tracing::info!(reporter = %self.who, "telemetry stream ended: {ended}");
    }

    async fn serve(&self, first: ReportRequest, mut inbound: Streaming<ReportRequest>) -> String {
        self.take(first);
        let mut taps = self.store.taps.watch();
        let mut sent = super::taps::TapsSent::default();
        taps.mark_changed();
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    let status = Status::unavailable("the controller is shutting down; report again later");
                    let _ = self.tx.send(Err(status)).await;
                    return "the controller is shutting down".into();
                }
                changed = taps.changed() => {
                    if changed.is_err() {
                        return "the controller stopped running taps".into();
                    }
                    let running = taps.borrow_and_update().clone();
                    if let Some(response) = sent.update(&running)
                        && self.tx.send(Ok(response)).await.is_err()
                    {
                        return "the proxy went away".into();
                    }
                }
                request = inbound.message() => match request {
                    Ok(Some(request)) => self.take(request),
                    Ok(None) => return "the proxy closed the stream".into(),
                    Err(status) => return format!("the stream failed: {status}"),
                },
                _ = recheck.tick() => {
                    if let Some((access, metadata, subscriber)) = &self.access {
                        match access.recheck(metadata, subscriber).await {
                            Err(denied) if !denied.undecided => {
                                let reason = format!("its credentials no longer hold: {}", denied.status.message());
                                let _ = self.tx.send(Err(denied.status)).await;
                                return reason;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    /// Files one message: its metrics as a report, its failures in the ring, its tapped flows
    /// to their taps, its shapes as the reporter's latest.
    fn take(&self, request: ReportRequest) {
        let now = Instant::now();
        let store = &self.store.reports;
        if !request.metrics.is_empty() {
            match exposition::parse(&request.metrics, MAX_SAMPLES) {
                Ok(samples) => store.add_report(
                    &self.id,
                    Report {
                        received: now,
                        unix_ms: request.unix_ms,
                        metrics: Arc::new(ReportMetrics::from_samples(&samples)),
                    },
                ),
                Err(error) => {
                    metrics::counter!("ambit_controller_telemetry_bad_reports_total").increment(1);
                    tracing::warn!(reporter = %self.who, %error, "ignoring a metrics report that is not Prometheus text; the proxy's rates are missing until it sends a good one");
                }
            }
        }
        if !request.metrics.is_empty() || !request.shapes.is_empty() {
            store.set_shapes(&self.id, request.shapes);
        }
        if request.events_dropped > 0 {
            metrics::counter!("ambit_controller_telemetry_events_dropped_total")
                .increment(request.events_dropped);
        }
        for event in request.events {
            let taps = event.taps.clone();
            let record = flow_record(&self.id, event);
            for tap in taps {
                self.store.taps.deliver(tap, &record);
            }
            if record.failed || record.would_deny {
                store.add_failure(Failure {
                    received: now,
                    record,
                });
            }
        }
    }
}
