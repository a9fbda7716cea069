//! Waypoints: Gateway API `Gateway`s of class `ambit-waypoint` (as Istio's ambient mode uses
//! class `istio-waypoint`), each made of the pods the waypoint reconciler runs for it.

use std::collections::BTreeSet;
use std::sync::Arc;

use gateway_api::experimental::gateways::Gateway;
use k8s_openapi::api::core::v1 as core;

use super::{Skip, Waypoints, key, workloads};
use crate::model::{self, Kind, ObjectKey, ResourceRef};
use crate::source::kubernetes::{GATEWAY_NAME_LABEL, WAYPOINT_CLASS};

/// The Gateways that are waypoints.
pub(super) fn waypoint_gateways(gateways: &[Arc<Gateway>]) -> BTreeSet<ObjectKey> {
    gateways
        .iter()
        .filter(|g| g.spec.gateway_class_name == WAYPOINT_CLASS)
        .map(|g| {
            let (namespace, name) = key(&g.metadata);
            ObjectKey::new(namespace, name)
        })
        .collect()
}

/// The waypoint Gateway a pod runs for, if any.
pub(super) fn gateway_of(pod: &core::Pod, gateways: &BTreeSet<ObjectKey>) -> Option<ObjectKey> {
    let (namespace, _) = key(&pod.metadata);
    let name = pod.metadata.labels.as_ref()?.get(GATEWAY_NAME_LABEL)?;
    let gateway = ObjectKey::new(namespace, name);
    gateways.contains(&gateway).then_some(gateway)
}

/// One model waypoint per waypoint Gateway with a ready pod.
pub(super) fn waypoints(
    gateways: &BTreeSet<ObjectKey>,
    pods: &[&Arc<core::Pod>],
    skips: &mut Vec<Skip>,
) -> Vec<model::Waypoint> {
    let no_labels = Waypoints {
        ready: BTreeSet::new(),
        pending: BTreeSet::new(),
    };
    // A waypoint pod that is not usable yet (no IP, not scheduled) is covered by the Gateway's
    // own skip below; its reasons would only repeat it.
    let mut ignored = Vec::new();
    let mut ready: Vec<(ObjectKey, model::Pod)> = pods
        .iter()
        .filter_map(|p| Some((gateway_of(p, gateways)?, p)))
        .filter_map(|(gw, p)| Some((gw, workloads::pod(p, &no_labels, &mut ignored)?)))
        .filter(|(_, pod)| pod.healthy)
        .collect();
    ready.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    let mut out = Vec::new();
    for gateway in gateways {
        let mut mine = ready.iter().filter(|(gw, _)| gw == gateway).map(|(_, p)| p);
        let Some(first) = mine.next() else {
            skips.push(Skip {
                subject: ResourceRef::new(Kind::Waypoint, gateway.to_string()),
                reason: format!(
                    "Gateway of class {WAYPOINT_CLASS} has no ready pod (label {GATEWAY_NAME_LABEL}={}) yet; it becomes a waypoint once one is ready",
                    gateway.name
                ),
            });
            continue;
        };
        let mut addresses = first.addresses.clone();
        addresses.extend(mine.flat_map(|p| p.addresses.iter().copied()));
        out.push(model::Waypoint {
            name: gateway.name.clone(),
            namespace: gateway.namespace.clone(),
            // The model keeps one node per waypoint because a mesh file's waypoint gets its
            // certificate through its node's bootstrap token. In Kubernetes a waypoint pod
            // authenticates to the CA with its own service-account token, so the node matters
            // nowhere; the first ready pod's is as good as any.
            node: first.node.clone(),
            service_account: first.service_account.clone(),
            addresses,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn gateway(name: &str, class: &str) -> Arc<Gateway> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "demo"},
                "spec": {"gatewayClassName": class,
                         "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
            }))
            .unwrap(),
        )
    }

    fn pod(name: &str, gateway: &str, ip: &str, ready: bool) -> Arc<core::Pod> {
        let status = if ready { "True" } else { "False" };
        let value: Value = json!({
            "metadata": {"name": name, "namespace": "demo",
                         "labels": {GATEWAY_NAME_LABEL: gateway, "ambit.io/dataplane-mode": "none"}},
            "spec": {"nodeName": format!("node-{name}"), "serviceAccountName": gateway,
                     "containers": [{"name": "waypoint"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": status}]}
        });
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn ready_pods_make_the_waypoint_in_name_order() {
        let gateways = waypoint_gateways(&[
            gateway("wp", WAYPOINT_CLASS),
            gateway("idle", WAYPOINT_CLASS),
            gateway("ingress", "istio"),
        ]);
        assert_eq!(gateways.len(), 2);
        let pods = [
            pod("wp-b", "wp", "10.0.0.2", true),
            pod("wp-a", "wp", "10.0.0.1", true),
            pod("wp-c", "wp", "10.0.0.3", false),
            pod("idle-a", "idle", "10.0.0.4", false),
            pod("ingress-a", "ingress", "10.0.0.5", true),
        ];
        let pods: Vec<&Arc<core::Pod>> = pods.iter().collect();
        assert!(gateway_of(pods[4], &gateways).is_none());
        let mut skips = Vec::new();
        let out = waypoints(&gateways, &pods, &mut skips);
        assert_eq!(out.len(), 1);
        let wp = &out[0];
        assert_eq!((wp.name.as_str(), wp.node.as_str()), ("wp", "node-wp-a"));
        assert_eq!(wp.service_account, "wp");
        let ips: Vec<String> = wp.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(ips, vec!["10.0.0.1", "10.0.0.2"]);
        assert_eq!(skips.len(), 1, "{skips:?}");
        assert_eq!(skips[0].subject.name, "demo/idle");
        assert!(skips[0].reason.contains("no ready pod"), "{skips:?}");
    }
}
