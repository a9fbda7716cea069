//! `ambit app …`: the sample workloads, run by a local mesh inside pod namespaces.

use super::{AppCommand, AppKind};
use crate::local::apps::{self, ServerKind};

pub async fn run(cmd: AppCommand) -> anyhow::Result<()> {
    match cmd {
        AppCommand::Serve {
            kind,
            ports,
            name,
            access_log,
        } => {
            let kind = match kind {
                AppKind::HttpEcho => ServerKind::HttpEcho,
                AppKind::TcpEcho => ServerKind::TcpEcho,
                AppKind::Sink => ServerKind::Sink,
            };
            apps::serve(kind, ports, name, access_log).await?;
        }
        AppCommand::Drive {
            targets,
            rate,
            duration,
        } => apps::drive(targets, rate, duration).await,
        AppCommand::Blast { target, megabytes } => {
            let result = apps::blast(target, megabytes << 20).await?;
            println!("{}", serde_json::to_string(&result)?);
        }
        AppCommand::Load {
            target,
            connections,
            duration,
            rate,
        } => {
            let result = apps::load(target, connections, duration, rate).await;
            println!("{}", serde_json::to_string(&result)?);
        }
    }
    Ok(())
}
