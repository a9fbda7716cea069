//! One mesh size, start to finish: model, snapshot, scopes, server, 100 subscribers, changes.
//!
//! The controller (publisher, discovery server, its subscriptions) runs on a runtime of its own,
//! the subscribers on another whose threads the counting allocator tags as harness, so the
//! controller's heap figures leave out what the subscribers hold.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_benches::alloc::{self, Class};
use ambit_benches::cpu::threads_cpu_seconds;
use ambit_controller::ca::{Authenticator, CaService};
use ambit_controller::grpc::{self, ServingIdentity};
use ambit_controller::model::{Edit, MeshBuilder, MeshModel};
use ambit_controller::push::{
    Desired, DiscoveryService, ResourceKey, Snapshot, SubscriberAccess, desired_for,
    publish_snapshots, version_text,
};
use ambit_proto::api::discovery::{Resource, ResourceType, SubscribeRequest, SubscribeResponse};
use ambit_proto::control;
use ambit_proto::identity::CertificateAuthority;
use anyhow::Context;
use prost::Message;
use rustls::ClientConfig;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fleet::{self, Event, ztunnel};
use super::mesh::{Change, NODES, Spec};

/// Lifetime of the controller's own certificate: longer than any run.
const CERT_TTL: Duration = Duration::from_secs(3600);
use super::report::{ChangeFigures, Figures};

/// How long a ztunnel outside a change is watched for a stray push after the last affected one
/// got its delta.
const QUIET: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(120);

/// The controller runtime's threads (workers and blocking pool, where snapshots are built).
const CONTROLLER_THREADS: &str = "controller";

type EventRx = mpsc::UnboundedReceiver<Result<Event, String>>;

fn runtime(name: &str, class: Class) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .on_thread_start(move || alloc::set_thread_class(class))
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

fn build(builder: MeshBuilder) -> anyhow::Result<MeshModel> {
    builder.build().map_err(|errors| {
        let first: Vec<String> = errors.iter().take(5).map(ToString::to_string).collect();
        anyhow::anyhow!("the generated mesh is invalid: {}", first.join("; "))
    })
}

/// Every resource of the model, as a proxy sent everything would receive it.
fn full_set(snapshot: &Snapshot) -> Vec<Resource> {
    let m = snapshot.model();
    let named = |kind, ns: &str, name: &str| ResourceKey::new(kind, format!("{ns}/{name}"));
    let keys = m
        .workloads()
        .map(|w| ResourceKey::new(ResourceType::Workload, w.uid.as_str()))
        .chain(
            m.services()
                .map(|s| named(ResourceType::Service, &s.service.namespace, &s.service.name)),
        )
        .chain(
            m.waypoints()
                .map(|w| named(ResourceType::WaypointResource, &w.namespace, &w.name)),
        )
        .chain(
            m.policies()
                .map(|p| named(ResourceType::AuthorizationPolicy, &p.namespace, &p.name)),
        )
        .chain(
            m.routes()
                .map(|r| named(ResourceType::Route, &r.namespace, &r.name)),
        );
    keys.filter_map(|k| snapshot.resource(&k).map(|r| r.decode()))
        .collect()
}

/// What a node's delta must carry to go from `old` to `new`: keys whose version changed or that
/// appeared, and removals. Empty: the node must be sent nothing.
fn expected_delta(old: &Desired, new: &Desired) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (key, r) in new.iter() {
        if old.get(key).is_none_or(|o| o.version != r.version) {
            keys.insert(key.to_string());
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(k)) {
        keys.insert(format!("removed:{key}"));
    }
    keys
}

struct Controller {
    address: String,
    /// How a proxy's TLS client is set up for this controller (its root, its identity pinned).
    tls: Arc<ClientConfig>,
    _serving: ServingIdentity,
    models: watch::Sender<Arc<MeshModel>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
}

