//! The proxy's side of the telemetry report stream (`ambit.telemetry.v1.Telemetry/Report`):
//! its metrics every report interval, the flows that failed (rate-limited), the flows a
//! running tap selected, and the shapes of what it carried, sent to the controller over the
//! same link and as the same subscriber as its discovery stream.
//!
//! Two halves: a [`Reporter`] the data path holds (cheap to clone, never blocks, never grows:
//! a healthy untapped flow costs it one atomic load in [`Reporter::wants`]), and the
//! [`ReportStream`] task that keeps the stream up, reconnecting with backoff like the
//! discovery client.

pub mod baggage;
mod rate;
mod shapes;
mod stream;
mod taps;

pub use shapes::{Shape, ShapeView, Shapes, path_prefix};
pub use stream::{MetricsSource, ReportError, ReportStream};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambit_proto::api::telemetry::FlowEvent;
use tokio::sync::mpsc;

use rate::RateLimit;
use taps::Taps;

/// How a reporter behaves; the defaults suit a proxy, tests shorten the times.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Between metrics reports, until the controller asks for another interval.
    pub interval: Duration,
    /// Queued events go out this soon even between metrics reports, so a tap feels live.
    pub flush: Duration,
    /// Events held between messages; past it they are dropped and counted.
    pub queue: usize,
    /// Failed flows no tap selected, sent at most this many a second.
    pub failed_per_second: u32,
    /// Shapes held; past it the least recently seen goes.
    pub max_shapes: usize,
    /// How long the controller gets to answer the stream's opening.
    pub open_timeout: Duration,
    /// How long a message may wait for room on the stream before the controller counts as
    /// stalled and the stream is opened again.
    pub send_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_secs(5),
            flush: Duration::from_millis(250),
            queue: 4096,
            failed_per_second: 50,
            max_shapes: 4096,
            open_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// What the data path reports flows to; see the module docs.
#[derive(Clone)]
pub struct Reporter {
    shared: Arc<Shared>,
}

struct Shared {
    /// A stream takes what is queued; a detached reporter wants no failures.
    attached: bool,
    taps: Taps,
    failed: RateLimit,
    events: mpsc::Sender<FlowEvent>,
    /// Events not sent (rate limit, full queue) since the last message.
    dropped: AtomicU64,
    shapes: Shapes,
}

/// A reporter and the task that sends what it gathers; run the task with
/// [`ReportStream::run`] where a controller is configured.
pub fn channel(settings: Settings) -> (Reporter, ReportStream) {
    let (reporter, rx) = reporter(settings.clone(), true);
    let stream = ReportStream::new(reporter.clone(), rx, settings);
    (reporter, stream)
}

fn reporter(settings: Settings, attached: bool) -> (Reporter, mpsc::Receiver<FlowEvent>) {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let reporter = Reporter {
        shared: Arc::new(Shared {
            attached,
            taps: Taps::default(),
            failed: RateLimit::new(settings.failed_per_second),
            events: tx,
            dropped: AtomicU64::new(0),
            shapes: Shapes::new(settings.max_shapes),
        }),
    };
    (reporter, rx)
}

impl Reporter {
    /// A reporter with no stream behind it (a proxy with no controller): it wants no flow
    /// (no tap can start); shapes are still kept.
    pub fn detached() -> Reporter {
        reporter(
            Settings {
                queue: 1,
                ..Settings::default()
            },
            false,
        )
        .0
    }

    /// Whether a flow that ended so is worth building a [`FlowEvent`] for: a failed one
    /// always (with a stream to send it on), any while a tap runs. One atomic load.
    #[inline]
    pub fn wants(&self, failed: bool) -> bool {
        (failed && self.shared.attached) || self.shared.taps.any()
    }

    /// Queues an ended flow for the controller: tagged with the taps it matches (within each
    /// tap's rate), or as a failure (within the failure rate); otherwise it is let go. Never
    /// waits: a full queue drops the event and counts it.
    pub fn report(&self, mut event: FlowEvent) {
        let s = &self.shared;
        event.taps = s.taps.matching(&event);
        if event.taps.is_empty() {
            if !event.failed {
                return;
            }
            if !s.failed.allow() {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if s.events.try_send(event).is_err() {
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The shape table the data path counts flows in.
    pub fn shapes(&self) -> &Shapes {
        &self.shared.shapes
    }

    /// Ids of the taps running now, in order.
    pub fn running_taps(&self) -> Vec<u64> {
        self.shared.taps.ids()
    }

    /// Starts a tap as if the controller had, for tests of the proxies that report.
    #[cfg(any(test, feature = "test-util"))]
    pub fn start_tap(&self, tap: ambit_proto::api::telemetry::Tap) {
        self.shared.taps.start(tap);
    }

    fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }
}

/// Now as Unix milliseconds, as the report messages carry times.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
