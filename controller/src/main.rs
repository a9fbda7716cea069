//! `controller`: the Ambit control plane process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ambit_controller::admin::Admin;
use ambit_controller::ca::{Authenticator, CaService, TokenReviewer, root_configmap, root_secret};
use ambit_controller::config::{CaAuth, Config, SourceSpec};
use ambit_controller::grpc::ServingIdentity;
use ambit_controller::model::MeshModel;
use ambit_controller::push::{
    DiscoveryService, NodeLiveness, SubscriberAccess, publish_snapshots_with,
};
use ambit_controller::source::{file, kubernetes};
use ambit_controller::telemetry::http::ApiState;
use ambit_controller::telemetry::{TelemetryService, TelemetryStore};
use ambit_controller::waypoints::{self, WaypointOptions};
use ambit_proto::identity::{CertificateAuthority, SpiffeId};
use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log)
                .with_context(|| format!("--log {:?} is not a valid log filter", config.log))?,
        )
        .init();
    run(config).await
}

/// Keeps the model channel's sender alive for as long as the source runs.
enum Source {
    Fixed {
        _sender: watch::Sender<Arc<MeshModel>>,
    },
    Watched(tokio::task::JoinHandle<()>),
}

/// The one Kubernetes client of the process (source, TokenReview, CA Secret), built when first
/// needed so that a controller using none of them never looks for a kubeconfig.
#[derive(Default)]
struct Kube(OnceCell<kube::Client>);

impl Kube {
    async fn client(&self) -> anyhow::Result<kube::Client> {
        let client = self.0.get_or_try_init(kubernetes::default_client).await?;
        Ok(client.clone())
    }
}

async fn open_source(
    config: &Config,
    kube: &Kube,
    shutdown: &CancellationToken,
) -> anyhow::Result<(watch::Receiver<Arc<MeshModel>>, Source)> {
    match &config.source {
        SourceSpec::Embedded => {
            let mesh = file::parse(file::EMBEDDED_MESH, file::EMBEDDED_ORIGIN)?;
            let (tx, rx) = watch::channel(Arc::new(mesh.model));
            Ok((rx, Source::Fixed { _sender: tx }))
        }
        SourceSpec::File(path) => {
            let watching = file::watch(path.clone(), config.reload_interval, shutdown.clone())?;
            Ok((watching.models, Source::Watched(watching.task)))
        }
        SourceSpec::Kubernetes => {
            let client = kube.client().await?;
            let options = kubernetes::Options {
                mtls_mode: config.kubernetes_mtls_mode()?,
                policy_mode: config.kubernetes_policy_mode()?,
                ..kubernetes::Options::default()
            };
            let watching = kubernetes::watch(client, options, shutdown.clone()).await?;
            Ok((watching.models, Source::Watched(watching.task)))
        }
    }
}

/// The CA root: from the Secret if one is named, else from (or generated into) the files.
async fn ca_root(
    config: &Config,
    kube: &Kube,
    trust_domain: &str,
) -> anyhow::Result<CertificateAuthority> {
    match &config.ca_secret {
        Some(secret) => Ok(
            root_secret::load_or_create(kube.client().await?, secret, trust_domain)
                .await
                .context("could not set up the CA root (check --ca-secret)")?,
        ),
        None => {
            CertificateAuthority::load_or_generate(trust_domain, &config.ca_cert, &config.ca_key)
                .context("could not set up the CA root (check --ca-cert and --ca-key)")
        }
    }
}

async fn ca_authenticator(config: &Config, kube: &Kube) -> anyhow::Result<Authenticator> {
    Ok(match config.ca_auth() {
        CaAuth::BootstrapTokens => Authenticator::BootstrapTokens,
        CaAuth::TokenReview => Authenticator::TokenReview {
            reviewer: TokenReviewer::new(kube.client().await?, &config.ca_token_audience),
            ztunnel: config.ztunnel_service_account.clone(),
        },
    })
}

