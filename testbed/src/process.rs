//! Child processes inside a namespace, and finding and killing whatever runs in one.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{
    Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio,
};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// How long killed processes get to leave a namespace before teardown goes ahead anyway.
const EXIT_GRACE: Duration = Duration::from_secs(5);

impl Netns {
    /// Starts `cmd` inside this namespace in its own process group. The returned handle kills
    /// the whole group when dropped, so helpers the command forks die with it. Configure stdio
    /// on `cmd` first (e.g. `Stdio::piped()`) to capture output.
    pub fn spawn(&self, cmd: &mut Command) -> Result<NetnsChild> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        // A child inherits the network namespace of the thread that forks it, so spawning from
        // a thread inside the namespace needs no pre_exec hook (and no unsafe).
        cmd.process_group(0);
        let child = self.run(|| cmd.spawn())?.map_err(|source| Error::Spawn {
            netns: self.name().to_owned(),
            program: program.clone(),
            source,
        })?;
        tracing::debug!(netns = self.name(), program, pid = child.id(), "spawned");
        Ok(NetnsChild {
            netns: self.name().to_owned(),
            program,
            child: Some(child),
        })
    }

    /// Runs `cmd` inside this namespace to completion, like [`Command::output`]: stdin is
    /// /dev/null, stdout and stderr are captured.
    pub fn output(&self, cmd: &mut Command) -> Result<Output> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn(cmd)?.wait_with_output()
    }
}

/// A process started with [`Netns::spawn`]. Dropping it kills its process group (SIGKILL) and
/// reaps it.
#[derive(Debug)]
pub struct NetnsChild {
    netns: String,
    program: String,
    /// `None` once reaped.
    child: Option<Child>,
}

impl NetnsChild {
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The namespace the process was started in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut()?.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.as_mut()?.stderr.take()
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let pid = child.id();
        child
            .try_wait()
            .map_err(|source| self.wait_error(pid, source))
    }

    pub fn wait(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("only Drop takes the child");
        child
            .wait()
            .map_err(|source| self.wait_error(child.id(), source))
    }

    pub fn wait_with_output(mut self) -> Result<Output> {
        let child = self.child.take().expect("only Drop takes the child");
        let pid = child.id();
        child
            .wait_with_output()
            .map_err(|source| self.wait_error(pid, source))
    }

    /// Kills the process group with SIGKILL and reaps the process.
    pub fn kill(mut self) -> Result<ExitStatus> {
        let pid = self.id();
        // On failure the child stays in `self`, and Drop still kills and reaps it.
        self.kill_group(pid)?;
        let mut child = self.child.take().expect("only Drop takes the child");
        child.wait().map_err(|source| self.wait_error(pid, source))
    }

    fn kill_group(&self, pid: u32) -> Result<()> {
        match killpg(as_pid(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(Error::Kill {
                netns: self.netns.clone(),
                pid,
                source,
            }),
        }
    }

    fn wait_error(&self, pid: u32, source: io::Error) -> Error {
        Error::Wait {
            netns: self.netns.clone(),
            program: self.program.clone(),
            pid,
            source,
        }
    }
}

impl Drop for NetnsChild {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // Kill the group before reaping: while the leader is an unreaped zombie its pid, and
        // so the group id, cannot be reused by an unrelated process.
        if let Err(err) = self.kill_group(pid) {
            tracing::warn!(%err, "could not kill a testbed process");
        }
        if let Err(err) = child.wait() {
            tracing::warn!(netns = self.netns, pid, %err, "could not reap a testbed process");
        }
    }
}

fn as_pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("Linux pids fit in i32"))
}

/// Identity of a namespace: the nsfs device and inode that both /var/run/netns/<name> and
/// /proc/<pid>/ns/net resolve to.
fn ns_id(path: &Path) -> io::Result<(u64, u64)> {
    fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

/// Processes (other than this one) whose main thread is in the namespace at `netns_path`; the
/// same scan `ip netns pids` does.
pub(crate) fn pids_in(netns_path: &Path) -> Result<Vec<u32>> {
    let Ok(target) = ns_id(netns_path) else {
        return Ok(Vec::new());
    };
    let proc = PathBuf::from("/proc");
    let entries = fs::read_dir(&proc).map_err(|source| Error::ListDir {
        path: proc.clone(),
        source,
    })?;
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes exit while we scan and zombies have no namespaces: both just don't match.
        if pid != me && ns_id(&entry.path().join("ns/net")).is_ok_and(|id| id == target) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// SIGKILLs every process in `netns` and waits (briefly) for them to leave, so that deleting
/// the namespace really frees it. Returns the pids it killed. Threads of this process that
/// entered the namespace cannot be killed; they keep it alive until they return.
pub(crate) fn kill_all_in(netns: &Netns) -> Result<Vec<u32>> {
    let mut killed = Vec::new();
    let deadline = Instant::now() + EXIT_GRACE;
    loop {
        let pids = pids_in(netns.path())?;
        if pids.is_empty() {
            return Ok(killed);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                netns = netns.name(),
                ?pids,
                "processes outlived SIGKILL; deleting the namespace anyway"
            );
            return Ok(killed);
        }
        for pid in pids {
            match kill(as_pid(pid), Signal::SIGKILL) {
                Ok(()) => {
                    if !killed.contains(&pid) {
                        killed.push(pid);
                    }
                }
                Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(Error::Kill {
                        netns: netns.name().to_owned(),
                        pid,
                        source,
                    });
                }
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}
