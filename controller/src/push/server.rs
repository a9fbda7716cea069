//! The gRPC side of the push: turns models into snapshots and runs one task per subscription.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::discovery::{ProxyKind, SubscribeRequest, Subscriber};
use ambit_proto::api::discovery_encoded::discovery_server::{Discovery, DiscoveryServer};
use ambit_proto::response_parts::{EncodedResponse, PART_BYTES};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::access::{Denied, SubscriberAccess};
use super::liveness::{DownNodes, NodeLiveness, Subscribed};
use super::on_demand::{self, Brought, Change, Lookups};
use super::session::{Answer, Session};
use super::snapshot::MeshWideUser;
use super::sync::SyncEntry;
use super::{ResourceKey, Snapshot, SyncTable, desired_for, desired_since};
use crate::model::{MeshModel, ObjectKey};

/// Builds a snapshot of every new model, off the async workers since a large mesh takes a while,
/// and publishes it to the subscriptions.
pub fn publish_snapshots(
    models: watch::Receiver<Arc<MeshModel>>,
    shutdown: CancellationToken,
) -> (watch::Receiver<Arc<Snapshot>>, tokio::task::JoinHandle<()>) {
    publish_snapshots_with(models, None, shutdown)
}

/// [`publish_snapshots`], also rebuilding when the set of down nodes changes (see
/// [`NodeLiveness`]); pass the same liveness to [`DiscoveryService::track_liveness`].
pub fn publish_snapshots_with(
    mut models: watch::Receiver<Arc<MeshModel>>,
    liveness: Option<&NodeLiveness>,
    shutdown: CancellationToken,
) -> (watch::Receiver<Arc<Snapshot>>, tokio::task::JoinHandle<()>) {
    let mut down = liveness.map(NodeLiveness::down_nodes);
    let mut down_now: DownNodes = match down.as_mut() {
        Some(d) => d.borrow_and_update().clone(),
        None => DownNodes::default(),
    };
    let first = Snapshot::build_with(models.borrow_and_update().clone(), down_now.clone(), None);
    let (tx, rx) = watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        let mut retired = Retired::default();
        let mut release = tokio::time::interval(RELEASE_EVERY);
        loop {
            let down_changed = async {
                match down.as_mut() {
                    Some(d) => d.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = models.changed() => if changed.is_err() { return },
                // Liveness gone (only at shutdown): the last down set stands.
                live = down_changed => if !live {
                    down = None;
                    continue;
                },
                () = shutdown.cancelled() => return,
                _ = release.tick() => {
                    retired.release();
                    continue;
                }
            }
            let model = models.borrow_and_update().clone();
            if let Some(d) = down.as_mut() {
                down_now = d.borrow_and_update().clone();
            }
            let down_nodes = down_now.clone();
            let previous = tx.borrow().clone();
            let build = move || Snapshot::build_with(model, down_nodes, Some(&previous));
            match tokio::task::spawn_blocking(build).await {
                Ok(snapshot) => {
                    retired.retire(tx.send_replace(Arc::new(snapshot)));
                }
                Err(e) => {
                    tracing::error!(error = %e, "building the config snapshot failed; proxies keep the previous one")
                }
            }
        }
    });
    (rx, task)
}

/// How often snapshots that no subscription holds any more are released.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// Replaced snapshots, held until no subscription uses them and then dropped on a blocking
/// thread. Otherwise the last subscription to move on to a new snapshot frees the old one, a
/// million allocations at 50k workloads, on an async worker just before sending its own delta.
#[derive(Default)]
struct Retired(Vec<Arc<Snapshot>>);

impl Retired {
    fn retire(&mut self, snapshot: Arc<Snapshot>) {
        self.0.push(snapshot);
    }

    fn release(&mut self) {
        // Only the watch channel hands out snapshots, and it holds the current one, so a
        // retired snapshot held only here can never be taken again.
        let (unused, held) = std::mem::take(&mut self.0)
            .into_iter()
            .partition::<Vec<_>, _>(|s| Arc::strong_count(s) == 1);
        self.0 = held;
        if !unused.is_empty() {
            tokio::task::spawn_blocking(move || drop(unused));
        }
    }
}

/// `discovery.Discovery`. Cheap to clone; every subscription gets its own task.
#[derive(Clone)]
pub struct DiscoveryService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
    sync: SyncTable,
    access: Option<Arc<SubscriberAccess>>,
    liveness: Option<NodeLiveness>,
    part_bytes: usize,
}

