//! The objects a waypoint Gateway asks for. Pure: a Gateway and the options in, the
//! ServiceAccount, Deployment and Service out, ready for server-side apply (only the fields we
//! mean to own are set, so fields other managers set are left alone).

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, KeyToPath,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::ca::root_configmap::{CONFIGMAP_NAME, ROOT_CERT_KEY};

use super::{
    GATEWAY_NAME_LABEL, HBONE_PORT, HBONE_PROTOCOL, MANAGED_LABEL, MANAGED_VALUE, MAX_REPLICAS,
    METRICS_PORT, READINESS_PORT, REPLICAS_ANNOTATION, WaypointOptions,
};

/// Where the projected CA token is mounted in the waypoint container.
pub const TOKEN_DIR: &str = "/var/run/secrets/ambit/tokens";
pub const TOKEN_FILE: &str = "ambit-ca-token";
/// Where the namespace's root certificate ConfigMap is mounted (as in ztunnel's DaemonSet).
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/ambit/root";
/// The uid the waypoint runs as (non-root; the image need not declare a numeric USER).
const WAYPOINT_UID: i64 = 1337;
/// Token lifetime: the kubelet refreshes it at 80%, the CA only needs it at certificate time.
const TOKEN_SECONDS: i64 = 3600;

/// Why a Gateway of our class cannot be deployed as it is. Each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGateway {
    #[error(
        "a waypoint Gateway needs exactly one listener {{name: mesh, port: {HBONE_PORT}, protocol: {HBONE_PROTOCOL}}}; this one has {found}"
    )]
    Listeners { found: String },
    #[error(
        "spec.addresses is not supported for waypoints (they are reached at their Service's cluster IP): remove it"
    )]
    Addresses,
    #[error(
        "annotation {REPLICAS_ANNOTATION}={value:?} is not a replica count: use a whole number from 1 to {MAX_REPLICAS}, or remove it for 1"
    )]
    Replicas { value: String },
    #[error(
        "the Gateway has no uid yet (not read from the API server), so nothing can be owned by it"
    )]
    NoUid,
}

/// What one waypoint Gateway asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObjects {
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    pub service: Service,
}

/// The ServiceAccount, Deployment and Service for `gateway`, or why it cannot have them.
pub fn desired_objects(
    gateway: &Gateway,
    options: &WaypointOptions,
) -> Result<DesiredObjects, InvalidGateway> {
    check_listeners(gateway)?;
    if gateway
        .spec
        .addresses
        .as_ref()
        .is_some_and(|a| !a.is_empty())
    {
        return Err(InvalidGateway::Addresses);
    }
    let replicas = replicas(gateway)?;
    let owner = owner_reference(gateway).ok_or(InvalidGateway::NoUid)?;
    let name = gateway.name_any();
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: gateway.namespace(),
        labels: Some(object_labels(gateway)),
        annotations: infrastructure(gateway, |i| i.annotations.as_ref()),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    Ok(DesiredObjects {
        service_account: ServiceAccount {
            metadata: meta.clone(),
            ..ServiceAccount::default()
        },
        deployment: deployment(gateway, meta.clone(), replicas, options),
        service: service(gateway, meta),
    })
}

/// The replica count the Gateway asks for with [`REPLICAS_ANNOTATION`] (1 without it).
pub fn replicas(gateway: &Gateway) -> Result<i32, InvalidGateway> {
    let Some(value) = gateway.annotations().get(REPLICAS_ANNOTATION) else {
        return Ok(1);
    };
    match value.trim().parse::<i32>() {
        Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
        _ => Err(InvalidGateway::Replicas {
            value: value.clone(),
        }),
    }
}

