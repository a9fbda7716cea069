//! The agent's loop: watches its node's pods and every namespace, and after each change (and
//! every resync period) hands ztunnel the pods that became meshed and takes back those that
//! stopped being. At each resync it also asks ztunnel whether it still holds what it was
//! given: a restarted ztunnel holds nothing, and gets its pods again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::node_agent::{self, Command, Reply};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use super::reconcile::{Handover, PodUid, PodView, Rules, namespace_modes, plan};

/// How long one exchange with ztunnel may take (an add includes its CA call).
const ZTUNNEL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub rules: Rules,
    /// ztunnel's node agent socket as the agent sees it.
    pub ztunnel_socket: PathBuf,
    /// Where the runtime pins pod network namespaces, as the agent sees it.
    pub pinned_netns_dir: PathBuf,
    /// How often ztunnel is asked whether it still holds its pods.
    pub resync: Duration,
}

/// Runs until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let changed = Arc::new(Notify::new());
    let pods = watch_into_store(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node)),
        changed.clone(),
        "pods",
    );
    let namespaces = watch_into_store(
        Api::<Namespace>::all(client),
        watcher::Config::default(),
        changed.clone(),
        "namespaces",
    );
    tokio::pin!(shutdown);
    // Deciding before both lists arrived would take an unlisted namespace's pods for not
    // meshed.
    tokio::select! {
        _ = async { tokio::join!(pods.wait_until_ready(), namespaces.wait_until_ready()) } => {}
        () = &mut shutdown => return,
    }
    tracing::info!(node = %settings.node, "watching the node's pods and the namespaces");
    let mut agent = Agent {
        settings,
        handed_over: BTreeMap::new(),
        netns_missing: BTreeSet::new(),
        started: false,
    };
    let mut resync = tokio::time::interval(agent.settings.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        agent.reconcile(&pods, &namespaces).await;
        tokio::select! {
            () = changed.notified() => {}
            _ = resync.tick() => agent.forget_what_ztunnel_lost().await,
            () = &mut shutdown => return,
        }
    }
}

/// Mirrors a watch into a store, waking `changed` on every event; API errors are logged and
/// the watch retried with backoff.
fn watch_into_store<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    what: &'static str,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    K: serde::de::DeserializeOwned,
{
    let (reader, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        tokio::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(%what, error = %e, "watching the API failed; retrying (does the agent's service account have list and watch on {what}?)")
                }
            }
        }
    });
    reader
}

struct Agent {
    settings: Settings,
    /// The pods handed to ztunnel and not taken back: workload uid → pod object uid.
    handed_over: BTreeMap<String, PodUid>,
    /// Pods whose network namespace was not found, already warned about: the search runs
    /// again at every change and resync, and a pod the agent cannot see (no host PID namespace)
    /// would otherwise warn every minute for as long as it lives.
    netns_missing: BTreeSet<String>,
    /// Whether the first pass (which also asks about the pods that are not meshed) ran.
    started: bool,
}

