//! What the waypoint's own endpoints show: its config (the services it serves, their routes and
//! traffic policies, the endpoints and policies it knows), whether it is ready, and its metrics
//! (requests, and what its HBONE and HTTP servers refused).

use std::sync::Arc;

use ambit_proto::exposition::{self, Exposition, Kind};
use ambit_proto::hbone::ConnectionLimits;
use ambit_proto::identity::{CertManager, SpiffeId};
use tokio::sync::watch;

use crate::http_limits::Refusal;
use crate::report::Telemetry;
use crate::serve::HttpServer;
use crate::state::Store;
use crate::traffic::Settings;
use ambit_discovery::admin::AdminPages;
use ambit_discovery::dump::waypoint::{
    CertificateView, ConfigDump, OutlierView, ServiceView, TrafficView,
};
use ambit_discovery::state::Service;

pub struct Pages {
    key: String,
    identity: SpiffeId,
    store: Arc<Store>,
    certs: CertManager,
    telemetry: Arc<Telemetry>,
    /// The HBONE server's limits and the HTTP server's refusals, read when metrics are.
    hbone_limits: Arc<ConnectionLimits>,
    http: Arc<HttpServer>,
    applied: watch::Receiver<u64>,
}

impl From<&Settings> for TrafficView {
    fn from(s: &Settings) -> Self {
        TrafficView {
            policy: s.policy.as_deref().map(str::to_string),
            max_connections: s.limits.max_connections,
            max_pending_requests: s.limits.max_pending,
            max_requests: s.limits.max_requests,
            max_retries: s.limits.max_retries,
            http2_multiplex: s.pool.multiplex,
            max_requests_per_connection: s.pool.max_requests_per_connection.map(|n| n.get()),
            idle_timeout_ms: s.pool.idle_timeout.map(|d| d.as_millis()),
            outlier: s.outlier.as_ref().map(|o| OutlierView {
                consecutive_5xx: o.consecutive_5xx,
                consecutive_gateway_errors: o.consecutive_gateway,
                consecutive_connect_failures: o.consecutive_connect,
                base_ejection_time_ms: o.base_ejection_time.as_millis(),
                max_ejection_percent: o.max_ejection_percent,
            }),
        }
    }
}

impl Pages {
    pub fn new(
        key: String,
        identity: SpiffeId,
        store: Arc<Store>,
        certs: CertManager,
        telemetry: Arc<Telemetry>,
        hbone_limits: Arc<ConnectionLimits>,
        http: Arc<HttpServer>,
    ) -> Self {
        let applied = store.applied();
        Pages {
            key,
            identity,
            store,
            certs,
            telemetry,
            hbone_limits,
            http,
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
        let traffic = |s: &Service| snapshot.traffic.service(&s.hostname);
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
                ejected_endpoints: traffic(s).map_or(0, |t| t.ejected()),
                traffic: traffic(s)
                    .map_or_else(|| (&Settings::default()).into(), |t| t.settings().into()),
            })
            .collect();
        let dump = ConfigDump {
            waypoint: self.key.clone(),
            identity: self.identity.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_version: mesh.system_version().to_string(),
            services,
            routes: mesh.routes().map(|(name, _)| name.to_string()).collect(),
            traffic_policies: mesh
                .traffic_policies()
                .map(|(name, _)| name.to_string())
                .collect(),
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
        let mut out = self.telemetry.render();
        exposition::hbone_limits(&mut out, &self.hbone_limits);
        let refusals = self.http.refusals();
        Exposition::new(&mut out).labelled(
            "ambit_http_refusals_total",
            Kind::Counter,
            "Client HTTP connections closed because they broke a limit (HTTP/1.1 smuggling: requests refused with 400), by limit",
            "limit",
            Refusal::ALL.map(|r| (r.name(), refusals.count(r))),
        );
        out
    }
}
