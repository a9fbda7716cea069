//! Namespaces, pods and services: who is meshed, what runs where, what a service's ports are.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::converted::Pods;
use super::endpoints::Slices;
use super::{Skip, Waypoints, check_waypoint_label, key, labels};
use crate::model::{
    self, DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE,
    EGRESS_SCOPE_ANNOTATION, EgressScope, Kind, MTLS_MODE_LABEL, MtlsMode, ObjectKey,
    POLICY_MODE_LABEL, PolicyMode, ResourceRef,
};

pub(super) fn namespace(
    ns: &core::Namespace,
    waypoints: &Waypoints,
    skips: &mut Vec<Skip>,
) -> Option<model::Namespace> {
    let name = ns.metadata.name.clone()?;
    let subject = ResourceRef::new(Kind::Namespace, &name);
    let mut labels = labels(&ns.metadata);
    if let Some(value) = labels.get(DATAPLANE_MODE_LABEL)
        && value != DATAPLANE_MODE_AMBIENT
        && value != DATAPLANE_MODE_NONE
    {
        skips.push(Skip {
            subject: subject.clone(),
            reason: format!(
                "label {DATAPLANE_MODE_LABEL}={value:?} is neither \"ambient\" nor \"none\"; the namespace is not meshed"
            ),
        });
        labels.remove(DATAPLANE_MODE_LABEL);
    }
    if let Err(value) = MtlsMode::of_namespace(&labels, MtlsMode::Strict) {
        // Fail closed: whoever labelled the namespace wanted something other than the
        // default, and the mode that cannot let plaintext past its policies is strict.
        skips.push(Skip {
            subject: subject.clone(),
            reason: format!(
                "label {MTLS_MODE_LABEL}={value:?} is neither \"strict\" nor \"permissive\"; treating the namespace as strict (plaintext to its meshed pods is refused) until the label is fixed"
            ),
        });
        labels.insert(MTLS_MODE_LABEL.into(), MtlsMode::Strict.as_str().into());
    }
    if let Err(value) = PolicyMode::of_namespace(&labels, PolicyMode::Enforce) {
        // Fail closed: a mistyped `audit` must not stop the namespace's policies from deciding.
        skips.push(Skip {
            subject: subject.clone(),
            reason: format!(
                "label {POLICY_MODE_LABEL}={value:?} is neither \"enforce\" nor \"audit\"; the namespace's policies are enforced until the label is fixed"
            ),
        });
        labels.insert(
            POLICY_MODE_LABEL.into(),
            PolicyMode::Enforce.as_str().into(),
        );
    }
    check_waypoint_label(&subject, &name, &mut labels, waypoints, skips);
    let egress_scope = egress_scope(ns, &name, &subject, skips);
    Some(model::Namespace {
        name,
        labels,
        egress_scope,
    })
}

/// The namespace's [`EGRESS_SCOPE_ANNOTATION`]. One that cannot be read fails closed: the
/// namespace's pods may reach no mesh destination until it is fixed (reported as a skip).
fn egress_scope(
    ns: &core::Namespace,
    name: &str,
    subject: &ResourceRef,
    skips: &mut Vec<Skip>,
) -> Option<EgressScope> {
    let value = ns
        .metadata
        .annotations
        .as_ref()?
        .get(EGRESS_SCOPE_ANNOTATION)?;
    Some(
        EgressScope::parse_annotation(name, value).unwrap_or_else(|error| {
            skips.push(Skip {
                subject: subject.clone(),
                reason: format!(
                    "annotation {EGRESS_SCOPE_ANNOTATION}={value:?} cannot be read: {error}; its pods' connections to mesh destinations are refused until it is fixed"
                ),
            });
            EgressScope::refusing_all(value, &error)
        }),
    )
}

pub(super) fn pod_ips(status: &core::PodStatus) -> Vec<IpAddr> {
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<IpAddr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips.dedup();
    ips
}

/// The service account a pod runs as (Kubernetes fills in "default" when none is given).
pub(super) fn service_account(p: &core::Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".into())
}

pub(super) fn pod(
    p: &core::Pod,
    waypoints: &Waypoints,
    skips: &mut Vec<Skip>,
) -> Option<model::Pod> {
    let (namespace, name) = key(&p.metadata);
    let subject = ResourceRef::new(Kind::Pod, format!("{namespace}/{name}"));
    let mut skip = |reason: &str| {
        skips.push(Skip {
            subject: subject.clone(),
            reason: reason.into(),
        })
    };
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        skip("uses the host network (its IP is the node's), so it is not a workload of the mesh");
        return None;
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        skip("has finished (its IP may already belong to another pod)");
        return None;
    }
    let Some(node) = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
    else {
        skip("is not scheduled on a node yet");
        return None;
    };
    // Empty while the pod's network is being set up: its node's ztunnel needs the workload
    // (and the CA its identity) when the CNI plugin hands the pod over, before any IP.
    let addresses = status.map(pod_ips).unwrap_or_default();
    let healthy = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let mut labels = labels(&p.metadata);
    if let Some(value) = labels.get(DATAPLANE_MODE_LABEL)
        && value != DATAPLANE_MODE_NONE
    {
        skip(&format!(
            "label {DATAPLANE_MODE_LABEL}={value:?} is ignored: a pod can only opt out (\"none\"); label its namespace to opt in"
        ));
        labels.remove(DATAPLANE_MODE_LABEL);
    }
    check_waypoint_label(&subject, &namespace, &mut labels, waypoints, skips);
    Some(model::Pod {
        service_account: service_account(p),
        name,
        namespace,
        node,
        addresses,
        labels,
        healthy,
    })
}

