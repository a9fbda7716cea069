//! Running the sample load tools inside a pod of a running mesh, for `ambit bench` and the
//! benchmarks: each run is a process in the client pod's namespace, so its traffic is
//! captured exactly as an application's would be.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ambit_testbed::Netns;

use super::LocalError;
use super::apps::{BlastResult, LoadResult};

/// Keep-alive HTTP load from `client` to `target` (an http:// URL).
pub fn http_load(
    ambit: &std::path::Path,
    client: &Netns,
    target: &str,
    connections: usize,
    duration: Duration,
    rate: Option<u32>,
) -> Result<LoadResult, LocalError> {
    let mut cmd = Command::new(ambit);
    cmd.args(["app", "load", "--target", target])
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &format!("{}ms", duration.as_millis())]);
    if let Some(rate) = rate {
        cmd.args(["--rate", &rate.to_string()]);
    }
    run_json(client, &mut cmd, "the HTTP load generator")
}

/// One bulk transfer from `client` to a sink at `target`.
pub fn blast(
    ambit: &std::path::Path,
    client: &Netns,
    target: SocketAddr,
    megabytes: u64,
) -> Result<BlastResult, LocalError> {
    let mut cmd = Command::new(ambit);
    cmd.args(["app", "blast", "--target", &target.to_string()])
        .args(["--megabytes", &megabytes.to_string()]);
    run_json(client, &mut cmd, "the bulk sender")
}

fn run_json<T: serde::de::DeserializeOwned>(
    netns: &Netns,
    cmd: &mut Command,
    what: &str,
) -> Result<T, LocalError> {
    let out = netns.output(cmd)?;
    if !out.status.success() {
        return Err(LocalError::Tool {
            what: what.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| LocalError::Tool {
        what: what.into(),
        reason: format!("unreadable result: {e}"),
    })
}
