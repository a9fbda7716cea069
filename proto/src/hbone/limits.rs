//! Bounds on what peers can make an HBONE server hold: connections still in their handshake
//! (no identity proven yet), connections in all, and connections per proven source identity.
//! One [`ConnectionLimits`] is shared by every server of a process (ztunnel runs one per pod),
//! so the bounds are per node. Over a bound a connection is closed at once and counted; the
//! process never learns of a flood by running out of file descriptors.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::watch::Abuse;
use crate::identity::SpiffeId;
use crate::log_limit::LogLimiter;

/// Connections still in their TLS or HTTP/2 handshake, per node. A handshake costs a few
/// hundred microseconds of CPU when it goes well; a thousand at once is more than a node's
/// legitimate clients start in one handshake timeout, and bounds what unauthenticated peers
/// can hold to a small share of the fd budget.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// HBONE connections, handshaking or established, per node. Every tunnel on them also needs
/// an fd for its upstream connection, and the outbound side needs its own, so the HBONE
/// connections themselves take at most a fifth of a 20k fd limit. Clients pool ~100 tunnels on
/// one connection, so this carries far more tunnels than a node serves.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Established HBONE connections from one source identity, per node: a quarter of the node's
/// bound, so one identity (one compromised workload, or one busy deployment) cannot take every
/// connection slot from the others.
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 1024;

/// A client that has not finished TLS *and* the HTTP/2 preface by then is dropped (slowloris).
/// Generous for a loaded node, short enough that held handshakes turn over quickly.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that carried no tunnel for this long is closed with GOAWAY. Longer than the
/// client's pool idle time (5 min, as Istio's ztunnel), so the client normally closes first and
/// a GOAWAY rarely races a new tunnel.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A header block (a CONNECT's HEADERS and its CONTINUATIONs) must end within this long of
/// its first frame, else the connection is closed: h2 bounds a block's size but not its time,
/// and no other frame may pass while one is open. A CONNECT's headers fit in one frame.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Log lines per second for each kind of refusal; the rest are counted and reported.
const LOG_LINES_PER_SECOND: u32 = 5;
const IDENTITY_SHARDS: usize = 16;

/// Which bound refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Handshakes,
    Connections,
    ConnectionsPerIdentity,
}

impl Limit {
    pub const ALL: [Limit; 3] = [
        Limit::Handshakes,
        Limit::Connections,
        Limit::ConnectionsPerIdentity,
    ];

    /// The command-line flag that sets it (ztunnel's and the waypoint's).
    pub fn flag(self) -> &'static str {
        match self {
            Limit::Handshakes => "--hbone-max-handshakes",
            Limit::Connections => "--hbone-max-connections",
            Limit::ConnectionsPerIdentity => "--hbone-max-connections-per-identity",
        }
    }

    /// A label value for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Handshakes => "handshakes",
            Limit::Connections => "connections",
            Limit::ConnectionsPerIdentity => "connections_per_identity",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bounds; see the `DEFAULT_*` constants for why each default is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub max_handshakes: usize,
    pub max_connections: usize,
    pub max_connections_per_identity: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_identity: DEFAULT_MAX_CONNECTIONS_PER_IDENTITY,
        }
    }
}

/// The live counts and the counters of what was refused, shared by all servers given the same
/// `Arc`. Lock-free on the accept path except for one shard of the per-identity map.
pub struct ConnectionLimits {
    settings: LimitSettings,
    handshakes: AtomicUsize,
    connections: AtomicUsize,
    per_identity: [Mutex<HashMap<SpiffeId, usize>>; IDENTITY_SHARDS],
    hasher: RandomState,
    refused: [AtomicU64; 3],
    handshake_timeouts: AtomicU64,
    handshake_failures: AtomicU64,
    idle_closed: AtomicU64,
    abuse_closed: [AtomicU64; Abuse::ALL.len()],
    pub(crate) refusal_log: [LogLimiter; 3],
    pub(crate) abuse_log: LogLimiter,
    pub(crate) timeout_log: LogLimiter,
    pub(crate) failure_log: LogLimiter,
}

impl fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("settings", &self.settings)
            .field("handshakes", &self.handshakes())
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits::new(LimitSettings::default())
    }
}

impl ConnectionLimits {
    pub fn new(settings: LimitSettings) -> Self {
        ConnectionLimits {
            settings,
            handshakes: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            per_identity: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            handshake_timeouts: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            abuse_closed: std::array::from_fn(|_| AtomicU64::new(0)),
            refusal_log: std::array::from_fn(|_| LogLimiter::new(LOG_LINES_PER_SECOND)),
            abuse_log: LogLimiter::new(LOG_LINES_PER_SECOND),
            timeout_log: LogLimiter::new(LOG_LINES_PER_SECOND),
            failure_log: LogLimiter::new(LOG_LINES_PER_SECOND),
        }
    }

    pub fn settings(&self) -> LimitSettings {
        self.settings
    }