/// `appProtocol` first, then Istio's port-name convention (`http-…`, `grpc-…`), else TCP.
fn app_protocol(port: &core::ServicePort) -> model::AppProtocol {
    let name = port.name.as_deref().unwrap_or_default();
    let given = port
        .app_protocol
        .as_deref()
        .unwrap_or_else(|| name.split_once('-').map_or(name, |(prefix, _)| prefix));
    match given.to_ascii_lowercase().as_str() {
        "http" => model::AppProtocol::Http,
        "http2" | "kubernetes.io/h2c" | "h2c" => model::AppProtocol::Http2,
        "grpc" => model::AppProtocol::Grpc,
        _ => model::AppProtocol::Tcp,
    }
}

/// A named target port is the container port of that name on the service's pods; it resolves
/// when the selected pods that declare it all agree on one number.
fn resolve_named(port_name: &str, service: &model::Service, pods: &Pods) -> Result<u16, String> {
    let mut found = BTreeSet::new();
    let namespace = pods
        .range(ObjectKey::new(&service.namespace, "")..)
        .take_while(|(k, _)| k.namespace == service.namespace);
    let selected = namespace
        .filter_map(|(_, e)| Some((e.value.as_ref()?, &e.source)))
        .filter(|(p, _)| {
            !service.selector.is_empty() && model::selects(&service.selector, &p.labels)
        });
    for (_, k8s) in selected {
        let declared = k8s
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.name.as_deref() == Some(port_name))
            .filter_map(|p| u16::try_from(p.container_port).ok());
        found.extend(declared);
    }
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => Err(format!(
            "named targetPort {port_name:?} is declared by none of the service's pods"
        )),
        _ => Err(format!(
            "named targetPort {port_name:?} means different ports on different pods ({found:?}), which one service port cannot express"
        )),
    }
}

/// What a service's conversion looks up.
pub(super) struct ServiceContext<'a> {
    pub pods: &'a Pods,
    pub waypoints: &'a Waypoints,
    pub slices: &'a Slices,
}

pub(super) fn service(
    s: &core::Service,
    context: &ServiceContext<'_>,
    skips: &mut Vec<Skip>,
) -> Option<model::Service> {
    let (namespace, name) = key(&s.metadata);
    let subject = ResourceRef::new(Kind::Service, format!("{namespace}/{name}"));
    let spec = s.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        skips.push(Skip {
            subject,
            reason: "is an ExternalName service (a DNS alias, no VIP or endpoints)".into(),
        });
        return None;
    }
    let mut vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok()) // "None" (headless) and "" parse to nothing
        .collect();
    vips.sort();
    vips.dedup();
    let mut labels = labels(&s.metadata);
    check_waypoint_label(&subject, &namespace, &mut labels, context.waypoints, skips);
    let selector = spec.selector.unwrap_or_default();
    // A service with a selector gets its endpoints from the model, which computes them from the
    // pods: the same answer the EndpointSlice controller writes, without depending on its
    // slices having caught up (a pod is an endpoint as soon as the pod is seen).
    let explicit_endpoints = if selector.is_empty() {
        context.slices.endpoints(&subject, &namespace, &name, skips)
    } else {
        Vec::new()
    };
    let mut svc = model::Service {
        name,
        namespace,
        vips,
        ports: Vec::new(),
        selector,
        explicit_endpoints,
        labels,
    };
    for p in spec.ports.iter().flatten() {
        let label = p.name.clone().unwrap_or_else(|| p.port.to_string());
        let mut skip = |reason: String| {
            skips.push(Skip {
                subject: subject.clone(),
                reason: format!("port {label}: {reason}; the port is left out"),
            })
        };
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            skip(format!(
                "protocol {} is not carried by the mesh (TCP only)",
                p.protocol.as_deref().unwrap_or_default()
            ));
            continue;
        }
        let Ok(port) = u16::try_from(p.port) else {
            skip(format!("port number {} is out of range", p.port));
            continue;
        };
        // Without a selector, kube-proxy takes a port's number from the slices' port of the same
        // name, whatever targetPort says; so does the mesh.
        let from_slices = if svc.selector.is_empty() {
            context
                .slices
                .port(&svc.namespace, &svc.name, p.name.as_deref())
        } else {
            None
        };
        let target_port = match (from_slices, &p.target_port) {
            (Some(n), _) => n,
            (None, None) => port,
            (None, Some(IntOrString::Int(n))) => match u16::try_from(*n) {
                Ok(n) if n != 0 => n,
                _ => {
                    skip(format!("targetPort {n} is out of range"));
                    continue;
                }
            },
            (None, Some(IntOrString::String(named))) => match named.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => match resolve_named(named, &svc, context.pods) {
                    Ok(n) => n,
                    Err(reason) => {
                        skip(reason);
                        continue;
                    }
                },
            },
        };
        svc.ports.push(model::ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port,
            target_port,
            app_protocol: app_protocol(p),
        });
    }
    Some(svc)
}
