//! The discovery server over real gRPC on loopback, driven the way a proxy drives it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::ca::CaService;
use ambit_controller::model::MeshModel;
use ambit_controller::push::{DiscoveryService, NodeLiveness, SyncTable, publish_snapshots_with};
use ambit_controller::source::file::{EMBEDDED_MESH, parse};
use ambit_proto::api::discovery::discovery_client::DiscoveryClient;
use ambit_proto::api::discovery::resource::Kind;
use ambit_proto::api::discovery::{
    ProxyKind, Resource, SubscribeRequest, SubscribeResponse, Subscriber,
};
use ambit_proto::identity::CertificateAuthority;
use ambit_proto::response_parts::PART_BYTES;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::support;

pub(crate) struct Controller {
    pub(crate) server: support::grpc::GrpcServer,
    pub(crate) ca: Arc<CertificateAuthority>,
    models: watch::Sender<Arc<MeshModel>>,
    snapshots: watch::Receiver<Arc<ambit_controller::push::Snapshot>>,
    pub(crate) sync: SyncTable,
    shutdown: CancellationToken,
}

impl Controller {
    /// Publishes a model and waits until its snapshot is what subscriptions see.
    pub(crate) async fn publish(&mut self, model: MeshModel) {
        self.snapshots.borrow_and_update();
        self.models.send_replace(Arc::new(model));
        tokio::time::timeout(Duration::from_secs(10), self.snapshots.changed())
            .await
            .unwrap()
            .unwrap();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn start(model: MeshModel) -> Controller {
    start_with_parts(model, PART_BYTES).await
}

/// A controller that sends responses in parts of about `part_bytes`.
pub(crate) async fn start_with_parts(model: MeshModel, part_bytes: usize) -> Controller {
    start_with(model, part_bytes, None).await
}

/// A controller that marks a node down `grace` after its ztunnel's last subscription ended.
pub(crate) async fn start_with_liveness(model: MeshModel, grace: Duration) -> Controller {
    start_with(model, PART_BYTES, Some(grace)).await
}

async fn start_with(model: MeshModel, part_bytes: usize, grace: Option<Duration>) -> Controller {
    let (models_tx, models) = watch::channel(Arc::new(model));
    let shutdown = CancellationToken::new();
    let liveness = grace.map(|grace| NodeLiveness::start(grace, shutdown.clone()).0);
    let (snapshots, _) =
        publish_snapshots_with(models.clone(), liveness.as_ref(), shutdown.clone());
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let mut discovery =
        DiscoveryService::new(snapshots.clone(), shutdown.clone()).with_part_bytes(part_bytes);
    if let Some(liveness) = liveness {
        discovery = discovery.track_liveness(liveness);
    }
    let sync = discovery.sync_table();
    let server = support::grpc::serve(
        ca.clone(),
        discovery,
        CaService::new(ca.clone(), models, Duration::from_secs(3600)),
        shutdown.clone(),
    )
    .await;
    Controller {
        server,
        ca,
        models: models_tx,
        snapshots,
        sync,
        shutdown,
    }
}

pub(crate) fn mesh(text: &str) -> MeshModel {
    parse(text, "test mesh").unwrap().model
}

pub(crate) struct Proxy {
    requests: mpsc::Sender<SubscribeRequest>,
    responses: Streaming<SubscribeResponse>,
    /// What the proxy holds, as `known_versions` would carry it.
    pub(crate) held: HashMap<String, String>,
}

pub(crate) fn ztunnel(node: &str) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: node.into(),
        namespace: String::new(),
        version: "test".into(),
        ..Default::default()
    }
}

