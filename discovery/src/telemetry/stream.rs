//! The report stream itself: opened like the discovery subscription (same link, token and
//! subscriber), it sends the metrics and shapes every interval and queued events as soon as a
//! flush finds some, and takes taps and the interval from the controller. When the stream ends
//! or the controller cannot be reached it reconnects with backoff, logging the cause once per
//! outage. Every wait on the controller has a timeout, and nothing here ever holds up the data
//! path: it only ever drains the queue the [`Reporter`] fills without waiting.

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::discovery::Subscriber;
use ambit_proto::api::telemetry::telemetry_client::TelemetryClient;
use ambit_proto::api::telemetry::{FlowEvent, ReportRequest, ReportResponse};
use ambit_proto::drain::DrainWatch;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Reporter, Settings, unix_ms};
use crate::ca_client::status_detail;
use crate::link::{ControllerLink, LinkError};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Messages waiting for the transport; beyond them sends wait (up to `Settings::send_timeout`).
const OUTGOING: usize = 4;
/// Events in one message at most; the rest go in the next.
const EVENTS_PER_MESSAGE: usize = 1024;
/// The shortest interval the controller may ask for.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The proxy's Prometheus text, exactly what its /metrics serves.
pub trait MetricsSource: Send + Sync + 'static {
    fn render(&self) -> String;
}

impl<F: Fn() -> String + Send + Sync + 'static> MetricsSource for F {
    fn render(&self) -> String {
        self()
    }
}

/// Why a report stream ended; it is opened again after any of them.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("could not authenticate to the controller at {address}: {source}")]
    Credentials { address: String, source: LinkError },
    #[error("the controller at {address} refused the telemetry stream ({:?}): {}", status.code(), status_detail(status))]
    Open {
        address: String,
        status: tonic::Status,
    },
    #[error(
        "the controller at {address} did not answer the telemetry stream's opening within {timeout:?}"
    )]
    OpenTimeout { address: String, timeout: Duration },
    #[error("the telemetry stream to the controller at {address} broke ({:?}): {}", status.code(), status_detail(status))]
    Stream {
        address: String,
        status: tonic::Status,
    },
    #[error("the controller at {address} took no report for {timeout:?} (stalled)")]
    Stalled { address: String, timeout: Duration },
    #[error("the controller at {address} closed the telemetry stream")]
    Closed { address: String },
}

/// The task half of [`super::channel`].
pub struct ReportStream {
    reporter: Reporter,
    events: mpsc::Receiver<FlowEvent>,
    settings: Settings,
}

impl ReportStream {
    pub(super) fn new(
        reporter: Reporter,
        events: mpsc::Receiver<FlowEvent>,
        settings: Settings,
    ) -> Self {
        ReportStream {
            reporter,
            events,
            settings,
        }
    }

