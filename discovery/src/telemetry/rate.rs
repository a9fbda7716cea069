//! A per-second budget shared by the data path's threads without a lock: the current second
//! and what it spent, packed in one atomic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub(super) struct RateLimit {
    per_second: u32,
    start: Instant,
    /// Seconds since `start` in the high half, events allowed in that second in the low.
    window: AtomicU64,
}

impl RateLimit {
    pub(super) fn new(per_second: u32) -> Self {
        RateLimit {
            per_second,
            start: Instant::now(),
            window: AtomicU64::new(0),
        }
    }

    /// Spends one from this second's budget, if any is left.
    pub(super) fn allow(&self) -> bool {
        let second = self.start.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (at, spent) = (current >> 32, current & 0xffff_ffff);
            let next = if at == second {
                if spent >= u64::from(self.per_second) {
                    return false;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.per_second > 0,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_budget_each_second_and_no_more() {
        let limit = RateLimit::new(3);
        let allowed = (0..10).filter(|_| limit.allow()).count();
        assert_eq!(allowed, 3);
        let none = RateLimit::new(0);
        assert!(!none.allow());
    }
}
