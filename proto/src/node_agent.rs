//! ztunnel's node agent socket, both ends: whoever sets pods up on the node (the CNI plugin and
//! node agent in Kubernetes, `ambit up` locally) tells ztunnel which pod lives in which network
//! namespace, as Istio's CNI agent does. One JSON object per line each way:
//!   {"add":{"uid":"...","netns":"/var/run/netns/...","excludePorts":[...],"podUid":"..."}}
//!                                                        →  {"ok":true} | {"error":"..."}
//!   {"remove":{"uid":"...","podUid":"..."}}              →  {"ok":true} | {"error":"..."}
//!   {"check":{"uid":"..."}}                              →  {"ok":true} | {"ok":false}
//!
//! `add` captures the pod (again, if it was: the rules are replaced), `remove` releases it,
//! `check` answers whether ztunnel holds it (`ok` false: it does not). `uid` is the workload's
//! (`<cluster>//Pod/<namespace>/<name>`), the same for a pod and the pod of the same name that
//! replaces it; `podUid`, Kubernetes' own uid of the pod object, tells them apart: a remove
//! that names one leaves a pod captured for another alone (a late DEL of a replaced pod).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Command {
    Add {
        uid: String,
        netns: PathBuf,
        /// Ports whose connections bypass ztunnel, in and out (Istio's excludeInboundPorts
        /// and excludeOutboundPorts).
        #[serde(default, rename = "excludePorts")]
        exclude_ports: Vec<u16>,
        /// The pod object's uid, when the sender knows it.
        #[serde(default, rename = "podUid", skip_serializing_if = "Option::is_none")]
        pod_uid: Option<String>,
    },
    Remove {
        uid: String,
        /// Release only the pod of this uid; without it, whatever holds `uid`.
        #[serde(default, rename = "podUid", skip_serializing_if = "Option::is_none")]
        pod_uid: Option<String>,
    },
    Check {
        uid: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Reply {
    Ok { ok: bool },
    Error { error: String },
}

/// What a command line that does not parse is told.
pub const USAGE: &str = "send {\"add\":{\"uid\":..,\"netns\":..}}, {\"remove\":{\"uid\":..}} or {\"check\":{\"uid\":..}}, one per line";

/// Sends one command and waits for its reply, all within `timeout` (for the CNI plugin, which
/// runs outside any runtime and must never hang a pod's creation: a connect to a ztunnel whose
/// backlog is full blocks, so the exchange runs on a thread of its own and is given up at the
/// deadline; the plugin exits soon after).
pub fn send_blocking(
    socket: &Path,
    command: &Command,
    timeout: Duration,
) -> std::io::Result<Reply> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (socket_path, command) = (socket.to_path_buf(), command.clone());
    std::thread::spawn(move || {
        let _ = tx.send(exchange(&socket_path, &command, timeout));
    });
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no reply within {timeout:?}"),
        )
    };
    match rx.recv_timeout(timeout) {
        // The socket's own read timeout (the same deadline) may fire first: one cause, one kind.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Err(timed_out()),
        Ok(reply) => reply,
        Err(_) => Err(timed_out()),
    }
}

/// Sends one command and waits for its reply, on a tokio runtime (`ambit up`, the node agent's
/// tests); no deadline of its own: the caller times it out.
pub async fn send(socket: &Path, command: &Command) -> std::io::Result<Reply> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(command).expect("commands serialize");
    line.push(b'\n');
    wr.write_all(&line).await?;
    let mut lines = tokio::io::BufReader::new(rd).lines();
    let reply = lines.next_line().await?.ok_or_else(|| {
        std::io::Error::other("ztunnel closed the node agent socket without a reply")
    })?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

fn exchange(socket: &Path, command: &Command, timeout: Duration) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(command).expect("commands serialize");
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::other(
            "ztunnel closed the node agent socket without a reply",
        ));
    }
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies_read_as_the_socket_documents() {
        let cases = [
            (
                r#"{"add":{"uid":"Kubernetes//Pod/demo/a","netns":"/var/run/netns/cni-1","excludePorts":[15099],"podUid":"6f1c"}}"#,
                Command::Add {
                    uid: "Kubernetes//Pod/demo/a".into(),
                    netns: "/var/run/netns/cni-1".into(),
                    exclude_ports: vec![15099],
                    pod_uid: Some("6f1c".into()),
                },
            ),
            (
                r#"{"remove":{"uid":"u"}}"#,
                Command::Remove {
                    uid: "u".into(),
                    pod_uid: None,
                },
            ),
            (
                r#"{"remove":{"uid":"u","podUid":"6f1c"}}"#,
                Command::Remove {
                    uid: "u".into(),
                    pod_uid: Some("6f1c".into()),
                },
            ),
            (
                r#"{"check":{"uid":"u"}}"#,
                Command::Check { uid: "u".into() },
            ),
        ];
        for (text, command) in cases {
            assert_eq!(
                serde_json::from_str::<Command>(text).unwrap(),
                command,
                "{text}"
            );
        }
        assert!(serde_json::from_str::<Command>(r#"{"add":{"uid":"u"}}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Reply>(r#"{"error":"no"}"#).unwrap(),
            Reply::Error { error: "no".into() }
        );
    }

    #[test]
    fn a_peer_that_never_answers_is_given_up_at_the_deadline() {
        let dir = std::env::temp_dir().join(format!("ambit-node-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("silent.sock");
        // Accepts (the kernel does, from the backlog) and never reads or answers.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let started = std::time::Instant::now();
        let check = Command::Check { uid: "u".into() };
        let e = send_blocking(&socket, &check, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
