//! The pods ztunnel captures on its node: adding one installs its redirect rules and starts its
//! listeners inside its namespace; removing one drains them and removes the rules.
//!
//! Pods are added and removed concurrently: the CA call and the iptables runs of one pod never
//! hold up another. Operations on one uid are serialized, so a remove that races an add of the
//! same pod waits for it and then undoes it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::state::{Protocol, Workload};
use ambit_proto::drain::{self, DrainOutcome, DrainTrigger};
use ambit_proto::hbone::{
    ClientSettings, ConnectionLimits, HboneClient, HboneServer, ServerSettings,
};
use ambit_proto::identity::SpiffeId;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::capture::{self, CaptureError, PodDialer, PodNetns, rules};
use crate::proxy::{InboundHandler, PodContext, ProxyContext, serve_outbound, serve_plaintext};
use crate::workers::DataWorkers;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(
        "pod {uid} is not in ztunnel's config after waiting {CONFIG_WAIT:?}: only workloads the controller sent for this node can be captured (is the pod on this node, and is ztunnel connected to the controller?)"
    )]
    UnknownWorkload { uid: String },
    #[error(
        "pod {uid} is not meshed (its namespace did not opt in with ambit.io/dataplane-mode=ambient, or the pod opted out): it is left untouched"
    )]
    NotMeshed { uid: String },
    #[error("capturing pod {uid} failed: {source}")]
    Capture { uid: String, source: CaptureError },
    #[error("no certificate for pod {uid}: {source}")]
    Certificate {
        uid: String,
        source: ambit_proto::identity::IdentityError,
    },
    #[error("pod {uid} was not captured: ztunnel is shutting down (the next ztunnel captures it)")]
    ShuttingDown { uid: String },
}

/// What every captured pod's proxies share, from the config.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// For each pod's HBONE server; its `limits` are shared by all pods, so they are per node,
    /// and its `drain_grace` is when a removed pod's open tunnels are closed.
    pub server: ServerSettings,
    /// For each pod's HBONE client.
    pub client: ClientSettings,
    /// How long a removed pod's connections get to finish (`--drain-timeout`).
    pub drain_timeout: Duration,
}

/// How long an add waits for the config to hold its pod: the controller learns of a pod when
/// it is scheduled, about when the runtime runs the CNI plugin, so the plugin's request can
/// arrive first. Within the plugin's own 10 s for the whole exchange, CA call included.
const CONFIG_WAIT: Duration = Duration::from_secs(5);

/// How long after the drain timeout a teardown waits for the connections closed at the
/// deadline to be gone, before it reports them as still open.
const FORCED_CLOSE_MARGIN: Duration = Duration::from_secs(1);

struct CapturedPod {
    netns: Arc<PodNetns>,
    identity: SpiffeId,
    trigger: DrainTrigger,
    /// The pod object's uid, when the sender gave it: a pod replaced by one of the same name
    /// has the same workload uid but not this one.
    pod_uid: Option<String>,
}

/// What a remove did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    Released,
    NotHeld,
    /// The uid is held for another pod object (one of the same name that replaced the one
    /// named): left captured.
    HeldForAnother {
        held: String,
    },
}

#[derive(Default)]
struct State {
    captured: HashMap<String, CapturedPod>,
    /// One lock per uid being added or removed: serializes operations on one pod.
    ops: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Pods (captured, or being added) per identity: its certificate is renewed while any
    /// pod on the node uses it, and forgotten with the last.
    identities: HashMap<SpiffeId, usize>,
    /// Set by `remove_all`: a pod whose add finishes later is released at once.
    closed: bool,
}

pub struct Pods {
    ctx: Arc<ProxyContext>,
    settings: PodSettings,
    /// The data path's workers: pods are added from the control runtime, but their listeners
    /// and connections must live on the data path's workers.
    workers: Arc<DataWorkers>,
    /// Ticks with every config applied: what an add waits on for its pod's workload.
    applied: watch::Receiver<u64>,
    /// Never held across an await.
    state: Mutex<State>,
}

/// Holds the per-uid lock; the lock leaves the map with its last user.
struct UidOp<'a> {
    pods: &'a Pods,
    uid: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for UidOp<'_> {
    fn drop(&mut self) {
        let mut state = self.pods.state.lock();
        // The map's reference and our guard's: nobody else waits for this uid.
        if state
            .ops
            .get(&self.uid)
            .is_some_and(|l| Arc::strong_count(l) == 2)
        {
            state.ops.remove(&self.uid);
        }
    }
}

impl Pods {
    pub fn new(
        ctx: Arc<ProxyContext>,
        settings: PodSettings,
        workers: Arc<DataWorkers>,
        applied: watch::Receiver<u64>,
    ) -> Self {
        Pods {
            ctx,
            settings,
            workers,
            applied,
            state: Mutex::new(State::default()),
        }
    }

