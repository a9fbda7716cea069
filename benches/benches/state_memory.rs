//! What a proxy's state costs per workload it holds (issue 18's ≤ 250 B), counted by the
//! allocator rather than read off a page-granular RSS: the bytes a [`ProxyState`] keeps after
//! a response of `--workloads` workloads is applied, and the peak while that response is
//! decoded from the wire and applied. Counts, not times: they come out the same on a loaded
//! machine, so a before/after of a state change is exact.
//!
//! Two shapes of workloads:
//! - `bulk`, config_apply's: every pod in one namespace, on one node, with one service account,
//!   its canonical name its own (no app label): the most a ztunnel's interning can share;
//! - `spread`, closer to a cluster: 100 namespaces, pods on 1,000 nodes, apps of three
//!   replicas (each app its own service account and canonical name), two policies per
//!   namespace selecting every pod in it;
//! - `served`, as a cluster is: `spread` with each app behind a service of its own (a VIP, one
//!   port, its three replicas its endpoints), the services counted in the workloads' share.
//!
//! Each shape is applied as a full state, and as a delta onto a state that already holds 100
//! other workloads (how config_apply's update reaches a running ztunnel).
//!
//! `cargo bench -p ambit-benches --bench state_memory [-- --workloads 50000 --json]`

use std::time::Instant;

use ambit_benches::Args;
use ambit_benches::alloc::{self, Class, Counting};
use ambit_discovery::ProxyState;
use ambit_proto::api::discovery::{Resource, SubscribeResponse, resource::Kind};
use ambit_proto::api::workload as wl;
use prost::Message;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Workloads the delta is applied on top of.
const ALREADY_HELD: usize = 100;

#[derive(Clone, Copy)]
enum Shape {
    Bulk,
    Spread,
    Served,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Bulk => "bulk",
            Shape::Spread => "spread",
            Shape::Served => "served",
        }
    }
}

/// Workload `i` of `shape` as the controller sends it (its uid, defaults and version hash).
fn workload(shape: Shape, i: usize) -> Resource {
    let (namespace, node, account, canonical, policies) = match shape {
        Shape::Bulk => (
            "bulk".to_string(),
            "node-a".to_string(),
            "bulk".to_string(),
            format!("bulk-{i}"),
            vec![],
        ),
        Shape::Spread | Shape::Served => {
            // An app's three replicas share its namespace; they run on different nodes.
            let ns = format!("ns-{}", i / 3 % 100);
            let app = format!("app-{}", i / 3);
            let policies = vec![format!("{ns}/allow-callers"), format!("{ns}/deny-debug")];
            (ns, format!("node-{}", i % 1000), app.clone(), app, policies)
        }
    };
    let name = format!("{canonical}-{i:x}");
    let name = match shape {
        Shape::Bulk => canonical.clone(),
        Shape::Spread | Shape::Served => name,
    };
    let uid = uid(&namespace, &name);
    Resource {
        name: uid.clone(),
        version: format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        kind: Some(Kind::Workload(wl::Workload {
            uid,
            name,
            namespace,
            service_account: account,
            node,
            addresses: vec![format!(
                "10.{}.{}.{}",
                100 + i / 65_025,
                i / 255 % 255,
                i % 255 + 1
            )],
            protocol: wl::Protocol::Hbone as i32,
            status: wl::WorkloadStatus::Healthy as i32,
            trust_domain: "cluster.local".into(),
            canonical_name: canonical,
            canonical_revision: "latest".into(),
            authorization_policies: policies,
            ..Default::default()
        })),
    }
}

fn uid(namespace: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{namespace}/{name}")
}

