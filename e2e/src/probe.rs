//! Looking at a mesh from outside while something happens to it: a steady client in a pod
//! whose every call is counted, a process's open files and memory, and zombies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ambit_cli::local::apps::fetch;
use ambit_testbed::{Netns, NetnsThread};

/// How one steady client fared.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    /// The first failures, as the application saw them.
    pub errors: Vec<String>,
}

/// Calls `url` from inside a pod every `every` (a new connection each time, as the sample
/// clients do) until stopped, on a thread of its own inside the pod's namespace, so the test's
/// own work never delays it.
pub struct SteadyClient {
    stop: Arc<AtomicBool>,
    thread: NetnsThread<Tally>,
}

impl SteadyClient {
    pub fn start(pod: &Netns, url: &str, every: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let url = url.to_string();
        let thread = {
            let stop = stop.clone();
            pod.spawn_thread(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the steady client");
                runtime.block_on(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let call = tokio::time::timeout(Duration::from_secs(3), fetch(&url)).await;
                        match call {
                            Ok(Ok((200, body))) if body.starts_with("hello from") => tally.ok += 1,
                            other => {
                                tally.failed += 1;
                                if tally.errors.len() < 5 {
                                    tally.errors.push(format!("{other:?}"));
                                }
                            }
                        }
                        tokio::time::sleep(every).await;
                    }
                    tally
                })
            })?
        };
        Ok(SteadyClient { stop, thread })
    }

    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Open file descriptors of a process: the fewest seen in five looks 100 ms apart, so a
/// connection that happens to be open for a moment does not count.
pub fn fd_count(pid: u32) -> anyhow::Result<usize> {
    let mut fewest = usize::MAX;
    for _ in 0..5 {
        let n = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| anyhow::anyhow!("listing the open files of process {pid}: {e}"))?
            .count();
        fewest = fewest.min(n);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(fewest)
}

/// A process's resident memory (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Children of `parent` that exited and were never waited for.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let mut rest = stat
                    .rsplit_once(')')
                    .map_or("", |(_, r)| r)
                    .split_whitespace();
                rest.next() == Some("Z") && rest.next() == Some(parent.to_string().as_str())
            })
        })
        .collect()
}

/// Whether a process is gone for good: no longer running, and reaped by its parent (a zombie
/// still has its /proc entry).
pub fn reaped(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}
