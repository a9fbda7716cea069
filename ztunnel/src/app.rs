//! Starting and stopping a whole ztunnel.

use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::admin::{self, AdminPages, AdminPort};
use ambit_discovery::telemetry::{self, Reporter};
use ambit_discovery::{CaClient, ControllerLink, Current, Trust};
use ambit_proto::drain::{self, DrainTrigger};
use ambit_proto::hbone::ConnectionLimits;
use ambit_proto::identity::{CertManager, CertificateAuthority, CertificateProvider, LocalCa};
use anyhow::Context;
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::config::Config;
use crate::connections::ConnectionTracker;
use crate::control::ControlRuntime;
use crate::metrics::Metrics;
use crate::pods::{PodSettings, Pods};
use crate::proxy::ProxyContext;
use crate::workers::{self, WorkerThreads};
use crate::xds::{self, Applier};
use crate::{local_config, node_agent};

/// How long past the drain timeout shutdown waits for pods' forced closes.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

pub struct Ztunnel {
    pods: Arc<Pods>,
    /// Stopped once the pods are drained.
    workers: WorkerThreads,
    trigger: DrainTrigger,
    drain_timeout: Duration,
    socket: std::path::PathBuf,
    /// Last to go: the pods' teardown above may still be talking to it.
    control: ControlRuntime,
}

impl Ztunnel {
    /// Binds every listener and starts every task; errors name what could not be set up.
    /// Pods' listeners and connections run on the data workers this starts
    /// (`--worker-threads`), the rest on the control runtime it starts.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let control = ControlRuntime::start().context("starting the control runtime")?;
        let (data, workers) =
            workers::start(config.worker_threads).context("starting the data workers")?;
        let Trust {
            root_pem,
            bundle,
            controller,
        } = Trust::load(
            &config.root_cert,
            &config.trust_domain,
            config.controller_identity.as_ref(),
        )?;
        // The channel's connection task runs where it is created: on the control runtime.
        let link = {
            let _control = control.handle().enter();
            ControllerLink::new(
                &config.controller,
                controller,
                &bundle,
                Some(&config.node),
                config.token_file.clone(),
            )
        }
        .context("setting up the link to the controller (--controller)")?;
        let provider: Arc<dyn CertificateProvider> = match &config.ca_key {
            Some(key_path) => {
                let key = std::fs::read_to_string(key_path).with_context(|| {
                    format!("reading the CA root key {} (--ca-key)", key_path.display())
                })?;
                let ca = CertificateAuthority::from_pem(&config.trust_domain, &root_pem, &key)
                    .with_context(|| format!("loading the CA root from {}", key_path.display()))?;
                Arc::new(LocalCa {
                    ca: Arc::new(ca),
                    ttl: Duration::from_secs(24 * 3600),
                })
            }
            None if config.token_file.is_some() => Arc::new(CaClient::new(link.clone())),
            None => anyhow::bail!(
                "no way to get certificates: give --token-file (the controller's CA) or --ca-key (sign locally)"
            ),
        };
        let certs = CertManager::new(provider, bundle);
        let state = Arc::new(Current::default());
        let metrics = Arc::new(Metrics::new());
        let connections = Arc::new(ConnectionTracker::default());
        // Reported to the controller only when there is one: a standalone ztunnel (config
        // file) has nobody to tell, and its reporter wants nothing.
        let (reporter, report_stream) = match &config.config_file {
            Some(_) => (Reporter::detached(), None),
            None => {
                let (reporter, stream) = telemetry::channel(telemetry::Settings::default());
                (reporter, Some(stream))
            }
        };
        let lookups = config.lookups();
        let ctx = Arc::new(ProxyContext::new(
            state.clone(),
            certs.clone(),
            metrics.clone(),
            connections.clone(),
            reporter,
            lookups.clone(),
        ));
        // One set of bounds for every pod's HBONE server: a node-wide budget of connections.
        let hbone_limits = Arc::new(ConnectionLimits::new(config.hbone_limits()));
        let (applied_tx, applied_rx) = watch::channel(0);
        let pods = Arc::new(Pods::new(
            ctx,
            PodSettings {
                server: config.hbone_server(hbone_limits),
                client: config.hbone_client(),
                drain_timeout: config.drain_timeout,
            },
            data,
            applied_rx.clone(),
        ));
        let (trigger, watch) = drain::channel();
        let (quiet, stop) = (connections.clone(), watch.clone());
        control.handle().spawn(async move {
            ambit_discovery::memory::trim_when_quiet(|| quiet.activity(), stop.signaled()).await
        });

        let admin_state = Arc::new(AdminState {
            node: config.node.clone(),
            state: state.clone(),
            certs,
            connections,
            pods: pods.clone(),
            metrics,
            applied: applied_rx,
            lookups: lookups.clone(),
        });
        for (port, addr) in [
            (AdminPort::Admin, config.admin_addr),
            (AdminPort::Metrics, config.metrics_addr),
            (AdminPort::Readiness, config.readiness_addr),
        ] {
            let listener = control
                .handle()
                .spawn(admin::bind(port, addr))
                .await
                .context("binding an admin port")??;
            control.handle().spawn(admin::serve(
                listener,
                port,
                admin_state.clone(),
                watch.clone(),
            ));
        }
        let socket = config.node_agent_socket();
        let agent = {
            let _control = control.handle().enter();
            node_agent::bind(&socket)
        }
        .with_context(|| format!("binding the node agent socket {}", socket.display()))?;
        control
            .handle()
            .spawn(node_agent::serve(agent, pods.clone(), watch.clone()));
        let applier = Arc::new(Applier {
            state,
            metrics: admin_state.metrics.clone(),
            applied: applied_tx,
        });
        match &config.config_file {
            Some(path) => {
                control
                    .handle()
                    .spawn(local_config::watch(path.clone(), applier, watch));
            }
            None => {
                if let Some(stream) = report_stream {
                    let pages = admin_state.clone();
                    let metrics = Arc::new(move || AdminPages::metrics(&*pages));
                    control.handle().spawn(stream.run(
                        link.clone(),
                        xds::subscriber(&config.node),
                        metrics,
                        watch.clone(),
                    ));
                }
                control
                    .handle()
                    .spawn(xds::client(link, &config.node, applier, lookups).run(watch));
            }
        }
        tracing::info!(node = %config.node, controller = %config.controller, socket = %socket.display(), "ztunnel started");
        Ok(Ztunnel {
            pods,
            workers,
            trigger,
            drain_timeout: config.drain_timeout,
            socket,
            control,
        })
    }

    /// Stops accepting, removes every pod's rules and listeners, lets open connections
    /// finish up to the drain timeout, then returns.
    pub async fn shutdown(self) {
        tracing::info!(
            "draining: no new connections; open ones get {:?}",
            self.drain_timeout
        );
        let pods = self.pods.clone();
        // Each pod closes what is still open at the drain timeout; the margin lets those
        // closes land before the process exits.
        let _ = tokio::time::timeout(self.drain_timeout + SHUTDOWN_MARGIN, pods.remove_all()).await;
        let outcome = self.trigger.drain(Duration::from_secs(1)).await;
        let _ = std::fs::remove_file(&self.socket);
        // Whatever outlived the drain is dropped with its worker.
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
        drop(self.control);
        tracing::info!(?outcome, "ztunnel stopped");
    }
}