/// The service in front of app `app` of the `served` shape (workloads `3 * app` to `3 * app + 2`).
fn service(app: usize) -> Resource {
    let namespace = format!("ns-{}", app % 100);
    let name = format!("app-{app}");
    let endpoints = (3 * app..3 * app + 3)
        .map(|i| wl::Endpoint {
            workload_uid: uid(&namespace, &format!("{name}-{i:x}")),
        })
        .collect();
    Resource {
        name: format!("{namespace}/{name}"),
        version: format!("{:016x}", (app as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)),
        kind: Some(Kind::Service(wl::Service {
            hostname: format!("{name}.{namespace}.svc.cluster.local"),
            addresses: vec![format!("10.96.{}.{}", app / 250 % 250, app % 250 + 1)],
            ports: vec![wl::Port {
                service_port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            endpoints,
            name,
            namespace,
            waypoint: None,
        })),
    }
}

fn response(shape: Shape, range: std::ops::Range<usize>, full_state: bool) -> SubscribeResponse {
    let services = match shape {
        // Each app whose first replica is in range.
        Shape::Served => range
            .clone()
            .filter(|i| i % 3 == 0)
            .map(|i| service(i / 3))
            .collect(),
        Shape::Bulk | Shape::Spread => vec![],
    };
    SubscribeResponse {
        resources: range.map(|i| workload(shape, i)).chain(services).collect(),
        full_state,
        system_version: "0123456789abcdef".into(),
        ..Default::default()
    }
}

struct Figures {
    /// Bytes the state keeps per workload the response brought.
    kept: f64,
    /// The highest bytes live while the encoded response was decoded and applied, per workload.
    peak: f64,
    apply_ms: f64,
}

/// `n` workloads of `shape` arriving encoded, as a full state or as a delta onto a state of
/// [`ALREADY_HELD`] others.
fn measure(shape: Shape, n: usize, full_state: bool) -> Figures {
    let base = if full_state {
        ProxyState::default()
    } else {
        let mut held = ProxyState::default();
        held.apply(&response(shape, n..n + ALREADY_HELD, true))
            .expect("the held workloads apply");
        held
    };
    let wire = response(shape, 0..n, full_state).encode_to_vec();
    let before = alloc::live(Class::Measured);
    alloc::reset_peak(Class::Measured);
    let started = Instant::now();
    let decoded = SubscribeResponse::decode(wire.as_slice()).expect("it decodes");
    let next = base.applied(&decoded).expect("the response applies");
    let apply_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(decoded);
    let peak = alloc::peak(Class::Measured) - before;
    // What the old state held alone goes with it, as a proxy swapping states lets it go.
    drop(base);
    let kept = alloc::live(Class::Measured) - before;
    assert_eq!(
        next.workload_count(),
        n + if full_state { 0 } else { ALREADY_HELD }
    );
    drop(next);
    Figures {
        kept: kept as f64 / n as f64,
        peak: peak as f64 / n as f64,
        apply_ms,
    }
}

/// RSS growth per workload when a proxy's client takes the response: decoded on one thread
/// (tonic's, on the control runtime), applied on another (a blocking thread), the decoded form
/// dropped there and the freed memory trimmed, as `discovery::client` does (with
/// `--decode-where-applied`, both on one thread, to see what the arenas cost). Run first, in a
/// fresh process, so nothing else freed is in the way.
fn rss_as_a_proxy(shape: Shape, n: usize, one_thread: bool) -> f64 {
    // Kept until the end, so its pages count in both readings.
    let wire = std::sync::Arc::new(response(shape, 0..n, true).encode_to_vec());
    let rss = || alloc::proc_status_bytes("VmRSS").unwrap_or(0) as f64;
    // What building the response freed is given back first, or the trim below counts it.
    ambit_discovery::memory::trim_after_update(usize::MAX);
    let before = rss();
    let encoded = wire.clone();
    let decode = move || SubscribeResponse::decode(encoded.as_slice()).expect("it decodes");
    let apply = |decoded: SubscribeResponse| {
        let state = ProxyState::default()
            .applied(&decoded)
            .expect("the response applies");
        drop(decoded);
        state
    };
    let state = if one_thread {
        std::thread::spawn(move || apply(decode()))
            .join()
            .expect("the decoding and applying thread")
    } else {
        let decoded = std::thread::spawn(decode)
            .join()
            .expect("the decoding thread");
        std::thread::spawn(move || apply(decoded))
            .join()
            .expect("the applying thread")
    };
    std::thread::spawn(move || ambit_discovery::memory::trim_after_update(n))
        .join()
        .expect("the trimming thread");
    let grown = rss() - before;
    assert_eq!(state.workload_count(), n);
    std::mem::forget(state);
    grown / n as f64
}

fn main() {
    let args = Args::from_env();
    let n: usize = args.value("--workloads", 50_000);
    println!(
        "ProxyState heap per workload, {n} workloads, counted by the allocator (bytes asked for)"
    );
    println!(
        "target: ztunnel state per workload <= 250 B (issue 18; RSS adds the allocator's rounding)"
    );
    let mut json = serde_json::Map::new();
    let one_thread = args.flag("--decode-where-applied");
    // The proxies fix the allocator's thresholds at start; `--allocator-defaults` shows what
    // that saves.
    let defaults = args.flag("--allocator-defaults");
    if !defaults {
        ambit_discovery::memory::bound_arena_blocks();
    }
    let rss = rss_as_a_proxy(Shape::Bulk, n, one_thread);
    let how = match one_thread {
        true => "decoded and applied on one thread",
        false => "decoded on one thread, applied on another",
    };
    let thresholds = match defaults {
        true => "glibc's own thresholds",
        false => "thresholds fixed as the proxies fix them",
    };
    println!("bulk     as a proxy  RSS grown {rss:>6.0} B ({how}, {thresholds}, trimmed)");
    json.insert(
        "bulk_proxy_rss_bytes_per_workload".into(),
        rss.round().into(),
    );
    json.insert("workloads".into(), n.into());
    for shape in [Shape::Bulk, Shape::Spread, Shape::Served] {
        for full_state in [true, false] {
            let how = if full_state { "full state" } else { "delta" };
            let f = measure(shape, n, full_state);
            println!(
                "{:<8} {:<11} kept {:>6.0} B   peak while decoding and applying {:>6.0} B   apply {:>7.1} ms",
                shape.name(),
                how,
                f.kept,
                f.peak,
                f.apply_ms
            );
            let key = format!(
                "{}_{}",
                shape.name(),
                if full_state { "full" } else { "delta" }
            );
            json.insert(
                format!("{key}_kept_bytes_per_workload"),
                f.kept.round().into(),
            );
            json.insert(
                format!("{key}_peak_bytes_per_workload"),
                f.peak.round().into(),
            );
            json.insert(
                format!("{key}_apply_ms"),
                ((f.apply_ms * 10.0).round() / 10.0).into(),
            );
        }
    }
    if args.flag("--json") {
        println!("{}", serde_json::Value::Object(json));
    }
}
