//! The node agent: installs the plugin, then enrols and releases the node's running pods by
//! label until SIGTERM, when it takes the plugin out of the chain again.

use std::time::Duration;

use ambit_cni::agent::{Config, run, setup};
use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(agent(config))
}

async fn agent(config: Config) -> anyhow::Result<()> {
    let client = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            let kube_config = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?;
            kube::Client::try_from(kube_config)?
        }
        None => kube::Client::try_default()
            .await
            .context("no --kubeconfig and not in a pod with a service account")?,
    };
    let setup = config.setup();
    if let Some(setup) = &setup {
        let kubeconfig = setup::plugin_kubeconfig(config.plugin_kubeconfig.as_deref())?;
        let chained = setup.install(&kubeconfig).context(
            "installing the CNI plugin (are the host's CNI directories mounted where --cni-bin-dir and --cni-conf-dir say?)",
        )?;
        tracing::info!(config = %chained.display(), "ambit-cni chained into the node's CNI configuration");
        tokio::spawn(refresh_kubeconfig(
            setup.clone(),
            config.plugin_kubeconfig.clone(),
            config.resync,
        ));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    run::run(client, config.settings(), shutdown).await;
    if let Some(setup) = &setup {
        // Left chained without its agent, the plugin would fail every meshed pod's creation
        // once its token expired.
        match setup.uninstall() {
            Ok(()) => tracing::info!("ambit-cni taken out of the node's CNI configuration"),
            Err(e) => {
                tracing::error!(error = %e, "could not take ambit-cni out of the node's CNI configuration")
            }
        }
    }
    Ok(())
}

/// The kubelet rotates the service account token: the plugin's copy follows.
async fn refresh_kubeconfig(
    setup: setup::Setup,
    given: Option<std::path::PathBuf>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let written = setup::plugin_kubeconfig(given.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|k| setup.write_kubeconfig(&k).map_err(|e| e.to_string()));
        match written {
            Ok(true) => tracing::info!("the plugin's kubeconfig was refreshed (token rotated)"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not refresh the plugin's kubeconfig"),
        }
    }
}
