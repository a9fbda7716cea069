use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use ambit_ztunnel::app::Ztunnel;
use ambit_ztunnel::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        // Named so a profiler, `top -H` or the config_apply bench can tell the data path's
        // threads from the control runtime's.
        .thread_name("ztunnel-data")
        .enable_all()
        .build()?
        .block_on(async {
            let ztunnel = Ztunnel::start(config).await?;
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            ztunnel.shutdown().await;
            Ok(())
        })
}
