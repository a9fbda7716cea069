//! On-demand destinations at scale (issue 18): the controller bench's mesh (namespaces of 50
//! pods: 8 services of 5 replicas and 10 clients, each client calling 3 services of its own
//! namespace and one of the next, as its ALLOW policies say) on the controller's real port, and
//! ztunnel's own discovery client (its state, its lookups) subscribed on demand for a sample of
//! nodes. Each sampled ztunnel then plays its pods' traffic: every client pod on the node looks
//! up the VIPs of the services it calls, as their first connections would.
//!
//! Figures: what a ztunnel holds (entries and encoded bytes) against the full set, up front
//! and after the traffic, beside what `--destinations all` sends; the added latency of a first
//! connection's lookup (loopback, the answer applied to ztunnel's state) and of a later one;
//! the controller's heap per on-demand subscription.
//!
//! `cargo bench -p ambit-benches --bench on_demand [-- --sizes 50000,200000 --nodes 10 --json]`

#[path = "controller/mesh.rs"]
#[allow(dead_code)]
mod mesh;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_benches::alloc::{self, Class, Counting};
use ambit_benches::{Args, Samples};
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
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use mesh::{NODES, Spec, node_name};

#[global_allocator]
static ALLOC: Counting = Counting;

const CERT_TTL: Duration = Duration::from_secs(3600);
const TARGET_SHARE: f64 = 0.05;
const TARGET_LOOKUP: Duration = Duration::from_millis(1);
const TARGET_HEAP_PER_SUBSCRIPTION: f64 = 1024.0 * 1024.0;

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
    _models: watch::Sender<Arc<MeshModel>>,
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
            _models: models,
            snapshots,
        })
    })
}

/// One sampled ztunnel: its state, its lookups.
struct Proxy {
    node: String,
    state: Arc<Current<ProxyState>>,
    lookups: Arc<Lookups>,
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
    })
}

struct Figures {
    workloads: usize,
    nodes: usize,
    full: (usize, usize),
    all_mode: Vec<(usize, usize)>,
    up_front: Vec<(usize, usize)>,
    after: Vec<(usize, usize)>,
    lookups: usize,
    cold: Samples,
    warm: Samples,
    heap_per_subscription: f64,
}

fn run(workloads: usize, cluster_nodes: usize, sampled: usize) -> anyhow::Result<Figures> {
    let spec = Spec::generate_on(workloads, cluster_nodes);
    let sampled = sampled.min(spec.meshed_nodes());
    let model = Arc::new(
        spec.builder()
            .build()
            .map_err(|e| anyhow::anyhow!("invalid mesh: {}", e[0]))?,
    );
    let calls = calls(&model);
    let controller_rt = runtime("controller", Class::Measured)?;
    let proxies_rt = runtime("proxies", Class::Harness)?;
    let shutdown = CancellationToken::new();
    let c = start(&controller_rt, model.clone(), &shutdown)?;
    let snapshot = c.snapshots.borrow().clone();
    let full = size_of(&snapshot, full_set(&model).iter());
    let nodes: Vec<String> = (0..sampled)
        .map(|i| node_name(i * spec.meshed_nodes() / sampled))
        .collect();
    let all_mode = nodes
        .iter()
        .map(|n| {
            let d = desired_for(&snapshot, &subscriber(n));
            size_of(&snapshot, d.keys())
        })
        .collect();
    let heap_before = alloc::live(Class::Measured);
    let (_stop, drain) = drain::channel();
    let mut f = Figures {
        workloads: model.workloads().count(),
        nodes: model.nodes().count(),
        full,
        all_mode,
        up_front: Vec::new(),
        after: Vec::new(),
        lookups: 0,
        cold: Samples::default(),
        warm: Samples::default(),
        heap_per_subscription: 0.0,
    };
    let td = model.trust_domain().to_string();
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
            // Keep the subscription (and its heap at the controller) to the end.
            std::mem::forget(p);
        }
        anyhow::Ok(())
    })?;
    f.heap_per_subscription =
        (alloc::live(Class::Measured) - heap_before) as f64 / nodes.len() as f64;
    shutdown.cancel();
    Ok(f)
}

