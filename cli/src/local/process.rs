//! The mesh's own processes (controller, one ztunnel per node) run in the host's namespace,
//! as a node's ztunnel runs in its host network: they reach pods by entering their
//! namespaces, and the CLI reaches them on loopback.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::LocalError;

/// How to start one of the mesh's processes, kept so that the supervisor can start it again
/// with the very same arguments (and so the same ports) after a crash.
#[derive(Debug, Clone)]
pub struct Spec {
    /// What the live output calls it: "controller", "ztunnel on node-b".
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
    /// The network namespace it runs in (a waypoint's); the host's when `None`.
    pub netns: Option<ambit_testbed::Netns>,
}

impl Spec {
    pub fn new(name: &str, program: &Path, log: &Path) -> Self {
        Spec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            log: log.into(),
            netns: None,
        }
    }

    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(&mut self, args: I) -> &mut Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A child process whose output goes to a log file; killed when dropped.
pub struct Process {
    pub log: PathBuf,
    child: Option<Child>,
    started: Instant,
}

impl Process {
    /// Starts `spec` with a fresh log, or (`append`, on a restart) after the earlier runs'
    /// output, so the log keeps what led to the crash.
    pub fn start(spec: &Spec, append: bool) -> Result<Self, LocalError> {
        let mut file = if append {
            OpenOptions::new().create(true).append(true).open(&spec.log)
        } else {
            File::create(&spec.log)
        }
        .map_err(|source| LocalError::Io {
            what: format!("opening {}", spec.log.display()),
            source,
        })?;
        if append {
            let _ = writeln!(file, "--- restarted by the local mesh's supervisor ---");
        }
        let err = file.try_clone().map_err(|source| LocalError::Io {
            what: format!("opening {}", spec.log.display()),
            source,
        })?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        // A child starts in the network namespace of the thread that forks it.
        let spawned = match &spec.netns {
            Some(netns) => netns.run(|| command.spawn())?,
            None => command.spawn(),
        };
        let child = spawned.map_err(|source| LocalError::Spawn {
            what: spec.name.clone(),
            program: spec.program.display().to_string(),
            source,
        })?;
        Ok(Process {
            log: spec.log.clone(),
            child: Some(child),
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How long ago it was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether it has exited (and so will never become ready). Reaps it if so: a dead child
    /// that nobody waits for stays a zombie.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// SIGTERM, then up to `grace` to exit, then SIGKILL. Returns whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL now (a crash, for tests of what survives one), and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log file, for an error message, without terminal colour codes.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    strip_ansi(&lines[lines.len().saturating_sub(8)..].join("\n"))
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which logs written for a terminal carry.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How an exit reads in the live output: "signal 9", "code 1".
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_taken_out_of_log_tails() {
        let line = "\u{1b}[2m2026-12-01T00:21:22Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ready";
        assert_eq!(strip_ansi(line), "2026-12-01T00:21:22Z  INFO ready");
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
