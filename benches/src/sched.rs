//! How long another process's threads wait to run, seen by the kernel's scheduler through
//! bpftrace: for each second, the longest time one of the watched threads was ready to run but
//! not running (woken or preempted, until switched in), how many such waits passed 1 ms, and
//! the longest uninterruptible sleep (a page fault or a kernel lock, e.g. the address space's
//! lock while another thread maps memory), with, for each wait over 1 ms, the thread that held
//! the CPU when it ended. A data-path worker of a proxy that is stalled by
//! anything (another thread's CPU, a lock, the kernel) shows here, whatever the proxy's code
//! does; nothing in the proxy is instrumented. `benches/tools.sh` installs bpftrace.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Waits longer than this are counted (DESIGN.md: a data-path worker never stalls > 1 ms).
const COUNTED_OVER_NS: u64 = 1_000_000;

/// One second of the watched threads' scheduling.
#[derive(Debug, Clone, Default)]
pub struct SchedSecond {
    /// Waits to run that ended in the second.
    pub waits: u64,
    /// The longest of them, µs.
    pub longest_wait_us: u64,
    /// How many were longer than 1 ms.
    pub waits_over_1ms: u64,
    /// The longest uninterruptible sleep that ended in the second, µs.
    pub longest_blocked_us: u64,
    /// For the waits over 1 ms, by the thread that ran on the CPU until the waiting one got it
    /// (where the time went): how many, and the longest (µs).
    pub over_1ms_after: BTreeMap<String, Over>,
}

/// Waits over 1 ms that one thread ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Over {
    pub count: u64,
    pub longest_us: u64,
}

impl Over {
    fn add(&mut self, other: Over) {
        self.count += other.count;
        self.longest_us = self.longest_us.max(other.longest_us);
    }
}

impl SchedSecond {
    /// The worst of several seconds.
    pub fn worst(seconds: &[SchedSecond]) -> SchedSecond {
        let mut worst = SchedSecond::default();
        for s in seconds {
            worst.waits += s.waits;
            worst.longest_wait_us = worst.longest_wait_us.max(s.longest_wait_us);
            worst.waits_over_1ms += s.waits_over_1ms;
            worst.longest_blocked_us = worst.longest_blocked_us.max(s.longest_blocked_us);
            for (name, over) in &s.over_1ms_after {
                worst
                    .over_1ms_after
                    .entry(name.clone())
                    .or_default()
                    .add(*over);
            }
        }
        worst
    }
}

/// bpftrace watching some threads; stopped when dropped.
pub struct SchedWatch {
    child: Child,
    /// Each second's figures, with when they arrived.
    pub seconds: mpsc::Receiver<(Instant, SchedSecond)>,
}

impl SchedWatch {
    /// Watches the threads of `pid` named `thread_name` (as `/proc/<pid>/task/*/comm` says;
    /// at most 15 characters). Returns once bpftrace has attached its probes.
    pub fn start(pid: u32, thread_name: &str) -> anyhow::Result<SchedWatch> {
        let tids = threads_named(pid, thread_name)?;
        anyhow::ensure!(
            !tids.is_empty(),
            "process {pid} has no thread named {thread_name:?}"
        );
        let mut child = Command::new("bpftrace")
            .args(["-B", "line", "-e", &script(&tids)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("could not run bpftrace: {e} (benches/tools.sh installs it)")
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // Kernels since 5.11 account BPF memory to the cgroup, not RLIMIT_MEMLOCK, and
        // bpftrace 0.17 still complains when it cannot raise that limit: not worth showing.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !line.contains("RLIMIT_MEMLOCK") {
                    eprintln!("bpftrace: {line}");
                }
            }
        });
        let (attached_tx, attached) = mpsc::channel();
        let (tx, seconds) = mpsc::channel();
        std::thread::spawn(move || {
            let mut after: BTreeMap<String, Over> = BTreeMap::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Attaching") {
                    let _ = attached_tx.send(());
                } else if let Some((wait_us, thread)) = line
                    .strip_prefix("over ")
                    .and_then(|rest| rest.split_once(' '))
                {
                    let wait = Over {
                        count: 1,
                        longest_us: wait_us.parse().unwrap_or(0),
                    };
                    after
                        .entry(thread_label(thread, pid))
                        .or_default()
                        .add(wait);
                } else if let Some(mut second) = parse_second(&line) {
                    second.over_1ms_after = std::mem::take(&mut after);
                    if tx.send((Instant::now(), second)).is_err() {
                        return;
                    }
                }
            }
        });
        if attached.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("bpftrace did not attach its probes within 30 s (see its output above)");
        }
        Ok(SchedWatch { child, seconds })
    }
}