fn start(rt: &Runtime, model: Arc<MeshModel>) -> anyhow::Result<Controller> {
    let (models, models_rx) = watch::channel(model);
    let shutdown = CancellationToken::new();
    rt.block_on(async {
        let trust_domain = models_rx.borrow().trust_domain().to_string();
        let ca = Arc::new(CertificateAuthority::generate(&trust_domain)?);
        let identity = control::default_controller_identity(&trust_domain)?;
        let serving = ServingIdentity::issue(ca.clone(), identity.clone(), CERT_TTL).await?;
        let tls = control::client_config(&ca.trust_bundle(), identity)?;
        let (snapshots, _publisher) = publish_snapshots(models_rx.clone(), shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let authenticator = Arc::new(Authenticator::BootstrapTokens);
        let discovery =
            DiscoveryService::new(snapshots.clone(), shutdown.clone()).authenticate_with(
                SubscriberAccess::new(authenticator.clone(), models_rx.clone()),
            );
        let ca_service = CaService::new(ca, models_rx, CERT_TTL).authenticate_with(authenticator);
        tokio::spawn(grpc::serve(
            listener,
            serving.tls(),
            discovery,
            ca_service,
            shutdown.clone(),
        ));
        Ok(Controller {
            address: format!("https://{addr}"),
            tls: Arc::new(tls),
            _serving: serving,
            models,
            snapshots,
            shutdown,
        })
    })
}

/// Waits for events until `done` says so or `deadline` passes; errors from subscribers end it.
async fn collect(
    events: &mut EventRx,
    deadline: Instant,
    mut done: impl FnMut(&[Event]) -> bool,
) -> anyhow::Result<Vec<Event>> {
    let mut got = Vec::new();
    while !done(&got) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(Ok(e))) => got.push(e),
            Ok(Some(Err(e))) => anyhow::bail!("a subscriber failed: {e}"),
            Ok(None) => anyhow::bail!("every subscriber is gone"),
            Err(_) => break,
        }
    }
    Ok(got)
}

pub fn size(workloads: usize) -> anyhow::Result<Figures> {
    let mut spec = Spec::generate(workloads);
    let mut f = Figures {
        workloads: spec.workloads(),
        namespaces: spec.namespaces(),
        services: spec.services(),
        policies: spec.policies(),
        waypoints: spec.waypoints(),
        nodes: spec.nodes(),
        ..Default::default()
    };
    // The builder's input becomes part of the model (pods move into workloads), so the baseline
    // is taken before the input exists.
    let before = alloc::live(Class::Measured);
    let builder = spec.builder();
    let t = Instant::now();
    let model = Arc::new(build(builder)?);
    f.model_build = t.elapsed();
    f.model_heap = alloc::live(Class::Measured) - before;

    let before = alloc::live(Class::Measured);
    let t = Instant::now();
    let snapshot = Snapshot::build(model.clone(), None);
    f.snapshot_build = t.elapsed();
    f.snapshot_heap = alloc::live(Class::Measured) - before;

    let t = Instant::now();
    let desired: Vec<Desired> = (0..NODES)
        .map(|n| desired_for(&snapshot, &ztunnel(n)))
        .collect();
    f.scopes = t.elapsed();
    let full = SubscribeResponse {
        resources: full_set(&snapshot),
        full_state: true,
        ..Default::default()
    };
    f.full_set_bytes = full.encoded_len();
    drop(full);
    let largest = desired.iter().max_by_key(|d| d.len()).expect("100 nodes");
    let resume = SubscribeRequest {
        subscriber: Some(ztunnel(0)),
        known_versions: largest
            .iter()
            .map(|(k, r)| (k.to_string(), version_text(r.version)))
            .collect(),
        ..Default::default()
    };
    f.resume_request_bytes = resume.encoded_len();
    drop((resume, desired, snapshot));

    let server_rt = runtime(CONTROLLER_THREADS, Class::Measured)?;
    let clients_rt = runtime("ztunnels", Class::Harness)?;
    let controller = start(&server_rt, model)?;
    let mut events = initial_push(&mut f, &controller, &clients_rt)?;
    f.default_client = Some(clients_rt.block_on(fleet::default_limits_probe(
        &controller.address,
        controller.tls.clone(),
        0,
    )));
    for change in Change::ALL {
        let edit = spec.apply(change);
        let figures =
            clients_rt.block_on(one_change(&spec, change, edit, &controller, &mut events))?;
        f.changes.push(figures);
    }
    f.vm_hwm = alloc::proc_status_bytes("VmHWM").unwrap_or(0);
    controller.shutdown.cancel();
    clients_rt.shutdown_timeout(Duration::from_secs(5));
    server_rt.shutdown_timeout(Duration::from_secs(5));
    Ok(f)
}

