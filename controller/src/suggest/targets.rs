//! Where an observed flow went, in the model's terms: the workloads it reached and the port
//! their policies are evaluated on (the pod's target port, also behind a waypoint, which checks
//! the chosen endpoint's policies on the port it sends to), and the selector a human would
//! write for each workload.

use crate::model::{Labels, MeshModel, ObjectKey, ServiceEntry};
use crate::telemetry::api::ObservedFlow;

/// `reporter_kind` of a flow ztunnel saw (inbound connections to its pods).
pub const ZTUNNEL: &str = "ztunnel";
/// `reporter_kind` of a flow a waypoint saw (requests to a service).
pub const WAYPOINT: &str = "waypoint";

/// The label keys a human selects a workload group by, in order of preference (Kubernetes' and
/// Istio's canonical-name labels after the plain `app`).
const GROUP_LABELS: [&str; 3] = [
    "app",
    "app.kubernetes.io/name",
    "service.istio.io/canonical-name",
];

/// One workload a flow reached, and the port its policies saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub workload: ObjectKey,
    pub port: u16,
}

/// A flow's destinations. `waypoint`: the waypoint that judged it (a waypoint flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub targets: Vec<Target>,
    pub waypoint: Option<ObjectKey>,
}

/// The namespace a flow's destination is in (a waypoint flow's service's, when the proxy did not
/// name one).
pub fn destination_namespace(model: &MeshModel, flow: &ObservedFlow) -> Option<String> {
    if !flow.destination_namespace.is_empty() {
        return Some(flow.destination_namespace.clone());
    }
    match model.service_by_hostname(&flow.destination_service) {
        Some(s) => Some(s.service.namespace.clone()),
        // A service gone since: its host name still says where it was.
        None => flow
            .destination_service
            .split('.')
            .nth(1)
            .map(str::to_string),
    }
}

/// The workloads `flow` reached and their target ports; `Err` says why that is not known.
pub fn resolve(model: &MeshModel, flow: &ObservedFlow) -> Result<Resolved, String> {
    let port = u16::try_from(flow.destination_port)
        .map_err(|_| format!("port {} is not a TCP port", flow.destination_port))?;
    match flow.reporter_kind.as_str() {
        ZTUNNEL => {
            let key = ObjectKey::new(&flow.destination_namespace, &flow.destination_workload);
            if model.workload(&key).is_none() {
                return Err(format!(
                    "the mesh has no workload {key} (gone since it was seen?)"
                ));
            }
            Ok(Resolved {
                targets: vec![Target {
                    workload: key,
                    port,
                }],
                waypoint: None,
            })
        }
        WAYPOINT => resolve_through_waypoint(model, flow, port),
        other => Err(format!(
            "reporter kind {other:?} is neither {ZTUNNEL:?} nor {WAYPOINT:?}"
        )),
    }
}

/// A waypoint sends a request to the backends of the routes attached to the service (any rule's,
/// since the shape does not say which matched), or to the service's own endpoints when no route
/// is attached; the policies of whichever endpoint it picks are checked on that endpoint's target
/// port.
fn resolve_through_waypoint(
    model: &MeshModel,
    flow: &ObservedFlow,
    port: u16,
) -> Result<Resolved, String> {
    let host = &flow.destination_service;
    if host.is_empty() {
        return resolve_workload_through_waypoint(model, flow, port);
    }
    let service = model
        .service_by_hostname(host)
        .ok_or_else(|| format!("the mesh has no service {host:?} (gone since it was seen?)"))?;
    let waypoint = service
        .waypoint
        .clone()
        .ok_or_else(|| format!("service {host} is no longer behind a waypoint"))?;
    let mut targets = Vec::new();
    let routed: Vec<_> = model
        .routes()
        .filter(|r| {
            r.parents
                .iter()
                .any(|p| p.service == *host && (p.port == 0 || p.port == u32::from(port)))
        })
        .collect();
    if routed.is_empty() {
        targets.extend(endpoints(service, port));
    }
    for route in routed {
        for backend in route.rules.iter().flat_map(|r| &r.backends) {
            let Some(s) = model.service_by_hostname(&backend.service) else {
                continue;
            };
            // No port on the backend: the request's own (Gateway API's default).
            let backend_port = match u16::try_from(backend.port) {
                Ok(0) | Err(_) => port,
                Ok(p) => p,
            };
            targets.extend(endpoints(s, backend_port));
        }
    }
    if !flow.destination_workload.is_empty() {
        let named = ObjectKey::new(&flow.destination_namespace, &flow.destination_workload);
        targets.retain(|t| t.workload == named);
    }
    targets.sort();
    targets.dedup();
    if targets.is_empty() {
        return Err(format!(
            "service {host} port {port} has no endpoints in the mesh now"
        ));
    }
    Ok(Resolved {
        targets,
        waypoint: Some(waypoint),
    })
}

/// A request the client addressed to a workload (its address, not a service's): the waypoint
/// in front of that workload judged it on the port the client dialled.
fn resolve_workload_through_waypoint(
    model: &MeshModel,
    flow: &ObservedFlow,
    port: u16,
) -> Result<Resolved, String> {
    let key = ObjectKey::new(&flow.destination_namespace, &flow.destination_workload);
    let workload = model
        .workload(&key)
        .ok_or_else(|| format!("the mesh has no workload {key} (gone since it was seen?)"))?;
    let waypoint = workload
        .waypoint
        .clone()
        .or_else(|| {
            model
                .services_in(&key.namespace)
                .find(|s| s.endpoints.contains(&key) && s.waypoint.is_some())
                .and_then(|s| s.waypoint.clone())
        })
        .ok_or_else(|| format!("{key} is no longer behind a waypoint"))?;
    Ok(Resolved {
        targets: vec![Target {
            workload: key,
            port,
        }],
        waypoint: Some(waypoint),
    })
}

/// The endpoints of `service` with the target port of its `port` (the port itself when the
/// service has no such port, as the waypoint does).
fn endpoints(service: &ServiceEntry, port: u16) -> impl Iterator<Item = Target> + '_ {
    let target = service
        .service
        .ports
        .iter()
        .find(|p| p.port == port)
        .map_or(port, |p| p.target_port);
    service.endpoints.iter().map(move |workload| Target {
        workload: workload.clone(),
        port: target,
    })
}

/// The selector a human would write for `workload`'s group: its `app` label (or a canonical-name
/// label), else the selector of the one service it backs, else all its labels. `Err` when it has
/// no labels: no selector can pick it alone (an empty one selects the whole namespace).
pub fn selector_for(model: &MeshModel, workload: &ObjectKey) -> Result<Labels, String> {
    let w = model
        .workload(workload)
        .ok_or_else(|| format!("the mesh has no workload {workload}"))?;
    let labels = &w.pod.labels;
    if let Some((k, v)) = GROUP_LABELS
        .iter()
        .find_map(|k| labels.get(*k).map(|v| (*k, v)))
    {
        return Ok(Labels::from([(k.to_string(), v.clone())]));
    }
    let mut backs = model
        .services_in(&workload.namespace)
        .filter(|s| !s.service.selector.is_empty() && s.endpoints.contains(workload));
    if let (Some(only), None) = (backs.next(), backs.next()) {
        return Ok(only.service.selector.clone());
    }
    if labels.is_empty() {
        return Err(format!(
            "{workload} has no labels, so no selector picks it alone (an empty one would select all of namespace {}): label it (app: <name>) and suggest again",
            workload.namespace
        ));
    }
    Ok(labels.clone())
}
