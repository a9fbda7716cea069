//! The walk itself: capture at the source, the waypoint or not, the routes' backends and their
//! endpoints, and at each endpoint the proxy that decides and what it decides.

use std::collections::BTreeMap;

use crate::model::{
    AppProtocol, AuthorizationPolicy, DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL,
    DATAPLANE_MODE_NONE, MeshModel, MtlsMode, ObjectKey, USE_WAYPOINT_LABEL, Workload,
};

use super::ExplainError;
use super::policies::{self, Asker, Layer};
use super::routes;
use super::target::Destination;
use super::types::*;

pub fn explain(
    model: &MeshModel,
    source: &Workload,
    destination: Destination<'_>,
) -> Result<Explanation, ExplainError> {
    let source_info = source_info(model, source);
    let (destination_info, waypoint, route_list, backends) = match destination {
        Destination::Service { entry, port } => {
            let svc = &entry.service;
            let waypoint = entry.waypoint.as_ref().and_then(|key| {
                let chosen_by = if svc.labels.contains_key(USE_WAYPOINT_LABEL) {
                    WaypointChoice::ServiceLabel {
                        service: format!("{}/{}", svc.namespace, svc.name),
                    }
                } else {
                    WaypointChoice::NamespaceLabel {
                        namespace: svc.namespace.clone(),
                    }
                };
                let (protocol, l7) = match port.app_protocol {
                    AppProtocol::Tcp => ("tcp", false),
                    other => (other.as_str(), true),
                };
                waypoint_info(model, key, chosen_by, protocol, l7, source)
            });
            let hostname = entry.hostname(model.trust_domain());
            // Routes are the waypoint's: without it (or for opaque TCP) none applies.
            let applying: Vec<_> = match &waypoint {
                Some(w) if w.on_path && w.l7 => {
                    routes::applying(model, &hostname, port.port).collect()
                }
                _ => Vec::new(),
            };
            let backends = routes::backends(model, &applying, entry, port.port);
            let info = DestinationInfo {
                kind: DestinationKind::Service,
                name: format!("{}/{}", svc.namespace, svc.name),
                hostname: hostname.clone(),
                addresses: svc.vips.iter().map(ToString::to_string).collect(),
                port: port.port,
                port_name: port.name.clone(),
                target_port: port.target_port,
                app_protocol: port.app_protocol.as_str().into(),
            };
            let route_list = applying
                .iter()
                .map(|r| routes::route_info(model, r))
                .collect();
            (info, waypoint, route_list, backends)
        }
        Destination::Workload { workload, port } => {
            let waypoint = workload.waypoint.as_ref().and_then(|key| {
                let chosen_by = WaypointChoice::PodLabel {
                    workload: workload.key().to_string(),
                };
                // No service port says the protocol: the waypoint detects it.
                waypoint_info(model, key, chosen_by, "detected", true, source)
            });
            let info = DestinationInfo {
                kind: DestinationKind::Workload,
                name: workload.key().to_string(),
                hostname: String::new(),
                addresses: workload
                    .pod
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                port,
                port_name: String::new(),
                target_port: port,
                app_protocol: String::new(),
            };
            let backend = BackendInfo {
                service: String::new(),
                port,
                target_port: port,
                traffic_policy: None,
                endpoints: vec![routes::endpoint_info(workload, port)],
            };
            (info, waypoint, Vec::new(), vec![backend])
        }
    };
    let through_waypoint = waypoint.as_ref().filter(|w| w.on_path);
    let enforcer = |endpoint: &Workload| match through_waypoint {
        Some(w) => Enforcer::Waypoint {
            name: w.name.clone(),
            l7: w.l7,
        },
        None if endpoint.meshed => Enforcer::Ztunnel {
            node: endpoint.pod.node.clone(),
        },
        None => Enforcer::Nobody,
    };
    let layer = |e: &Enforcer| match e {
        Enforcer::Waypoint { l7: true, .. } => Layer::L7,
        _ => Layer::L4,
    };
    let ip = source
        .pod
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(source.pod.addresses.first())
        .copied()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let asker = Asker {
        identity: source.meshed.then_some(&source.identity),
        ip,
    };

    // By policy and the port it is checked on (backends may listen on different ports).
    let mut policies: BTreeMap<(ObjectKey, u16), PolicyInfo> = BTreeMap::new();
    let mut endpoint_verdicts: Vec<EndpointVerdict> = Vec::new();
    for backend in &backends {
        for endpoint in &backend.endpoints {
            let Some(workload) = workload_named(model, &endpoint.workload) else {
                continue;
            };
            let enforced_at = enforcer(workload);
            let selected: Vec<&AuthorizationPolicy> = model
                .policies_in(&workload.pod.namespace)
                .filter(|p| MeshModel::policy_selects(p, workload))
                .collect();
            for p in &selected {
                let key = (ObjectKey::new(&p.namespace, &p.name), backend.target_port);
                if !policies.contains_key(&key) {
                    let (rules, outcome) = policies::check_policy(
                        model,
                        p,
                        &asker,
                        backend.target_port,
                        layer(&enforced_at),
                    )?;
                    policies.insert(
                        key.clone(),
                        PolicyInfo {
                            name: key.0.to_string(),
                            port: backend.target_port,
                            action: p.action.as_str_name().to_string(),
                            dry_run: p.dry_run,
                            workloads: Vec::new(),
                            enforced_at: Vec::new(),
                            rules,
                            outcome,
                        },
                    );
                }
                let info = policies.get_mut(&key).expect("inserted above");
                if !info.workloads.contains(&endpoint.workload) {
                    info.workloads.push(endpoint.workload.clone());
                }
                if !info.enforced_at.contains(&enforced_at) {
                    info.enforced_at.push(enforced_at.clone());
                }
            }
            if !workload.pod.healthy
                || endpoint_verdicts
                    .iter()
                    .any(|v| v.endpoint == endpoint.workload)
            {
                continue;
            }
            let verdict =
                if !source.meshed && workload.meshed && workload.mtls_mode == MtlsMode::Strict {
                    Verdict::PlaintextRefused {
                        namespace: workload.pod.namespace.clone(),
                    }
                } else if enforced_at == Enforcer::Nobody {
                    Verdict::Allowed {
                        policy: None,
                        audited: Vec::new(),
                    }
                } else {
                    policies::decide_for(
                        model,
                        &selected,
                        &asker,
                        backend.target_port,
                        layer(&enforced_at),
                    )?
                };
            endpoint_verdicts.push(EndpointVerdict {
                endpoint: endpoint.workload.clone(),
                enforced_at,
                verdict,
            });
        }
    }
    let verdict = match outside_egress_scope(model, source, &destination) {
        Some(refused) => refused,
        None => overall(&waypoint, &backends, &endpoint_verdicts),
    };
    let endpoints_meshed = backends.iter().flat_map(|b| &b.endpoints).all(|e| e.meshed);
    Ok(Explanation {
        mutual_tls: source.meshed && (through_waypoint.is_some() || endpoints_meshed),
        source: source_info,
        destination: destination_info,
        waypoint,
        routes: route_list,
        backends,
        policies: policies.into_values().collect(),
        endpoint_verdicts,
        verdict,
    })
}

