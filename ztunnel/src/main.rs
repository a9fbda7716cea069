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
    ambit_discovery::memory::bound_arena_blocks();
    // Only starting, signals and shutdown run here: the data path runs on the data workers
    // and config on the control runtime, each on threads of their own.
    tokio::runtime::Builder::new_current_thread()
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
