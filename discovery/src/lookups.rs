//! A proxy's side of on-demand destinations: the addresses it asked the controller about, what
//! the answers were, and when each was last used. The data path asks ([`Lookups::look_up`])
//! when a connection's address is not in its config and waits, bounded, for the answer; the
//! discovery client sends the questions on its stream and hands back the answers once the
//! response that carries them is applied (so a waiter that is told "known" finds the
//! destination in the config). Addresses no connection used for the idle time are released.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};

/// What the controller said of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not answered yet.
    Pending,
    /// The mesh has a workload or service there: it is in the config now.
    Known,
    /// The mesh has nothing there: traffic to it is plain passthrough.
    Unknown,
}

/// Why a lookup gave no answer. The connection that asked must be refused: sending mesh
/// traffic around its destination's policy, or in plaintext, is never the fallback.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error(
        "ztunnel has no config stream to the controller, so it cannot learn what {address} is (check the controller is up and reachable; destinations learnt before keep working)"
    )]
    NoController { address: IpAddr },
    #[error(
        "the controller did not answer the lookup of {address} within {timeout:?} (is it overloaded?)"
    )]
    TimedOut { address: IpAddr, timeout: Duration },
    #[error("ztunnel refused the controller's answer about {address}: {reason}")]
    Refused { address: IpAddr, reason: String },
}

/// The most addresses held at once. A pod that connects to ever new addresses outside the
/// mesh (a crawler) would otherwise grow this, and the controller's copy, without bound: past
/// it the least recently used answered address is released to make room.
pub const MAX_HELD: usize = 50_000;

fn least_recently_used(entries: &HashMap<IpAddr, Entry>) -> Option<IpAddr> {
    entries
        .iter()
        .filter(|(_, e)| e.answer != Answer::Pending)
        .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
        .map(|(a, _)| *a)
}

struct Entry {
    answer: Answer,
    /// Milliseconds since [`Lookups::epoch`] of the last connection that used the address.
    last_used: Arc<AtomicU64>,
}

#[derive(Default)]
struct Outbox {
    lookup: Vec<IpAddr>,
    release: Vec<IpAddr>,
}

/// See the module docs. Shared by the data path and the discovery client.
pub struct Lookups {
    entries: RwLock<HashMap<IpAddr, Entry>>,
    /// What the client has yet to send.
    outbox: Mutex<Outbox>,
    /// Wakes the client when the outbox has something.
    wake: Notify,
    /// Bumped on every answer and every change of `connected`: waiters look again.
    changed: watch::Sender<u64>,
    connected: AtomicBool,
    epoch: Instant,
    idle: Duration,
    timeout: Duration,
}

