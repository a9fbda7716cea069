//! Starting and stopping a whole waypoint: its certificate from the CA, its config from the
//! discovery stream, the HBONE listener, and its own ports.

use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::client::subscriber;
use ambit_discovery::{CaClient, Client, ControllerLink, Trust};
use ambit_proto::api::discovery::ProxyKind;
use ambit_proto::drain::{self, DrainTrigger};
use ambit_proto::hbone::{HboneClient, HboneServer, TcpDialer};
use ambit_proto::identity::CertManager;
use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::forward::Forwarder;
use crate::ingress::Ingress;
use crate::pages::Pages;
use crate::report::Telemetry;
use crate::serve::HttpServer;
use crate::state::Store;
use crate::tcp::TcpForwarder;
use crate::upstream::Upstream;
use ambit_discovery::admin::{self, AdminPages, AdminPort};
use ambit_discovery::telemetry;

pub struct Waypoint {
    trigger: DrainTrigger,
    drain_timeout: Duration,
}

impl Waypoint {
    /// Binds every listener and starts every task; errors name what could not be set up.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let identity = config.identity().context(
            "the waypoint's identity is invalid (--trust-domain, --namespace, --service-account)",
        )?;
        let Trust {
            bundle, controller, ..
        } = Trust::load(
            &config.root_cert,
            &config.trust_domain,
            config.controller_identity.as_ref(),
        )?;
        let link = ControllerLink::new(
            &config.controller,
            controller,
            &bundle,
            config.node.as_deref(),
            Some(config.token_file.clone()),
        )
        .context("setting up the link to the controller (--controller)")?;
        let certs = CertManager::new(Arc::new(CaClient::new(link.clone())), bundle.clone());
        let store = Arc::new(Store::default());
        // What the controller's telemetry stream carries (started below, beside discovery).
        let (reporter, report_stream) = telemetry::channel(telemetry::Settings::default());
        let telemetry = Arc::new(Telemetry::default().with_reporter(reporter));
        tokio::spawn(upkeep(telemetry.clone()));
        let hbone =
            HboneClient::with_settings(certs.clone(), Arc::new(TcpDialer), config.hbone_client());
        let upstream = Upstream::new(hbone.clone(), identity.clone(), config.upstream());
        let forwarder = Arc::new(
            Forwarder::new(
                store.clone(),
                upstream,
                telemetry.clone(),
                config.request_timeout,
            )
            .with_escaped_slashes(config.path_escaped_slashes),
        );
        let tcp = Arc::new(TcpForwarder::new(
            hbone,
            identity.clone(),
            forwarder.clone(),
            config.connect_timeout,
            config.upstream().hbone_port,
        ));
        let (trigger, watch) = drain::channel();
        let server_settings = config.hbone_server();
        let http = Arc::new(HttpServer::new(config.http_limits.clone()));

        let pages = Arc::new(Pages::new(
            config.key(),
            identity.clone(),
            store.clone(),
            certs.clone(),
            telemetry,
            server_settings.limits.clone(),
            http.clone(),
        ));
        for (port, addr) in [
            (AdminPort::Admin, config.admin_addr),
            (AdminPort::Metrics, config.metrics_addr),
            (AdminPort::Readiness, config.readiness_addr),
        ] {
            let listener = admin::bind(port, addr).await?;
            tokio::spawn(admin::serve(listener, port, pages.clone(), watch.clone()));
        }

        let who = subscriber(ProxyKind::Waypoint, &config.name, &config.namespace);
        let metrics_pages = pages.clone();
        tokio::spawn(report_stream.run(
            link.clone(),
            who.clone(),
            Arc::new(move || AdminPages::metrics(&*metrics_pages)),
            watch.clone(),
        ));
        let discovery = Client::new(link, who, store.clone());
        tokio::spawn(discovery.run(watch.clone()));
        tokio::spawn(prune(store.applied(), forwarder.clone()));

        // The certificate comes first: without it no client's handshake can finish. A CA that
        // is not up yet is retried (readiness says so meanwhile).
        let listener = TcpListener::bind(config.hbone_addr)
            .await
            .with_context(|| {
                format!(
                    "listening for HBONE on {} (--hbone-addr)",
                    config.hbone_addr
                )
            })?;
        let ingress = Arc::new(Ingress::new(config.key(), forwarder, tcp, http));
        let serve_watch = watch.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let cert = loop {
                match certs.watch(&identity).await {
                    Ok(cert) => break cert,
                    Err(e) => {
                        tracing::warn!(identity = %identity, error = %e, "no certificate yet; retrying in {backoff:?}");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = serve_watch.signaled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            match HboneServer::new(cert, &bundle, server_settings) {
                Ok(server) => server.serve(listener, ingress, serve_watch).await,
                Err(e) => tracing::error!(error = %e, "cannot serve HBONE with this certificate"),
            }
        });
        tracing::info!(waypoint = %config.key(), identity = %config.identity()?, controller = %config.controller, hbone = %config.hbone_addr, "waypoint started");
        Ok(Waypoint {
            trigger,
            drain_timeout: config.drain_timeout,
        })
    }

    /// Stops accepting, lets open tunnels finish up to the drain timeout, then returns.
    pub async fn shutdown(self) {
        tracing::info!(
            "draining: no new tunnels; open ones get {:?}",
            self.drain_timeout
        );
        let outcome = self.trigger.drain(self.drain_timeout).await;
        tracing::info!(?outcome, "waypoint stopped");
    }
}

/// After each config update, drops per-endpoint state of endpoints that are gone.
async fn prune(mut applied: tokio::sync::watch::Receiver<u64>, forwarder: Arc<Forwarder>) {
    while applied.changed().await.is_ok() {
        forwarder.prune();
    }
}

/// Histogram samples are kept raw until folded in: fold them every few seconds.
async fn upkeep(telemetry: Arc<Telemetry>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        telemetry.upkeep();
    }
}