    /// The node-wide bounds of the pods' HBONE servers, with their gauges and counters
    /// (connections and handshakes held, refusals per limit, handshake timeouts) for metrics.
    pub fn server_limits(&self) -> &Arc<ConnectionLimits> {
        &self.settings.server.limits
    }

    async fn serialize(&self, uid: &str) -> UidOp<'_> {
        let lock = self.state.lock().ops.entry(uid.into()).or_default().clone();
        UidOp {
            pods: self,
            uid: uid.into(),
            _guard: lock.lock_owned().await,
        }
    }

    /// Captures the pod whose workload uid is `uid`, living in the namespace at `netns_path`;
    /// connections to `exclude_ports` bypass ztunnel. Adding a pod already captured in the same
    /// namespace does nothing but note `pod_uid`, if given.
    pub async fn add(
        &self,
        uid: &str,
        netns_path: &Path,
        exclude_ports: &[u16],
        pod_uid: Option<&str>,
    ) -> Result<(), PodError> {
        let _op = self.serialize(uid).await;
        let workload = self.await_workload(uid).await?;
        if workload.protocol != Protocol::Hbone {
            return Err(PodError::NotMeshed { uid: uid.into() });
        }
        let netns = Arc::new(
            PodNetns::open(netns_path).map_err(|source| PodError::Capture {
                uid: uid.into(),
                source,
            })?,
        );
        let replaced = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(PodError::ShuttingDown { uid: uid.into() });
            }
            let replaced = match state.captured.get_mut(uid) {
                Some(existing) if existing.netns.inode() == netns.inode() => {
                    if pod_uid.is_some() {
                        existing.pod_uid = pod_uid.map(String::from);
                    }
                    return Ok(());
                }
                // The pod was recreated in a new namespace: start over.
                Some(_) => state.captured.remove(uid),
                None => None,
            };
            // Reserved before the CA call, so a concurrent removal of another pod with this
            // identity does not forget the certificate this pod is about to use.
            *state
                .identities
                .entry(workload.shared.identity.clone())
                .or_insert(0) += 1;
            replaced
        };
        if let Some(old) = replaced {
            self.release(uid, old).await;
        }
        let started = self.start(uid, &workload, netns, exclude_ports).await;
        let pod = match started.map(|pod| CapturedPod {
            pod_uid: pod_uid.map(String::from),
            ..pod
        }) {
            Ok(pod) => pod,
            Err(e) => {
                self.unreserve(&workload.shared.identity);
                return Err(e);
            }
        };
        tracing::info!(pod = uid, netns = %netns_path.display(), identity = %workload.shared.identity, "captured pod");
        let refused = {
            let mut state = self.state.lock();
            if state.closed {
                Some(pod)
            } else {
                state.captured.insert(uid.into(), pod);
                None
            }
        };
        match refused {
            Some(pod) => {
                self.release(uid, pod).await;
                Err(PodError::ShuttingDown { uid: uid.into() })
            }
            None => Ok(()),
        }
    }

    /// The pod's workload, once a config holding it has been applied (up to [`CONFIG_WAIT`]).
    async fn await_workload(&self, uid: &str) -> Result<Workload, PodError> {
        let mut applied = self.applied.clone();
        let arrived = async {
            loop {
                // Marked seen before looking, so a config applied after the look wakes us.
                applied.borrow_and_update();
                if let Some(workload) = self.ctx.workload(uid) {
                    return Some(workload);
                }
                applied.changed().await.ok()?;
            }
        };
        tokio::time::timeout(CONFIG_WAIT, arrived)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| PodError::UnknownWorkload { uid: uid.into() })
    }

    /// The slow part of an add, done without holding any lock other pods need: the
    /// certificate, the listeners, the rules, the tasks.
    async fn start(
        &self,
        uid: &str,
        workload: &Workload,
        netns: Arc<PodNetns>,
        exclude_ports: &[u16],
    ) -> Result<CapturedPod, PodError> {
        let capture_err = |source| PodError::Capture {
            uid: uid.into(),
            source,
        };
        let cert_err = |source| PodError::Certificate {
            uid: uid.into(),
            source,
        };
        let certs = self
            .ctx
            .certs
            .watch(&workload.shared.identity)
            .await
            .map_err(cert_err)?;
        // The pod's accept loops run on one worker (they only hand connections on, each to
        // the least loaded worker); a listener is driven by the runtime it is created in.
        let home = self.workers.handle(self.workers.least_loaded()).clone();
        let _home = home.enter();
        let outbound = capture::listen(&netns, rules::OUTBOUND_PORT).map_err(capture_err)?;
        let plaintext =
            capture::listen(&netns, rules::INBOUND_PLAINTEXT_PORT).map_err(capture_err)?;
        let hbone = capture::listen(&netns, rules::HBONE_PORT).map_err(capture_err)?;
        // Everything that can fail comes before the rules: a pod is never redirected to
        // listeners that will not serve it.
        let servers = hbone
            .into_iter()
            .map(|l| {
                let server = HboneServer::new(
                    certs.clone(),
                    self.ctx.certs.trust_bundle(),
                    self.settings.server.clone(),
                );
                server.map(|s| (s, l)).map_err(cert_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules::install(&netns, exclude_ports).map_err(capture_err)?;

        let dialer = PodDialer::new(netns.clone());
        let pod = Arc::new(PodContext {
            drain_grace: self.settings.drain_timeout,
            uid: uid.into(),
            netns: netns.clone(),
            dialer: dialer.clone(),
            pools: (0..self.workers.len())
                .map(|_| {
                    HboneClient::with_settings(
                        self.ctx.certs.clone(),
                        Arc::new(dialer.clone()),
                        self.settings.client,
                    )
                })
                .collect(),
            workers: self.workers.clone(),
        });
        let (trigger, watch) = drain::channel();
        for l in outbound {
            home.spawn(serve_outbound(
                l,
                pod.clone(),
                self.ctx.clone(),
                watch.clone(),
            ));
        }
        for l in plaintext {
            home.spawn(serve_plaintext(
                l,
                pod.clone(),
                self.ctx.clone(),
                watch.clone(),
            ));
        }
        let handler = Arc::new(InboundHandler {
            pod: pod.clone(),
            ctx: self.ctx.clone(),
        });
        for (server, l) in servers {
            let placement = self.workers.clone();
            home.spawn(server.serve_placed(l, handler.clone(), watch.clone(), placement));
        }
        Ok(CapturedPod {
            netns,
            identity: workload.shared.identity.clone(),
            trigger,
            pod_uid: None,
        })
    }

    /// Stops capturing `uid` (only if it is held for `pod_uid`, when given): closes its
    /// listeners, lets its connections finish (up to the drain timeout, then closes them) and
    /// removes its rules.
    pub async fn remove(&self, uid: &str, pod_uid: Option<&str>) -> Removal {
        let _op = self.serialize(uid).await;
        let pod = {
            let mut state = self.state.lock();
            if let (Some(given), Some(held)) = (
                pod_uid,
                state.captured.get(uid).and_then(|p| p.pod_uid.as_deref()),
            ) && given != held
            {
                return Removal::HeldForAnother { held: held.into() };
            }
            state.captured.remove(uid)
        };
        match pod {
            Some(pod) => {
                self.release(uid, pod).await;
                Removal::Released
            }
            None => Removal::NotHeld,
        }
    }

    /// Whether `uid` is captured (its add finished and it was not removed since).
    pub fn holds(&self, uid: &str) -> bool {
        self.state.lock().captured.contains_key(uid)
    }

    /// Removes every pod (ztunnel is shutting down); pods being added meanwhile are released
    /// when their add finishes.
    pub async fn remove_all(&self) {
        let all: Vec<(String, CapturedPod)> = {
            let mut state = self.state.lock();
            state.closed = true;
            state.captured.drain().collect()
        };
        let teardowns = all
            .into_iter()
            .map(|(uid, pod)| async move { self.release(&uid, pod).await });
        futures::future::join_all(teardowns).await;
    }

    pub async fn captured(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .state
            .lock()
            .captured
            .iter()
            .map(|(uid, p)| (uid.clone(), p.netns.path().display().to_string()))
            .collect();
        v.sort();
        v
    }

    /// Tears the pod down, then gives up its hold on its identity's certificate.
    async fn release(&self, uid: &str, pod: CapturedPod) {
        let identity = pod.identity.clone();
        self.teardown(uid, pod).await;
        self.unreserve(&identity);
    }

    fn unreserve(&self, identity: &SpiffeId) {
        let mut state = self.state.lock();
        if let Some(count) = state.identities.get_mut(identity) {
            *count -= 1;
            if *count == 0 {
                state.identities.remove(identity);
                // Under the lock: a pod reserving this identity now comes after, and fetches
                // a fresh certificate.
                self.ctx.certs.forget(identity);
                tracing::info!(%identity, "no pod on this node uses the identity any more; its certificate is no longer renewed");
            }
        }
    }

    async fn teardown(&self, uid: &str, pod: CapturedPod) {
        // Rules first, so no new connection is redirected to listeners about to close.
        if let Err(e) = rules::remove(&pod.netns) {
            tracing::warn!(pod = uid, error = %e, "could not remove the pod's redirect rules");
        }
        let deadline = self.settings.drain_timeout;
        match pod.trigger.drain(deadline + FORCED_CLOSE_MARGIN).await {
            DrainOutcome::Complete => tracing::info!(pod = uid, "released pod"),
            DrainOutcome::DeadlineExceeded => {
                tracing::warn!(pod = uid, drain_timeout = ?deadline, "released pod with connections still open after the drain timeout (--drain-timeout)")
            }
        }
    }
}