/// How often an open subscription's credentials are checked again when the mesh is quiet.
const RECHECK_EVERY: Duration = Duration::from_secs(300);

/// How long a returning ztunnel's first response waits for the snapshot that has its node up
/// again (a rebuild: well under a second at 50k workloads); past it, it gets the current one
/// and the change follows as a delta.
const UP_AGAIN_WAIT: Duration = Duration::from_secs(2);

/// One part waits while tonic encodes the one before: parts are about a megabyte encoded (see
/// `response_parts`) and larger as messages, and every subscriber holds its queue in an initial
/// push (at 50k workloads a queue of four raised that push's peak heap by 1 GiB).
const QUEUE: usize = 1;

impl DiscoveryService {
    /// Ends every subscription (with `UNAVAILABLE`, so proxies reconnect elsewhere or later) when
    /// `shutdown` fires. Anyone may subscribe for anything until [`Self::authenticate_with`]
    /// says who may: the controller binary always does; tests and benches that exercise only
    /// the push need not.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, shutdown: CancellationToken) -> Self {
        DiscoveryService {
            snapshots,
            shutdown,
            sync: SyncTable::default(),
            access: None,
            liveness: None,
            part_bytes: PART_BYTES,
        }
    }

    /// Sends responses in parts of about `bytes` of resources (default [`PART_BYTES`]); tests
    /// make parts small to see a small mesh split.
    pub fn with_part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes;
        self
    }

    pub fn authenticate_with(mut self, access: SubscriberAccess) -> Self {
        self.access = Some(Arc::new(access));
        self
    }

    /// Reports each ztunnel subscription's opening and end to `liveness`, which marks nodes
    /// without one down (give the same one to [`publish_snapshots_with`]).
    pub fn track_liveness(mut self, liveness: NodeLiveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// Where each subscribed proxy stands (for the admin endpoint).
    pub fn sync_table(&self) -> SyncTable {
        self.sync.clone()
    }

    pub fn into_server(self) -> DiscoveryServer<Self> {
        // A reconnecting proxy lists every resource version it holds in one request: ~80 bytes
        // per resource, past tonic's 4 MiB default at ~50k resources.
        DiscoveryServer::new(self).max_decoding_message_size(64 << 20)
    }
}

fn describe(s: &Subscriber, peer: Option<SocketAddr>) -> String {
    let peer = peer.map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
    match ProxyKind::try_from(s.kind) {
        Ok(ProxyKind::Waypoint) => format!("waypoint {}/{} at {peer}", s.namespace, s.name),
        _ => format!("ztunnel of node {} at {peer}", s.name),
    }
}

fn check_subscriber(s: Option<Subscriber>) -> Result<Subscriber, Status> {
    let s = s.ok_or_else(|| {
        Status::invalid_argument(
            "the first SubscribeRequest must name the subscriber (kind, name, and namespace for a waypoint)",
        )
    })?;
    match ProxyKind::try_from(s.kind) {
        Ok(ProxyKind::Ztunnel) if !s.name.is_empty() => Ok(s),
        Ok(ProxyKind::Waypoint) if s.on_demand => Err(Status::invalid_argument(
            "subscriber.on_demand is for ztunnels; a waypoint is sent all it serves up front",
        )),
        Ok(ProxyKind::Waypoint) if !s.name.is_empty() && !s.namespace.is_empty() => Ok(s),
        Ok(ProxyKind::Ztunnel) => Err(Status::invalid_argument(
            "a ztunnel subscriber must give its node name in subscriber.name",
        )),
        Ok(ProxyKind::Waypoint) => Err(Status::invalid_argument(
            "a waypoint subscriber must give its name and namespace",
        )),
        _ => Err(Status::invalid_argument(format!(
            "subscriber.kind {} is not ZTUNNEL or WAYPOINT",
            s.kind
        ))),
    }
}