    /// The bound `limit` stands for.
    pub fn max(&self, limit: Limit) -> usize {
        match limit {
            Limit::Handshakes => self.settings.max_handshakes,
            Limit::Connections => self.settings.max_connections,
            Limit::ConnectionsPerIdentity => self.settings.max_connections_per_identity,
        }
    }

    /// Connections in their handshake now (a gauge).
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Connections held now, handshaking or established (a gauge).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `limit` was reached (a counter).
    pub fn refused(&self, limit: Limit) -> u64 {
        self.refused[limit.index()].load(Ordering::Relaxed)
    }

    /// Connections closed because TLS and the HTTP/2 preface did not finish within the
    /// handshake timeout (a counter).
    pub fn handshake_timeouts(&self) -> u64 {
        self.handshake_timeouts.load(Ordering::Relaxed)
    }

    /// Connections whose TLS or HTTP/2 handshake failed (not a mesh peer, bad certificate...),
    /// timeouts not included (a counter).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Connections closed with GOAWAY after carrying no tunnel for the idle timeout (a counter).
    pub fn idle_closed(&self) -> u64 {
        self.idle_closed.load(Ordering::Relaxed)
    }

    /// Established connections closed because their client broke an HTTP/2 abuse limit (a
    /// counter, by limit).
    pub fn abuse_closed(&self, abuse: Abuse) -> u64 {
        self.abuse_closed[abuse.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn count_abuse(&self, abuse: Abuse) {
        self.abuse_closed[abuse.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_handshake_timeout(&self) {
        self.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_handshake_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_idle_closed(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    fn refuse(&self, limit: Limit) -> Limit {
        self.refused[limit.index()].fetch_add(1, Ordering::Relaxed);
        limit
    }

    /// A slot for a new connection and its handshake, or the bound that refuses it.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<(ConnectionPermit, HandshakePermit), Limit> {
        if !acquire(&self.connections, self.settings.max_connections) {
            return Err(self.refuse(Limit::Connections));
        }
        let connection = ConnectionPermit(self.clone());
        if !acquire(&self.handshakes, self.settings.max_handshakes) {
            return Err(self.refuse(Limit::Handshakes));
        }
        Ok((connection, HandshakePermit(self.clone())))
    }

    /// A slot for one more connection from `identity`, or the bound that refuses it.
    pub(crate) fn admit_identity(
        self: &Arc<Self>,
        identity: &SpiffeId,
    ) -> Result<IdentityPermit, Limit> {
        let max = self.settings.max_connections_per_identity;
        let mut shard = self.shard(identity).lock();
        let count = shard.entry(identity.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                shard.remove(identity);
            }
            drop(shard);
            return Err(self.refuse(Limit::ConnectionsPerIdentity));
        }
        *count += 1;
        Ok(IdentityPermit {
            limits: self.clone(),
            identity: identity.clone(),
        })
    }

    fn shard(&self, identity: &SpiffeId) -> &Mutex<HashMap<SpiffeId, usize>> {
        &self.per_identity[self.hasher.hash_one(identity) as usize % IDENTITY_SHARDS]
    }
}

fn acquire(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// Holds one of the node's connection slots until dropped.
pub(crate) struct ConnectionPermit(Arc<ConnectionLimits>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one of the node's handshake slots until dropped (when the handshake ends either way).
pub(crate) struct HandshakePermit(Arc<ConnectionLimits>);

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one of an identity's connection slots until dropped; the identity's entry goes with
/// its last connection, so the map stays as small as the set of connected identities.
pub(crate) struct IdentityPermit {
    limits: Arc<ConnectionLimits>,
    identity: SpiffeId,
}

impl Drop for IdentityPermit {
    fn drop(&mut self) {
        let mut shard = self.limits.shard(&self.identity).lock();
        if let Some(count) = shard.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_and_refusals_are_counted_by_limit() {
        let limits = Arc::new(ConnectionLimits::new(LimitSettings {
            max_handshakes: 2,
            max_connections: 3,
            max_connections_per_identity: 1,
        }));
        let a = limits.admit().unwrap();
        let b = limits.admit().unwrap();
        assert_eq!(limits.admit().err(), Some(Limit::Handshakes));
        // The refused handshake gave its connection slot back.
        assert_eq!(limits.connections(), 2);
        drop(a.1);
        let c = limits.admit().unwrap();
        assert_eq!(limits.admit().err(), Some(Limit::Connections));
        assert_eq!(limits.refused(Limit::Handshakes), 1);
        assert_eq!(limits.refused(Limit::Connections), 1);

        let id = SpiffeId::new("cluster.local", "demo", "client").unwrap();
        let first = limits.admit_identity(&id).unwrap();
        assert_eq!(
            limits.admit_identity(&id).err(),
            Some(Limit::ConnectionsPerIdentity)
        );
        drop(first);
        let again = limits.admit_identity(&id).unwrap();
        drop(again);
        assert!(limits.per_identity.iter().all(|s| s.lock().is_empty()));
        drop((a.0, b, c));
        assert_eq!((limits.connections(), limits.handshakes()), (0, 0));
    }
}
