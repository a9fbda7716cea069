//! What a tunnel is for: the `:authority` a ztunnel sent (the address the client dialled, a
//! service VIP or a workload's IP, with its port) resolved against the config, and the check
//! that this waypoint serves it. Kept apart from I/O so the decisions have table tests.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_discovery::state::{AppProtocol, ProxyState, Service, ServicePort, Workload};
use http::StatusCode;

/// The destination of one tunnel.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A service VIP and one of its ports: requests are routed by the service's routes.
    Service {
        service: Arc<Service>,
        port: ServicePort,
    },
    /// A workload addressed directly (its own `ambit.io/use-waypoint`).
    Workload { workload: Workload, port: u16 },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error(
        "{authority} is no service or workload this waypoint knows (check that its config reached the waypoint: /config_dump on its admin port)"
    )]
    Unknown { authority: SocketAddr },
    #[error("service {service} has no port {port}")]
    NoSuchPort { service: String, port: u16 },
    #[error(
        "{what} does not use waypoint {waypoint} (it uses {uses}): ztunnel sent it to the wrong waypoint"
    )]
    NotOurs {
        what: String,
        waypoint: String,
        uses: String,
    },
}

impl DestinationError {
    /// The status the tunnel is refused with.
    pub fn status(&self) -> StatusCode {
        match self {
            DestinationError::Unknown { .. } | DestinationError::NoSuchPort { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DestinationError::NotOurs { .. } => StatusCode::FORBIDDEN,
        }
    }
}

impl Destination {
    /// Resolves `authority` for the waypoint `waypoint` ("<namespace>/<name>").
    pub fn resolve(
        state: &ProxyState,
        authority: SocketAddr,
        waypoint: &str,
    ) -> Result<Destination, DestinationError> {
        let not_ours = |what: String, uses: &Option<Arc<str>>| DestinationError::NotOurs {
            what,
            waypoint: waypoint.to_string(),
            uses: uses.as_deref().unwrap_or("none").to_string(),
        };
        if let Some(service) = state.service_by_vip(authority.ip()) {
            if service.waypoint.as_deref() != Some(waypoint) {
                return Err(not_ours(
                    format!("service {}", service.key),
                    &service.waypoint,
                ));
            }
            let port = service
                .ports
                .iter()
                .find(|p| p.port == authority.port())
                .cloned()
                .ok_or_else(|| DestinationError::NoSuchPort {
                    service: service.key.to_string(),
                    port: authority.port(),
                })?;
            return Ok(Destination::Service {
                service: service.clone(),
                port,
            });
        }
        if let Some(workload) = state.workload_by_ip(authority.ip()) {
            if workload.shared.waypoint.as_deref() != Some(waypoint) {
                return Err(not_ours(
                    format!("workload {}/{}", workload.shared.namespace, workload.name()),
                    &workload.shared.waypoint,
                ));
            }
            return Ok(Destination::Workload {
                workload: workload.clone(),
                port: authority.port(),
            });
        }
        Err(DestinationError::Unknown { authority })
    }

    /// The protocol the port declares (`appProtocol`), if any.
    pub fn app_protocol(&self) -> AppProtocol {
        match self {
            Destination::Service { port, .. } => port.app_protocol,
            Destination::Workload { .. } => AppProtocol::Unspecified,
        }
    }

    /// How telemetry names it: the service's hostname, or the workload's name.
    pub fn describe(&self) -> String {
        match self {
            Destination::Service { service, port } => format!("{}:{}", service.hostname, port.port),
            Destination::Workload { workload, port } => {
                format!("{}/{}:{port}", workload.shared.namespace, workload.name())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ambit_discovery::testing::{response, service, using_waypoint, workload};
    use ambit_proto::api::workload::Protocol;

    use super::*;

    fn state() -> ProxyState {
        let mut state = ProxyState::default();
        state
            .apply(&response(
                true,
                vec![
                    workload("reviews-v1", &["10.244.1.4"], Protocol::Hbone),
                    using_waypoint(
                        workload("ratings", &["10.244.1.5"], Protocol::Hbone),
                        "waypoint",
                    ),
                    workload("details", &["10.244.1.6"], Protocol::Hbone),
                    using_waypoint(
                        service("reviews", &["10.96.0.10"], &["reviews-v1"]),
                        "waypoint",
                    ),
                    using_waypoint(service("other", &["10.96.0.11"], &[]), "other-waypoint"),
                    service("plain", &["10.96.0.12"], &[]),
                ],
            ))
            .unwrap();
        state
    }

    #[test]
    fn authorities_resolve_to_what_this_waypoint_serves_and_nothing_else() {
        let state = state();
        let resolve = |a: &str| Destination::resolve(&state, a.parse().unwrap(), "demo/waypoint");
        match resolve("10.96.0.10:9080").unwrap() {
            Destination::Service { service, port } => {
                assert_eq!(&*service.key, "demo/reviews");
                assert_eq!(port.target_port, 8080);
            }
            other => panic!("expected the service, got {other:?}"),
        }
        match resolve("10.244.1.5:8080").unwrap() {
            Destination::Workload { workload, port } => {
                assert_eq!(workload.name(), "ratings");
                assert_eq!(port, 8080);
            }
            other => panic!("expected the workload, got {other:?}"),
        }
        let cases = [
            ("10.96.0.10:80", StatusCode::SERVICE_UNAVAILABLE),
            ("10.96.0.11:9080", StatusCode::FORBIDDEN),
            ("10.96.0.12:9080", StatusCode::FORBIDDEN),
            ("10.244.1.6:8080", StatusCode::FORBIDDEN),
            ("10.1.2.3:80", StatusCode::SERVICE_UNAVAILABLE),
        ];
        for (authority, status) in cases {
            let err = resolve(authority).unwrap_err();
            assert_eq!(err.status(), status, "{authority}: {err}");
        }
    }
}
