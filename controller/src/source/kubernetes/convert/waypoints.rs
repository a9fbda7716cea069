//! Waypoints: Gateway API `Gateway`s of class `ambit-waypoint` (as Istio's ambient mode uses
//! class `istio-waypoint`), each made of the pods the waypoint reconciler runs for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
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

/// The waypoint Gateway a pod runs for, if any: it carries the Gateway's name label and runs as
/// the Gateway's service account, as the reconciler deploys it. Only such a pod may serve the
/// waypoint's traffic: it could act as the waypoint anyway (its token gets the waypoint's
/// certificate), whereas the label alone is something any pod can carry. A labelled pod with
/// another service account is reported and stays an ordinary workload.
pub(super) fn gateway_of(
    pod: &core::Pod,
    gateways: &BTreeSet<ObjectKey>,
    skips: &mut Vec<Skip>,
) -> Option<ObjectKey> {
    let (namespace, name) = key(&pod.metadata);
    let label = pod.metadata.labels.as_ref()?.get(GATEWAY_NAME_LABEL)?;
    let gateway = ObjectKey::new(&namespace, label);
    if !gateways.contains(&gateway) {
        return None;
    }
    let service_account = workloads::service_account(pod);
    if service_account == gateway.name {
        return Some(gateway);
    }
    skips.push(Skip {
        subject: ResourceRef::new(Kind::Pod, format!("{namespace}/{name}")),
        reason: format!(
            "has label {GATEWAY_NAME_LABEL}={label} but runs as service account {service_account:?}, not {label:?} (the waypoint's), so it is not part of waypoint {gateway} and is treated as an ordinary pod; deploy waypoint pods through the Gateway (the reconciler runs them as {label:?}) or remove the label"
        ),
    });
    None
}

/// One model waypoint per waypoint Gateway, whether or not any of its pods is ready: its pods
/// become Ready only once they have their certificate and config, which the CA and discovery
/// give only to a waypoint of the model. `members` are the pods [`gateway_of`] accepted.
pub(super) fn waypoints(
    gateways: &BTreeSet<ObjectKey>,
    members: &[(ObjectKey, &Arc<core::Pod>)],
    skips: &mut Vec<Skip>,
) -> Vec<model::Waypoint> {
    let no_labels = Waypoints::new();
    // A waypoint pod that is not usable yet (no IP, not scheduled) is covered by the waypoint's
    // own note below; its reasons would only repeat it.
    let mut ignored = Vec::new();
    let mut running: BTreeMap<&ObjectKey, Vec<model::Pod>> = BTreeMap::new();
    for (gateway, p) in members {
        if let Some(pod) = workloads::pod(p, &no_labels, &mut ignored) {
            running.entry(gateway).or_default().push(pod);
        }
    }
    let mut out = Vec::new();
    for gateway in gateways {
        let mut pods = running.remove(gateway).unwrap_or_default();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        let addresses: Vec<IpAddr> = pods
            .iter()
            .filter(|p| p.healthy)
            .flat_map(|p| p.addresses.iter().copied())
            .collect();
        if addresses.is_empty() {
            // Fails closed, as Istio: what uses the waypoint keeps using it, and its traffic
            // fails until a pod is ready, rather than going direct past the waypoint's policies.
            skips.push(Skip {
                subject: ResourceRef::new(Kind::Waypoint, gateway.to_string()),
                reason: format!(
                    "has no ready pod (label {GATEWAY_NAME_LABEL}={0}, service account {0}) yet, so no address: traffic to what uses it fails until one is ready; check the Deployment {gateway}",
                    gateway.name
                ),
            });
        }
        out.push(model::Waypoint {
            name: gateway.name.clone(),
            namespace: gateway.namespace.clone(),
            // Only a mesh file's waypoints get their certificate through their node's token; in
            // Kubernetes a waypoint pod authenticates with its own service-account token. The
            // node still lets that node's ztunnel act for a waypoint pod it runs, as for any pod
            // there. Empty while no pod is placed: no node speaks for it.
            node: pods.first().map(|p| p.node.clone()).unwrap_or_default(),
            // What the reconciler runs the pods as; known before any pod exists.
            service_account: gateway.name.clone(),
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

    fn pod(name: &str, gateway: &str, sa: &str, ip: &str, ready: bool) -> Arc<core::Pod> {
        let status = if ready { "True" } else { "False" };
        let value: Value = json!({
            "metadata": {"name": name, "namespace": "demo",
                         "labels": {GATEWAY_NAME_LABEL: gateway, "ambit.io/dataplane-mode": "none"}},
            "spec": {"nodeName": format!("node-{name}"), "serviceAccountName": sa,
                     "containers": [{"name": "waypoint"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": status}]}
        });
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn every_waypoint_gateway_is_a_waypoint_with_the_addresses_of_its_ready_pods() {
        let gateways = waypoint_gateways(&[
            gateway("wp", WAYPOINT_CLASS),
            gateway("idle", WAYPOINT_CLASS),
            gateway("empty", WAYPOINT_CLASS),
            gateway("ingress", "istio"),
        ]);
        assert_eq!(gateways.len(), 3);
        let pods = [
            pod("wp-b", "wp", "wp", "10.0.0.2", true),
            pod("wp-a", "wp", "wp", "10.0.0.1", true),
            pod("wp-c", "wp", "wp", "10.0.0.3", false),
            // Sorts first and is ready, but does not run as the waypoint.
            pod("wp-0", "wp", "intruder", "10.0.0.9", true),
            pod("idle-a", "idle", "idle", "10.0.0.4", false),
            pod("ingress-a", "ingress", "ingress", "10.0.0.5", true),
        ];
        let mut skips = Vec::new();
        let mut members = Vec::new();
        let mut others = Vec::new();
        for p in &pods {
            match gateway_of(p, &gateways, &mut skips) {
                Some(gateway) => members.push((gateway, p)),
                None => others.push(p.metadata.name.clone().unwrap()),
            }
        }
        assert_eq!(others, vec!["wp-0", "ingress-a"]);
        assert_eq!(skips.len(), 1, "{skips:?}");
        assert_eq!(skips[0].subject, ResourceRef::new(Kind::Pod, "demo/wp-0"));
        assert!(skips[0].reason.contains("\"intruder\""), "{skips:?}");

        skips.clear();
        let out = waypoints(&gateways, &members, &mut skips);
        let summary: Vec<(&str, &str, &str, Vec<String>)> = out
            .iter()
            .map(|wp| {
                let ips = wp.addresses.iter().map(|a| a.to_string()).collect();
                (&*wp.name, &*wp.node, &*wp.service_account, ips)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("empty", "", "empty", vec![]),
                ("idle", "node-idle-a", "idle", vec![]),
                (
                    "wp",
                    "node-wp-a",
                    "wp",
                    vec!["10.0.0.1".into(), "10.0.0.2".into()]
                ),
            ]
        );
        let noted: Vec<&str> = skips.iter().map(|s| s.subject.name.as_str()).collect();
        assert_eq!(noted, vec!["demo/empty", "demo/idle"], "{skips:?}");
        assert!(skips[0].reason.contains("no ready pod"), "{skips:?}");
    }
}
