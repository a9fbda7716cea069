//! ztunnel's end of the node agent socket (`ambit_proto::node_agent` has the protocol and the
//! client): whoever sets up pods on the node tells ztunnel which pod lives in which network
//! namespace.

use std::path::Path;
use std::sync::Arc;

use ambit_proto::drain::DrainWatch;
pub use ambit_proto::node_agent::{Command, Reply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::pods::{Pods, Removal};

/// Binds the socket (replacing a stale one from a previous run).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

pub async fn serve(listener: UnixListener, pods: Arc<Pods>, drain: DrainWatch) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "node agent accept failed");
                    continue;
                }
            },
            () = drain.signaled() => return,
        };
        let pods = pods.clone();
        tokio::spawn(async move {
            if let Err(e) = session(stream, &pods).await {
                tracing::debug!(error = %e, "node agent session ended");
            }
        });
    }
}

async fn session(stream: UnixStream, pods: &Pods) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Command>(&line) {
            Ok(Command::Add {
                uid,
                netns,
                exclude_ports,
                pod_uid,
            }) => match pods
                .add(&uid, &netns, &exclude_ports, pod_uid.as_deref())
                .await
            {
                Ok(()) => Reply::Ok { ok: true },
                Err(e) => {
                    tracing::warn!(pod = %uid, error = %e, "could not capture pod");
                    Reply::Error {
                        error: e.to_string(),
                    }
                }
            },
            Ok(Command::Remove { uid, pod_uid }) => {
                match pods.remove(&uid, pod_uid.as_deref()).await {
                    Removal::Released => Reply::Ok { ok: true },
                    Removal::NotHeld => Reply::Error {
                        error: format!("pod {uid} is not captured"),
                    },
                    Removal::HeldForAnother { held } => {
                        tracing::info!(pod = %uid, pod_uid = ?pod_uid, %held, "left a pod captured: the remove named a pod object it replaced");
                        Reply::Error {
                            error: format!(
                                "pod {uid} is captured for pod object {held}, which replaced the one named ({}): left captured",
                                pod_uid.as_deref().unwrap_or_default()
                            ),
                        }
                    }
                }
            }
            Ok(Command::Check { uid }) => Reply::Ok {
                ok: pods.holds(&uid),
            },
            Err(e) => Reply::Error {
                error: format!(
                    "not a node agent command ({e}): {}",
                    ambit_proto::node_agent::USAGE
                ),
            },
        };
        let mut out = serde_json::to_vec(&reply).expect("replies serialize");
        out.push(b'\n');
        wr.write_all(&out).await?;
    }
    Ok(())
}