    /// Keeps a report stream to the controller up until `drain` fires.
    pub async fn run(
        mut self,
        link: ControllerLink,
        subscriber: Subscriber,
        metrics: Arc<dyn MetricsSource>,
        drain: DrainWatch,
    ) {
        let mut backoff = FIRST_BACKOFF;
        // The cause of the outage under way, logged once when it starts.
        let mut outage: Option<String> = None;
        loop {
            let mut connected = false;
            let ended = tokio::select! {
                r = self.session(&link, &subscriber, &*metrics, &mut connected, &mut outage) => r,
                () = drain.signaled() => return,
            };
            // Taps belong to the stream they came on: the controller restarts them on the next.
            self.reporter.shared.taps.clear();
            if connected {
                backoff = FIRST_BACKOFF;
            }
            let cause = ended.to_string();
            if outage.is_none() {
                tracing::warn!(error = %cause, "no telemetry stream to the controller; retrying with backoff (flows meanwhile are counted, failures queued up to the bound)");
                outage = Some(cause);
            } else {
                tracing::debug!(error = %cause, "telemetry stream: still no controller; retrying in {backoff:?}");
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = drain.signaled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(
        &mut self,
        link: &ControllerLink,
        subscriber: &Subscriber,
        metrics: &dyn MetricsSource,
        connected: &mut bool,
        outage: &mut Option<String>,
    ) -> ReportError {
        let address = || link.address().to_string();
        let (tx, rx) = mpsc::channel(OUTGOING);
        let first = ReportRequest {
            reporter: Some(subscriber.clone()),
            unix_ms: unix_ms(),
            ..Default::default()
        };
        tx.try_send(first).expect("an empty channel has room");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Err(source) = link.authorize(&mut request) {
            return ReportError::Credentials {
                address: address(),
                source,
            };
        }
        let mut client = TelemetryClient::new(link.channel());
        let open_timeout = self.settings.open_timeout;
        let mut responses = match tokio::time::timeout(open_timeout, client.report(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                return ReportError::Open {
                    address: address(),
                    status,
                };
            }
            Err(_) => {
                return ReportError::OpenTimeout {
                    address: address(),
                    timeout: open_timeout,
                };
            }
        };
        *connected = true;
        match outage.take() {
            Some(cause) => {
                tracing::info!(controller = %link.address(), after = %cause, "telemetry stream to the controller is back")
            }
            None => {
                tracing::info!(controller = %link.address(), "reporting telemetry to the controller")
            }
        }
        let mut interval = self.settings.interval;
        let mut report = tokio::time::interval(interval);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(self.settings.flush);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                _ = report.tick() => Some(self.metrics_report(metrics)),
                _ = flush.tick() => self.events_report(),
                answer = responses.message() => match answer {
                    Ok(Some(answer)) => {
                        if let Some(next) = self.apply(&answer, interval) {
                            interval = next;
                            report = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                            report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        None
                    }
                    Ok(None) => return ReportError::Closed { address: address() },
                    Err(status) => return ReportError::Stream { address: address(), status },
                },
            };
            let Some(message) = message else { continue };
            let timeout = self.settings.send_timeout;
            match tokio::time::timeout(timeout, tx.send(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return ReportError::Closed { address: address() },
                Err(_) => {
                    return ReportError::Stalled {
                        address: address(),
                        timeout,
                    };
                }
            }
        }
    }

    /// Starts and stops taps as told; the new interval when the controller set one.
    fn apply(&self, answer: &ReportResponse, current: Duration) -> Option<Duration> {
        let taps = &self.reporter.shared.taps;
        for id in &answer.stop {
            taps.stop(*id);
            tracing::debug!(tap = id, "tap stopped");
        }
        for tap in &answer.start {
            tracing::debug!(tap = tap.id, "tap started");
            taps.start(tap.clone());
        }
        let asked = answer.report_interval_seconds;
        if asked == 0 {
            return None;
        }
        let next = Duration::from_secs(asked.into()).max(MIN_INTERVAL);
        (next != current).then_some(next)
    }

    /// The events queued now (at most a message's worth), taken off the queue: what the next
    /// message carries, and what a proxy's tests look at without a controller.
    pub fn queued(&mut self) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        while events.len() < EVENTS_PER_MESSAGE {
            match self.events.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        events
    }

    fn metrics_report(&mut self, metrics: &dyn MetricsSource) -> ReportRequest {
        ReportRequest {
            reporter: None,
            unix_ms: unix_ms(),
            metrics: metrics.render(),
            events: self.queued(),
            events_dropped: self.reporter.take_dropped(),
            shapes: self.reporter.shapes().snapshot(),
        }
    }

    /// Queued events, if any, or drops to say.
    fn events_report(&mut self) -> Option<ReportRequest> {
        let events = self.queued();
        if events.is_empty() {
            return None;
        }
        Some(ReportRequest {
            reporter: None,
            unix_ms: unix_ms(),
            events,
            events_dropped: self.reporter.take_dropped(),
            ..Default::default()
        })
    }
}
