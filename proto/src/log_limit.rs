//! Rate limits for log lines that a peer can trigger at will (a refused connection, a
//! connection over a limit): a flood must cost the attacker its connections, never the node's
//! disk. Each kind of event gets its own limiter; what is left out is counted and said in the
//! next line that is written.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Allows up to `per_second` events a second (in windows of one second) and counts the rest.
/// Lock-free: it sits on the accept path.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    start: Instant,
    /// The current window, as whole seconds since `start`.
    window: AtomicU64,
    in_window: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            start: Instant::now(),
            window: AtomicU64::new(0),
            in_window: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether this event may be logged now. `Some(n)`: log it, and say that `n` like it were
    /// left out since the last line; `None`: leave it out (it is counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let second = now.saturating_duration_since(self.start).as_secs();
        let current = self.window.load(Ordering::Relaxed);
        if second != current
            && self
                .window
                .compare_exchange(current, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn allows_the_rate_then_counts_what_it_left_out() {
        let limiter = LogLimiter::new(3);
        let t0 = limiter.start;
        let first: Vec<Option<u64>> = (0..5).map(|_| limiter.check_at(t0)).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // The next second: the first line says two were left out.
        let t1 = t0 + Duration::from_millis(1_200);
        assert_eq!(limiter.check_at(t1), Some(2));
        assert_eq!(limiter.check_at(t1), Some(0));
        assert_eq!(limiter.check_at(t1), Some(0));
        assert_eq!(limiter.check_at(t1), None);
        assert_eq!(limiter.check_at(t0 + Duration::from_secs(5)), Some(1));
    }
}
