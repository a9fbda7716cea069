//! Which endpoints a request (or opaque connection) may go to: the healthy workloads behind a
//! backend service, each with the address of the client's family and the service's target
//! port, or the one workload a tunnel named directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_discovery::state::{ProxyState, Service, Workload};

/// Where a request is sent: a service's port (its endpoints are balanced) or one workload.
#[derive(Debug, Clone)]
pub enum Backend {
    Service { service: Arc<Service>, port: u16 },
    Workload { workload: Workload, port: u16 },
}

/// One endpoint a request may go to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Workload,
    /// Pod address and target port.
    pub target: SocketAddr,
}

impl Backend {
    /// The service as telemetry names it (its hostname), if any.
    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Backend::Service { service, .. } => Some(service),
            Backend::Workload { .. } => None,
        }
    }

    /// The healthy endpoints, with addresses of `family`'s family (the family the client
    /// used) when the workload has one, else its first address.
    pub fn endpoints(&self, state: &ProxyState, family: IpAddr) -> Vec<Endpoint> {
        match self {
            Backend::Workload { workload, port } => address(workload, family)
                .map(|ip| Endpoint {
                    workload: workload.clone(),
                    target: SocketAddr::new(ip, *port),
                })
                .into_iter()
                .collect(),
            Backend::Service { service, port } => {
                let target_port = service.target_port(*port).unwrap_or(*port);
                service
                    .endpoints
                    .iter()
                    .filter_map(|uid| state.workload(uid))
                    .filter(|w| w.healthy)
                    .filter_map(|w| {
                        Some(Endpoint {
                            target: SocketAddr::new(address(w, family)?, target_port),
                            workload: w.clone(),
                        })
                    })
                    .collect()
            }
        }
    }
}

fn address(workload: &Workload, family: IpAddr) -> Option<IpAddr> {
    workload
        .address_like(family)
        .or_else(|| workload.addresses().first().copied())
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Service { service, port } => write!(f, "service {}:{port}", service.hostname),
            Backend::Workload { workload, port } => {
                write!(
                    f,
                    "workload {}/{}:{port}",
                    workload.shared.namespace,
                    workload.name()
                )
            }
        }
    }
}
