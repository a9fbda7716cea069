//! The client's pool: HTTP/2 connections per (source identity, endpoint, expected identity),
//! each carrying up to ~100 tunnels. A burst of first tunnels to one key shares one dial (and
//! its failure); keys never wait on each other; a connection idle for the idle timeout is
//! closed, and a key with no connection left leaves the map.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::error::classify;
use super::linger::LingeringClose;
use super::{HboneError, Keepalive, MAX_STREAMS_PER_CONNECTION, keepalive};
use crate::identity::SpiffeId;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) struct PoolKey {
    pub source: SpiffeId,
    pub endpoint: SocketAddr,
    pub destination_identity: SpiffeId,
}

/// A new connection, before the pool drives it.
pub(super) struct Dialed {
    pub send: SendRequest<Bytes>,
    pub connection: Connection<LingeringClose<TlsStream<TcpStream>>, Bytes>,
    /// Serial of the certificate the connection was made with: after a rotation, new tunnels
    /// go on new connections with the new certificate while old ones finish on the old.
    pub cert_serial: String,
}

/// What a tunnel needs from the pool: a connection to open its stream on, and a stream slot.
pub(super) struct Checkout {
    pub send: SendRequest<Bytes>,
    pub slot: StreamSlot,
    pub state: Arc<ConnState>,
    /// The connection was dialled for this tunnel.
    pub fresh: bool,
}

/// `active` once the pool's driver has taken an idle connection out of use.
const CLOSING: u32 = u32::MAX;

/// Tunnels open on one connection and whether it can take more.
pub(super) struct ConnState {
    active: AtomicU32,
    dead: AtomicBool,
    epoch: Instant,
    /// Milliseconds from `epoch` to when `active` last fell to zero.
    idle_since_ms: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            active: AtomicU32::new(0),
            dead: AtomicBool::new(false),
            epoch: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// A stream slot, unless the connection is full or being closed.
    fn try_take(self: &Arc<Self>) -> Option<StreamSlot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < MAX_STREAMS_PER_CONNECTION).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }

    /// Takes an idle connection out of use; fails if a tunnel took a slot meanwhile.
    fn claim_idle(&self) -> bool {
        self.active
            .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// Returns a stream slot to its connection when the tunnel is dropped.
pub(super) struct StreamSlot(Arc<ConnState>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let s = &self.0;
        let now = u64::try_from(s.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stamped before the count drops, so an idle check that sees zero sees this time.
        s.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        s.active.fetch_sub(1, Ordering::AcqRel);
    }
}

struct PooledConnection {
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
    cert_serial: String,
}

#[derive(Default)]
struct PoolEntry {
    /// Held while dialling, so a burst of first tunnels shares one new connection. The dial is
    /// bounded by the connect and handshake timeouts, so is the wait.
    conns: tokio::sync::Mutex<Vec<PooledConnection>>,
    /// Dials that failed, and the last failure: a tunnel that waited on a dial that failed
    /// gets its failure instead of dialling the same dead endpoint again.
    failed_dials: AtomicU64,
    last_failure: Mutex<Option<HboneError>>,
}

/// How the pool drives its connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct DriveSettings {
    pub keepalive: Keepalive,
    pub idle_timeout: Duration,
}

pub(super) struct Pool {
    shared: Arc<Shared>,
    settings: DriveSettings,
}

struct Shared {
    map: Mutex<HashMap<PoolKey, Arc<PoolEntry>>>,
    open: AtomicUsize,
}

