//! Waypoints as the proxies hold them: where a service's (or workload's) traffic must go
//! instead of straight to its pods, and the identity the waypoint must prove.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::workload as api;
use ambit_proto::identity::SpiffeId;

use super::StateError;
use super::workload::{identity, parse_ips};

/// An L7 proxy that services and workloads send their traffic through.
#[derive(Debug)]
pub struct Waypoint {
    /// `<namespace>/<name>`, as services and workloads name it; also its key in the state.
    pub key: Arc<str>,
    /// Where it accepts HBONE (port 15008); empty while none of its pods is ready.
    pub addresses: Box<[IpAddr]>,
    pub identity: SpiffeId,
}

impl Waypoint {
    /// Checks a waypoint from the wire: its addresses and identity must be valid.
    pub fn from_api(w: &api::Waypoint) -> Result<Self, StateError> {
        let key = format!("{}/{}", w.namespace, w.name);
        let invalid = |reason: String| StateError::InvalidWaypoint {
            key: key.clone(),
            reason,
        };
        let addresses = parse_ips(&w.addresses, "address").map_err(invalid)?;
        let identity =
            identity(&w.trust_domain, &w.namespace, &w.service_account).map_err(invalid)?;
        Ok(Waypoint {
            key: key.as_str().into(),
            addresses,
            identity,
        })
    }

    /// Its address in the same family as `like` (a v6 client's traffic goes over v6).
    pub fn address_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == like.is_ipv4())
    }
}

/// The key of the waypoint a reference names, if it names one.
pub(super) fn waypoint_key(r: Option<&api::WaypointRef>) -> Option<Arc<str>> {
    r.filter(|r| !r.name.is_empty())
        .map(|r| format!("{}/{}", r.namespace, r.name).into())
}
