//! Whose object is it? A waypoint's ServiceAccount, Deployment and Service take its Gateway's
//! name, so a Gateway named like an object that already exists (a user's Service `reviews`, the
//! namespace's ServiceAccount `default`) would, applied with force, take that object over: its
//! selector rewritten (traffic hijacked) and our owner reference added (the garbage collector
//! then deletes it with the Gateway, as does a class change). Anyone allowed to create Gateways
//! could so borrow the controller's cluster-wide RBAC. Hence: before applying or deleting, we
//! read the object by name from the API server (our watches see only objects with our label,
//! never a user's), and act only on what is absent or controlled by this very Gateway (its uid).
//! A later apply names the uid it read, so a replacement made in between is refused by the API
//! server rather than taken over.

use std::fmt;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::reconcile::{Context, ReconcileError, fix, gateway_name, kind_of};
use super::{MANAGED_LABEL, MANAGED_VALUE};

/// The objects a Gateway owns (ServiceAccount, Deployment, Service, ConfigMap): namespaced,
/// readable and deletable through one typed API. Named once so each function says what it
/// handles instead of repeating the bounds.
pub(super) trait NamespacedObject:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + fmt::Debug
    + DeserializeOwned
{
}

impl<K> NamespacedObject for K where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + fmt::Debug
        + DeserializeOwned
{
}

/// Whether `object` is controlled by the Gateway with `uid` (as every object we make for a
/// Gateway is: one controller owner reference, its uid).
pub(super) fn controlled_by<K: Resource>(object: &K, uid: &str) -> bool {
    object
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Whether a namespace's root certificate ConfigMap is one we made for its waypoints: our label
/// and a Gateway among its owners. Not necessarily the Gateway being reconciled: the namespace's
/// waypoints share it, and one deleted a moment ago stays listed until the garbage collector
/// has run, so any Gateway owner will do, but a ConfigMap of the user's never.
pub(super) fn is_waypoint_root_cert(configmap: &ConfigMap) -> bool {
    let labelled = configmap
        .labels()
        .get(MANAGED_LABEL)
        .is_some_and(|v| v == MANAGED_VALUE);
    let gateway_owned = configmap.owner_references().iter().any(|o| {
        o.kind == Gateway::kind(&())
            && o.api_version.split('/').next() == Some(Gateway::group(&()).as_ref())
    });
    labelled && gateway_owned
}

/// An object that has the name a waypoint needs and is not the waypoint's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictingObject {
    pub kind: String,
    /// `namespace/name`.
    pub object: String,
    /// Who controls it, if anyone does: `Deployment demo/x`.
    pub controller: Option<String>,
}

impl ConflictingObject {
    pub(super) fn of<K: Resource<DynamicType = ()>>(object: &K) -> Self {
        let namespace = object.namespace().unwrap_or_default();
        ConflictingObject {
            kind: kind_of::<K>(),
            object: format!("{namespace}/{}", object.name_any()),
            controller: object
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| format!("{} {namespace}/{} (uid {})", o.kind, o.name, o.uid)),
        }
    }

    fn is_root_cert(&self) -> bool {
        self.kind == "ConfigMap"
    }
}

/// Why a waypoint Gateway was not deployed: objects of the names it needs exist and are not its
/// own. Its message becomes the Gateway's `Accepted` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameConflict {
    pub objects: Vec<ConflictingObject>,
}

impl fmt::Display for NameConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listed: Vec<String> = self
            .objects
            .iter()
            .map(|o| match &o.controller {
                Some(controller) => format!("{} {} (controlled by {controller})", o.kind, o.object),
                None => format!("{} {} (owned by no Gateway)", o.kind, o.object),
            })
            .collect();
        write!(
            f,
            "{} already exist{} and {} not this Gateway's, so nothing was deployed: the controller never takes over an object it did not create for this Gateway (a waypoint's ServiceAccount, Deployment and Service are named like its Gateway, and it mounts the namespace's ConfigMap ambit-ca-root-cert). Fix:",
            listed.join(", "),
            if listed.len() == 1 { "s" } else { "" },
            if listed.len() == 1 { "is" } else { "are" },
        )?;
        let named: Vec<&str> = self
            .objects
            .iter()
            .filter(|o| !o.is_root_cert())
            .map(|o| o.object.as_str())
            .collect();
        if !named.is_empty() {
            write!(
                f,
                " rename the Gateway, or rename or delete {}",
                named.join(", ")
            )?;
        }
        if let Some(configmap) = self.objects.iter().find(|o| o.is_root_cert()) {
            write!(
                f,
                "{} rename or delete the ConfigMap {} (waypoints need that name)",
                if named.is_empty() { "" } else { ";" },
                configmap.object
            )?;
        }
        if self.objects.iter().any(|o| {
            o.controller
                .as_deref()
                .is_some_and(|c| c.starts_with("Gateway "))
        }) {
            // A Gateway deleted and created again under its name: the old one's objects go
            // with it, and their deletion triggers a new reconcile.
            write!(
                f,
                "; an object controlled by an earlier Gateway of this name is deleted by the garbage collector shortly, and the waypoint is deployed then"
            )?;
        }
        Ok(())
    }
}

