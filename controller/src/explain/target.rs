//! What the user named: the source workload, and the destination (a service by
//! `<namespace>/<name>`, host name or VIP; a workload by `<namespace>/<name>` or address) with
//! its port. Anything not found is an error naming what exists nearby.

use std::net::IpAddr;

use crate::model::{MeshModel, ObjectKey, ServiceEntry, ServicePort, Workload};

use super::ExplainError;

pub enum Destination<'a> {
    Service {
        entry: &'a ServiceEntry,
        port: &'a ServicePort,
    },
    Workload {
        workload: &'a Workload,
        port: u16,
    },
}

pub fn source<'a>(model: &'a MeshModel, from: &str) -> Result<&'a Workload, ExplainError> {
    let Some((namespace, name)) = from.split_once('/') else {
        return Err(ExplainError::BadSource {
            given: from.to_string(),
        });
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(ExplainError::BadSource {
            given: from.to_string(),
        });
    }
    if let Some(w) = model.workload(&ObjectKey::new(namespace, name)) {
        return Ok(w);
    }
    Err(ExplainError::UnknownWorkload {
        workload: from.to_string(),
        nearby: workload_names(model, namespace),
        namespaces: namespaces(model),
    })
}

pub fn destination<'a>(model: &'a MeshModel, to: &str) -> Result<Destination<'a>, ExplainError> {
    let (target, port) = split_port(to)?;
    if let Ok(ip) = target.parse::<IpAddr>() {
        if let Some(entry) = model.services().find(|s| s.service.vips.contains(&ip)) {
            return service_port(entry, port, to);
        }
        if let Some(w) = model.workloads().find(|w| w.pod.addresses.contains(&ip)) {
            return workload_port(model, w, port, to);
        }
        return Err(ExplainError::UnknownAddress { address: ip });
    }
    if let Some((namespace, name)) = target.split_once('/') {
        let key = ObjectKey::new(namespace, name);
        if let Some(entry) = model.service(&key) {
            return service_port(entry, port, to);
        }
        if let Some(w) = model.workload(&key) {
            return workload_port(model, w, port, to);
        }
        return Err(ExplainError::UnknownDestination {
            destination: target.to_string(),
            services: service_names(model, namespace),
            workloads: workload_names(model, namespace),
        });
    }
    // A host name: `name.ns.svc.<trust domain>`, or the short forms `name.ns[.svc]`.
    let labels: Vec<&str> = target.trim_end_matches('.').split('.').collect();
    let td = model.trust_domain();
    let full = match labels.as_slice() {
        [name, ns] | [name, ns, "svc"] => format!("{name}.{ns}.svc.{td}"),
        _ => target.trim_end_matches('.').to_string(),
    };
    if let Some(entry) = model.service_by_hostname(&full) {
        return service_port(entry, port, to);
    }
    let namespace = labels.get(1).copied().unwrap_or_default();
    Err(ExplainError::UnknownDestination {
        destination: target.to_string(),
        services: service_names(model, namespace),
        workloads: workload_names(model, namespace),
    })
}

/// `host[:port]`, `[v6]:port`, a bare IPv6 address, `ns/name:port`.
fn split_port(to: &str) -> Result<(&str, Option<u16>), ExplainError> {
    let bad = || ExplainError::BadPort {
        given: to.to_string(),
    };
    if let Some(rest) = to.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p.parse().map_err(|_| bad())?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(bad()),
        };
    }
    if to.parse::<IpAddr>().is_ok() {
        return Ok((to, None));
    }
    match to.rsplit_once(':') {
        Some((host, p)) => Ok((host, Some(p.parse().map_err(|_| bad())?))),
        None => Ok((to, None)),
    }
}

fn service_port<'a>(
    entry: &'a ServiceEntry,
    port: Option<u16>,
    to: &str,
) -> Result<Destination<'a>, ExplainError> {
    let svc = &entry.service;
    let listed = || {
        svc.ports
            .iter()
            .map(|p| match p.name.as_str() {
                "" => p.port.to_string(),
                name => format!("{} ({name})", p.port),
            })
            .collect::<Vec<_>>()
    };
    let name = format!("{}/{}", svc.namespace, svc.name);
    let found = match port {
        Some(n) => {
            svc.ports
                .iter()
                .find(|p| p.port == n)
                .ok_or_else(|| ExplainError::NoSuchPort {
                    destination: name.clone(),
                    port: n,
                    ports: listed(),
                })?
        }
        None => match svc.ports.as_slice() {
            [only] => only,
            _ => {
                return Err(ExplainError::PortRequired {
                    destination: to.to_string(),
                    ports: listed(),
                });
            }
        },
    };
    Ok(Destination::Service { entry, port: found })
}

/// A workload addressed directly: the port given, else the one target port of the services it
/// serves.
fn workload_port<'a>(
    model: &'a MeshModel,
    workload: &'a Workload,
    port: Option<u16>,
    to: &str,
) -> Result<Destination<'a>, ExplainError> {
    if let Some(port) = port {
        return Ok(Destination::Workload { workload, port });
    }
    let key = workload.key();
    let mut ports: Vec<u16> = model
        .services()
        .filter(|s| s.endpoints.contains(&key))
        .flat_map(|s| s.service.ports.iter().map(|p| p.target_port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    match ports.as_slice() {
        [only] => Ok(Destination::Workload {
            workload,
            port: *only,
        }),
        _ => Err(ExplainError::PortRequired {
            destination: to.to_string(),
            ports: ports.iter().map(u16::to_string).collect(),
        }),
    }
}

fn workload_names(model: &MeshModel, namespace: &str) -> Vec<String> {
    model
        .workloads_in(namespace)
        .map(|w| w.key().to_string())
        .collect()
}

fn service_names(model: &MeshModel, namespace: &str) -> Vec<String> {
    model
        .services_in(namespace)
        .map(|s| format!("{}/{}", s.service.namespace, s.service.name))
        .collect()
}

fn namespaces(model: &MeshModel) -> Vec<String> {
    let mut all: Vec<String> = model
        .workloads()
        .map(|w| w.pod.namespace.clone())
        .chain(model.services().map(|s| s.service.namespace.clone()))
        .collect();
    all.sort();
    all.dedup();
    all
}