fn check_listeners(gateway: &Gateway) -> Result<(), InvalidGateway> {
    let listeners = &gateway.spec.listeners;
    match listeners.as_slice() {
        [only] if only.port == HBONE_PORT && only.protocol == HBONE_PROTOCOL => Ok(()),
        _ => Err(InvalidGateway::Listeners {
            found: if listeners.is_empty() {
                "none".into()
            } else {
                listeners
                    .iter()
                    .map(|l| {
                        format!(
                            "{{name: {}, port: {}, protocol: {}}}",
                            l.name, l.port, l.protocol
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

/// Controller owner reference: Kubernetes deletes the object with the Gateway, and the
/// Gateway's foreground deletion waits for it.
fn owner_reference(gateway: &Gateway) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: Gateway::api_version(&()).into_owned(),
        kind: Gateway::kind(&()).into_owned(),
        name: gateway.name_any(),
        uid: gateway.uid()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The Gateway's `spec.infrastructure` labels or annotations, which the Gateway API asks
/// implementations to copy onto what they create.
fn infrastructure(
    gateway: &Gateway,
    field: impl Fn(
        &gateway_api::apis::standard::gateways::GatewayInfrastructure,
    ) -> Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(field)
        .filter(|m| !m.is_empty())
        .cloned()
}

/// The pods' selector: only the Gateway's name, because a Deployment's selector cannot change.
fn selector_labels(gateway: &Gateway) -> BTreeMap<String, String> {
    BTreeMap::from([(GATEWAY_NAME_LABEL.into(), gateway.name_any())])
}

/// Labels of the three objects: infrastructure labels, then ours (ours win a clash, since the
/// watches and the selector depend on them).
fn object_labels(gateway: &Gateway) -> BTreeMap<String, String> {
    let mut labels = infrastructure(gateway, |i| i.labels.as_ref()).unwrap_or_default();
    labels.extend(selector_labels(gateway));
    labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
    labels
}

fn pod_labels(gateway: &Gateway) -> BTreeMap<String, String> {
    let mut labels = infrastructure(gateway, |i| i.labels.as_ref()).unwrap_or_default();
    labels.extend(selector_labels(gateway));
    // A waypoint's own traffic is already HBONE; ztunnel must not capture it again.
    labels.insert("ambit.io/dataplane-mode".into(), "none".into());
    labels
}

fn pod_annotations(gateway: &Gateway) -> BTreeMap<String, String> {
    let mut annotations = infrastructure(gateway, |i| i.annotations.as_ref()).unwrap_or_default();
    annotations.extend([
        ("prometheus.io/scrape".into(), "true".into()),
        ("prometheus.io/port".into(), METRICS_PORT.to_string()),
        ("prometheus.io/path".into(), "/metrics".into()),
    ]);
    annotations
}

fn deployment(
    gateway: &Gateway,
    metadata: ObjectMeta,
    replicas: i32,
    options: &WaypointOptions,
) -> Deployment {
    let name = gateway.name_any();
    let namespace = gateway.namespace().unwrap_or_default();
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(gateway)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(gateway)),
                    annotations: Some(pod_annotations(gateway)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(&name, &namespace, options)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn pod_spec(name: &str, namespace: &str, options: &WaypointOptions) -> PodSpec {
    PodSpec {
        service_account_name: Some(name.into()),
        // The waypoint never calls the Kubernetes API; its only token is the CA's, below.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WAYPOINT_UID),
            run_as_group: Some(WAYPOINT_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(name, namespace, options)],
        volumes: Some(vec![
            Volume {
                name: "ambit-ca-token".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(options.ca_audience.clone()),
                            expiration_seconds: Some(TOKEN_SECONDS),
                            path: TOKEN_FILE.into(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                    ..ProjectedVolumeSource::default()
                }),
                ..Volume::default()
            },
            // The public root only, from the namespace's ConfigMap (see `root_cert`): never
            // the CA Secret, which the kubelet would fetch whole, key included.
            Volume {
                name: "root-cert".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: CONFIGMAP_NAME.into(),
                    items: Some(vec![KeyToPath {
                        key: ROOT_CERT_KEY.into(),
                        path: ROOT_CERT_KEY.into(),
                        ..KeyToPath::default()
                    }]),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    }
}

fn container(name: &str, namespace: &str, options: &WaypointOptions) -> Container {
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    Container {
        name: "waypoint".into(),
        image: Some(options.image.clone()),
        args: Some(vec![
            format!("--controller={}", options.controller_address),
            format!("--name={name}"),
            format!("--namespace={namespace}"),
            format!("--trust-domain={}", options.trust_domain),
            format!("--token-file={TOKEN_DIR}/{TOKEN_FILE}"),
            format!("--root-cert={ROOT_CERT_DIR}/{ROOT_CERT_KEY}"),
        ]),
        ports: Some(vec![
            port("hbone", HBONE_PORT),
            port("metrics", METRICS_PORT),
            port("status-port", READINESS_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(READINESS_PORT),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            // Sized from the design's waypoint target (≤ 20 MB at 1k req/s).
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "ambit-ca-token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "root-cert".into(),
                mount_path: ROOT_CERT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

fn service(gateway: &Gateway, metadata: ObjectMeta) -> Service {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(gateway)),
            ports: Some(vec![
                port("mesh", HBONE_PORT),
                port("metrics", METRICS_PORT),
                port("status-port", READINESS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests;