/// All 100 subscribe at once, as after a controller restart. Returns the subscribers' event
/// stream, on which they go on to report deltas.
fn initial_push(f: &mut Figures, c: &Controller, clients_rt: &Runtime) -> anyhow::Result<EventRx> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Let the publisher's first snapshot and the server settle before the baseline.
    std::thread::sleep(Duration::from_millis(200));
    let baseline = alloc::live(Class::Measured);
    alloc::reset_peak(Class::Measured);
    let cpu = threads_cpu_seconds(CONTROLLER_THREADS);
    let start = Instant::now();
    for node in 0..NODES {
        clients_rt.spawn(fleet::run(
            c.address.clone(),
            c.tls.clone(),
            node,
            tx.clone(),
        ));
    }
    let events =
        clients_rt.block_on(collect(&mut rx, start + DEADLINE, |got| got.len() >= NODES))?;
    anyhow::ensure!(
        events.len() == NODES && events.iter().all(|e| e.full),
        "{} of {NODES} ztunnels got a full state within {DEADLINE:?}",
        events.iter().filter(|e| e.full).count()
    );
    let mut times: Vec<Duration> = events.iter().map(|e| e.at - start).collect();
    times.sort();
    f.initial_push = times[NODES - 1];
    f.initial_push_cpu = threads_cpu_seconds(CONTROLLER_THREADS) - cpu;
    f.initial_push_p50 = times[NODES / 2];
    let bytes: Vec<usize> = events.iter().map(|e| e.bytes).collect();
    f.bytes_mean = bytes.iter().sum::<usize>() as f64 / NODES as f64;
    f.bytes_max = bytes.iter().copied().max().unwrap_or(0);
    f.bytes_min = bytes.iter().copied().min().unwrap_or(0);
    // ACKs are in flight; give the sessions a moment to take them before reading the heap.
    std::thread::sleep(Duration::from_millis(300));
    f.push_peak_heap = alloc::peak(Class::Measured) - baseline;
    f.sessions_heap = alloc::live(Class::Measured) - baseline;
    Ok(rx)
}

/// The change applied to the model in force, as the Kubernetes source applies one object's
/// event; checked (untimed) against a full build of the changed input.
async fn one_change(
    spec: &Spec,
    change: Change,
    edit: Edit,
    c: &Controller,
    rx: &mut EventRx,
) -> anyhow::Result<ChangeFigures> {
    let current = c.models.borrow().clone();
    let t = Instant::now();
    let model = current.apply([edit]).map_err(|errors| {
        anyhow::anyhow!("{}: the change does not apply: {errors:?}", change.name())
    })?;
    let rebuild = t.elapsed();
    anyhow::ensure!(
        model == build(spec.builder())?,
        "{}: the model applied in place differs from a full build",
        change.name()
    );
    let model = Arc::new(model);
    // What each node must receive, worked out before the publish so that the harness does not
    // compete with the push for the two cores.
    let old = c.snapshots.borrow().clone();
    let t = Instant::now();
    let new = Snapshot::build(model.clone(), Some(&old));
    let snapshot = t.elapsed();
    let expected: HashMap<usize, BTreeSet<String>> = (0..NODES)
        .map(|n| {
            let sub = ztunnel(n);
            let keys = expected_delta(&desired_for(&old, &sub), &desired_for(&new, &sub));
            (n, keys)
        })
        .filter(|(_, keys)| !keys.is_empty())
        .collect();
    drop((old, new));
    while rx.try_recv().is_ok() {}
    let cpu = threads_cpu_seconds(CONTROLLER_THREADS);
    let start = Instant::now();
    c.models.send_replace(model);
    let mut events = collect(rx, start + DEADLINE, |got| {
        let nodes: BTreeSet<usize> = got.iter().map(|e| e.node).collect();
        expected.keys().all(|n| nodes.contains(n))
    })
    .await?;
    let propagation = events
        .iter()
        .filter(|e| expected.contains_key(&e.node))
        .map(|e| e.at - start)
        .max()
        .unwrap_or_default();
    let push_cpu = threads_cpu_seconds(CONTROLLER_THREADS) - cpu;
    // Anything else that arrives soon after is a push nobody needed.
    events.extend(collect(rx, Instant::now() + QUIET, |_| false).await?);
    let mut wrong = Vec::new();
    for (node, keys) in &expected {
        let got: Vec<&Event> = events.iter().filter(|e| e.node == *node).collect();
        let received: BTreeSet<String> = got.iter().flat_map(|e| e.keys.iter().cloned()).collect();
        if got.len() != 1 || got[0].full || received != *keys {
            wrong.push(format!(
                "node {node}: {} responses, keys {received:?}, expected {keys:?}",
                got.len()
            ));
        }
    }
    let deltas: Vec<usize> = events
        .iter()
        .filter(|e| expected.contains_key(&e.node))
        .map(|e| e.bytes)
        .collect();
    Ok(ChangeFigures {
        name: change.name(),
        describe: change.describe(),
        rebuild,
        snapshot,
        affected: expected.len(),
        propagation,
        push_cpu,
        delta_bytes_mean: deltas.iter().sum::<usize>() as f64 / deltas.len().max(1) as f64,
        delta_bytes_max: deltas.iter().copied().max().unwrap_or(0),
        wrong,
        unaffected_pushed: events
            .iter()
            .filter(|e| !expected.contains_key(&e.node))
            .count(),
    })
}
