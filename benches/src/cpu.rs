//! CPU time by thread name, from `/proc/self/task`: on a shared machine, the CPU a phase used is
//! a steadier figure than its wall time, which also counts waiting for other people's builds.

/// Clock ticks per second in `/proc` stat files: USER_HZ, fixed at 100 by the Linux ABI on the
/// architectures we run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime, in seconds, of this process's live threads whose name is exactly `name`
/// (tokio names its workers and blocking threads after the runtime's `thread_name`). Threads
/// that have exited are not counted, so measure phases during which the runtime stays up.
pub fn threads_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 0, utime 11, stime 12.
        ticks += fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    }
    ticks as f64 / TICKS_PER_SECOND
}
