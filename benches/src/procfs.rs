//! Another process's CPU time and memory, from `/proc/<pid>`: what a proxy running as its own
//! program (a ztunnel, a waypoint, nginx) spent over a measured window.

/// Clock ticks per second in `/proc` stat files (USER_HZ, 100 on the architectures we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of process `pid` (all its threads), in seconds; 0 if it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces, so split at its closing parenthesis):
    // state is field 0, utime 11, stime 12.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / TICKS_PER_SECOND
}

/// The direct children of `pid` (an nginx master's workers), from its main thread's list.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// CPU seconds of `pid` and its direct children (a master process and its workers).
pub fn family_cpu_seconds(pid: u32) -> f64 {
    cpu_seconds(pid) + children(pid).into_iter().map(cpu_seconds).sum::<f64>()
}

/// (VmRSS, VmHWM) of `pid` in MB (2^20 bytes); zeros if it is gone.
pub fn memory_mb(pid: u32) -> (f64, f64) {
    (status_mb(pid, "VmRSS:"), status_mb(pid, "VmHWM:"))
}

/// The anonymous part of `pid`'s RSS (heap and stacks, without the program's mapped code) in
/// MB; 0 if it is gone.
pub fn anon_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "RssAnon:")
}

/// A `kB` line of `/proc/<pid>/status`, in MB.
fn status_mb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let start = cpu_seconds(pid);
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(pid) >= start);
        let (rss, hwm) = memory_mb(pid);
        assert!(rss > 0.0 && hwm >= rss, "rss {rss} hwm {hwm}");
        assert!(anon_rss_mb(pid) > 0.0 && anon_rss_mb(pid) <= hwm);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
