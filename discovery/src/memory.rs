//! Giving the memory a large update freed back to the system. Decoding a big response (every
//! workload of a large mesh, in parts) allocates several times what the state built from it
//! keeps; glibc's allocator holds the freed pages of its arenas for reuse, so a ztunnel that
//! took 50k workloads once kept 24.8 MB more than it does with the trim (1,667 → 1,174 B per
//! workload of its RSS, config_apply bench). `malloc_trim` hands whole free pages back; pages
//! still partly in use stay.
//!
//! A proxy also fixes glibc's thresholds at start ([`bound_arena_blocks`]). Left to itself,
//! glibc raises them after each large block it frees: the mmap threshold to that block's size
//! and the trim threshold to twice it (up to 32 and 64 MiB). `malloc_trim` leaves alone the free
//! top of every arena but the main one, which gives it back only past the trim threshold: after
//! a large update, megabytes stayed at the top of the applying thread's arena (state_memory,
//! 50k workloads: 330 B of RSS per workload with glibc's thresholds, 284 B with these).
//!
//! A burst of connections leaves the same behind: the data workers' arenas grow to carry it,
//! and the freed buffers stay there when it is over ([`trim_when_quiet`]).

use std::future::Future;
use std::time::{Duration, Instant};

/// Responses with at least this many resources and removals are large enough to trim after:
/// the trim walks every arena, which small deltas do not pay for.
pub const LARGE_UPDATE: usize = 1_000;

/// Blocks from this size up get pages of their own, returned to the system when freed: a
/// large update's decoding buffers (megabytes at 50k workloads) never sit in an arena. The data
/// path's buffers are smaller (256 KiB writes), apart from an h2 read buffer that may reach
/// about 1 MiB (a frame of the most HBONE allows).
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// An arena gives back the free memory at its top past this. Twice the mmap threshold, glibc's
/// own ratio, so that a data-path buffer freed at the top is kept for the next connection
/// rather than given back and faulted in again.
pub const TRIM_THRESHOLD: usize = 2 * MMAP_THRESHOLD;

/// Fixes the allocator's thresholds ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`]) for every thread;
/// a no-op with an allocator other than glibc's. Call once at start, before the runtimes.
pub fn bound_arena_blocks() {
    set_thresholds();
}

/// Returns the free pages of every arena to the system, after an update of `changes`
/// resources (a no-op below [`LARGE_UPDATE`], or with an allocator other than glibc's). Call it
/// from a blocking thread, once the update's decoded form is dropped.
pub fn trim_after_update(changes: usize) {
    if changes < LARGE_UPDATE {
        return;
    }
    let started = Instant::now();
    let released = trim();
    tracing::debug!(
        changes,
        released,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "returned freed memory to the system after a large update"
    );
}

/// How often a proxy looks whether its connections went quiet.
pub const QUIET_CHECK: Duration = Duration::from_secs(1);

/// A proxy's connections so far: how many it opened and how many it closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub opened: u64,
    pub closed: u64,
}

/// Tells, from [`Activity`] sampled every [`QUIET_CHECK`], when a burst of connections is
/// over: some closed since the last trim, then a whole check with none opened or closed,
/// whatever stays open. Long-lived connections (a database pool) do not hold the trim off
/// for good; a steady load on them closes none, so nothing is trimmed under it. A steady
/// trickle never looks quiet, so it never pays for a trim; a proxy that stays idle trims
/// once, not every check.
#[derive(Debug, Default)]
pub struct QuietWatch {
    last: Activity,
    trimmed: Activity,
}

impl QuietWatch {
    /// Whether the burst that `now` ends is over; counts it as trimmed when it is.
    pub fn burst_over(&mut self, now: Activity) -> bool {
        let still = now == self.last;
        self.last = now;
        let over = still && now.closed != self.trimmed.closed;
        if over {
            self.trimmed = now;
        }
        over
    }
}

