//! On-demand destinations at scale (issue 18): the controller bench's mesh (namespaces of 50
//! pods: 8 services of 5 replicas and 10 clients, each client calling 3 services of its own
//! namespace and one of the next, as its ALLOW policies say) on the controller's real port, and
//! ztunnel's own discovery client (its state, its lookups) subscribed on demand for the first
//! `--nodes` nodes of the cluster. Each ztunnel then plays its pods' traffic: every client pod
//! on the node looks up the VIPs of the services it calls, as their first connections would.
//! Then four changes, one at a time, each applied to the model in force and published.
//!
//! Figures: what a ztunnel holds (entries and encoded bytes) against the full set, up front
//! and after the traffic, beside what `--destinations all` sends; the added latency of a first
//! connection's lookup (loopback, the answer applied to ztunnel's state) and of a later one;
//! the controller's heap (model, snapshot, per on-demand subscription, all of
//! it) and CPU; each change's propagation to the ztunnels holding what it touched.
//!
//! `cargo bench -p ambit-benches --bench on_demand [-- --sizes 50000,200000 --cluster-nodes 1000 --nodes 100 --json]`

#[path = "on_demand/change.rs"]
mod change;
#[path = "controller/mesh.rs"]
#[allow(dead_code)]
mod mesh;
#[path = "on_demand/report.rs"]
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_benches::Args;
use ambit_benches::alloc::{self, Class, Counting};
use ambit_benches::cpu::threads_cpu_seconds;
use ambit_controller::ca::CaService;
use ambit_controller::grpc::{self, ServingIdentity};
use ambit_controller::model::{MeshModel, ObjectKey};
use ambit_controller::push::{
    DiscoveryService, ResourceKey, Snapshot, desired_for, publish_snapshots,
};
use ambit_discovery::{ControllerLink, Current, Lookups, ProxyState};
use ambit_proto::api::discovery::{ProxyKind, ResourceType, Subscriber};
use ambit_proto::control;
use ambit_proto::drain;
use ambit_proto::identity::CertificateAuthority;
use ambit_ztunnel::xds::{self, Applier};
use anyhow::Context;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use change::as_controller;
use mesh::{Change, NODES, Spec, node_name};
use report::Figures;

#[global_allocator]
static ALLOC: Counting = Counting;

const CERT_TTL: Duration = Duration::from_secs(3600);
/// The controller runtime's threads (worker and blocking pool, where snapshots are built).
const CONTROLLER_THREADS: &str = "controller";
/// `--destinations all` sends every meshed node about the same share; a few say it, and at a
/// million workloads each costs a walk of a million keys.
const ALL_MODE_SAMPLE: usize = 5;

fn runtime(name: &str, class: Class) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || alloc::set_thread_class(class))
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

/// Entries and encoded bytes of `keys` in `snapshot`.
fn size_of<'a>(snapshot: &Snapshot, keys: impl Iterator<Item = &'a ResourceKey>) -> (usize, usize) {
    keys.filter_map(|k| snapshot.resource(k))
        .fold((0, 0), |(n, b), r| (n + 1, b + r.encoded.len()))
}

/// Every workload, service, waypoint and policy: what a proxy sent everything would hold.
fn full_set(model: &MeshModel) -> Vec<ResourceKey> {
    let named = |kind, ns: &str, name: &str| ResourceKey::new(kind, format!("{ns}/{name}"));
    model
        .workloads()
        .map(|w| ResourceKey::new(ResourceType::Workload, w.uid.as_str()))
        .chain(
            model
                .services()
                .map(|s| named(ResourceType::Service, &s.service.namespace, &s.service.name)),
        )
        .chain(
            model
                .waypoints()
                .map(|w| named(ResourceType::WaypointResource, &w.namespace, &w.name)),
        )
        .chain(
            model
                .policies()
                .map(|p| named(ResourceType::AuthorizationPolicy, &p.namespace, &p.name)),
        )
        .collect()
}

/// The VIPs each principal calls: the services whose ALLOW policies name it.
fn calls(model: &MeshModel) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut calls: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for p in model.policies() {
        let Some(service) = p
            .selector
            .get("app")
            .and_then(|app| model.service(&ObjectKey::new(&p.namespace, app)))
        else {
            continue;
        };
        let principals = p
            .rules
            .iter()
            .flat_map(|r| &r.from)
            .flat_map(|f| &f.principals);
        for principal in principals {
            calls
                .entry(principal.clone())
                .or_default()
                .extend(&service.service.vips);
        }
    }
    calls
}

fn subscriber(node: &str) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: node.into(),
        ..Default::default()
    }
}