fn mean(v: &[(usize, usize)]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    (
        v.iter().map(|x| x.0 as f64).sum::<f64>() / n,
        v.iter().map(|x| x.1 as f64).sum::<f64>() / n,
    )
}

impl Figures {
    fn share(&self, v: &[(usize, usize)]) -> (f64, f64) {
        let (n, b) = mean(v);
        (n / self.full.0 as f64, b / self.full.1 as f64)
    }

    fn print(&mut self) {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        println!(
            "\n== {} workloads on {} nodes, {} ztunnels sampled ==",
            self.workloads,
            self.nodes,
            self.up_front.len()
        );
        println!(
            "full set: {} entries, {:.1} MiB",
            self.full.0,
            mib(self.full.1 as f64)
        );
        for (what, v) in [
            ("--destinations all", &self.all_mode),
            ("on demand, up front", &self.up_front),
            ("on demand, after traffic", &self.after),
        ] {
            let (n, b) = mean(v);
            let (sn, sb) = self.share(v);
            println!(
                "{what:<28} {n:>9.0} entries ({sn:.3} of the full set), {:>7.2} MiB ({sb:.3})",
                mib(b)
            );
        }
        println!("target after traffic: <= {TARGET_SHARE} of the full set");
        println!(
            "first connection's lookup ({} lookups): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target <= {:?}); later connections: p50 {:.4} ms",
            self.lookups,
            self.cold.quantile(0.5) as f64 / 1e3,
            self.cold.quantile(0.99) as f64 / 1e3,
            self.cold.quantile(1.0) as f64 / 1e3,
            TARGET_LOOKUP,
            self.warm.quantile(0.5) as f64 / 1e3,
        );
        println!(
            "controller heap per on-demand subscription (after its lookups): {:.2} MiB (target <= {:.0} MiB)",
            mib(self.heap_per_subscription),
            mib(TARGET_HEAP_PER_SUBSCRIPTION)
        );
    }

    fn json(&mut self) -> serde_json::Value {
        json!({
            "workloads": self.workloads,
            "nodes": self.nodes,
            "sampled_ztunnels": self.up_front.len(),
            "full_entries": self.full.0,
            "full_bytes": self.full.1,
            "all_mode_share_entries": self.share(&self.all_mode).0,
            "all_mode_share_bytes": self.share(&self.all_mode).1,
            "up_front_share_entries": self.share(&self.up_front).0,
            "up_front_share_bytes": self.share(&self.up_front).1,
            "after_traffic_share_entries": self.share(&self.after).0,
            "after_traffic_share_bytes": self.share(&self.after).1,
            "after_traffic_bytes_per_ztunnel": mean(&self.after).1,
            "lookups": self.lookups,
            "lookup_p50_ms": self.cold.quantile(0.5) as f64 / 1e3,
            "lookup_p99_ms": self.cold.quantile(0.99) as f64 / 1e3,
            "lookup_max_ms": self.cold.quantile(1.0) as f64 / 1e3,
            "later_connection_p50_ms": self.warm.quantile(0.5) as f64 / 1e3,
            "controller_heap_per_subscription_bytes": self.heap_per_subscription,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let sizes: Vec<usize> = match args.text("--sizes") {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--sizes {list}: {e}"))?,
        None => vec![50_000],
    };
    let sampled: usize = args.value("--nodes", 10).max(1);
    let cluster_nodes: usize = args.value("--cluster-nodes", NODES).max(10);
    let mut results = Vec::new();
    for size in sizes {
        let mut f = run(size, cluster_nodes, sampled)?;
        f.print();
        results.push(f.json());
    }
    if args.flag("--json") {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
