//! The connections ztunnel is carrying now, and the last ones it closed, for the admin
//! endpoint (`ambit config connections`): who called whom, with which proven identity.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ambit_discovery::memory::Activity;
use parking_lot::Mutex;

const RECENT: usize = 256;

pub use ambit_discovery::dump::ztunnel::{ConnectionInfo, Direction};

/// Shards of the tracker: a connection opening or closing locks one, so the data path's
/// workers rarely meet on the same lock.
const SHARDS: usize = 16;

pub struct ConnectionTracker {
    /// Connections opened so far; also the next one's id.
    next: AtomicU64,
    closed: AtomicU64,
    shards: [Mutex<Tracked>; SHARDS],
}

impl Default for ConnectionTracker {
    fn default() -> Self {
        ConnectionTracker {
            next: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

#[derive(Default)]
struct Tracked {
    open: HashMap<u64, ConnectionInfo>,
    /// This shard's share of the recently closed ones.
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
        let mut t = self.tracker.shard(self.id).lock();
        if let Some(mut info) = t.open.remove(&self.id) {
            let (sent, received, error) =
                self.outcome
                    .take()
                    .unwrap_or((0, 0, Some("ended before it was carried".into())));
            info.sent = Some(sent);
            info.received = Some(received);
            info.error = error;
            if t.recent.len() == RECENT / SHARDS {
                t.recent.pop_front();
            }
            t.recent.push_back(info);
        }
        drop(t);
        self.tracker.closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl ConnectionTracker {
    pub fn track(self: &Arc<Self>, info: ConnectionInfo) -> TrackedConnection {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(id).lock().open.insert(id, info);
        TrackedConnection {
            id,
            tracker: self.clone(),
            outcome: None,
        }
    }

    /// How many connections were opened and closed so far: when a burst is over, for
    /// [`ambit_discovery::memory::trim_when_quiet`]. The two reads are not taken together; a
    /// connection that opens or closes between them shows in the next sample, as movement.
    pub fn activity(&self) -> Activity {
        let opened = self.next.load(Ordering::Relaxed);
        let closed = self.closed.load(Ordering::Relaxed);
        Activity { opened, closed }
    }

    fn shard(&self, id: u64) -> &Mutex<Tracked> {
        &self.shards[id as usize % SHARDS]
    }

    /// Open connections first, then the recently closed (about the last [`RECENT`]), each
    /// oldest first.
    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let mut open = Vec::new();
        let mut recent = Vec::new();
        for shard in &self.shards {
            let t = shard.lock();
            open.extend(t.open.values().cloned());
            recent.extend(t.recent.iter().cloned());
        }
        open.sort_by_key(|c| c.started);
        recent.sort_by_key(|c| c.started);
        open.extend(recent);
        open
    }
}
