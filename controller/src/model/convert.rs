//! The model in the proxies' wire form.

use ambit_proto::api::{security, workload as pb};

use super::*;

/// Telemetry names a workload after its app and version the way Istio does, so dashboards built
/// for Istio label Ambit's metrics the same.
const CANONICAL_NAME_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
const CANONICAL_REVISION_LABELS: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

fn first_label<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| labels.get(*k)).map(String::as_str)
}

fn waypoint_ref(key: &Option<ObjectKey>) -> Option<pb::WaypointRef> {
    key.as_ref().map(|k| pb::WaypointRef {
        namespace: k.namespace.clone(),
        name: k.name.clone(),
    })
}

fn addresses(addrs: &[IpAddr]) -> Vec<String> {
    addrs.iter().map(IpAddr::to_string).collect()
}

impl MeshModel {
    pub fn workload_proto(&self, w: &Workload) -> pb::Workload {
        let pod = &w.pod;
        let status = if pod.healthy {
            pb::WorkloadStatus::Healthy
        } else {
            pb::WorkloadStatus::Unhealthy
        };
        let protocol = if w.meshed {
            pb::Protocol::Hbone
        } else {
            pb::Protocol::Tcp
        };
        pb::Workload {
            uid: w.uid.clone(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            node: pod.node.clone(),
            addresses: addresses(&pod.addresses),
            network: String::new(),
            protocol: protocol.into(),
            waypoint: waypoint_ref(&w.waypoint),
            status: status.into(),
            trust_domain: self.trust_domain.clone(),
            canonical_name: first_label(&pod.labels, &CANONICAL_NAME_LABELS)
                .unwrap_or(&pod.name)
                .to_string(),
            canonical_revision: first_label(&pod.labels, &CANONICAL_REVISION_LABELS)
                .unwrap_or("latest")
                .to_string(),
            authorization_policies: self
                .policies_in(&pod.namespace)
                .filter(|p| Self::policy_selects(p, w))
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
            mtls_mode: w.mtls_mode.to_proto().into(),
        }
    }

    pub fn service_proto(&self, s: &ServiceEntry) -> pb::Service {
        let svc = &s.service;
        pb::Service {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            hostname: s.hostname(&self.trust_domain),
            addresses: addresses(&svc.vips),
            ports: svc
                .ports
                .iter()
                .map(|p| pb::Port {
                    service_port: p.port.into(),
                    target_port: p.target_port.into(),
                    app_protocol: p.app_protocol.as_str().into(),
                    name: p.name.clone(),
                })
                .collect(),
            endpoints: s
                .endpoints
                .iter()
                .filter_map(|key| self.workloads.get(key))
                .map(|w| pb::Endpoint {
                    workload_uid: w.uid.clone(),
                })
                .collect(),
            waypoint: waypoint_ref(&s.waypoint),
        }
    }

    pub fn waypoint_proto(&self, wp: &Waypoint) -> pb::Waypoint {
        pb::Waypoint {
            name: wp.name.clone(),
            namespace: wp.namespace.clone(),
            addresses: addresses(&wp.addresses),
            service_account: wp.service_account.clone(),
            trust_domain: self.trust_domain.clone(),
        }
    }

    pub fn policy_proto(&self, p: &AuthorizationPolicy) -> security::AuthorizationPolicy {
        security::AuthorizationPolicy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            selector: Some(security::WorkloadSelector {
                match_labels: p
                    .selector
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            action: p.action.into(),
            rules: p.rules.clone(),
            dry_run: p.dry_run,
        }
    }
}