/// Gives the memory a burst of connections left behind back to the system once the burst is
/// over ([`QuietWatch`]), until `stop` resolves. After 64 connections' worth of requests a
/// ztunnel's arenas held 4.2 MB more than idle, under 1 MB of it in use; the trim gave back
/// about half (whole free pages; pages still partly in use stay). The trim runs on a blocking
/// thread and takes each arena's lock in turn, which is why it waits for quiet.
pub async fn trim_when_quiet(activity: impl Fn() -> Activity, stop: impl Future<Output = ()>) {
    let mut watch = QuietWatch::default();
    let mut every = tokio::time::interval(QUIET_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = every.tick() => {}
        }
        let now = activity();
        if watch.burst_over(now) {
            let _ = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let released = trim();
                tracing::debug!(
                    opened = now.opened,
                    released,
                    took_ms = started.elapsed().as_secs_f64() * 1e3,
                    "returned the memory of a burst of connections to the system"
                );
            })
            .await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and only touches the allocator's own state, under
    // its own locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() {
    for (param, name, value) in [
        (libc::M_MMAP_THRESHOLD, "M_MMAP_THRESHOLD", MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, "M_TRIM_THRESHOLD", TRIM_THRESHOLD),
    ] {
        let value = libc::c_int::try_from(value).expect("the thresholds fit a C int");
        // SAFETY: mallopt takes no pointers and only sets the allocator's parameters, under
        // its own lock.
        if unsafe { libc::mallopt(param, value) } != 1 {
            // Refused only for a value past glibc's bounds: the proxy runs as before, with
            // the allocator's own, growing threshold.
            tracing::warn!(param = name, value, "glibc refused the allocator threshold");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() {}

#[cfg(test)]
mod quiet_tests {
    use super::*;

    fn at(opened: u64, closed: u64) -> Activity {
        Activity { opened, closed }
    }

    #[test]
    fn a_burst_is_over_once_nothing_opened_or_closed_for_a_whole_check() {
        // (sample, over?) in order, one QuietWatch throughout.
        let steps = [
            (at(0, 0), false), // idle since start: nothing to give back
            (at(0, 0), false),
            (at(64, 0), false), // a burst opens
            (at(64, 0), false), // still open
            (at(64, 60), false),
            (at(64, 64), false), // all closed this very check: wait one more
            (at(64, 64), true),  // quiet for a whole check
            (at(64, 64), false), // still idle: once, not every check
            (at(65, 64), false), // a trickle: one open
            (at(66, 66), false), // moved since the last check
            (at(67, 67), false),
            (at(67, 67), true),  // the trickle stopped
            (at(68, 67), false), // a long-lived connection opens
            (at(90, 67), false), // a burst beside it
            (at(90, 89), false),
            (at(90, 89), true),  // quiet, though one stays open
            (at(90, 89), false), // once
            (at(90, 90), false), // the long-lived one closes
            (at(90, 90), true),
        ];
        let mut watch = QuietWatch::default();
        for (i, (now, over)) in steps.into_iter().enumerate() {
            assert_eq!(watch.burst_over(now), over, "step {i}: {now:?}");
        }
    }

    #[tokio::test]
    async fn the_watch_stops_when_told() {
        let checks = std::sync::atomic::AtomicU64::new(0);
        let count = || {
            checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Activity::default()
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            trim_when_quiet(count, std::future::ready(())),
        )
        .await
        .expect("trim_when_quiet returns once stop resolves");
        assert_eq!(
            checks.into_inner(),
            0,
            "it checked after being told to stop"
        );
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The bytes glibc holds in blocks of their own (mmap), not in an arena.
    fn mmapped_bytes() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters, under its own locks.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    fn after_a_large_block_is_freed_a_block_past_the_threshold_still_gets_its_own_pages() {
        bound_arena_blocks();
        // Left to itself, glibc would raise its threshold to this block's size when it is
        // freed, and carve the next block below it from an arena.
        drop(std::hint::black_box(vec![1u8; 16 * MMAP_THRESHOLD]));
        let before = mmapped_bytes();
        let block = std::hint::black_box(vec![1u8; 2 * MMAP_THRESHOLD]);
        let held = mmapped_bytes().saturating_sub(before);
        drop(block);
        assert!(
            held >= 2 * MMAP_THRESHOLD,
            "a {} B block was carved from an arena (mmapped bytes grew by {held})",
            2 * MMAP_THRESHOLD
        );
    }
}
