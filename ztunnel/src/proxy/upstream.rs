//! Where an outbound connection goes: ztunnel's choice, over the shared state. A service or
//! workload that uses a waypoint is reached through it (fail closed when the waypoint is
//! missing); a service VIP picks one of its healthy endpoints; a meshed workload is reached
//! over HBONE; anything else passes through as plain TCP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_discovery::state::{Protocol, ProxyState, Service, Waypoint, Workload};
use ambit_proto::identity::SpiffeId;

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A meshed workload: HBONE to `workload`, tunnel target `target`.
    Hbone {
        workload: Workload,
        target: SocketAddr,
        service: Option<Arc<Service>>,
    },
    /// Outside the mesh (or an unmeshed workload): plain TCP to `target`.
    Passthrough {
        target: SocketAddr,
        workload: Option<Workload>,
        service: Option<Arc<Service>>,
    },
    /// A service VIP with no healthy endpoint.
    NoHealthyEndpoint { service: Arc<Service> },
    /// The service (or workload) uses a waypoint: HBONE to the waypoint, tunnel target the
    /// original destination (the VIP or pod address and port), as Istio does. `waypoint` is
    /// `None` when it is not in the config: the connection must be refused, never sent
    /// around it.
    Waypoint {
        key: Arc<str>,
        waypoint: Option<Arc<Waypoint>>,
        target: SocketAddr,
        service: Option<Arc<Service>>,
        workload: Option<Workload>,
    },
}

/// Where a connection from `from` to `dst` should go. A service or workload that uses a
/// waypoint is reached through it (except by the waypoint itself). A service's endpoint is
/// chosen among its healthy ones of the same address family, leaving out those `ejected` says
/// failed recently unless no other is left (a guess at a recovering endpoint beats a sure
/// refusal).
pub fn resolve(
    state: &ProxyState,
    dst: SocketAddr,
    from: &SpiffeId,
    ejected: impl Fn(IpAddr) -> bool,
) -> Upstream {
    let through = |key: &Option<Arc<str>>| -> Option<(Arc<str>, Option<Arc<Waypoint>>)> {
        let key = key.as_ref()?;
        let waypoint = state.waypoint(key).cloned();
        if waypoint.as_ref().is_some_and(|w| &w.identity == from) {
            return None;
        }
        Some((key.clone(), waypoint))
    };
    if let Some(service) = state.service_by_vip(dst.ip()) {
        if let Some((key, waypoint)) = through(&service.waypoint) {
            return Upstream::Waypoint {
                key,
                waypoint,
                target: dst,
                service: Some(service.clone()),
                workload: None,
            };
        }
        let target_port = service.target_port(dst.port()).unwrap_or(dst.port());
        let endpoints = &service.endpoints;
        let usable = |i: usize| {
            let w = state.workload(endpoints.get(i)).filter(|w| w.healthy)?;
            Some((w, w.address_like(dst.ip())?))
        };
        let Some((workload, ip)) = pick(endpoints.len(), usable, |(_, ip)| !ejected(*ip)) else {
            return Upstream::NoHealthyEndpoint {
                service: service.clone(),
            };
        };
        let target = SocketAddr::new(ip, target_port);
        return match workload.protocol {
            Protocol::Hbone => Upstream::Hbone {
                workload: workload.clone(),
                target,
                service: Some(service.clone()),
            },
            Protocol::Tcp => Upstream::Passthrough {
                target,
                workload: Some(workload.clone()),
                service: Some(service.clone()),
            },
        };
    }
    let workload = state.workload_by_ip(dst.ip());
    if let Some((key, waypoint)) = workload.and_then(|w| through(&w.shared.waypoint)) {
        return Upstream::Waypoint {
            key,
            waypoint,
            target: dst,
            service: None,
            workload: workload.cloned(),
        };
    }
    match workload {
        Some(w) if w.protocol == Protocol::Hbone => Upstream::Hbone {
            workload: w.clone(),
            target: dst,
            service: None,
        },
        other => Upstream::Passthrough {
            target: dst,
            workload: other.cloned(),
            service: None,
        },
    }
}

/// How many endpoints [`pick`] tries at random before it walks them all. With most of a
/// service's endpoints usable, the first try lands: a connection to a service of 1,000
/// endpoints looks up one of them, not 1,000.
const RANDOM_TRIES: usize = 2;

/// One of `endpoints` endpoints, by index, that `usable` resolves, at random, among those `preferred`
/// (not recently failed) if any is. At random, because a shared round-robin counter lets two
/// clients calling in step each see one endpoint only.
///
/// First a few tries at random: a try that lands on a usable, preferred endpoint takes it, and
/// since each try is uniform over all endpoints, what it takes is uniform over the usable,
/// preferred ones. When the tries miss, one pass over all of them by reservoir sampling (keep
/// each of the `n` seen so far with probability 1/n), without collecting them; it is uniform
/// over the same set, so the mix of the two is too.
fn pick<T>(
    endpoints: usize,
    usable: impl Fn(usize) -> Option<T>,
    preferred: impl Fn(&T) -> bool,
) -> Option<T> {
    if endpoints == 0 {
        return None;
    }
    for _ in 0..RANDOM_TRIES {
        let tried = usable(fastrand::usize(..endpoints));
        if let Some(c) = tried.filter(&preferred) {
            return Some(c);
        }
    }
    let (mut best, mut best_seen) = (None, 0u32);
    let (mut fallback, mut fallback_seen) = (None, 0u32);
    for c in (0..endpoints).filter_map(usable) {
        if preferred(&c) {
            best_seen += 1;
            if fastrand::u32(..best_seen) == 0 {
                best = Some(c);
            }
        } else if best.is_none() {
            fallback_seen += 1;
            if fastrand::u32(..fallback_seen) == 0 {
                fallback = Some(c);
            }
        }
    }
    best.or(fallback)
}

#[cfg(test)]
mod tests;