fn workload_named<'a>(model: &'a MeshModel, name: &str) -> Option<&'a Workload> {
    let (ns, n) = name.split_once('/')?;
    model.workload(&ObjectKey::new(ns, n))
}

fn source_info(model: &MeshModel, source: &Workload) -> SourceInfo {
    let namespace = source.pod.namespace.clone();
    let ns_mode = model
        .namespace(&namespace)
        .and_then(|ns| ns.labels.get(DATAPLANE_MODE_LABEL))
        .cloned();
    let capture = if ns_mode.as_deref() != Some(DATAPLANE_MODE_AMBIENT) {
        Capture::NamespaceNotEnrolled {
            namespace,
            value: ns_mode,
        }
    } else if source
        .pod
        .labels
        .get(DATAPLANE_MODE_LABEL)
        .map(String::as_str)
        == Some(DATAPLANE_MODE_NONE)
    {
        Capture::PodOptedOut { namespace }
    } else {
        Capture::Enrolled { namespace }
    };
    SourceInfo {
        workload: source.key().to_string(),
        node: source.pod.node.clone(),
        addresses: source.pod.addresses.iter().map(|a| a.to_string()).collect(),
        identity: source.identity.to_string(),
        captured: source.meshed,
        capture,
    }
}

fn waypoint_info(
    model: &MeshModel,
    key: &ObjectKey,
    chosen_by: WaypointChoice,
    protocol: &str,
    l7: bool,
    source: &Workload,
) -> Option<WaypointInfo> {
    let wp = model.waypoint(key)?;
    let identity = format!(
        "spiffe://{}/ns/{}/sa/{}",
        model.trust_domain(),
        wp.namespace,
        wp.service_account
    );
    Some(WaypointInfo {
        name: key.to_string(),
        node: wp.node.clone(),
        addresses: wp.addresses.iter().map(ToString::to_string).collect(),
        // The waypoint's own upstream traffic does not loop back through it.
        on_path: source.meshed && source.identity.as_str() != identity,
        identity,
        chosen_by,
        protocol: protocol.into(),
        l7,
    })
}