pub(crate) async fn subscribe(
    c: &Controller,
    subscriber: Subscriber,
    known_versions: HashMap<String, String>,
) -> Result<Proxy, tonic::Status> {
    let mut client = DiscoveryClient::new(c.server.channel.clone());
    let (tx, rx) = mpsc::channel(8);
    tx.send(SubscribeRequest {
        subscriber: Some(subscriber),
        known_versions: known_versions.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let responses = client
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Proxy {
        requests: tx,
        responses,
        held: known_versions,
    })
}

fn key_of(r: &Resource) -> String {
    r.key()
}

pub(crate) fn keys(r: &SubscribeResponse) -> Vec<String> {
    let mut keys: Vec<String> = r.resources.iter().map(key_of).collect();
    keys.sort();
    keys
}

fn removed(r: &SubscribeResponse) -> Vec<String> {
    r.removed
        .iter()
        .map(|x| format!("{}/{}", x.r#type().key_name(), x.name))
        .collect()
}

impl Proxy {
    pub(crate) async fn next(&mut self) -> SubscribeResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("no response from the controller")
            .expect("the stream failed")
            .expect("the stream ended")
    }

    pub(crate) async fn quiet_for(&mut self, how_long: Duration) {
        if let Ok(r) = tokio::time::timeout(how_long, self.responses.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }

    pub(crate) async fn ack(&mut self, r: &SubscribeResponse) {
        if r.full_state {
            self.held.clear();
        }
        for x in &r.removed {
            self.held
                .remove(&format!("{}/{}", x.r#type().key_name(), x.name));
        }
        for res in &r.resources {
            self.held.insert(key_of(res), res.version.clone());
        }
        self.answer(r, "").await;
    }

    async fn answer(&self, r: &SubscribeResponse, error: &str) {
        self.requests
            .send(SubscribeRequest {
                response_nonce: r.nonce.clone(),
                error_detail: error.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

const NODE_A_SCOPE: [&str; 11] = [
    "authorization_policy/demo/deny-denied-client",
    "service/demo/reviews",
    "service/demo/reviews-v1",
    "service/demo/reviews-v2",
    "service/legacy/legacy",
    "waypoint/demo/waypoint",
    "workload/local//Pod/demo/client",
    "workload/local//Pod/demo/denied-client",
    "workload/local//Pod/demo/reviews-v1",
    "workload/local//Pod/demo/reviews-v2",
    "workload/local//Pod/legacy/legacy",
];

fn reviews_port(port: &str) -> MeshModel {
    mesh(&EMBEDDED_MESH.replace("port: 9080", &format!("port: {port}")))
}

#[tokio::test]
async fn full_state_then_acked_deltas() {
    let mut c = start(mesh(EMBEDDED_MESH)).await;
    let mut p = subscribe(&c, ztunnel("node-a"), HashMap::new())
        .await
        .unwrap();
    let first = p.next().await;
    assert!(first.full_state);
    assert_eq!(keys(&first), NODE_A_SCOPE);
    assert!(first.resources.iter().all(|r| !r.version.is_empty()));
    p.ack(&first).await;

    c.publish(reviews_port("9081")).await;
    let delta = p.next().await;
    assert!(!delta.full_state);
    assert_eq!(keys(&delta), ["service/demo/reviews"]);
    assert!(delta.removed.is_empty());
    assert_ne!(delta.system_version, first.system_version);
    assert_ne!(delta.nonce, first.nonce);
    p.ack(&delta).await;

    let no_policy = EMBEDDED_MESH
        .split("authorizationPolicies:")
        .next()
        .unwrap();
    c.publish(mesh(no_policy)).await;
    let delta = p.next().await;
    // The port edit is gone with the reload, so reviews changes back too; the reviews pods no
    // longer list the policy among those selecting them.
    assert_eq!(
        keys(&delta),
        [
            "service/demo/reviews",
            "workload/local//Pod/demo/reviews-v1",
            "workload/local//Pod/demo/reviews-v2"
        ]
    );
    assert_eq!(
        removed(&delta),
        ["authorization_policy/demo/deny-denied-client"]
    );
    p.ack(&delta).await;

    // The same model again: nothing to send.
    c.publish(mesh(no_policy)).await;
    p.quiet_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_nacked_change_is_kept_back_and_later_changes_still_flow() {
    let mut c = start(mesh(EMBEDDED_MESH)).await;
    let mut p = subscribe(&c, ztunnel("node-a"), HashMap::new())
        .await
        .unwrap();
    let first = p.next().await;
    p.ack(&first).await;

    c.publish(reviews_port("9081")).await;
    let bad = p.next().await;
    assert_eq!(keys(&bad), ["service/demo/reviews"]);
    p.answer(
        &bad,
        "service demo/reviews: port 9081 clashes with something",
    )
    .await;
    // Not resent, not even when the model is published again unchanged.
    p.quiet_for(Duration::from_millis(300)).await;
    c.publish(reviews_port("9081")).await;
    p.quiet_for(Duration::from_millis(300)).await;

    // Another change goes out alone.
    let text = EMBEDDED_MESH
        .replace("port: 9080", "port: 9081")
        .replace("vips: [10.96.0.20", "vips: [10.96.0.21");
    c.publish(mesh(&text)).await;
    let next = p.next().await;
    assert_eq!(keys(&next), ["service/legacy/legacy"]);
    p.ack(&next).await;

    // A fixed reviews goes out again.
    c.publish(mesh(&text.replace("port: 9081", "port: 9082")))
        .await;
    let fixed = p.next().await;
    assert_eq!(keys(&fixed), ["service/demo/reviews"]);
}

#[tokio::test]
async fn a_reconnect_with_known_versions_gets_only_what_differs() {
    let mut c = start(mesh(EMBEDDED_MESH)).await;
    let mut p = subscribe(&c, ztunnel("node-a"), HashMap::new())
        .await
        .unwrap();
    let first = p.next().await;
    p.ack(&first).await;
    let mut held = p.held.clone();
    assert_eq!(held.len(), NODE_A_SCOPE.len());
    drop(p);

    // Nothing changed: an empty, non-full response says the proxy is current.
    let mut p = subscribe(&c, ztunnel("node-a"), held.clone())
        .await
        .unwrap();
    let resumed = p.next().await;
    assert!(!resumed.full_state);
    assert!(
        resumed.resources.is_empty() && resumed.removed.is_empty(),
        "{resumed:?}"
    );
    assert_eq!(resumed.system_version, first.system_version);
    drop(p);

    // Changed while away, and the proxy holds something that is gone.
    c.publish(reviews_port("9081")).await;
    held.insert("workload/local//Pod/demo/gone".into(), "1".into());
    let mut p = subscribe(&c, ztunnel("node-a"), held).await.unwrap();
    let resumed = p.next().await;
    assert!(!resumed.full_state);
    assert_eq!(keys(&resumed), ["service/demo/reviews"]);
    assert_eq!(removed(&resumed), ["workload/local//Pod/demo/gone"]);
}

#[tokio::test]
async fn a_subscriber_must_say_who_it_is() {
    let c = start(mesh(EMBEDDED_MESH)).await;
    let mut nameless = ztunnel("");
    let status = match subscribe(&c, nameless.clone(), HashMap::new()).await {
        Err(status) => status,
        Ok(_) => panic!("a nameless ztunnel was accepted"),
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("node name"),
        "{}",
        status.message()
    );
    nameless.kind = ProxyKind::Unspecified.into();
    nameless.name = "node-a".into();
    let status = subscribe(&c, nameless, HashMap::new()).await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn shutdown_ends_subscriptions_with_unavailable() {
    let c = start(mesh(EMBEDDED_MESH)).await;
    let mut p = subscribe(&c, ztunnel("node-b"), HashMap::new())
        .await
        .unwrap();
    let first = p.next().await;
    p.ack(&first).await;
    c.shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), p.responses.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), tonic::Code::Unavailable);
}

/// 3 nodes, 200 services in 4 namespaces (ns-3 not meshed), one pod per service on node i%3,
/// one service-less pod per node in ns-3, and 10 policies selecting pod i for i < 10.
pub(crate) fn big_mesh(svc5_port: u16) -> MeshModel {
    let mut y =
        String::from("nodes: [{name: node-0}, {name: node-1}, {name: node-2}]\nnamespaces:\n");
    for ns in 0..4 {
        let mode = if ns < 3 { "ambient" } else { "none" };
        y += &format!("  - {{name: ns-{ns}, labels: {{ambit.io/dataplane-mode: {mode}}}}}\n");
    }
    y += "pods:\n";
    for i in 0..200 {
        y += &format!(
            "  - {{name: pod-{i}, namespace: ns-{}, node: node-{}, labels: {{app: svc-{i}}}, ipv4: 10.244.{}.{}}}\n",
            i % 4,
            i % 3,
            i % 3 + 1,
            i / 3 + 2
        );
    }
    for n in 0..3 {
        y += &format!(
            "  - {{name: lonely-{n}, namespace: ns-3, node: node-{n}, ipv4: 10.244.{}.250}}\n",
            n + 1
        );
    }
    y += "services:\n";
    for i in 0..200 {
        let port = if i == 5 { svc5_port } else { 80 };
        y += &format!(
            "  - {{name: svc-{i}, namespace: ns-{}, vips: [10.96.{}.{}], ports: [{{port: {port}, targetPort: 8080}}], selector: {{app: svc-{i}}}}}\n",
            i % 4,
            i / 250,
            i % 250 + 1
        );
    }
    y += "authorizationPolicies:\n";
    for i in 0..10 {
        y += &format!(
            "  - {{name: pol-{i}, namespace: ns-{}, selector: {{matchLabels: {{app: svc-{i}}}}}, action: DENY}}\n",
            i % 4
        );
    }
    mesh(&y)
}

/// What node-0 of [`big_mesh`] receives, sorted.
pub(crate) fn node0_scope() -> Vec<String> {
    let mut expected: Vec<String> = Vec::new();
    for i in 0..200 {
        // Every service and its endpoint: node-0 runs meshed pods, which may call any of them.
        expected.push(format!("service/ns-{}/svc-{i}", i % 4));
        expected.push(format!("workload/local//Pod/ns-{}/pod-{i}", i % 4));
    }
    // Its own service-less pod, but not the other nodes' (not meshed, backing no service).
    expected.push("workload/local//Pod/ns-3/lonely-0".into());
    // Policies selecting a meshed pod on node-0: pods 0, 3, 6, 9; pod 3 is in ns-3, not meshed.
    for (i, ns) in [(0, 0), (6, 2), (9, 1)] {
        expected.push(format!("authorization_policy/ns-{ns}/pol-{i}"));
    }
    expected.sort();
    expected
}

#[tokio::test]
async fn a_ztunnel_receives_exactly_its_scope_and_one_change_is_one_small_delta() {
    let mut c = start(big_mesh(80)).await;
    let mut p = subscribe(&c, ztunnel("node-0"), HashMap::new())
        .await
        .unwrap();
    let first = p.next().await;
    assert!(first.full_state);
    assert_eq!(keys(&first), node0_scope());
    p.ack(&first).await;

    c.publish(big_mesh(81)).await;
    let delta = p.next().await;
    assert!(!delta.full_state);
    assert_eq!(keys(&delta), ["service/ns-1/svc-5"]);
    assert!(delta.removed.is_empty());
    use prost::Message;
    assert!(
        delta.encoded_len() * 50 < first.encoded_len(),
        "delta {} bytes vs snapshot {} bytes",
        delta.encoded_len(),
        first.encoded_len()
    );
}

#[tokio::test]
async fn a_waypoint_receives_its_services_their_routes_backends_and_policies() {
    let c = start(mesh(EMBEDDED_MESH)).await;
    let subscriber = Subscriber {
        kind: ProxyKind::Waypoint.into(),
        name: "waypoint".into(),
        namespace: "demo".into(),
        version: "test".into(),
        ..Default::default()
    };
    let mut p = subscribe(&c, subscriber, HashMap::new()).await.unwrap();
    let first = p.next().await;
    assert!(first.full_state);
    assert_eq!(
        keys(&first),
        [
            "authorization_policy/demo/deny-denied-client",
            "route/demo/reviews",
            "service/demo/reviews",
            "service/demo/reviews-v1",
            "service/demo/reviews-v2",
            "workload/local//Pod/demo/reviews-v1",
            "workload/local//Pod/demo/reviews-v2",
        ]
    );
}

#[tokio::test]
async fn a_waypoint_receives_the_traffic_policies_of_its_services_and_a_ztunnel_none() {
    // The demo with a policy on reviews (the waypoint's) and one on legacy (no waypoint's).
    let text = format!(
        "{EMBEDDED_MESH}
trafficPolicies:
  - name: reviews
    namespace: demo
    targetRef: {{kind: Service, name: reviews}}
    connectionPool: {{http: {{http1MaxPendingRequests: 10}}}}
    outlierDetection: {{consecutive5xxErrors: 5, maxEjectionPercent: 50}}
  - name: legacy
    namespace: legacy
    targetRef: {{kind: Service, name: legacy}}
    connectionPool: {{tcp: {{maxConnections: 10}}}}
"
    );
    let c = start(mesh(&text)).await;
    let subscriber = Subscriber {
        kind: ProxyKind::Waypoint.into(),
        name: "waypoint".into(),
        namespace: "demo".into(),
        version: "test".into(),
        ..Default::default()
    };
    let mut p = subscribe(&c, subscriber, HashMap::new()).await.unwrap();
    let first = p.next().await;
    let traffic: Vec<&Resource> = first
        .resources
        .iter()
        .filter(|r| matches!(r.kind, Some(Kind::TrafficPolicy(_))))
        .collect();
    assert_eq!(traffic.len(), 1, "{:?}", keys(&first));
    assert_eq!(traffic[0].name, "demo/reviews");
    let Some(Kind::TrafficPolicy(policy)) = &traffic[0].kind else {
        unreachable!()
    };
    assert_eq!(policy.target, "reviews.demo.svc.cluster.local");
    assert_eq!(
        policy
            .connection_pool
            .as_ref()
            .unwrap()
            .max_pending_requests,
        10
    );
    assert_eq!(
        policy
            .outlier_detection
            .as_ref()
            .unwrap()
            .max_ejection_percent,
        50
    );
    for node in ["node-a", "node-b"] {
        let mut z = subscribe(&c, ztunnel(node), HashMap::new()).await.unwrap();
        let first = z.next().await;
        assert!(
            keys(&first)
                .iter()
                .all(|k| !k.starts_with("traffic_policy/")),
            "{node}: {:?}",
            keys(&first)
        );
    }
}
