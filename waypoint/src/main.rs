//! The `waypoint` binary: parse flags, start, run until SIGTERM/SIGINT, drain.

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use ambit_waypoint::app::Waypoint;
use ambit_waypoint::config::Config;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    ambit_discovery::memory::bound_arena_blocks();
    let config = Config::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let waypoint = Waypoint::start(config).await?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        waypoint.shutdown().await;
        Ok(())
    })
}
