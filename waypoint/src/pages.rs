//! What the waypoint's own endpoints show: its config (the services it serves, their routes,
//! the endpoints and policies it knows), whether it is ready, and its metrics.

use std::sync::Arc;

use ambit_proto::identity::{CertManager, SpiffeId};
use serde::Serialize;
use tokio::sync::watch;

use crate::report::Telemetry;
use crate::state::Store;
use ambit_discovery::admin::AdminPages;

pub struct Pages {
    key: String,
    identity: SpiffeId,
    store: Arc<Store>,
    certs: CertManager,
    telemetry: Arc<Telemetry>,
    applied: watch::Receiver<u64>,
}

#[derive(Serialize)]
struct ConfigDump {
    waypoint: String,
    identity: String,
    version: String,
    config_version: String,
    /// Services whose traffic comes through this waypoint, with their routes.
    services: Vec<ServiceView>,
    /// Routes by resource name (`<namespace>/<name>`).
    routes: Vec<String>,
    workloads: usize,
    authorization_policies: Vec<String>,
    certificate: Option<CertificateView>,
}

#[derive(Serialize)]
struct ServiceView {
    service: String,
    hostname: String,
    vips: Vec<String>,
    ports: Vec<String>,
    endpoints: usize,
}

#[derive(Serialize)]
struct CertificateView {
    identity: String,
    serial: String,
    expires_in_seconds: u64,
}

impl Pages {
    pub fn new(
        key: String,
        identity: SpiffeId,
        store: Arc<Store>,
        certs: CertManager,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let applied = store.applied();
        Pages {
            key,
            identity,
            store,
            certs,
            telemetry,
            applied,
        }
    }

    fn certificate(&self) -> Option<CertificateView> {
        self.certs
            .certificates()
            .into_iter()
            .find(|c| c.identity() == &self.identity)
            .map(|c| CertificateView {
                identity: c.identity().to_string(),
                serial: c.serial().to_string(),
                expires_in_seconds: c
                    .not_after()
                    .duration_since(std::time::SystemTime::now())
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            })
    }
}

impl AdminPages for Pages {
    async fn config_dump(&self) -> Vec<u8> {
        let snapshot = self.store.current();
        let mesh = &snapshot.mesh;
        let services = mesh
            .services()
            .filter(|s| s.waypoint.as_deref() == Some(self.key.as_str()))
            .map(|s| ServiceView {
                service: s.key.to_string(),
                hostname: s.hostname.to_string(),
                vips: s.vips.iter().map(|ip| ip.to_string()).collect(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| format!("{}->{} {:?}", p.port, p.target_port, p.app_protocol))
                    .collect(),
                endpoints: s.endpoints.len(),
            })
            .collect();
        let dump = ConfigDump {
            waypoint: self.key.clone(),
            identity: self.identity.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_version: mesh.system_version().to_string(),
            services,
            routes: mesh.routes().map(|(name, _)| name.to_string()).collect(),
            workloads: mesh.workloads().count(),
            authorization_policies: mesh.policies().map(|p| p.key.to_string()).collect(),
            certificate: self.certificate(),
        };
        serde_json::to_vec_pretty(&dump).expect("config dump serializes")
    }

    fn ready(&self) -> Result<(), String> {
        if *self.applied.borrow() == 0 {
            return Err("no config received from the controller yet".into());
        }
        if self.certificate().is_none() {
            return Err(format!(
                "no certificate for {} from the CA yet",
                self.identity
            ));
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        self.telemetry.render()
    }
}
