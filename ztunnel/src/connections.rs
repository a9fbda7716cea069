//! The connections ztunnel is carrying now, and the last ones it closed, for the admin
//! endpoint (`ambit config connections`): who called whom, with which proven identity.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

const RECENT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub direction: Direction,
    /// The pod ztunnel serves on this side.
    pub pod: String,
    pub source: SocketAddr,
    /// The source's SPIFFE ID as proven over mTLS; absent for plaintext.
    pub source_identity: Option<String>,
    pub destination: SocketAddr,
    pub destination_workload: Option<String>,
    pub destination_service: Option<String>,
    /// "HBONE" or "TCP".
    pub protocol: String,
    #[serde(with = "unix_seconds")]
    pub started: SystemTime,
    /// Set once closed: bytes to the destination and back, and the error if any.
    pub sent: Option<u64>,
    pub received: Option<u64>,
    pub error: Option<String>,
}

impl ConnectionInfo {
    /// A connection starting now; the caller fills in what it knows of the two sides.
    pub fn starting(
        direction: Direction,
        pod: &str,
        source: SocketAddr,
        destination: SocketAddr,
        protocol: &str,
    ) -> Self {
        ConnectionInfo {
            direction,
            pod: pod.into(),
            source,
            source_identity: None,
            destination,
            destination_workload: None,
            destination_service: None,
            protocol: protocol.into(),
            started: SystemTime::now(),
            sent: None,
            received: None,
            error: None,
        }
    }
}

#[derive(Default)]
pub struct ConnectionTracker {
    next: AtomicU64,
    inner: Mutex<Tracked>,
}

#[derive(Default)]
struct Tracked {
    open: HashMap<u64, ConnectionInfo>,
    recent: VecDeque<ConnectionInfo>,
}

/// Removes the connection from the open set when dropped, keeping it among the recent ones.
pub struct TrackedConnection {
    id: u64,
    tracker: Arc<ConnectionTracker>,
    outcome: Option<(u64, u64, Option<String>)>,
}

impl TrackedConnection {
    pub fn finish(mut self, sent: u64, received: u64, error: Option<String>) {
        self.outcome = Some((sent, received, error));
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        let mut t = self.tracker.inner.lock();
        if let Some(mut info) = t.open.remove(&self.id) {
            let (sent, received, error) =
                self.outcome
                    .take()
                    .unwrap_or((0, 0, Some("ended before it was carried".into())));
            info.sent = Some(sent);
            info.received = Some(received);
            info.error = error;
            if t.recent.len() == RECENT {
                t.recent.pop_front();
            }
            t.recent.push_back(info);
        }
    }
}

impl ConnectionTracker {
    pub fn track(self: &Arc<Self>, info: ConnectionInfo) -> TrackedConnection {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().open.insert(id, info);
        TrackedConnection {
            id,
            tracker: self.clone(),
            outcome: None,
        }
    }

    /// Open connections first, then the recently closed, oldest first.
    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let t = self.inner.lock();
        let mut all: Vec<ConnectionInfo> = t.open.values().cloned().collect();
        all.sort_by_key(|c| c.started);
        all.extend(t.recent.iter().cloned());
        all
    }
}

mod unix_seconds {
    use std::time::{Duration, SystemTime};

    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        s.serialize_f64(secs)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = f64::deserialize(d)?;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
    }
}