fn kind_label(s: &Subscriber) -> &'static str {
    match ProxyKind::try_from(s.kind) {
        Ok(ProxyKind::Waypoint) => "waypoint",
        _ => "ztunnel",
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type SubscribeStream = ReceiverStream<Result<EncodedResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let (metadata, _, mut inbound) = request.into_parts();
        let refused = |who: &str, kind: &'static str, denied: Denied| {
            metrics::counter!("ambit_controller_subscription_refusals_total", "kind" => kind)
                .increment(1);
            tracing::warn!(subscriber = %who, code = ?denied.status.code(), error = %denied.status.message(), "refused a subscription");
            denied.status
        };
        // Authenticated before the first message is read: see SubscriberAccess::authenticate.
        let caller = match &self.access {
            Some(access) => match access.authenticate(&metadata).await {
                Ok(caller) => Some(caller),
                Err(denied) => {
                    let peer = peer.map_or_else(|| "unknown peer".into(), |p| p.to_string());
                    return Err(refused(&format!("caller at {peer}"), "unknown", denied));
                }
            },
            None => None,
        };
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the stream ended before the first SubscribeRequest")
        })?;
        let subscriber = check_subscriber(first.subscriber)?;
        let who = describe(&subscriber, peer);
        if let (Some(access), Some(caller)) = (&self.access, &caller)
            && let Err(denied) = access.authorize(caller, &subscriber)
        {
            return Err(refused(&who, kind_label(&subscriber), denied));
        }
        let mut known = HashMap::new();
        for (key, version) in first.known_versions {
            match ResourceKey::parse(&key) {
                Some(k) => {
                    known.insert(k, version);
                }
                None => {
                    tracing::warn!(subscriber = %who, %key, "ignoring a known_versions key that is not <type>/<name> of a known type")
                }
            }
        }
        let mut lookups = Lookups::default();
        if subscriber.on_demand {
            lookups
                .request(&first.lookup, &[])
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        } else if !first.lookup.is_empty() {
            return Err(Status::invalid_argument(
                "lookups need subscriber.on_demand; this subscription is sent everything up front",
            ));
        }
        tracing::info!(subscriber = %who, known = known.len(), lookups = lookups.len(), on_demand = subscriber.on_demand, proxy_version = %subscriber.version, "proxy subscribed");
        let model = self.snapshots.borrow().model().clone();
        let known_to_model = match ProxyKind::try_from(subscriber.kind) {
            Ok(ProxyKind::Waypoint) => model
                .waypoint(&ObjectKey::new(&subscriber.namespace, &subscriber.name))
                .is_some(),
            _ => model.node(&subscriber.name).is_some(),
        };
        if !known_to_model {
            tracing::warn!(subscriber = %who, "the mesh declares no such node or waypoint: it gets an empty scope until the mesh declares it (check the proxy's name against the mesh)");
        }
        // Only a ztunnel sent everything reads the mesh-wide part.
        let mesh_wide = (subscriber.kind == ProxyKind::Ztunnel as i32 && !subscriber.on_demand)
            .then(|| self.snapshots.borrow().use_mesh_wide());
        let (tx, rx) = mpsc::channel(QUEUE);
        // Only an authorized ztunnel speaks for its node, and waypoints are no node.
        let alive = match (&self.liveness, ProxyKind::try_from(subscriber.kind)) {
            (Some(liveness), Ok(ProxyKind::Ztunnel)) => Some(liveness.subscribed(&subscriber.name)),
            _ => None,
        };
        let stream = Stream {
            _alive: alive,
            _mesh_wide: mesh_wide,
            access: self.access.clone().map(|a| (a, metadata)),
            inbound,
            tx,
            snapshots: self.snapshots.clone(),
            session: Session::new(known),
            lookups,
            brought: Brought::default(),
            part_bytes: self.part_bytes,
            sync: self
                .sync
                .open(kind_label(&subscriber), &sync_name(&subscriber)),
            subscriber,
            who,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Stream {
    /// Keeps the node up (see [`NodeLiveness`]) while the subscription is open.
    _alive: Option<Subscribed>,
    /// Keeps the snapshots resolving the mesh-wide part while the subscription uses it.
    _mesh_wide: Option<MeshWideUser>,
    /// Who may subscribe, and this subscription's credentials, re-checked on every new model.
    access: Option<(Arc<SubscriberAccess>, MetadataMap)>,
    inbound: Streaming<SubscribeRequest>,
    tx: mpsc::Sender<Result<EncodedResponse, Status>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    session: Session,
    /// An on-demand ztunnel's looked-up addresses (empty for the others).
    lookups: Lookups,
    /// What the held addresses bring, counted from the current snapshot.
    brought: Brought,
    part_bytes: usize,
    subscriber: Subscriber,
    who: String,
    shutdown: CancellationToken,
    /// This subscription's row of the sync table, gone with it.
    sync: SyncEntry,
}

fn sync_name(s: &Subscriber) -> String {
    match ProxyKind::try_from(s.kind) {
        Ok(ProxyKind::Waypoint) => format!("{}/{}", s.namespace, s.name),
        _ => s.name.clone(),
    }
}

impl Stream {
    async fn run(mut self) {
        let kind = kind_label(&self.subscriber);
        metrics::gauge!("ambit_controller_subscribers", "kind" => kind).increment(1.0);
        let ended = self.serve(kind).await;
        metrics::gauge!("ambit_controller_subscribers", "kind" => kind).decrement(1.0);
        tracing::info!(subscriber = %self.who, "subscription ended: {ended}");
    }

    async fn serve(&mut self, kind: &'static str) -> String {
        let mut snapshot = self.first_snapshot().await;
        self.desire(None, &snapshot);
        // Credentials are re-checked on every new model and, for a quiet mesh, on this tick: a
        // service-account token expires whether or not the mesh changes.
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
        loop {
            let version = self.session.desired().system_version();
            self.sync.update(|s| s.desired_version = version);
            let lookups_due = self.lookups.has_unanswered();
            if let Some(mut response) = self.session.next_response_or_empty(lookups_due) {
                if lookups_due {
                    let model = snapshot.model();
                    (response.answered, response.unknown) =
                        self.lookups.answer(|ip| model.at_address(ip).is_some());
                    metrics::counter!("ambit_controller_lookups_total")
                        .increment(response.answered.len() as u64);
                }
                if self.session.resumed_current(&response) {
                    // The proxy's known_versions already are the desired state: it holds
                    // this version whether or not it ever answers this empty response.
                    self.sync
                        .update(|s| s.acked_version = Some(response.system_version.clone()));
                }
                let delta = if response.full_state { "full" } else { "delta" };
                metrics::counter!("ambit_controller_pushes_total", "kind" => kind, "type" => delta)
                    .increment(1);
                tracing::debug!(
                    subscriber = %self.who,
                    nonce = %response.nonce,
                    version = %response.system_version,
                    changed = response.resources.len(),
                    removed = response.removed.len(),
                    full = response.full_state,
                    "pushing config"
                );
                for part in response.into_parts(self.part_bytes) {
                    if self.tx.send(Ok(part)).await.is_err() {
                        return "the proxy went away".into();
                    }
                }
            }
            // Biased towards shutdown: a draining server also ends the request stream, and the
            // proxy should learn why rather than see a clean end.
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    let status = Status::unavailable("the controller is shutting down; keep the current config and reconnect");
                    let _ = self.tx.send(Err(status)).await;
                    return "the controller is shutting down".into();
                }
                request = self.inbound.message() => match request {
                    Ok(Some(request)) => {
                        self.answer(kind, &request);
                        if !request.lookup.is_empty() || !request.release.is_empty() {
                            match self.look_up(&request) {
                                Ok(change) => self.apply(&snapshot, &change),
                                Err(ended) => return ended,
                            }
                        }
                    }
                    Ok(None) => return "the proxy closed the stream".into(),
                    Err(status) => return format!("the stream failed: {status}"),
                },
                _ = recheck.tick() => {
                    if let Err(ended) = self.recheck().await {
                        return ended;
                    }
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return "the controller stopped publishing config".into();
                    }
                    let previous =
                        std::mem::replace(&mut snapshot, self.snapshots.borrow_and_update().clone());
                    if let Err(ended) = self.recheck().await {
                        return ended;
                    }
                    self.desire(Some(&previous), &snapshot);
                }
            }
        }
    }

    /// Gives the session what the proxy should hold of `snapshot`. `previous`: the snapshot
    /// the session's desired state was resolved from, which lets a change that touched nothing
    /// of the node's skip resolving that part again, and an on-demand subscription follow the
    /// change in place (looking at what it touched, not at everything held).
    fn desire(&mut self, previous_snapshot: Option<&Snapshot>, snapshot: &Snapshot) {
        if self.subscriber.on_demand
            && let Some(previous) = previous_snapshot
            && on_demand::follows(self.session.desired(), previous, snapshot)
        {
            let (subscriber, lookups) = (&self.subscriber, &self.lookups);
            let brought = &mut self.brought;
            self.session.change_in_place(|desired| {
                on_demand::update(previous, snapshot, subscriber, lookups, brought, desired)
            });
            return;
        }
        let previous = previous_snapshot.map(|_| self.session.desired());
        let desired = if self.subscriber.on_demand {
            on_demand::desired(
                snapshot,
                &self.subscriber,
                &self.lookups,
                &mut self.brought,
                previous,
            )
        } else {
            match previous {
                Some(p) => desired_since(snapshot, &self.subscriber, p),
                None => desired_for(snapshot, &self.subscriber),
            }
        };
        self.session.replace(desired);
    }

    /// A request's lookups and releases applied to the desired state (resolved from
    /// `snapshot`) in place: only what their addresses bring is resolved, and the session
    /// diffs only that.
    fn apply(&mut self, snapshot: &Snapshot, change: &Change) {
        let brought = &mut self.brought;
        self.session
            .change_in_place(|desired| on_demand::apply(snapshot, change, brought, desired));
    }

    /// Takes a request's lookups and releases; a request that is not on-demand's to make, or
    /// names no address, ends the subscription with the reason (the proxy is broken).
    fn look_up(&mut self, request: &SubscribeRequest) -> Result<Change, String> {
        let refused = if self.subscriber.on_demand {
            self.lookups
                .request(&request.lookup, &request.release)
                .map_err(|e| e.to_string())
        } else {
            Err(
                "lookups need subscriber.on_demand; this subscription is sent everything up front"
                    .to_string(),
            )
        };
        let reason = match refused {
            Ok(change) => {
                tracing::debug!(subscriber = %self.who, looked_up = request.lookup.len(), released = request.release.len(), held = self.lookups.len(), "lookups");
                return Ok(change);
            }
            Err(reason) => reason,
        };
        tracing::warn!(subscriber = %self.who, %reason, "ending a subscription whose lookup request was refused");
        let _ = self
            .tx
            .try_send(Err(Status::invalid_argument(reason.clone())));
        Err(format!("its lookup request was refused: {reason}"))
    }

    /// The snapshot to start from. A returning ztunnel's node is marked up by its very
    /// subscription, and the snapshot saying so is moments away: waiting for it spares the
    /// proxy a first config with its own pods down, followed at once by a delta undoing that.
    async fn first_snapshot(&mut self) -> Arc<Snapshot> {
        if self.subscriber.kind == ProxyKind::Ztunnel as i32 {
            let node = &self.subscriber.name;
            let up = self.snapshots.wait_for(|s| !s.down_nodes().contains(node));
            let _ = tokio::time::timeout(UP_AGAIN_WAIT, up).await;
        }
        self.snapshots.borrow_and_update().clone()
    }

    /// Ends the subscription (with the refusal sent to the proxy) when its credentials no longer
    /// hold; one that cannot be checked just now goes on.
    async fn recheck(&mut self) -> Result<(), String> {
        let Some((access, metadata)) = &self.access else {
            return Ok(());
        };
        match access.recheck(metadata, &self.subscriber).await {
            Ok(()) => Ok(()),
            Err(denied) if denied.undecided => {
                tracing::debug!(subscriber = %self.who, error = %denied.status.message(), "could not re-check a subscription's credentials; it goes on");
                Ok(())
            }
            Err(denied) => {
                metrics::counter!("ambit_controller_subscription_refusals_total", "kind" => kind_label(&self.subscriber))
                    .increment(1);
                tracing::warn!(subscriber = %self.who, error = %denied.status.message(), "ending a subscription whose credentials no longer hold");
                let reason = format!(
                    "its credentials no longer hold: {}",
                    denied.status.message()
                );
                let _ = self.tx.send(Err(denied.status)).await;
                Err(reason)
            }
        }
    }

    fn answer(&mut self, kind: &'static str, request: &SubscribeRequest) {
        let nonce = &request.response_nonce;
        let in_flight_version = self.session.in_flight_version();
        match self.session.answer(nonce, &request.error_detail) {
            Answer::Ack => {
                tracing::debug!(subscriber = %self.who, %nonce, "config ACKed");
                self.sync.update(|s| {
                    s.acked_version = in_flight_version;
                    s.last_nack = None;
                });
            }
            Answer::Nack { changes } => {
                let reason = request.error_detail.clone();
                self.sync.update(|s| s.last_nack = Some(reason));
                metrics::counter!("ambit_controller_nacks_total", "kind" => kind).increment(1);
                tracing::warn!(
                    subscriber = %self.who,
                    %nonce,
                    changes,
                    reason = %request.error_detail,
                    "proxy refused config (NACK) and keeps its previous config; the refused resources are not resent until they change, so fix the source of the bad config"
                );
            }
            Answer::Stale => {
                tracing::debug!(subscriber = %self.who, %nonce, "ignoring an answer to a response that is not awaited")
            }
        }
    }
}
