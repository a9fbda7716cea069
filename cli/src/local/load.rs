//! Running the sample load tools inside a pod of a running mesh, for `ambit bench` and the
//! benchmarks: each run is a process in the client pod's namespace, so its traffic is
//! captured exactly as an application's would be.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ambit_testbed::{Netns, NetnsChild};

use super::LocalError;
use super::apps::{BlastResult, DriveReport, LoadResult};

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

/// `ambit app drive` running in a pod: a new connection per request to each target, `rate` a
/// second each, until dropped.
pub struct Driver {
    _process: NetnsChild,
    /// Each target's report of every second, with when it arrived.
    pub reports: mpsc::Receiver<(Instant, DriveReport)>,
}

/// Starts a [`Driver`] in `client` (for at most an hour).
pub fn drive(
    ambit: &std::path::Path,
    client: &Netns,
    targets: &[&str],
    rate: u32,
) -> Result<Driver, LocalError> {
    let mut cmd = Command::new(ambit);
    cmd.args(["app", "drive"]);
    for target in targets {
        cmd.args(["--target", target]);
    }
    let mut process = client.spawn(
        cmd.args(["--rate", &rate.to_string(), "--duration", "3600s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let stdout = process.take_stdout().expect("piped");
    let (tx, reports) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(report) = serde_json::from_str::<DriveReport>(&line)
                && tx.send((Instant::now(), report)).is_err()
            {
                return;
            }
        }
    });
    Ok(Driver {
        _process: process,
        reports,
    })
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