/// The source ztunnel's refusal when the destination is outside the egress scope the source's
/// namespace declares (the same rule as `ProxyState::check_egress`): before any waypoint or
/// policy is asked.
fn outside_egress_scope(
    model: &MeshModel,
    source: &Workload,
    destination: &Destination<'_>,
) -> Option<Verdict> {
    let scope = model
        .egress_scope(&source.pod.namespace)
        .filter(|_| source.meshed)?;
    let covered = match destination {
        Destination::Service { entry, .. } => {
            let svc = &entry.service;
            scope.covers(&svc.namespace, Some(&svc.name))
        }
        Destination::Workload { workload, .. } => {
            let key = workload.key();
            let behind_named = model
                .services_in(&workload.pod.namespace)
                .filter(|s| s.endpoints.contains(&key))
                .any(|s| scope.covers(&s.service.namespace, Some(&s.service.name)));
            key == source.key() || scope.covers(&workload.pod.namespace, None) || behind_named
        }
    };
    (!covered).then(|| Verdict::OutsideEgressScope {
        namespace: source.pod.namespace.clone(),
        declared: scope.declared.clone(),
        invalid: scope.invalid.clone(),
    })
}

fn overall(
    waypoint: &Option<WaypointInfo>,
    backends: &[BackendInfo],
    verdicts: &[EndpointVerdict],
) -> Verdict {
    if let Some(w) = waypoint
        .as_ref()
        .filter(|w| w.on_path && w.addresses.is_empty())
    {
        return Verdict::Unreachable {
            reason: format!(
                "waypoint {} has no address yet (is it deployed and ready?); ztunnel refuses rather than go around it",
                w.name
            ),
        };
    }
    let endpoints: Vec<&EndpointInfo> = backends.iter().flat_map(|b| &b.endpoints).collect();
    if endpoints.is_empty() {
        let names: Vec<&str> = backends.iter().map(|b| b.service.as_str()).collect();
        return Verdict::Unreachable {
            reason: format!("{} has no endpoints", names.join(", ")),
        };
    }
    if verdicts.is_empty() {
        return Verdict::Unreachable {
            reason: format!(
                "no endpoint is healthy ({})",
                endpoints
                    .iter()
                    .map(|e| e.workload.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    let first = &verdicts[0].verdict;
    if verdicts.iter().all(|v| &v.verdict == first) {
        first.clone()
    } else {
        Verdict::DependsOnEndpoint
    }
}