impl Drop for SchedWatch {
    fn drop(&mut self) {
        // SIGINT lets bpftrace detach its probes; it prints its maps on the way out, which the
        // reader ignores.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}

/// The ids of `pid`'s threads whose name is `name`.
fn threads_named(pid: u32, name: &str) -> anyhow::Result<Vec<u32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name
            && let Ok(tid) = entry.file_name().to_string_lossy().parse()
        {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// The bpftrace program: a thread is ready from its wake-up (a wake-up of a thread already
/// waiting to run does not restart the clock), or from being switched out while still runnable
/// (preempted: no state bit in the low byte), until it is switched in; each wait is a local of
/// its probe, so two CPUs switching at once cannot mix them (the per-second counters are
/// shared maps, and may lose a count when they do); it is
/// blocked from being switched out in uninterruptible sleep (bit 2) until its wake-up. It
/// prints each wait over 1 ms as it ends (µs, and the thread switched out), and once a second:
/// waits, the longest (µs), waits over 1 ms, the longest block (µs).
fn script(tids: &[u32]) -> String {
    let watched = |field: &str| {
        tids.iter()
            .map(|t| format!("{field} == {t}"))
            .collect::<Vec<_>>()
            .join(" || ")
    };
    format!(
        r#"
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new /{woken}/ {{
  if (@ready[args->pid] == 0) {{ @ready[args->pid] = nsecs; }}
  if (@blocked[args->pid] != 0) {{
    $block = nsecs - @blocked[args->pid];
    if ($block > @longest_block) {{ @longest_block = $block; }}
    delete(@blocked[args->pid]);
  }}
}}
tracepoint:sched:sched_switch /{prev}/ {{
  if ((args->prev_state & 0xff) == 0) {{ @ready[args->prev_pid] = nsecs; }}
  if ((args->prev_state & 2) != 0) {{ @blocked[args->prev_pid] = nsecs; }}
}}
tracepoint:sched:sched_switch /({next}) && @ready[args->next_pid] != 0/ {{
  $wait = nsecs - @ready[args->next_pid];
  delete(@ready[args->next_pid]);
  @waits = @waits + 1;
  if ($wait > @longest_wait) {{ @longest_wait = $wait; }}
  if ($wait > {COUNTED_OVER_NS}) {{ @over = @over + 1; printf("over %d %d %s\n", $wait / 1000, args->prev_pid, args->prev_comm); }}
}}
interval:s:1 {{
  printf("sched %d %d %d %d\n", @waits, @longest_wait / 1000, @over, @longest_block / 1000);
  @waits = 0; @longest_wait = 0; @over = 0; @longest_block = 0;
}}
END {{ clear(@ready); clear(@blocked); }}
"#,
        woken = watched("args->pid"),
        prev = watched("args->prev_pid"),
        next = watched("args->next_pid"),
    )
}

/// "<process>/<thread>" for bpftrace's "<tid> <thread name>" (the process from `/proc`, while
/// the thread still runs; "<process>[watched]" when it is the watched one), the thread name
/// alone for a kernel thread, "idle" for the idle task (the CPU was free: the wait was the
/// wake-up itself).
fn thread_label(tid_and_name: &str, watched: u32) -> String {
    let (tid, name) = tid_and_name.split_once(' ').unwrap_or(("", tid_and_name));
    if tid == "0" {
        return "idle".into();
    }
    let process = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| {
            let tgid = status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))?
                .trim()
                .to_string();
            let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok()?;
            let comm = comm.trim_end();
            Some(if tgid == watched.to_string() {
                format!("{comm}[watched]")
            } else {
                comm.to_string()
            })
        });
    match process {
        Some(p) if p != name => format!("{p}/{name}"),
        _ => name.to_string(),
    }
}

fn parse_second(line: &str) -> Option<SchedSecond> {
    let mut fields = line.strip_prefix("sched ")?.split_whitespace();
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some(SchedSecond {
        waits: next()?,
        longest_wait_us: next()?,
        waits_over_1ms: next()?,
        longest_blocked_us: next()?,
        over_1ms_after: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_is_read_from_its_line() {
        let s = parse_second("sched 120 850 0 40").unwrap();
        assert_eq!(
            (
                s.waits,
                s.longest_wait_us,
                s.waits_over_1ms,
                s.longest_blocked_us
            ),
            (120, 850, 0, 40)
        );
        assert!(parse_second("@waits: 3").is_none());
        assert!(parse_second("sched 1 2 x 4").is_none());
    }

    #[test]
    fn a_thread_is_named_with_its_process() {
        assert_eq!(thread_label("0 swapper/1", 1), "idle");
        let me = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let comm = comm.trim_end();
        let other = std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw();
            let tid = format!("{tid} a-thread");
            (thread_label(&tid, 1), thread_label(&tid, me))
        });
        let (other, watched) = other.join().unwrap();
        assert_eq!(other, format!("{comm}/a-thread"));
        assert_eq!(watched, format!("{comm}[watched]/a-thread"));
    }

    #[test]
    fn the_worst_of_seconds_sums_counts_and_keeps_maxima() {
        let a = SchedSecond {
            waits: 2,
            longest_wait_us: 1900,
            waits_over_1ms: 1,
            longest_blocked_us: 10,
            over_1ms_after: BTreeMap::from([("nginx".to_string(), over(1, 1900))]),
        };
        let b = SchedSecond {
            waits: 3,
            longest_wait_us: 1500,
            waits_over_1ms: 2,
            longest_blocked_us: 5,
            over_1ms_after: BTreeMap::from([
                ("nginx".to_string(), over(1, 1200)),
                ("wrk".to_string(), over(1, 1500)),
            ]),
        };
        let w = SchedSecond::worst(&[a, b]);
        assert_eq!(
            (
                w.waits,
                w.longest_wait_us,
                w.waits_over_1ms,
                w.longest_blocked_us
            ),
            (5, 1900, 3, 10)
        );
        assert_eq!(
            w.over_1ms_after,
            BTreeMap::from([
                ("nginx".to_string(), over(2, 1900)),
                ("wrk".to_string(), over(1, 1500))
            ])
        );
    }

    fn over(count: u64, longest_us: u64) -> Over {
        Over { count, longest_us }
    }
}
