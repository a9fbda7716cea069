//! From Kubernetes objects to the model's input types. Anything the mesh cannot use (a pod with
//! no IP yet, a port whose named target cannot be resolved…) is left out and reported as a
//! [`Skip`] naming the object and why; nothing here fails as a whole.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{
    self, DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE, Kind, Labels,
    ResourceRef, USE_WAYPOINT_LABEL, WAYPOINT_NONE,
};

/// Something from the cluster the model leaves out (or uses only in part), and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skip {
    pub subject: ResourceRef,
    pub reason: String,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

/// What the cluster holds, in the model's terms, before the model checks it as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Input {
    /// Every node that runs a pod of the model (Kubernetes nodes are not watched: a node is known
    /// through its pods). Nodes get no bootstrap token, so no certificates, from this source.
    pub nodes: BTreeSet<String>,
    pub namespaces: Vec<model::Namespace>,
    pub pods: Vec<model::Pod>,
    pub services: Vec<model::Service>,
    pub skips: Vec<Skip>,
}

fn labels(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Converts everything at once: named target ports are resolved against the pods, and waypoint
/// labels against the waypoints, that are known.
pub fn convert(
    namespaces: &[impl Borrow<core::Namespace>],
    pods: &[impl Borrow<core::Pod>],
    services: &[impl Borrow<core::Service>],
) -> Input {
    let mut input = Input::default();
    // No waypoint objects are watched yet, so no waypoint label can resolve.
    let waypoints: BTreeSet<model::ObjectKey> = BTreeSet::new();
    for ns in namespaces {
        if let Some(ns) = namespace(ns.borrow(), &waypoints, &mut input.skips) {
            input.namespaces.push(ns);
        }
    }
    let mut containers: BTreeMap<(String, String), &core::Pod> = BTreeMap::new();
    for p in pods {
        let p = p.borrow();
        if let Some(pod) = pod(p, &waypoints, &mut input.skips) {
            input.nodes.insert(pod.node.clone());
            containers.insert((pod.namespace.clone(), pod.name.clone()), p);
            input.pods.push(pod);
        }
    }
    for s in services {
        if let Some(svc) = service(
            s.borrow(),
            &input.pods,
            &containers,
            &waypoints,
            &mut input.skips,
        ) {
            input.services.push(svc);
        }
    }
    input.skips.sort();
    input
}

/// Drops a waypoint label that names no known waypoint: the object stays in the mesh without a
/// waypoint rather than making the whole model invalid.
fn check_waypoint_label(
    subject: &ResourceRef,
    namespace: &str,
    labels: &mut Labels,
    waypoints: &BTreeSet<model::ObjectKey>,
    skips: &mut Vec<Skip>,
) {
    if let Some(name) = labels.get(USE_WAYPOINT_LABEL)
        && name != WAYPOINT_NONE
        && !waypoints.contains(&model::ObjectKey::new(namespace, name))
    {
        skips.push(Skip {
            subject: subject.clone(),
            reason: format!(
                "label {USE_WAYPOINT_LABEL}={name:?} names no known waypoint (waypoints are not watched yet); ignoring the label"
            ),
        });
        labels.remove(USE_WAYPOINT_LABEL);
    }
}

fn namespace(
    ns: &core::Namespace,
    waypoints: &BTreeSet<model::ObjectKey>,
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
    check_waypoint_label(&subject, &name, &mut labels, waypoints, skips);
    Some(model::Namespace { name, labels })
}

fn pod_ips(status: &core::PodStatus) -> Vec<IpAddr> {
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

fn pod(
    p: &core::Pod,
    waypoints: &BTreeSet<model::ObjectKey>,
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
    let Some(node) = spec.and_then(|s| s.node_name.clone()) else {
        skip("is not scheduled on a node yet");
        return None;
    };
    let addresses = status.map(pod_ips).unwrap_or_default();
    if addresses.is_empty() {
        skip("has no IP yet (status.podIPs is empty)");
        return None;
    }
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
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| "default".into()),
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
fn resolve_named(
    port_name: &str,
    service: &model::Service,
    pods: &[model::Pod],
    containers: &BTreeMap<(String, String), &core::Pod>,
) -> Result<u16, String> {
    let mut found = BTreeSet::new();
    let selected = pods.iter().filter(|p| {
        p.namespace == service.namespace
            && !service.selector.is_empty()
            && model::selects(&service.selector, &p.labels)
    });
    for pod in selected {
        let Some(k8s) = containers.get(&(pod.namespace.clone(), pod.name.clone())) else {
            continue;
        };
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

fn service(
    s: &core::Service,
    pods: &[model::Pod],
    containers: &BTreeMap<(String, String), &core::Pod>,
    waypoints: &BTreeSet<model::ObjectKey>,
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
    check_waypoint_label(&subject, &namespace, &mut labels, waypoints, skips);
    let mut svc = model::Service {
        name,
        namespace,
        vips,
        ports: Vec::new(),
        selector: spec.selector.unwrap_or_default(),
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
        let target_port = match &p.target_port {
            None => port,
            Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                Ok(n) if n != 0 => n,
                _ => {
                    skip(format!("targetPort {n} is out of range"));
                    continue;
                }
            },
            Some(IntOrString::String(named)) => match named.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => match resolve_named(named, &svc, pods, containers) {
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
