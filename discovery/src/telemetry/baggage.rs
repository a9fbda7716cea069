//! Who the client of a tunnel is, as its ztunnel tells the waypoint: W3C `baggage` on the
//! HBONE CONNECT, with the keys Istio's ztunnel uses for the same purpose. A waypoint's config
//! holds only the workloads it sends to, not its clients, so without this it could name a
//! client by its identity alone ("unknown" workload in its metrics).
//!
//! It is a claim by the client's ztunnel, believed only within what the tunnel's certificate
//! proves: the namespace must be the identity's.

use ambit_proto::identity::SpiffeId;

const NAMESPACE: &str = "k8s.namespace.name";
const WORKLOAD: &str = "k8s.workload.name";
const APP: &str = "service.name";
const VERSION: &str = "service.version";

/// The source workload a tunnel carries traffic for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceWorkload {
    pub namespace: Box<str>,
    pub workload: Box<str>,
    /// Canonical service and revision.
    pub app: Box<str>,
    pub version: Box<str>,
}

impl SourceWorkload {
    /// The `baggage` header value.
    pub fn encode(&self) -> String {
        format!(
            "{NAMESPACE}={},{WORKLOAD}={},{APP}={},{VERSION}={}",
            self.namespace, self.workload, self.app, self.version
        )
    }

    /// The workload `baggage` names, if it names one in `identity`'s namespace (the only one
    /// the tunnel's certificate vouches for).
    pub fn decode(baggage: &str, identity: &SpiffeId) -> Option<SourceWorkload> {
        let (mut namespace, mut workload, mut app, mut version) = (None, None, None, None);
        for member in baggage.split(',') {
            // Properties (";...") are not ours to read.
            let member = member.split(';').next().unwrap_or_default();
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                continue;
            }
            match key.trim() {
                NAMESPACE => namespace = Some(value),
                WORKLOAD => workload = Some(value),
                APP => app = Some(value),
                VERSION => version = Some(value),
                _ => {}
            }
        }
        let namespace = namespace.filter(|ns| *ns == identity.namespace())?;
        let workload = workload?;
        Some(SourceWorkload {
            namespace: namespace.into(),
            workload: workload.into(),
            app: app.unwrap_or(workload).into(),
            version: version.unwrap_or("latest").into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_read_back_only_within_the_proven_namespace() {
        let id = SpiffeId::new("cluster.local", "demo", "client").unwrap();
        let w = SourceWorkload {
            namespace: "demo".into(),
            workload: "client".into(),
            app: "client".into(),
            version: "v1".into(),
        };
        assert_eq!(SourceWorkload::decode(&w.encode(), &id), Some(w.clone()));
        let other = SpiffeId::new("cluster.local", "legacy", "client").unwrap();
        assert_eq!(SourceWorkload::decode(&w.encode(), &other), None);
        // Other members and properties are let be; app and version have defaults.
        let got = SourceWorkload::decode(
            "foo=bar, k8s.namespace.name=demo;p=1 , k8s.workload.name=client",
            &id,
        )
        .unwrap();
        assert_eq!((&*got.app, &*got.version), ("client", "latest"));
        assert_eq!(SourceWorkload::decode("k8s.namespace.name=demo", &id), None);
    }
}