/// What acts on the cluster beside the source, only with `--source kubernetes`: the root
/// certificate ConfigMap ztunnel mounts, and (unless `--waypoints=false`) the waypoint
/// reconciler. Each runs until `shutdown`; they share the process's one client.
async fn start_cluster_tasks(
    config: &Config,
    kube: &Kube,
    ca: &CertificateAuthority,
    trust_domain: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<(&'static str, JoinHandle<()>)>> {
    if config.source != SourceSpec::Kubernetes {
        return Ok(Vec::new());
    }
    let client = kube.client().await?;
    let mut tasks = vec![(
        "root certificate ConfigMap publisher",
        tokio::spawn(root_configmap::publish(
            client.clone(),
            config.root_cert_namespace().into(),
            ca.root_pem().into(),
            shutdown.clone(),
        )),
    )];
    if config.waypoints {
        tasks.push((
            "waypoint reconciler",
            tokio::spawn(waypoints::run(
                client,
                waypoint_options(config, ca, trust_domain),
                shutdown.clone(),
            )),
        ));
    }
    Ok(tasks)
}

fn waypoint_options(
    config: &Config,
    ca: &CertificateAuthority,
    trust_domain: &str,
) -> WaypointOptions {
    WaypointOptions {
        image: config.waypoint_image.clone(),
        controller_address: config.waypoint_controller_address.clone(),
        trust_domain: trust_domain.into(),
        // The waypoint's token is checked by the same CA as ztunnel's.
        ca_audience: config.ca_token_audience.clone(),
        root_cert_pem: ca.root_pem().into(),
        root_cert_namespace: config.root_cert_namespace().into(),
        ..WaypointOptions::default()
    }
}

/// Resolves when one of `tasks` ends, which none should before shutdown: a source, publisher or
/// reconciler that died would leave the controller ready but serving a frozen cluster.
async fn first_to_end(tasks: &mut [(&'static str, JoinHandle<()>)]) -> (&'static str, String) {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let (ended, index, rest) =
        futures::future::select_all(tasks.iter_mut().map(|(_, handle)| handle)).await;
    drop(rest);
    let how = match ended {
        Ok(()) => "returned".to_string(),
        Err(error) => format!("failed: {error}"),
    };
    (tasks[index].0, how)
}

/// Waits for `tasks` to stop, until `deadline`; any still running then ends with the process.
async fn drain_tasks(tasks: Vec<(&'static str, JoinHandle<()>)>, deadline: Instant) {
    for (task, handle) in tasks {
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(task, %error, "task failed while stopping"),
            Err(_) => tracing::warn!(task, "still running at the drain deadline; exiting anyway"),
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    config.kubernetes_mtls_mode()?;
    config.kubernetes_policy_mode()?;
    let shutdown = CancellationToken::new();
    let kube = Kube::default();
    let (models, source) = open_source(&config, &kube, &shutdown).await?;
    let model = models.borrow().clone();
    let ca = Arc::new(ca_root(&config, &kube, model.trust_domain()).await?);
    let authenticator = Arc::new(ca_authenticator(&config, &kube).await?);
    let identity = SpiffeId::new(
        model.trust_domain(),
        &config.identity.namespace,
        &config.identity.name,
    )
    .context("--identity makes no SPIFFE ID in this trust domain")?;
    let serving = ServingIdentity::issue(ca.clone(), identity, config.cert_ttl)
        .await
        .context("could not issue the controller's own certificate")?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("could not install the metrics recorder")?;
    let grpc_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on --listen {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.metrics)
        .await
        .with_context(|| format!("could not listen on --metrics {}", config.metrics))?;
    let api_listener = TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("could not listen on --api-addr {}", config.api_addr))?;
    let ready = Arc::new(AtomicBool::new(false));
    let (liveness, _liveness_task) = NodeLiveness::start(config.node_down_after, shutdown.clone());
    let (snapshots, _snapshot_task) =
        publish_snapshots_with(models.clone(), Some(&liveness), shutdown.clone());
    let discovery = DiscoveryService::new(snapshots, shutdown.clone())
        .authenticate_with(SubscriberAccess::new(authenticator.clone(), models.clone()))
        .track_liveness(liveness);
    let admin = Admin {
        metrics,
        ready: ready.clone(),
        sync: discovery.sync_table(),
    };
    tokio::spawn(admin.serve(admin_listener, shutdown.clone()));
    let telemetry = TelemetryStore::default();
    let api = ApiState {
        models: models.clone(),
        telemetry: telemetry.clone(),
        shutdown: shutdown.clone(),
    };
    tokio::spawn(api.serve(api_listener));
    let telemetry_service = TelemetryService::new(telemetry, shutdown.clone())
        .authenticate_with(SubscriberAccess::new(authenticator.clone(), models.clone()));

    let mut grpc = tokio::spawn(ambit_controller::grpc::serve_with_telemetry(
        grpc_listener,
        serving.tls(),
        discovery,
        CaService::new(ca.clone(), models, config.cert_ttl)
            .authenticate_with(authenticator)
            .serving_as(serving.identity().clone()),
        Some(telemetry_service),
        shutdown.clone(),
    ));
    let mut background =
        start_cluster_tasks(&config, &kube, &ca, model.trust_domain(), &shutdown).await?;
    // A fixed model's sender must live as long as the process; a watched one's task is
    // supervised with the others.
    let _fixed_model = match source {
        Source::Fixed { _sender } => Some(_sender),
        Source::Watched(task) => {
            background.push(("the model source", task));
            None
        }
    };
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        source = %config.source,
        listen = %config.listen,
        identity = %serving.identity(),
        metrics = %config.metrics,
        api = %config.api_addr,
        ca_auth = ?config.ca_auth(),
        background = ?background.iter().map(|(task, _)| *task).collect::<Vec<_>>(),
        trust_domain = model.trust_domain(),
        nodes = model.nodes().count(),
        workloads = model.workloads().count(),
        services = model.services().count(),
        "controller ready"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("could not watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("could not watch SIGINT")?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = sigint.recv() => tracing::info!("SIGINT: draining"),
        ended = &mut grpc => {
            ended.context("the gRPC server task failed")?.context("the gRPC server failed")?;
            bail!("the gRPC server stopped on its own");
        }
        (task, how) = first_to_end(&mut background) => {
            shutdown.cancel();
            bail!("{task} {how} while the controller was serving; exiting so that it is restarted rather than left serving a stale mesh");
        }
    }
    ready.store(false, Ordering::Relaxed);
    shutdown.cancel();
    let deadline = Instant::now() + config.drain_timeout;
    match tokio::time::timeout_at(deadline, grpc).await {
        Ok(ended) => ended
            .context("the gRPC server task failed")?
            .context("the gRPC server failed while draining")?,
        Err(_) => tracing::warn!(
            deadline = ?config.drain_timeout,
            "connections still open at the drain deadline; exiting anyway"
        ),
    }
    drain_tasks(background, deadline).await;
    tracing::info!("controller stopped");
    Ok(())
}
