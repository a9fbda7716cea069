//! The root certificate ConfigMap a waypoint mounts (its `--root-cert`), in the Gateway's
//! namespace: the same name and key as the one the controller publishes for ztunnel
//! (`crate::ca::root_configmap`), so a waypoint never needs the CA Secret.
//!
//! One ConfigMap per namespace, as Istio's `istio-ca-root-cert`, yet a namespace may have
//! several waypoints. So it is owned by every deployable waypoint Gateway of the namespace (owner
//! references that are not `controller`): Kubernetes deletes it with the last of them, and each
//! Gateway's reconcile applies the same object (owners sorted), so their applies never fight
//! over the owner list. Pure, like `desired`.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use super::{MANAGED_LABEL, MANAGED_VALUE, WaypointOptions, desired_objects};
use crate::ca::root_configmap::{CONFIGMAP_NAME, ROOT_CERT_KEY};

/// The Gateways that should own `namespace`'s root certificate ConfigMap: those of our class
/// there that would be deployed, from `gateways` (the watch cache) and `also` (the Gateway
/// being reconciled, in case the cache has not seen it yet), less `except` (a Gateway leaving
/// our class). Sorted by name, then uid, so every reconcile computes the same list.
pub(super) fn owners<'a>(
    namespace: &str,
    gateways: impl IntoIterator<Item = &'a Gateway>,
    also: Option<&'a Gateway>,
    except: Option<&str>,
    options: &WaypointOptions,
) -> Vec<&'a Gateway> {
    let mut owners: Vec<&Gateway> = gateways
        .into_iter()
        .chain(also)
        .filter(|g| g.namespace().as_deref() == Some(namespace))
        .filter(|g| g.spec.gateway_class_name == options.gateway_class)
        .filter(|g| g.uid().is_some() && g.uid().as_deref() != except)
        .filter(|g| desired_objects(g, options).is_ok())
        .collect();
    owners.sort_by_key(|g| (g.name_any(), g.uid()));
    owners.dedup_by_key(|g| g.uid());
    owners
}

/// The ConfigMap for `namespace` owned by `owners`, or none: without owners, and in the
/// namespace where the controller publishes its own (unowned) copy, which it keeps.
pub(super) fn desired_root_cert(
    namespace: &str,
    owners: &[&Gateway],
    options: &WaypointOptions,
) -> Option<ConfigMap> {
    if owners.is_empty() || namespace == options.root_cert_namespace {
        return None;
    }
    let owner_references = owners
        .iter()
        .filter_map(|gateway| {
            Some(OwnerReference {
                api_version: Gateway::api_version(&()).into_owned(),
                kind: Gateway::kind(&()).into_owned(),
                name: gateway.name_any(),
                uid: gateway.uid()?,
                // Several Gateways own it; none is its controller.
                controller: Some(false),
                block_owner_deletion: Some(true),
            })
        })
        .collect();
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.into()),
            namespace: Some(namespace.into()),
            // Only our label: the Gateways' own labels and infrastructure labels could clash.
            labels: Some(BTreeMap::from([(
                MANAGED_LABEL.to_string(),
                MANAGED_VALUE.to_string(),
            )])),
            owner_references: Some(owner_references),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_string(),
            options.root_cert_pem.clone(),
        )])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use gateway_api::apis::standard::gateways::{GatewayListeners, GatewaySpec};

    use super::*;
    use crate::waypoints::{GATEWAY_CLASS, HBONE_PORT, HBONE_PROTOCOL};

    fn gateway(name: &str, namespace: &str, class: &str, uid: &str) -> Gateway {
        let mut gw = Gateway::new(
            name,
            GatewaySpec {
                gateway_class_name: class.into(),
                listeners: vec![GatewayListeners {
                    name: "mesh".into(),
                    port: HBONE_PORT,
                    protocol: HBONE_PROTOCOL.into(),
                    ..GatewayListeners::default()
                }],
                ..GatewaySpec::default()
            },
        );
        gw.metadata.namespace = Some(namespace.into());
        gw.metadata.uid = Some(uid.into());
        gw
    }

    fn options() -> WaypointOptions {
        WaypointOptions {
            root_cert_pem: "ROOT PEM".into(),
            ..WaypointOptions::default()
        }
    }

    #[test]
    fn every_deployable_waypoint_of_the_namespace_owns_it_in_one_order() {
        let b = gateway("b", "demo", GATEWAY_CLASS, "uid-b");
        let a = gateway("a", "demo", GATEWAY_CLASS, "uid-a");
        let other_ns = gateway("c", "other", GATEWAY_CLASS, "uid-c");
        let other_class = gateway("d", "demo", "istio-waypoint", "uid-d");
        let mut invalid = gateway("e", "demo", GATEWAY_CLASS, "uid-e");
        invalid.spec.listeners.clear();
        let cache = [&b, &other_ns, &other_class, &invalid];
        let opts = options();
        let owners = owners("demo", cache, Some(&a), None, &opts);
        let names: Vec<String> = owners.iter().map(|g| g.name_any()).collect();
        assert_eq!(names, ["a", "b"]);
        // The same whichever Gateway is reconciled, and with it already in the cache.
        let again: Vec<String> = super::owners("demo", [&a, &b], Some(&b), None, &opts)
            .iter()
            .map(|g| g.name_any())
            .collect();
        assert_eq!(again, ["a", "b"]);

        let cm = desired_root_cert("demo", &owners, &opts).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some(CONFIGMAP_NAME));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(cm.data.as_ref().unwrap()[ROOT_CERT_KEY], "ROOT PEM");
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[MANAGED_LABEL],
            MANAGED_VALUE
        );
        let refs = cm.metadata.owner_references.unwrap();
        let uids: Vec<&str> = refs.iter().map(|o| o.uid.as_str()).collect();
        assert_eq!(uids, ["uid-a", "uid-b"]);
        assert!(
            refs.iter()
                .all(|o| o.kind == "Gateway" && o.controller == Some(false))
        );
    }

    #[test]
    fn a_gateway_leaving_the_class_is_no_owner_and_the_last_leaves_none() {
        let a = gateway("a", "demo", GATEWAY_CLASS, "uid-a");
        let b = gateway("b", "demo", GATEWAY_CLASS, "uid-b");
        let opts = options();
        let left = owners("demo", [&a, &b], None, Some("uid-a"), &opts);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].name_any(), "b");
        let none = owners("demo", [&a], None, Some("uid-a"), &opts);
        assert_eq!(desired_root_cert("demo", &none, &opts), None);
    }

    #[test]
    fn the_controllers_own_namespace_keeps_the_controllers_copy() {
        let wp = gateway("wp", "ambit-system", GATEWAY_CLASS, "uid-1");
        let opts = options();
        let owners = owners("ambit-system", [&wp], None, None, &opts);
        assert_eq!(owners.len(), 1);
        assert_eq!(desired_root_cert("ambit-system", &owners, &opts), None);
    }
}