/// `namespace/name` of kind `K`, read from the API server, or `None` if there is none.
pub(super) async fn read<K>(
    gateway: &Gateway,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, ReconcileError>
where
    K: NamespacedObject,
{
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ReconcileError::Read {
            gateway: gateway_name(gateway),
            kind: kind_of::<K>(),
            object: format!("{namespace}/{name}"),
            fix: fix(&source, "get", &K::plural(&())),
            source,
        })
}

/// Deletes `namespace/name` of kind `K` if `still_ours` says the API server's current copy is
/// ours (the watch cache that led here may be stale), and only that copy: the uid and
/// resourceVersion preconditions refuse a replacement or a change made since it was read.
pub(super) async fn delete_if_ours<K>(
    gateway: &Gateway,
    ctx: &Context,
    namespace: &str,
    name: &str,
    still_ours: impl Fn(&K) -> bool,
) -> Result<(), ReconcileError>
where
    K: NamespacedObject,
{
    let Some(object) = read::<K>(gateway, ctx, namespace, name).await? else {
        return Ok(());
    };
    if !still_ours(&object) {
        tracing::warn!(gateway = %gateway_name(gateway), kind = %kind_of::<K>(), object = %format!("{namespace}/{name}"),
            "not deleting: no longer owned by the Gateway (someone changed its owner references)");
        return Ok(());
    }
    delete_object(gateway, ctx, &object).await
}

/// Deletes `object` as read, unless it is already going.
pub(super) async fn delete_object<K>(
    gateway: &Gateway,
    ctx: &Context,
    object: &K,
) -> Result<(), ReconcileError>
where
    K: NamespacedObject,
{
    // Already going (a watch event behind our own delete): nothing more to do.
    if object.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = object.namespace().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.uid(),
            resource_version: object.resource_version(),
        }),
        ..DeleteParams::background()
    };
    let name = object.name_any();
    match Api::<K>::namespaced(ctx.client.clone(), &ns)
        .delete(&name, &params)
        .await
    {
        Ok(_) => {
            tracing::info!(gateway = %gateway_name(gateway), kind = %kind_of::<K>(), object = %format!("{ns}/{name}"),
                "Gateway is no longer of the waypoint class; deleted what it owned");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Delete {
            gateway: gateway_name(gateway),
            kind: kind_of::<K>(),
            object: format!("{ns}/{name}"),
            fix: fix(&source, "delete", &K::plural(&())),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn owner(kind: &str, name: &str, uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: if kind == "Gateway" {
                "gateway.networking.k8s.io/v1".into()
            } else {
                "apps/v1".into()
            },
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    fn service(owners: Vec<OwnerReference>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("reviews".into()),
                namespace: Some("demo".into()),
                owner_references: Some(owners),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn only_a_controller_reference_to_this_gateways_uid_makes_an_object_ours() {
        assert!(controlled_by(
            &service(vec![owner("Gateway", "reviews", "gw-1", true)]),
            "gw-1"
        ));
        // A user's Service; another Gateway of the name (an earlier one); a mere owner.
        assert!(!controlled_by(&service(vec![]), "gw-1"));
        assert!(!controlled_by(
            &service(vec![owner("Gateway", "reviews", "gw-0", true)]),
            "gw-1"
        ));
        assert!(!controlled_by(
            &service(vec![owner("Gateway", "reviews", "gw-1", false)]),
            "gw-1"
        ));
    }

    #[test]
    fn a_root_cert_configmap_is_ours_only_with_our_label_and_a_gateway_owner() {
        let configmap = |labelled: bool, owners: Vec<OwnerReference>| ConfigMap {
            metadata: ObjectMeta {
                labels: labelled.then(|| {
                    BTreeMap::from([(MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string())])
                }),
                owner_references: Some(owners),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let gateway = || owner("Gateway", "wp", "gw-gone", false);
        assert!(is_waypoint_root_cert(&configmap(true, vec![gateway()])));
        assert!(!is_waypoint_root_cert(&configmap(false, vec![gateway()])));
        assert!(!is_waypoint_root_cert(&configmap(true, vec![])));
        assert!(!is_waypoint_root_cert(&configmap(
            true,
            vec![owner("Deployment", "x", "u", true)]
        )));
    }

    #[test]
    fn the_conflict_names_each_object_its_controller_and_the_fix() {
        let conflict = NameConflict {
            objects: vec![
                ConflictingObject::of(&service(vec![])),
                ConflictingObject {
                    kind: "ConfigMap".into(),
                    object: "demo/ambit-ca-root-cert".into(),
                    controller: None,
                },
            ],
        };
        let message = conflict.to_string();
        for part in [
            "Service demo/reviews (owned by no Gateway)",
            "ConfigMap demo/ambit-ca-root-cert",
            "nothing was deployed",
            "rename the Gateway, or rename or delete demo/reviews",
            "rename or delete the ConfigMap demo/ambit-ca-root-cert",
        ] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
        let earlier = NameConflict {
            objects: vec![ConflictingObject::of(&service(vec![owner(
                "Gateway", "reviews", "gw-0", true,
            )]))],
        };
        let message = earlier.to_string();
        assert!(
            message.contains("controlled by Gateway demo/reviews (uid gw-0)"),
            "{message}"
        );
        assert!(message.contains("garbage collector"), "{message}");
    }
}