impl Lookups {
    /// `idle`: how long an address no connection uses is kept; `timeout`: how long a connection
    /// waits for an answer.
    pub fn new(idle: Duration, timeout: Duration) -> Self {
        Lookups {
            entries: RwLock::default(),
            outbox: Mutex::default(),
            wake: Notify::new(),
            changed: watch::Sender::new(0),
            connected: AtomicBool::new(false),
            epoch: Instant::now(),
            idle,
            timeout,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Marks `address` used now, if it was looked up (a connection to it, or from it). One
    /// read lock and a relaxed store: this is on every connection.
    pub fn touch(&self, address: IpAddr) {
        if let Some(e) = self.entries.read().get(&address) {
            e.last_used.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether the controller answered about `address` (known or not), touching it if so:
    /// a later connection's check, one read lock.
    pub fn settled(&self, address: IpAddr) -> bool {
        match self.entries.read().get(&address) {
            Some(e) if e.answer != Answer::Pending => {
                e.last_used.store(self.now_ms(), Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// What the controller said of `address`, waiting for its answer (at most the timeout) if
    /// it was not asked before. Call it for an address the config does not hold.
    pub async fn look_up(&self, address: IpAddr) -> Result<Answer, LookupError> {
        let mut changed = self.changed.subscribe();
        self.ask(address);
        let wait = async {
            loop {
                if !self.connected.load(Ordering::Acquire) {
                    return Err(LookupError::NoController { address });
                }
                match self.entries.read().get(&address).map(|e| e.answer.clone()) {
                    Some(Answer::Pending) => {}
                    Some(answer) => return Ok(answer),
                    // Dropped by a refused answer (see `refused`).
                    None => {
                        return Err(LookupError::Refused {
                            address,
                            reason: "the config update carrying it was refused".into(),
                        });
                    }
                }
                if changed.changed().await.is_err() {
                    return Err(LookupError::NoController { address });
                }
            }
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .unwrap_or(Err(LookupError::TimedOut {
                address,
                timeout: self.timeout,
            }))
    }

    /// Registers `address` (touching it) and queues its lookup if it is new, without waiting
    /// for the answer.
    pub fn ask(&self, address: IpAddr) {
        let now = self.now_ms();
        if let Some(e) = self.entries.read().get(&address) {
            e.last_used.store(now, Ordering::Relaxed);
            return;
        }
        let mut entries = self.entries.write();
        if entries.contains_key(&address) {
            return;
        }
        let evicted = if entries.len() >= MAX_HELD {
            least_recently_used(&entries)
        } else {
            None
        };
        if let Some(old) = evicted {
            entries.remove(&old);
        }
        entries.insert(
            address,
            Entry {
                answer: Answer::Pending,
                last_used: Arc::new(AtomicU64::new(now)),
            },
        );
        drop(entries);
        let mut outbox = self.outbox.lock();
        outbox.release.extend(evicted);
        outbox.lookup.push(address);
        drop(outbox);
        self.wake.notify_one();
    }

    // The discovery client's side.

    /// Every address held, for the first request of a (re)connected stream; what the outbox
    /// held is in it, so the outbox is emptied.
    pub fn held(&self) -> Vec<String> {
        *self.outbox.lock() = Outbox::default();
        self.entries.read().keys().map(IpAddr::to_string).collect()
    }

    /// Whether the stream is up; waiters fail at once while it is not.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Resolves when the outbox may have something to send.
    pub async fn wanted(&self) {
        self.wake.notified().await
    }

    /// The lookups and releases to send, as text.
    pub fn take_outbox(&self) -> (Vec<String>, Vec<String>) {
        let out = std::mem::take(&mut *self.outbox.lock());
        let text = |v: Vec<IpAddr>| v.iter().map(IpAddr::to_string).collect();
        (text(out.lookup), text(out.release))
    }

    /// The answers a response carried, once it was applied.
    pub fn answered(&self, answered: &[String], unknown: &[String]) {
        if answered.is_empty() {
            return;
        }
        let unknown: Vec<IpAddr> = unknown.iter().filter_map(|a| a.parse().ok()).collect();
        let mut entries = self.entries.write();
        for address in answered.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            if let Some(e) = entries.get_mut(&address) {
                e.answer = if unknown.contains(&address) {
                    Answer::Unknown
                } else {
                    Answer::Known
                };
            }
        }
        drop(entries);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The response answering `answered` was refused: those lookups are dropped (their waiters
    /// fail; the next connection asks again) and released at the controller.
    pub fn refused(&self, answered: &[String]) {
        let addresses: Vec<IpAddr> = answered.iter().filter_map(|a| a.parse().ok()).collect();
        self.forget(&addresses);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Releases the answered addresses no connection used for the idle time; returns how many.
    pub fn release_idle(&self) -> usize {
        let cutoff = self.now_ms().saturating_sub(self.idle.as_millis() as u64);
        let idle: Vec<IpAddr> = self
            .entries
            .read()
            .iter()
            .filter(|(_, e)| {
                e.answer != Answer::Pending && e.last_used.load(Ordering::Relaxed) < cutoff
            })
            .map(|(a, _)| *a)
            .collect();
        self.forget(&idle);
        idle.len()
    }

    fn forget(&self, addresses: &[IpAddr]) {
        if addresses.is_empty() {
            return;
        }
        let mut entries = self.entries.write();
        let gone: Vec<IpAddr> = addresses
            .iter()
            .filter(|a| entries.remove(a).is_some())
            .copied()
            .collect();
        drop(entries);
        self.outbox.lock().release.extend(gone);
        self.wake.notify_one();
    }

    /// How often [`Self::release_idle`] should run: often enough that an address goes within
    /// a quarter of the idle time past it.
    pub fn sweep_every(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Each address held, with its answer, for the admin dump.
    pub fn snapshot(&self) -> Vec<(IpAddr, Answer)> {
        let mut all: Vec<_> = self
            .entries
            .read()
            .iter()
            .map(|(a, e)| (*a, e.answer.clone()))
            .collect();
        all.sort_by_key(|(a, _)| *a);
        all
    }
}

#[cfg(test)]
mod tests;
