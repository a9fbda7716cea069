//! A fake cluster for the Kubernetes source's tests: every kind the source lists, object
//! builders in the API's JSON, and waiting for a model that passes a check.

use std::sync::Arc;
use std::time::Duration;

use ambit_controller::model::{MeshModel, ObjectKey};
use ambit_controller::source::kubernetes::{self, Options};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fake_api::FakeApi;

pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const PODS: &str = "/api/v1/pods";
pub const SERVICES: &str = "/api/v1/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
pub const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
pub const POLICIES: &str = "/apis/ambit.io/v1alpha1/authorizationpolicies";
pub const TRAFFIC_POLICIES: &str = "/apis/ambit.io/v1alpha1/trafficpolicies";

#[derive(Default)]
pub struct Cluster {
    pub namespaces: Vec<Value>,
    pub pods: Vec<Value>,
    pub services: Vec<Value>,
    pub slices: Vec<Value>,
    /// `None`: the kind is not installed (the fake answers 404).
    pub gateways: Option<Vec<Value>>,
    pub routes: Option<Vec<Value>>,
    pub policies: Option<Vec<Value>>,
    pub traffic_policies: Option<Vec<Value>>,
}

impl Cluster {
    pub async fn serve(self) -> FakeApi {
        let api = FakeApi::start().await;
        api.collection(NAMESPACES, "NamespaceList", self.namespaces);
        api.collection(PODS, "PodList", self.pods);
        api.collection(SERVICES, "ServiceList", self.services);
        api.collection(SLICES, "EndpointSliceList", self.slices);
        if let Some(items) = self.gateways {
            api.collection(GATEWAYS, "GatewayList", items);
        }
        if let Some(items) = self.routes {
            api.collection(ROUTES, "HTTPRouteList", items);
        }
        if let Some(items) = self.policies {
            api.collection(POLICIES, "AuthorizationPolicyList", items);
        }
        if let Some(items) = self.traffic_policies {
            api.collection(TRAFFIC_POLICIES, "TrafficPolicyList", items);
        }
        api
    }
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels, "resourceVersion": "1"}})
}

pub fn pod_with(ns: &str, name: &str, ip: &str, labels: Value, sa: &str, node: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": "1"},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app"}]},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

pub fn pod(ns: &str, name: &str, ip: &str, labels: Value) -> Value {
    pod_with(ns, name, ip, labels, "default", "node-a")
}

pub fn service(ns: &str, name: &str, vip: &str, selector: Option<Value>) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": selector,
            "ports": [{"name": "http", "port": 9080, "targetPort": 8080, "protocol": "TCP"}]
        }
    })
}

pub fn gateway(ns: &str, name: &str, class: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "gatewayClassName": class,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
        }
    })
}

/// A pod of the waypoint Deployment the reconciler makes for Gateway `gateway`.
pub fn waypoint_pod(ns: &str, gateway: &str, name: &str, ip: &str, node: &str) -> Value {
    let labels = json!({
        "gateway.networking.k8s.io/gateway-name": gateway,
        "ambit.io/dataplane-mode": "none",
    });
    pod_with(ns, name, ip, labels, gateway, node)
}

/// `pod` with its Ready condition false (running, with an IP, but its readiness probe failing).
pub fn not_ready_pod(mut pod: Value) -> Value {
    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    pod
}

pub fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ambit.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": spec
    })
}

pub fn traffic_policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ambit.io/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": spec
    })
}

pub fn options() -> Options {
    Options {
        debounce: Duration::from_millis(50),
        sync_timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

pub async fn start(api: &FakeApi) -> (kubernetes::Watching, CancellationToken) {
    let shutdown = CancellationToken::new();
    let watching = kubernetes::watch(api.client(), options(), shutdown.clone())
        .await
        .unwrap();
    (watching, shutdown)
}

/// Waits for a published model that passes `check`.
pub async fn model_where(
    models: &mut watch::Receiver<Arc<MeshModel>>,
    check: impl Fn(&MeshModel) -> bool,
) -> Arc<MeshModel> {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let model = models.borrow_and_update().clone();
            if check(&model) {
                return model;
            }
            models.changed().await.expect("the source stopped");
        }
    })
    .await
    .expect("no published model passed the check within 15s")
}

pub fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}
