//! Debian's iperf3 inside a testbed namespace: one TCP stream for a fixed time, up (client to
//! server) or down (`-R`), read from its `--json` report. `benches/tools.sh` installs it.

use std::io;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ambit_testbed::{Netns, NetnsChild};

use crate::tools::{error, run_tool, wait_port};

/// What the receiving side counted over one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Throughput {
    pub bytes: u64,
    pub seconds: f64,
    pub bits_per_second: f64,
    /// The sender's TCP retransmits (what a slow receiver or a dropped segment costs).
    pub retransmits: u64,
}

impl Throughput {
    pub fn gbps(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// An iperf3 server on `addr` in `netns` until the handle is dropped or killed. One server
/// runs one test at a time, so each path the bench measures needs its own.
pub fn server(netns: &Netns, addr: SocketAddr) -> io::Result<NetnsChild> {
    let child = netns
        .spawn(
            Command::new("iperf3")
                .args([
                    "-s",
                    "-B",
                    &addr.ip().to_string(),
                    "-p",
                    &addr.port().to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .map_err(error)?;
    // The probe's connection sends no cookie: iperf3 logs that and serves the next one.
    wait_port(netns, addr)?;
    Ok(child)
}

/// Tries of one run before its error is reported: on a loaded machine a run now and then ends
/// in "the server is busy" (the server still closing the previous test) or "connection reset".
pub const ATTEMPTS: u32 = 3;
/// The wait before the second try; doubled before each further one.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// `attempt` until it succeeds, at most `attempts` times, waiting `backoff` (then twice that,
/// and so on) between tries; the last error, with how many tries failed, if none succeeded.
/// Wrap the whole measured step (a run and the CPU counted over it), so a failed try's CPU
/// is not counted against the one that succeeds.
pub fn retrying<T>(
    attempts: u32,
    backoff: Duration,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut wait = backoff;
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt() {
            Ok(t) => return Ok(t),
            Err(e) if tried >= attempts => {
                return Err(error(format!("{e} (failed {tried} times)")));
            }
            Err(e) => {
                eprintln!("iperf3 run failed, trying again in {wait:?}: {e}");
                std::thread::sleep(wait);
                wait *= 2;
            }
        }
    }
}

/// One stream to the server at `target` for `seconds`; `reverse` has the server send (`-R`).
/// One try: see [`retrying`].
pub fn run(
    netns: &Netns,
    target: SocketAddr,
    seconds: u64,
    reverse: bool,
) -> io::Result<Throughput> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
    ])
    .args(["-t", &seconds.to_string(), "--json"]);
    if reverse {
        cmd.arg("-R");
    }
    let out = run_tool(netns, &mut cmd, seconds, &mut || {})?;
    parse(&out).map_err(|e| error(format!("iperf3 to {target}: {e}")))
}

/// `end.sum_received` is the receiver's count in both directions (with `-R` the client
/// receives); a failed run has `error` instead.
fn parse(json: &str) -> Result<Throughput, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    let received = &v["end"]["sum_received"];
    let bits_per_second = received["bits_per_second"]
        .as_f64()
        .ok_or("no end.sum_received.bits_per_second in its report")?;
    Ok(Throughput {
        bytes: received["bytes"].as_u64().unwrap_or(0),
        seconds: received["seconds"].as_f64().unwrap_or(0.0),
        bits_per_second,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receivers_count_is_read() {
        let report = r#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"bytes":1095761920,"seconds":1.00136,"bits_per_second":8754189662.0,"retransmits":3},
            "sum_received":{"bytes":1088159744,"seconds":1.000299,"bits_per_second":8702675851.9}}}"#;
        let t = parse(report).unwrap();
        assert_eq!(t.bytes, 1088159744);
        assert_eq!(t.retransmits, 3);
        assert!((t.gbps() - 8.7026).abs() < 1e-3);
        let failed =
            r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server"}"#;
        assert_eq!(parse(failed).unwrap_err(), "unable to connect to server");
        assert!(parse("").is_err());
    }

    #[test]
    fn a_failed_run_is_tried_again_and_the_last_error_reported() {
        let mut calls = 0;
        let got = retrying(3, Duration::ZERO, || {
            calls += 1;
            if calls < 3 {
                Err(error("the server is busy"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got.unwrap(), 3);

        let mut calls = 0;
        let got: io::Result<()> = retrying(2, Duration::ZERO, || {
            calls += 1;
            Err(error(format!("connection reset {calls}")))
        });
        assert_eq!(calls, 2);
        assert_eq!(
            got.unwrap_err().to_string(),
            "connection reset 2 (failed 2 times)"
        );
    }
}
