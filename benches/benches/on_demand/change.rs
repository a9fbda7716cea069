//! One change at a time, applied to the model in force and published as a source would: how
//! long until every on-demand ztunnel holding what it touched has applied it, and whether the
//! others were sent nothing. Which ztunnels that is, is worked out before the publish from what
//! each holds and a snapshot of the changed model, so the harness does not compete with the
//! push for the two cores.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_benches::alloc::{self, Class};
use ambit_benches::cpu::threads_cpu_seconds;
use ambit_controller::model::{Edit, MeshModel};
use ambit_controller::push::{ResourceKey, Snapshot, version_text};
use ambit_proto::api::discovery::ResourceType;
use anyhow::Context;
use tokio::sync::watch;

use super::mesh::{Change, Spec};
use super::{CONTROLLER_THREADS, Proxy};

/// How long a ztunnel outside a change is watched for a stray push after the last affected one
/// applied its delta.
const QUIET: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct ChangeFigures {
    pub name: &'static str,
    /// The model edit in place, as a source makes it for one object's event.
    pub apply: Duration,
    /// The same snapshot the controller builds (previous one given), built by the harness.
    pub snapshot: Duration,
    pub affected: usize,
    /// Publish → the last affected ztunnel has applied it.
    pub propagation: Duration,
    /// Controller CPU from the publish until the last affected ztunnel applied it.
    pub cpu: f64,
    /// Updates beyond one per affected ztunnel and none elsewhere, within [`QUIET`] after.
    pub stray_updates: u64,
}

impl ChangeFigures {
    /// What a source's edit costs plus the push; the Kubernetes source's debounce comes on top.
    pub fn end_to_end(&self) -> Duration {
        self.apply + self.propagation
    }
}

/// Runs `f` with the calling thread's allocations counted as the controller's.
pub fn as_controller<T>(f: impl FnOnce() -> T) -> T {
    alloc::set_thread_class(Class::Measured);
    let out = f();
    alloc::set_thread_class(Class::Harness);
    out
}

/// Versions a ztunnel must hold once it has applied the change (`None`: it must not hold the
/// key), for each ztunnel that holds something the change touched or hosts the changed pod.
fn expected(
    proxies: &[Proxy],
    old: &Snapshot,
    new: &Snapshot,
    edit: &Edit,
) -> HashMap<usize, Vec<(String, Option<String>)>> {
    let model = new.model();
    let pod_key = match edit {
        Edit::Pod(p) => model
            .workloads_on_node(&p.node)
            .find(|w| w.pod.name == p.name && w.pod.namespace == p.namespace)
            .map(|w| {
                (
                    p.node.clone(),
                    ResourceKey::new(ResourceType::Workload, w.uid.as_str()),
                )
            }),
        _ => None,
    };
    let version = |s: &Snapshot, k: &ResourceKey| s.resource(k).map(|r| version_text(r.version));
    let mut out = HashMap::new();
    for (i, p) in proxies.iter().enumerate() {
        let held = p.state.load().known_versions();
        let mut want: Vec<(String, Option<String>)> = held
            .iter()
            .filter_map(|(key, v)| {
                let k = ResourceKey::parse(key)?;
                let now = version(new, &k);
                (now.as_ref() != Some(v)).then(|| (key.clone(), now))
            })
            .collect();
        if let Some((node, key)) = &pod_key
            && *node == p.node
            && version(old, key) != version(new, key)
        {
            want.push((key.to_string(), version(new, key)));
        }
        want.sort();
        want.dedup();
        if !want.is_empty() {
            out.insert(i, want);
        }
    }
    out
}

/// Waits until `proxy` holds `want`, returning when it first did.
async fn applied(
    state: Arc<ambit_discovery::Current<ambit_discovery::ProxyState>>,
    mut updates: watch::Receiver<u64>,
    want: Vec<(String, Option<String>)>,
) -> anyhow::Result<Instant> {
    loop {
        let held = state.load().known_versions();
        if want.iter().all(|(k, v)| held.get(k) == v.as_ref()) {
            return Ok(Instant::now());
        }
        updates.changed().await?;
    }
}

/// Makes `change` to `spec`, applies it to the model in force and publishes it; the figures
/// say how it reached the ztunnels.
pub async fn one(
    spec: &mut Spec,
    change: Change,
    models: &watch::Sender<Arc<MeshModel>>,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
    proxies: &[Proxy],
) -> anyhow::Result<ChangeFigures> {
    let mut f = ChangeFigures {
        name: change.name(),
        ..Default::default()
    };
    let edit = spec.apply(change);
    let current = models.borrow().clone();
    let t = Instant::now();
    let model = as_controller(|| current.apply([edit.clone()]))
        .map_err(|e| anyhow::anyhow!("{}: the change does not apply: {e:?}", change.name()))?;
    f.apply = t.elapsed();
    let model = Arc::new(model);
    let old = snapshots.borrow().clone();
    let t = Instant::now();
    let new = Snapshot::build(model.clone(), Some(&old));
    f.snapshot = t.elapsed();
    let expected = expected(proxies, &old, &new, &edit);
    drop((old, new, current));
    f.affected = expected.len();
    let before: Vec<u64> = proxies.iter().map(|p| *p.updates.borrow()).collect();

    let mut waits = tokio::task::JoinSet::new();
    for (&i, want) in &expected {
        let p = &proxies[i];
        waits.spawn(applied(p.state.clone(), p.updates.clone(), want.clone()));
    }
    let cpu = threads_cpu_seconds(CONTROLLER_THREADS);
    let start = Instant::now();
    as_controller(|| models.send_replace(model));
    let mut last = start;
    while let Some(done) = tokio::time::timeout(DEADLINE, waits.join_next())
        .await
        .with_context(|| format!("{}: not applied everywhere within {DEADLINE:?}", f.name))?
    {
        last = last.max(done??);
    }
    f.propagation = last - start;
    f.cpu = threads_cpu_seconds(CONTROLLER_THREADS) - cpu;
    tokio::time::sleep(QUIET).await;
    f.stray_updates = proxies
        .iter()
        .zip(before)
        .enumerate()
        .map(|(i, (p, b))| {
            let got = *p.updates.borrow() - b;
            got.saturating_sub(u64::from(expected.contains_key(&i)))
        })
        .sum();
    Ok(f)
}