struct Controller {
    address: String,
    identity: ambit_proto::identity::SpiffeId,
    ca: Arc<CertificateAuthority>,
    _serving: ServingIdentity,
    models: watch::Sender<Arc<MeshModel>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

fn start(
    rt: &Runtime,
    model: Arc<MeshModel>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Controller> {
    let (models, models_rx) = watch::channel(model);
    rt.block_on(async {
        let trust_domain = models_rx.borrow().trust_domain().to_string();
        let ca = Arc::new(CertificateAuthority::generate(&trust_domain)?);
        let identity = control::default_controller_identity(&trust_domain)?;
        let serving = ServingIdentity::issue(ca.clone(), identity.clone(), CERT_TTL).await?;
        let (snapshots, _publisher) = publish_snapshots(models_rx.clone(), shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let discovery = DiscoveryService::new(snapshots.clone(), shutdown.clone());
        let ca_service = CaService::new(ca.clone(), models_rx, CERT_TTL);
        tokio::spawn(grpc::serve(
            listener,
            serving.tls(),
            discovery,
            ca_service,
            shutdown.clone(),
        ));
        Ok(Controller {
            address: format!("https://{addr}"),
            identity,
            ca,
            _serving: serving,
            models,
            snapshots,
        })
    })
}

/// One subscribed ztunnel: its state, its lookups, its count of applied updates.
struct Proxy {
    node: String,
    state: Arc<Current<ProxyState>>,
    lookups: Arc<Lookups>,
    updates: watch::Receiver<u64>,
}

impl Proxy {
    fn held(&self) -> Vec<ResourceKey> {
        self.state
            .load()
            .known_versions()
            .keys()
            .filter_map(|k| ResourceKey::parse(k))
            .collect()
    }
}

async fn subscribe(
    c: &Controller,
    node: String,
    drain: drain::DrainWatch,
) -> anyhow::Result<Proxy> {
    let state = Arc::new(Current::<ProxyState>::default());
    let (applied, mut updates) = watch::channel(0);
    let applier = Arc::new(Applier {
        state: state.clone(),
        metrics: Arc::new(ambit_ztunnel::metrics::Metrics::new()),
        applied,
    });
    let link = ControllerLink::new(
        &c.address,
        c.identity.clone(),
        &c.ca.trust_bundle(),
        Some(&node),
        None,
    )?;
    let lookups = Arc::new(Lookups::new(
        Duration::from_secs(3600),
        Duration::from_secs(30),
    ));
    tokio::spawn(xds::client(link, &node, applier, Some(lookups.clone())).run(drain));
    tokio::time::timeout(Duration::from_secs(60), updates.wait_for(|n| *n > 0))
        .await
        .context("no first config within 60 s")??;
    Ok(Proxy {
        node,
        state,
        lookups,
        updates,
    })
}

fn run(workloads: usize, cluster_nodes: usize, subscribed: usize) -> anyhow::Result<Figures> {
    let mut spec = Spec::generate_on(workloads, cluster_nodes);
    let subscribed = subscribed.min(spec.meshed_nodes());
    // What an earlier size left counted (blocks freed on another class's threads, tasks
    // still holding its model at runtime shutdown) is not this size's.
    let baseline = alloc::live(Class::Measured);
    alloc::reset_peak(Class::Measured);
    let t = Instant::now();
    let model = Arc::new(
        as_controller(|| spec.builder().build())
            .map_err(|e| anyhow::anyhow!("invalid mesh: {}", e[0]))?,
    );
    let model_build = t.elapsed();
    progress(workloads, format_args!("model built in {model_build:.1?}"));
    let model_heap = alloc::live(Class::Measured) - baseline;
    let calls = calls(&model);
    let controller_rt = runtime(CONTROLLER_THREADS, Class::Measured)?;
    let proxies_rt = runtime("proxies", Class::Harness)?;
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let c = as_controller(|| start(&controller_rt, model.clone(), &shutdown))?;
    let snapshot_build = t.elapsed();
    progress(
        workloads,
        format_args!("first snapshot in {snapshot_build:.1?}; subscribing"),
    );
    let snapshot = c.snapshots.borrow().clone();
    let full = size_of(&snapshot, full_set(&model).iter());
    // The first nodes rather than a spread: pods go round-robin, so any node's mix is every
    // node's, and the changes (made in the first namespace, whose pods are on the first 50
    // nodes) then reach some of them.
    let nodes: Vec<String> = (0..subscribed).map(node_name).collect();
    drop(snapshot);
    let heap_before = alloc::live(Class::Measured);
    let cpu_before = threads_cpu_seconds(CONTROLLER_THREADS);
    let (_stop, drain) = drain::channel();
    let mut f = Figures {
        workloads: model.workloads().count(),
        nodes: model.nodes().count(),
        full,
        model_build,
        snapshot_build,
        model_heap,
        ..Default::default()
    };
    let td = model.trust_domain().to_string();
    let snapshot = c.snapshots.borrow().clone();
    let mut proxies = Vec::new();
    let subscribing = Instant::now();
    proxies_rt.block_on(async {
        for node in &nodes {
            let p = subscribe(&c, node.clone(), drain.clone()).await?;
            f.up_front.push(size_of(&snapshot, p.held().iter()));
            let vips: BTreeSet<IpAddr> = model
                .workloads_on_node(&p.node)
                .filter(|w| w.meshed)
                .filter_map(|w| {
                    calls.get(&format!(
                        "spiffe://{td}/ns/{}/sa/{}",
                        w.pod.namespace, w.pod.service_account
                    ))
                })
                .flatten()
                .copied()
                .collect();
            // The first connection to each: a lookup (unless the node's own part holds it).
            for vip in &vips {
                if p.state.load().knows_address(*vip) {
                    continue;
                }
                let at = Instant::now();
                p.lookups.look_up(*vip).await?;
                f.cold.record(at.elapsed());
                f.lookups += 1;
                anyhow::ensure!(
                    p.state.load().knows_address(*vip),
                    "{vip} not held after its lookup"
                );
            }
            // Later connections: the address is held, a read lock and a store.
            for vip in &vips {
                let at = Instant::now();
                let held = p.state.load().knows_address(*vip);
                p.lookups.touch(*vip);
                f.warm.record(at.elapsed());
                anyhow::ensure!(held, "{vip} not held on a later connection");
            }
            f.after.push(size_of(&snapshot, p.held().iter()));
            proxies.push(p);
        }
        anyhow::Ok(())
    })?;
    f.subscribe_wall = subscribing.elapsed();
    progress(
        workloads,
        format_args!("subscribed and looked up in {:.1?}", f.subscribe_wall),
    );
    drop(snapshot);
    // ACKs of the last lookups are in flight; let the sessions take them.
    std::thread::sleep(Duration::from_millis(300));
    f.subscribe_cpu = threads_cpu_seconds(CONTROLLER_THREADS) - cpu_before;
    f.heap_per_subscription =
        (alloc::live(Class::Measured) - heap_before) as f64 / nodes.len() as f64;
    f.controller_heap = alloc::live(Class::Measured) - baseline;
    for change in Change::ALL {
        progress(workloads, format_args!("change: {}", change.name()));
        let figures = proxies_rt.block_on(change::one(
            &mut spec,
            change,
            &c.models,
            &c.snapshots,
            &proxies,
        ))?;
        f.changes.push(figures);
    }
    f.controller_peak = alloc::peak(Class::Measured) - baseline;
    f.vm_hwm = alloc::proc_status_bytes("VmHWM").unwrap_or(0);
    // Last: the controller resolves the mesh-wide part only for a subscriber sent everything,
    // and asking for it here would make the snapshot hold it for the figures above.
    let snapshot = c.snapshots.borrow().clone();
    f.all_mode = nodes
        .iter()
        .take(ALL_MODE_SAMPLE)
        .map(|n| {
            let d = desired_for(&snapshot, &subscriber(n));
            size_of(&snapshot, d.keys())
        })
        .collect();
    drop(snapshot);
    shutdown.cancel();
    // The proxies' clients end with the drain; their state goes with this runtime.
    drop(proxies);
    proxies_rt.shutdown_timeout(Duration::from_secs(5));
    controller_rt.shutdown_timeout(Duration::from_secs(5));
    Ok(f)
}

/// A line on stderr as each phase starts: a size of a million runs for many minutes, and a
/// profile of one phase needs to know when it starts.
fn progress(workloads: usize, what: std::fmt::Arguments) {
    eprintln!("on_demand {workloads}: {what}");
}

fn main() -> anyhow::Result<()> {
    // The harness's own allocations on this thread (the generated input, the traffic model,
    // the expected deltas) are not the controller's; what is, is counted with `as_controller`.
    alloc::set_thread_class(Class::Harness);
    let args = Args::from_env();
    let sizes = args.sizes(&[50_000])?;
    let subscribed: usize = args.value("--nodes", 10).max(1);
    let cluster_nodes: usize = args.value("--cluster-nodes", NODES).max(10);
    let mut results = Vec::new();
    for size in sizes {
        let mut f = run(size, cluster_nodes, subscribed)?;
        f.print();
        results.push(f.json());
    }
    if args.flag("--json") {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
