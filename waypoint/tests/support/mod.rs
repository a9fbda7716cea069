//! A whole waypoint in one process, on loopback: a CA; fake pods, each on its own loopback
//! address with a real HBONE server on a shared test port; the waypoint's `Ingress` behind a
//! real HBONE server, fed one full `SubscribeResponse`; and clients that open HBONE tunnels to
//! it as a ztunnel would. See `Setup` for the mesh every test starts from.

#![allow(dead_code)]

pub mod client;
pub mod pod;
pub mod relay;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ambit_discovery::telemetry::{self, ReportStream, Reporter};
use ambit_discovery::testing;
use ambit_proto::api::discovery::{Resource, resource::Kind};
use ambit_proto::api::route as rt;
use ambit_proto::api::security as sec;
use ambit_proto::api::traffic as tp;
use ambit_proto::api::workload as wl;
use ambit_proto::drain::{self, DrainTrigger};
use ambit_proto::hbone::{
    AuthorityCheck, HboneClient, HboneServer, Keepalive, ServerSettings, TcpDialer,
};
use ambit_proto::identity::{CertManager, CertificateAuthority, SpiffeId};
use ambit_waypoint::forward::Forwarder;
use ambit_waypoint::http_limits::HttpLimits;
use ambit_waypoint::ingress::Ingress;
use ambit_waypoint::pages::Pages;
use ambit_waypoint::path::EscapedSlashes;
use ambit_waypoint::report::Telemetry;
use ambit_waypoint::serve::HttpServer;
use ambit_waypoint::state::Store;
use ambit_waypoint::tcp::TcpForwarder;
use ambit_waypoint::upstream::{Upstream, UpstreamSettings};
use tokio::net::TcpListener;

pub use client::{Call, Client, PATIENCE, Reply};
pub use pod::{App, Behavior, ECHO_PORT, Flaky, Gate, Pod};

pub const TD: &str = "cluster.local";
pub const WAYPOINT: &str = "demo/waypoint";

/// VIPs: only `:authority` values, no packet goes to them.
pub const REVIEWS: SocketAddr = vip(10);
pub const REVIEWS_V1: SocketAddr = vip(11);
pub const REVIEWS_V2: SocketAddr = vip(12);
/// A service that does not use the waypoint.
pub const RATINGS: SocketAddr = vip(20);
/// Port 9080 of this one is `appProtocol: tcp`, to the echo pod.
pub const TCP_ECHO: SocketAddr = vip(30);

const fn vip(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, last)), 9080)
}

pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "demo", sa).unwrap()
}

/// `<name>.demo.svc.cluster.local`.
pub fn host(service: &str) -> String {
    format!("{service}.demo.svc.cluster.local")
}

// ---------------------------------------------------------------------------------------------
// Config builders beyond `ambit_discovery::testing`.

pub fn backend(service: &str, weight: u32) -> rt::BackendRef {
    rt::BackendRef {
        service: host(service),
        port: 9080,
        weight,
    }
}

/// A rule sending its matches to `backends`.
pub fn rule(matches: Vec<rt::RouteMatch>, backends: Vec<rt::BackendRef>) -> rt::RouteRule {
    rt::RouteRule {
        matches,
        backends,
        ..Default::default()
    }
}

pub fn header_match(name: &str, value: &str) -> rt::RouteMatch {
    rt::RouteMatch {
        headers: vec![rt::HeaderMatch {
            name: name.into(),
            value: Some(rt::ValueMatch {
                kind: Some(rt::value_match::Kind::Exact(value.into())),
            }),
        }],
        ..Default::default()
    }
}

pub fn prefix_match(prefix: &str) -> rt::RouteMatch {
    rt::RouteMatch {
        path: Some(rt::PathMatch {
            kind: Some(rt::path_match::Kind::Prefix(prefix.into())),
        }),
        ..Default::default()
    }
}

/// Route `demo/<name>` on service `parent` (every port).
pub fn route(name: &str, parent: &str, rules: Vec<rt::RouteRule>) -> rt::Route {
    rt::Route {
        name: name.into(),
        namespace: "demo".into(),
        parents: vec![rt::ParentRef {
            service: host(parent),
            port: 0,
        }],
        hostnames: vec![],
        rules,
    }
}