impl Pool {
    pub fn new(settings: DriveSettings) -> Self {
        Pool {
            shared: Arc::new(Shared {
                map: Mutex::new(HashMap::new()),
                open: AtomicUsize::new(0),
            }),
            settings,
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Keys in the map now (each with a connection, or a tunnel being opened).
    pub fn keys(&self) -> usize {
        self.shared.map.lock().len()
    }

    /// A stream slot on a connection for `key` made with the certificate `cert_serial`,
    /// dialling with `dial` when none has room.
    pub async fn checkout<F>(
        &self,
        key: &PoolKey,
        cert_serial: &str,
        dial: F,
    ) -> Result<Checkout, HboneError>
    where
        F: Future<Output = Result<Dialed, HboneError>>,
    {
        let entry = self
            .shared
            .map
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let result = self.checkout_entry(&entry, key, cert_serial, dial).await;
        drop(entry);
        if result.is_err() {
            self.shared.prune(key);
        }
        result
    }

    async fn checkout_entry<F>(
        &self,
        entry: &PoolEntry,
        key: &PoolKey,
        cert_serial: &str,
        dial: F,
    ) -> Result<Checkout, HboneError>
    where
        F: Future<Output = Result<Dialed, HboneError>>,
    {
        let failures_seen = entry.failed_dials.load(Ordering::Acquire);
        let mut conns = entry.conns.lock().await;
        conns.retain(|c| !c.state.is_dead() && c.cert_serial == cert_serial);
        for c in conns.iter() {
            if let Some(slot) = c.state.try_take() {
                return Ok(Checkout {
                    send: c.send.clone(),
                    slot,
                    state: c.state.clone(),
                    fresh: false,
                });
            }
        }
        if entry.failed_dials.load(Ordering::Acquire) != failures_seen
            && let Some(failure) = entry.last_failure.lock().as_ref()
        {
            return Err(failure.shared_copy());
        }
        let dialed = match dial.await {
            Ok(d) => d,
            Err(e) => {
                *entry.last_failure.lock() = Some(e.shared_copy());
                entry.failed_dials.fetch_add(1, Ordering::AcqRel);
                return Err(e);
            }
        };
        let state = Arc::new(ConnState::new());
        let slot = state.try_take().expect("a new connection has room");
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(drive(
            dialed.connection,
            state.clone(),
            self.settings,
            key.clone(),
            Arc::downgrade(&self.shared),
        ));
        conns.push(PooledConnection {
            send: dialed.send.clone(),
            state: state.clone(),
            cert_serial: dialed.cert_serial,
        });
        Ok(Checkout {
            send: dialed.send,
            slot,
            state,
            fresh: true,
        })
    }
}

impl Shared {
    /// Removes `key` if no connection of it is alive and no tunnel is being opened on it.
    fn prune(&self, key: &PoolKey) {
        let mut map = self.map.lock();
        let Some(entry) = map.get(key) else { return };
        // Checkouts clone the entry under the map lock, so a count of one (the map's) means
        // nobody is using it, and nobody can start to while the lock is held.
        if Arc::strong_count(entry) != 1 {
            return;
        }
        let empty = match entry.conns.try_lock() {
            Ok(mut conns) => {
                conns.retain(|c| !c.state.is_dead());
                conns.is_empty()
            }
            Err(_) => false,
        };
        if empty {
            map.remove(key);
        }
    }
}

/// Runs one connection until it fails, stops answering pings, or carries no tunnel for the
/// idle timeout; then takes it out of the pool.
async fn drive(
    mut connection: Connection<LingeringClose<TlsStream<TcpStream>>, Bytes>,
    state: Arc<ConnState>,
    settings: DriveSettings,
    key: PoolKey,
    pool: Weak<Shared>,
) {
    let addr = key.endpoint;
    let ping_pong = connection.ping_pong();
    let keepalive = async {
        match ping_pong {
            Some(p) => keepalive::run(p, settings.keepalive).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(keepalive);
    let idle = tokio::time::sleep(settings.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(endpoint = %addr, error = %classify(&e), "HBONE connection closed with an error");
                }
                break;
            }
            reason = &mut keepalive => {
                tracing::warn!(endpoint = %addr, %reason, "closing HBONE connection");
                break;
            }
            () = &mut idle => {
                let now = tokio::time::Instant::now();
                match state.idle_for() {
                    Some(quiet) if quiet >= settings.idle_timeout => {
                        if state.claim_idle() {
                            tracing::debug!(endpoint = %addr, idle_timeout = ?settings.idle_timeout, "closing idle pooled HBONE connection");
                            break;
                        }
                        idle.as_mut().reset(now + settings.idle_timeout);
                    }
                    Some(quiet) => idle.as_mut().reset(now + (settings.idle_timeout - quiet)),
                    None => idle.as_mut().reset(now + settings.idle_timeout),
                }
            }
        }
    }
    state.mark_dead();
    drop(connection);
    if let Some(pool) = pool.upgrade() {
        pool.open.fetch_sub(1, Ordering::Relaxed);
        pool.prune(&key);
    }
}
