//! What ztunnel's own endpoints show (served by [`ambit_discovery::admin`]): the config dump
//! that `ambit config` reads, readiness, and Prometheus metrics.

use std::sync::Arc;
use std::time::SystemTime;

use ambit_discovery::admin::AdminPages;
use ambit_discovery::{Current, Lookups, ProxyState};
use ambit_proto::exposition::{Exposition, Kind};
use ambit_proto::identity::CertManager;
use tokio::sync::watch;

use crate::connections::ConnectionTracker;
use crate::metrics::Metrics;
use crate::pods::Pods;

// The dump's types are shared (the CLI reads them without depending on ztunnel).
pub use ambit_discovery::dump::ztunnel::{
    CertificateView, ConfigDump, EgressScopeView, LookupView, PodView, PolicyView, ServiceView,
    WorkloadView,
};

/// What the admin endpoints read.
pub struct AdminState {
    pub node: String,
    pub state: Arc<Current<ProxyState>>,
    pub certs: CertManager,
    pub connections: Arc<ConnectionTracker>,
    pub pods: Arc<Pods>,
    pub metrics: Arc<Metrics>,
    /// Config updates applied so far (0: not ready).
    pub applied: watch::Receiver<u64>,
    /// On-demand destinations, when ztunnel asks for them.
    pub lookups: Option<Arc<Lookups>>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl AdminState {
    pub async fn dump(&self) -> ConfigDump {
        let (workloads, services, policies, egress_scopes, config_version) = {
            let s = self.state.get();
            let mut workloads: Vec<WorkloadView> = s
                .workloads()
                .map(|w| WorkloadView {
                    uid: w.uid().to_string(),
                    name: w.name().to_string(),
                    namespace: w.shared.namespace.to_string(),
                    node: w.node.to_string(),
                    addresses: w.addresses().iter().map(|a| a.to_string()).collect(),
                    protocol: w.protocol.as_str().into(),
                    identity: w.shared.identity.to_string(),
                    healthy: w.healthy,
                    authorization_policies: w
                        .shared
                        .authorization_policies
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                })
                .collect();
            workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            let mut services: Vec<ServiceView> = s
                .services()
                .map(|svc| ServiceView {
                    name: svc.key.to_string(),
                    hostname: svc.hostname.to_string(),
                    vips: svc.vips.iter().map(|a| a.to_string()).collect(),
                    ports: svc
                        .ports
                        .iter()
                        .map(|p| format!("{}->{}", p.port, p.target_port))
                        .collect(),
                    endpoints: svc.endpoints.iter().map(|e| e.to_string()).collect(),
                })
                .collect();
            services.sort_by(|a, b| a.name.cmp(&b.name));
            let mut policies: Vec<PolicyView> = s
                .policies()
                .map(|p| PolicyView {
                    name: p.key.to_string(),
                    action: format!("{:?}", p.action).to_uppercase(),
                })
                .collect();
            policies.sort_by(|a, b| a.name.cmp(&b.name));
            let mut scopes: Vec<EgressScopeView> = s
                .egress_scopes()
                .map(|e| EgressScopeView {
                    namespace: e.namespace.to_string(),
                    declared: e.declared.to_string(),
                    invalid: e.invalid.as_deref().map(str::to_string),
                })
                .collect();
            scopes.sort_by(|a, b| a.namespace.cmp(&b.namespace));
            (
                workloads,
                services,
                policies,
                scopes,
                s.system_version().to_string(),
            )
        };
        let mut certificates: Vec<CertificateView> = self
            .certs
            .certificates()
            .iter()
            .map(|c| CertificateView {
                identity: c.identity().to_string(),
                serial: c.serial().to_string(),
                not_before: unix(c.not_before()),
                not_after: unix(c.not_after()),
            })
            .collect();
        certificates.sort_by(|a, b| a.identity.cmp(&b.identity));
        let synced = *self.applied.borrow() > 0;
        let pods = self.pods.captured().await;
        ConfigDump {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_version,
            synced,
            workloads,
            services,
            policies,
            egress_scopes,
            certificates,
            pods: pods
                .into_iter()
                .map(|(uid, netns)| PodView { uid, netns })
                .collect(),
            connections: self.connections.snapshot(),
            lookups: self
                .lookups
                .iter()
                .flat_map(|l| l.snapshot())
                .map(|(address, answer)| LookupView {
                    address: address.to_string(),
                    answer: format!("{answer:?}").to_lowercase(),
                })
                .collect(),
        }
    }
}

impl AdminPages for AdminState {
    async fn config_dump(&self) -> Vec<u8> {
        let dump = self.dump().await;
        serde_json::to_vec_pretty(&dump).expect("config dump serializes")
    }

    fn ready(&self) -> Result<(), String> {
        if *self.applied.borrow() > 0 {
            Ok(())
        } else {
            Err("no config received from the controller yet".into())
        }
    }

    fn metrics(&self) -> String {
        let mut out = self.metrics.render(self.pods.server_limits());
        let state = self.state.load();
        let mut page = Exposition::new(&mut out);
        page.single(
            "ambit_config_updates_total",
            Kind::Counter,
            "Config updates applied, from the controller or the local file",
            *self.applied.borrow(),
        );
        page.single(
            "ambit_config_workloads",
            Kind::Gauge,
            "Workloads in the config ztunnel serves with",
            state.workload_count() as u64,
        );
        page.single(
            "ambit_config_services",
            Kind::Gauge,
            "Services in the config ztunnel serves with",
            state.service_count() as u64,
        );
        out
    }
}