/// Authorization policy `demo/<name>` with one rule whose source is `principals`.
pub fn policy(name: &str, action: sec::Action, principals: &[&str]) -> sec::AuthorizationPolicy {
    sec::AuthorizationPolicy {
        name: name.into(),
        namespace: "demo".into(),
        selector: None,
        action: action as i32,
        dry_run: false,
        rules: vec![sec::Rule {
            from: vec![sec::Source {
                principals: principals.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Traffic policy `demo/<name>` for service `target` (its short name), everything at the
/// waypoint's defaults until the test sets it.
pub fn traffic_policy(name: &str, target: &str) -> tp::TrafficPolicy {
    tp::TrafficPolicy {
        name: name.into(),
        namespace: "demo".into(),
        target: host(target),
        connection_pool: None,
        outlier_detection: None,
    }
}

fn resource(name: String, kind: Kind) -> Resource {
    Resource {
        name,
        version: "1".into(),
        kind: Some(kind),
    }
}

// ---------------------------------------------------------------------------------------------
// The mesh.

/// What a test changes in the mesh it starts from: the waypoint `demo/waypoint`; service
/// `reviews` (VIP 10.96.0.10, port 9080 → 8080, `appProtocol: http`, through the waypoint) in
/// front of pods reviews-v1 and reviews-v2; services `reviews-v1` and `reviews-v2` (VIPs .11 and
/// .12, through the waypoint, no routes unless given); `ratings` (VIP .20, not through the
/// waypoint); `tcp-echo` (VIP .30, port 9080 → 9000, `appProtocol: tcp`, through the waypoint)
/// in front of pod echo; the client workload (127.0.0.1).
#[derive(Default)]
pub struct Setup {
    pub routes: Vec<rt::Route>,
    /// Policies that select the reviews pods (their keys go into the pods'
    /// `authorization_policies`, as the controller resolves selectors).
    pub policies: Vec<sec::AuthorizationPolicy>,
    /// Pods whose HBONE server is not started (their address refuses connections).
    pub down: Vec<&'static str>,
    /// The waypoint's `--request-timeout` (15 s when unset).
    pub default_timeout: Option<Duration>,
    /// Traffic policies (circuit breaker, outlier detection, pool), as the controller sends them.
    pub traffic: Vec<tp::TrafficPolicy>,
    /// More services through the waypoint: (name, VIP, endpoint pods), port 9080 → 8080,
    /// `appProtocol: http`.
    pub services: Vec<(&'static str, SocketAddr, Vec<&'static str>)>,
    /// The waypoint's `--http*` per-connection limits.
    pub http_limits: HttpLimits,
    /// The waypoint's `--path-escaped-slashes` (reject when unset).
    pub escaped_slashes: Option<EscapedSlashes>,
    /// The client workload is left out of the waypoint's config, as the controller leaves out
    /// the clients of a waypoint's services in a real mesh.
    pub client_unlisted: bool,
}

pub const PODS: [&str; 3] = ["reviews-v1", "reviews-v2", "echo"];

/// One running waypoint and its mesh; everything stops when it is dropped (with the test's
/// runtime).
pub struct Mesh {
    pub ca: Arc<CertificateAuthority>,
    pub certs: CertManager,
    pub store: Arc<Store>,
    pub telemetry: Arc<Telemetry>,
    pub forwarder: Arc<Forwarder>,
    pub http: Arc<HttpServer>,
    /// Its admin pages (config dump, metrics), as its ports serve them.
    pub pages: Pages,
    pub waypoint: SocketAddr,
    pub hbone_port: u16,
    pub pods: HashMap<&'static str, Pod>,
    /// What the waypoint reports to the controller's telemetry stream, and the events it has
    /// queued for it (taken with `queued()`).
    pub reporter: Reporter,
    pub reports: parking_lot::Mutex<ReportStream>,
    clients: HboneClient,
    _trigger: DrainTrigger,
}

/// A /24 of loopback addresses of its own for each mesh of this process, so that tests in
/// parallel (and other processes on the host) do not collide.
fn next_subnet() -> (u8, u8) {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250, "too many meshes in one process");
    (100 + (std::process::id() % 100) as u8, n)
}

impl Mesh {
    /// The waypoint's config dump, parsed.
    pub async fn config_dump(&self) -> serde_json::Value {
        use ambit_discovery::admin::AdminPages;
        serde_json::from_slice(&self.pages.config_dump().await).expect("the config dump is JSON")
    }

    pub async fn start(setup: Setup) -> Mesh {
        let ca = Arc::new(CertificateAuthority::generate(TD).expect("a CA"));
        let certs = CertManager::with_local_ca(ca.clone(), Duration::from_secs(3600));
        let bundle = ca.trust_bundle();
        let (trigger, watch) = drain::channel();

        // The pods, all on one HBONE port (the waypoint dials every pod on it).
        let (b, c) = next_subnet();
        let pod_ip = |i: usize| IpAddr::V4(Ipv4Addr::new(127, b, c, 2 + i as u8));
        let (mut listeners, hbone_port) = bind_pods(&PODS, &setup.down, pod_ip).await;
        let mut pods = HashMap::new();
        for (i, name) in PODS.iter().enumerate() {
            let app = App::new(name);
            let hbone = SocketAddr::new(pod_ip(i), hbone_port);
            let running = listeners[i].is_some();
            if let Some(listener) = listeners[i].take_listener() {
                let cert = certs.watch(&id(name)).await.expect("a pod certificate");
                let server = HboneServer::new(
                    cert,
                    &bundle,
                    ServerSettings {
                        authority_check: AuthorityCheck::LocalAddress,
                        ..ServerSettings::default()
                    },
                )
                .expect("a pod HBONE server");
                let handler = Arc::new(pod::PodHandler { app: app.clone() });
                tokio::spawn(server.serve(listener, handler, watch.clone()));
            }
            pods.insert(
                *name,
                Pod {
                    app,
                    hbone,
                    running,
                },
            );
        }

        // The config, as the controller would push it.
        let store = Arc::new(Store::default());
        let ip_of = |name: &str| pods[name].hbone.ip().to_string();
        store
            .apply(&testing::response(true, resources(&setup, &ip_of)))
            .expect("the waypoint accepts the test config");

        // The waypoint, wired as `app.rs` does.
        let waypoint_id = id("waypoint");
        let (reporter, reports) = telemetry::channel(telemetry::Settings::default());
        let telemetry = Arc::new(Telemetry::new(None).with_reporter(reporter.clone()));
        let hbone = HboneClient::new(certs.clone(), Arc::new(TcpDialer), Keepalive::default());
        let upstream = Upstream::new(
            hbone.clone(),
            waypoint_id.clone(),
            UpstreamSettings {
                hbone_port,
                ..UpstreamSettings::default()
            },
        );
        let forwarder = Arc::new(
            Forwarder::new(
                store.clone(),
                upstream,
                telemetry.clone(),
                setup.default_timeout.unwrap_or(Duration::from_secs(15)),
            )
            .with_escaped_slashes(setup.escaped_slashes.unwrap_or_default()),
        );
        let tcp = Arc::new(TcpForwarder::new(
            hbone,
            waypoint_id.clone(),
            forwarder.clone(),
            Duration::from_secs(5),
            hbone_port,
        ));
        let http = Arc::new(HttpServer::new(setup.http_limits.clone()));
        let ingress = Arc::new(Ingress::new(
            WAYPOINT.into(),
            forwarder.clone(),
            tcp,
            http.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let waypoint = listener.local_addr().unwrap();
        let cert = certs
            .watch(&waypoint_id)
            .await
            .expect("the waypoint's certificate");
        let settings = ServerSettings {
            authority_check: AuthorityCheck::Any,
            ..ServerSettings::default()
        };
        let pages = Pages::new(
            WAYPOINT.into(),
            waypoint_id.clone(),
            store.clone(),
            certs.clone(),
            telemetry.clone(),
            settings.limits.clone(),
            http.clone(),
        );
        let server =
            HboneServer::new(cert, &bundle, settings).expect("the waypoint's HBONE server");
        tokio::spawn(server.serve(listener, ingress, watch));

        let clients = HboneClient::new(certs.clone(), Arc::new(TcpDialer), Keepalive::default());
        Mesh {
            ca,
            certs,
            store,
            telemetry,
            forwarder,
            http,
            pages,
            waypoint,
            hbone_port,
            pods,
            reporter,
            reports: parking_lot::Mutex::new(reports),
            clients,
            _trigger: trigger,
        }
    }

    /// A client presenting `spiffe://cluster.local/ns/demo/sa/<sa>`.
    pub fn client_as(&self, sa: &str) -> Client {
        Client {
            hbone: self.clients.clone(),
            identity: id(sa),
            waypoint: self.waypoint,
            waypoint_identity: id("waypoint"),
            forwarded_for: None,
            baggage: None,
        }
    }

    /// The client workload (`sa/client`).
    pub fn client(&self) -> Client {
        self.client_as("client")
    }

    pub fn app(&self, pod: &str) -> &Arc<App> {
        &self.pods[pod].app
    }

    /// Polls `render()` until a line of `metric` has every one of `labels`; the line, or a
    /// panic with the whole exposition after a generous deadline (series are recorded when a
    /// response body ends, which may be just after the client read it).
    pub async fn metric_line(&self, metric: &str, labels: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = ambit_discovery::admin::AdminPages::metrics(&self.pages);
            let found = text
                .lines()
                .filter(|l| l.starts_with(&format!("{metric}{{")))
                .find(|l| labels.iter().all(|want| l.contains(want)));
            if let Some(line) = found {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no {metric} series with {labels:?} in:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A bound listener, or none for a pod that is down.
enum Bound {
    Up(Option<TcpListener>),
    Down,
}

impl Bound {
    fn is_some(&self) -> bool {
        matches!(self, Bound::Up(_))
    }

    fn take_listener(&mut self) -> Option<TcpListener> {
        match self {
            Bound::Up(l) => l.take(),
            Bound::Down => None,
        }
    }
}

/// Binds the running pods' HBONE listeners on one port, the first pod's ephemeral port (tried
/// again with a new one if another address already has it).
async fn bind_pods(
    names: &[&str],
    down: &[&str],
    ip: impl Fn(usize) -> IpAddr,
) -> (Vec<Bound>, u16) {
    'attempt: for _ in 0..20 {
        // A port that is free on the first pod's address (bound there even when that pod is
        // down, then released, so that the choice is the kernel's).
        let probe = TcpListener::bind(SocketAddr::new(ip(0), 0)).await.unwrap();
        let port = probe.local_addr().unwrap().port();
        let mut bound = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if down.contains(name) {
                bound.push(Bound::Down);
                continue;
            }
            let listener = if i == 0 {
                None
            } else {
                match TcpListener::bind(SocketAddr::new(ip(i), port)).await {
                    Ok(l) => Some(l),
                    Err(_) => continue 'attempt,
                }
            };
            bound.push(Bound::Up(listener));
        }
        // The first pod keeps the probe's listener when it runs.
        match &mut bound[0] {
            Bound::Up(slot) => *slot = Some(probe),
            Bound::Down => drop(probe),
        }
        return (bound, port);
    }
    panic!("no HBONE port free on every pod address");
}

/// The full state the controller would send the waypoint.
fn resources(setup: &Setup, ip_of: &dyn Fn(&str) -> String) -> Vec<Resource> {
    let policy_keys: Vec<String> = setup
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let mut out = vec![testing::waypoint("waypoint", &["127.0.0.1"])];
    for name in PODS {
        let mut pod = testing::workload(name, &[&ip_of(name)], wl::Protocol::Hbone);
        if let Some(Kind::Workload(w)) = &mut pod.kind
            && let Some(version) = name.strip_prefix("reviews-")
        {
            w.authorization_policies = policy_keys.clone();
            w.canonical_name = "reviews".into();
            w.canonical_revision = version.into();
        }
        out.push(pod);
    }
    if !setup.client_unlisted {
        out.push(testing::workload(
            "client",
            &["127.0.0.1"],
            wl::Protocol::Hbone,
        ));
    }
    let service = |name: &str, vip: SocketAddr, endpoints: &[&str], app_protocol: &str| {
        let mut s = testing::service(name, &[&vip.ip().to_string()], endpoints);
        if let Some(Kind::Service(svc)) = &mut s.kind {
            svc.ports[0].app_protocol = app_protocol.into();
        }
        s
    };
    let through = |r: Resource| testing::using_waypoint(r, "waypoint");
    out.push(through(service(
        "reviews",
        REVIEWS,
        &["reviews-v1", "reviews-v2"],
        "http",
    )));
    out.push(through(service(
        "reviews-v1",
        REVIEWS_V1,
        &["reviews-v1"],
        "http",
    )));
    out.push(through(service(
        "reviews-v2",
        REVIEWS_V2,
        &["reviews-v2"],
        "http",
    )));
    out.push(service("ratings", RATINGS, &["reviews-v1"], "http"));
    let mut echo = through(service("tcp-echo", TCP_ECHO, &["echo"], "tcp"));
    if let Some(Kind::Service(svc)) = &mut echo.kind {
        svc.ports[0].target_port = u32::from(ECHO_PORT);
    }
    out.push(echo);
    for r in &setup.routes {
        out.push(resource(
            format!("{}/{}", r.namespace, r.name),
            Kind::Route(r.clone()),
        ));
    }
    for p in &setup.policies {
        out.push(resource(
            format!("{}/{}", p.namespace, p.name),
            Kind::AuthorizationPolicy(p.clone()),
        ));
    }
    for (name, vip, endpoints) in &setup.services {
        out.push(through(service(name, *vip, &endpoints[..], "http")));
    }
    for p in &setup.traffic {
        out.push(resource(
            format!("{}/{}", p.namespace, p.name),
            Kind::TrafficPolicy(p.clone()),
        ));
    }
    out
}
