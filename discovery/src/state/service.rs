//! Services as the proxies hold them: VIPs and ports checked once, each port's application
//! protocol known (a waypoint speaks HTTP on a port declared `http` without sniffing).

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::workload as api;

use super::StateError;
use super::waypoint::waypoint_key;
use super::workload::parse_ips;

/// What a service port speaks, as declared (Kubernetes `appProtocol`, or the mesh file's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// Not declared: a waypoint detects it from the first bytes.
    #[default]
    Unspecified,
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl AppProtocol {
    /// The wire's spelling: `""`, `tcp`, `http`, `http2`, `grpc` (any case); `None` for any
    /// other text.
    pub fn parse(text: &str) -> Option<Self> {
        let known = [
            ("", AppProtocol::Unspecified),
            ("tcp", AppProtocol::Tcp),
            ("http", AppProtocol::Http),
            ("http2", AppProtocol::Http2),
            ("grpc", AppProtocol::Grpc),
        ];
        known
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, p)| p)
    }

    /// The wire's spelling (empty when unspecified).
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Unspecified => "",
            AppProtocol::Tcp => "tcp",
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients address on the VIP.
    pub port: u16,
    /// The port on the endpoints (the same as `port` when not given).
    pub target_port: u16,
    pub app_protocol: AppProtocol,
    /// The port's name (Kubernetes `ports[].name`); may be empty.
    pub name: Box<str>,
}

/// A service in front of workloads, checked.
#[derive(Debug)]
pub struct Service {
    /// `<namespace>/<name>`; also its key in the state.
    pub key: Arc<str>,
    pub name: Box<str>,
    pub namespace: Box<str>,
    /// `<name>.<namespace>.svc.<trust domain>`, as routes name their backends.
    /// Shared with the index by host name.
    pub hostname: Arc<str>,
    pub vips: Box<[IpAddr]>,
    pub ports: Box<[ServicePort]>,
    /// The uids of its endpoint workloads.
    pub endpoints: Endpoints,
    /// `<namespace>/<name>` of the waypoint this service's traffic goes through.
    pub waypoint: Option<Arc<str>>,
}

impl Service {
    /// Checks a service from the wire: VIPs, ports and their application protocols.
    pub fn from_api(s: &api::Service) -> Result<Self, StateError> {
        let key = format!("{}/{}", s.namespace, s.name);
        let invalid = |reason: String| StateError::InvalidService {
            key: key.clone(),
            reason,
        };
        let vips = parse_ips(&s.addresses, "VIP").map_err(invalid)?;
        let endpoints =
            Endpoints::of(s.endpoints.iter().map(|e| e.workload_uid.as_str())).map_err(invalid)?;
        let ports = s
            .ports
            .iter()
            .map(|p| port(p).map_err(invalid))
            .collect::<Result<Box<[_]>, _>>()?;
        Ok(Service {
            name: s.name.as_str().into(),
            namespace: s.namespace.as_str().into(),
            hostname: s.hostname.as_str().into(),
            vips,
            ports,
            endpoints,
            waypoint: waypoint_key(s.waypoint.as_ref()),
            key: key.as_str().into(),
        })
    }

    /// The port on the endpoints for `port` on the VIP.
    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.port(port).map(|p| p.target_port)
    }

    /// The service port clients address as `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// A service's endpoints, by uid, held as one text and where each uid ends in it: a uid in an
/// allocation of its own was ~80 B per endpoint with its pointer, for every endpoint of every
/// service a proxy holds.
#[derive(Debug, Default)]
pub struct Endpoints {
    text: Box<str>,
    ends: Box<[u32]>,
}

impl Endpoints {
    /// Refuses more text, or more endpoints, than a u32 counts (more than a discovery
    /// message carries).
    fn of<'a>(uids: impl Iterator<Item = &'a str>) -> Result<Self, String> {
        let mut text = String::new();
        let mut ends = Vec::new();
        for uid in uids {
            text.push_str(uid);
            let end = u32::try_from(text.len())
                .map_err(|_| format!("its endpoints' uids add up to {} B", text.len()))?;
            if u32::try_from(ends.len()).is_err() {
                return Err(format!("it lists more than {} endpoints", u32::MAX));
            }
            ends.push(end);
        }
        Ok(Endpoints {
            text: text.into(),
            ends: ends.into(),
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The uid of endpoint `i`; panics past the end, as a slice's index does.
    pub fn get(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        &self.text[start..self.ends[i] as usize]
    }

    /// Every endpoint's uid, in the order the service lists them.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + Clone + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

fn port(p: &api::Port) -> Result<ServicePort, String> {
    let port = u16::try_from(p.service_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {} is out of range", p.service_port))?;
    let target = if p.target_port == 0 {
        p.service_port
    } else {
        p.target_port
    };
    let target_port =
        u16::try_from(target).map_err(|_| format!("target port {target} is out of range"))?;
    let app_protocol = AppProtocol::parse(&p.app_protocol).ok_or_else(|| {
        format!(
            "port {port} has app protocol {:?}, which is none of tcp, http, http2, grpc",
            p.app_protocol
        )
    })?;
    Ok(ServicePort {
        port,
        target_port,
        app_protocol,
        name: p.name.as_str().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_back_as_listed() {
        let uids = ["Kubernetes//Pod/demo/a", "", "Kubernetes//Pod/démo/b", "x"];
        let held = Endpoints::of(uids.into_iter()).unwrap();
        assert_eq!(held.len(), 4);
        assert!(held.iter().eq(uids));
        assert_eq!(held.get(2), "Kubernetes//Pod/démo/b");
        let none = Endpoints::of(std::iter::empty()).unwrap();
        assert!(none.is_empty() && none.iter().next().is_none());
    }
}