impl Agent {
    async fn reconcile(&mut self, pods: &Store<Pod>, namespaces: &Store<Namespace>) {
        let views: Vec<PodView> = pods
            .state()
            .iter()
            // The field selector already asks for this node's pods only.
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(self.settings.node.as_str())
            })
            .filter_map(|p| PodView::of(p))
            .collect();
        let modes = namespace_modes(namespaces.state().iter().map(|n| n.as_ref()));
        let plan = plan(&views, &modes, &self.settings.rules, &self.handed_over);
        if !self.started {
            self.started = true;
            // A label removed while the agent was down: ztunnel may still hold the pod.
            for (uid, pod_uid) in &plan.not_meshed {
                if self.ztunnel_holds(uid).await == Some(true) {
                    self.take_back(uid, pod_uid.clone()).await;
                }
            }
        }
        // A pod no longer waiting to be handed over (gone, or unmeshed) is forgotten.
        self.netns_missing
            .retain(|missing| plan.add.iter().any(|(uid, _)| uid == missing));
        for (uid, handover) in &plan.add {
            self.hand_over(uid, handover).await;
        }
        for (uid, pod_uid) in &plan.remove {
            self.take_back(uid, pod_uid.clone()).await;
        }
    }

    async fn hand_over(&mut self, uid: &str, handover: &Handover) {
        let ip = handover.ip;
        let pinned = self.settings.pinned_netns_dir.clone();
        let found = tokio::task::spawn_blocking(move || crate::netns::find_by_ip(ip, &pinned))
            .await
            .expect("the namespace search does not panic");
        let netns = match found {
            Ok(Some(netns)) => netns,
            Ok(None) if self.netns_missing.contains(uid) => {
                tracing::debug!(pod = uid, %ip, "still no network namespace holds the pod's IP");
                return;
            }
            Ok(None) => {
                self.netns_missing.insert(uid.into());
                tracing::warn!(pod = uid, %ip, "no network namespace on this node holds the pod's IP; trying again at the next change or resync (is the agent in the host's PID namespace, with the runtime's netns directory mounted?)");
                return;
            }
            Err(e) => {
                tracing::warn!(pod = uid, %ip, error = %e, "could not look through the node's network namespaces; trying again later");
                return;
            }
        };
        self.netns_missing.remove(uid);
        let add = Command::Add {
            uid: uid.into(),
            netns: netns.clone(),
            exclude_ports: Vec::new(),
            pod_uid: handover.pod_uid.clone(),
        };
        match self.ask(add).await {
            Ok(Reply::Ok { ok: true }) => {
                tracing::info!(pod = uid, netns = %netns.display(), "pod enrolled: handed to ztunnel");
                self.handed_over
                    .insert(uid.into(), handover.pod_uid.clone());
            }
            other => {
                tracing::warn!(pod = uid, reply = %describe(&other), "ztunnel did not capture the pod; trying again at the next change or resync")
            }
        }
    }

    async fn take_back(&mut self, uid: &str, pod_uid: PodUid) {
        match self
            .ask(Command::Remove {
                uid: uid.into(),
                pod_uid,
            })
            .await
        {
            // An error reply says ztunnel does not hold it (or holds it for the pod that
            // replaced the one named): either way it is not ours to release any more.
            Ok(_) => {
                tracing::info!(pod = uid, "pod released: taken back from ztunnel");
                self.handed_over.remove(uid);
            }
            Err(e) => {
                tracing::warn!(pod = uid, error = %e, "could not reach ztunnel to release the pod; trying again later")
            }
        }
    }

    async fn ztunnel_holds(&self, uid: &str) -> Option<bool> {
        match self.ask(Command::Check { uid: uid.into() }).await {
            Ok(Reply::Ok { ok }) => Some(ok),
            other => {
                tracing::warn!(pod = uid, reply = %describe(&other), "could not ask ztunnel about the pod");
                None
            }
        }
    }

    /// Pods ztunnel no longer holds (it restarted) are handed over again by the next pass.
    async fn forget_what_ztunnel_lost(&mut self) {
        for uid in self.handed_over.clone().into_keys() {
            if self.ztunnel_holds(&uid).await == Some(false) {
                tracing::info!(pod = %uid, "ztunnel no longer holds the pod (restarted?); handing it over again");
                self.handed_over.remove(&uid);
            }
        }
    }

    async fn ask(&self, command: Command) -> std::io::Result<Reply> {
        let socket = self.settings.ztunnel_socket.clone();
        tokio::task::spawn_blocking(move || {
            node_agent::send_blocking(&socket, &command, ZTUNNEL_TIMEOUT)
        })
        .await
        .expect("the exchange does not panic")
    }
}

fn describe(reply: &std::io::Result<Reply>) -> String {
    match reply {
        Ok(Reply::Ok { ok }) => format!("ok: {ok}"),
        Ok(Reply::Error { error }) => error.clone(),
        Err(e) => format!("ztunnel's socket: {e}"),
    }
}
