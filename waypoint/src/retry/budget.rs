//! A retry budget in Linkerd's shape: over a sliding window (10 s by default), retries may add
//! at most `ratio` (20 % by default) on top of the original requests seen, plus a floor of
//! `min_per_second` retries per second (10 by default) so that a service with little traffic
//! can still retry at all.
//!
//! The window is a ring of [`SLOTS`] slots of `window / SLOTS` each; every slot is one
//! `AtomicU64` holding the slot's epoch (high 32 bits) and its balance (low 32 bits, signed),
//! updated with one compare-and-swap. No lock, no allocation: [`RetryBudget::deposit`] and
//! [`RetryBudget::try_withdraw`] are safe to call on every request.
//!
//! Balances are in milli-retries: an original request deposits `ratio × 1000`, a retry costs
//! 1000, and the floor is a constant reserve of `min_per_second × window × 1000` that is never
//! stored, so it comes back by itself as old withdrawals leave the window. Two concurrent
//! withdrawals may both pass on the last unit of balance (the check and the debit are two
//! steps); the budget can be overdrawn by at most the number of racing retries, as Tower's is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots in the sliding window.
pub const SLOTS: usize = 10;

/// Linkerd's defaults.
pub const DEFAULT_RATIO: f64 = 0.2;
pub const DEFAULT_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// What one retry costs, in milli-retries.
const RETRY_COST: i64 = 1000;

/// Shared by every request of one scope (a route, say); put it in an `Arc`.
#[derive(Debug)]
pub struct RetryBudget {
    /// Milli-retries one original request deposits.
    deposit: i64,
    /// Milli-retries always available over the window (the floor).
    reserve: i64,
    slot_nanos: u64,
    start: Instant,
    slots: [AtomicU64; SLOTS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(DEFAULT_RATIO, DEFAULT_MIN_PER_SECOND, DEFAULT_WINDOW)
    }
}

impl RetryBudget {
    /// `ratio` is clamped to `0.0..=1000.0`; a window shorter than [`SLOTS`] ms is raised to
    /// that.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        Self::new_at(ratio, min_per_second, window, Instant::now())
    }

    /// As [`RetryBudget::new`], with the window's time origin given (for tests).
    pub fn new_at(ratio: f64, min_per_second: u32, window: Duration, start: Instant) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let window = window.max(Duration::from_millis(SLOTS as u64));
        let reserve = (f64::from(min_per_second) * window.as_secs_f64() * RETRY_COST as f64)
            .min(i32::MAX as f64) as i64;
        RetryBudget {
            deposit: (ratio * RETRY_COST as f64).round() as i64,
            reserve,
            slot_nanos: (window.as_nanos() / SLOTS as u128).min(u128::from(u64::MAX)) as u64,
            start,
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one original request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry from the budget; false when the budget is spent and the request must
    /// not be retried.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    pub fn deposit_at(&self, now: Instant) {
        if self.deposit > 0 {
            self.add(self.epoch(now), self.deposit);
        }
    }

    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        if self.balance_at_epoch(epoch) < RETRY_COST {
            return false;
        }
        self.add(epoch, -RETRY_COST);
        true
    }

    /// Milli-retries available now, the floor included.
    pub fn balance_at(&self, now: Instant) -> i64 {
        self.balance_at_epoch(self.epoch(now))
    }

    fn balance_at_epoch(&self, epoch: u32) -> i64 {
        self.reserve
            + self
                .slots
                .iter()
                .map(|slot| {
                    let (e, balance) = unpack(slot.load(Ordering::Acquire));
                    if epoch.wrapping_sub(e) < SLOTS as u32 {
                        i64::from(balance)
                    } else {
                        0
                    }
                })
                .sum::<i64>()
    }

    /// The window slot `now` falls in; time before `start` counts as slot 0. Wraps after 2^32
    /// slots (136 years with the default window).
    fn epoch(&self, now: Instant) -> u32 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        (nanos / u128::from(self.slot_nanos)) as u32
    }

    fn add(&self, epoch: u32, amount: i64) {
        let slot = &self.slots[epoch as usize % SLOTS];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let (e, balance) = unpack(current);
            // A slot last written a whole window ago (or more) starts over.
            let base = if e == epoch { i64::from(balance) } else { 0 };
            let next = pack(
                epoch,
                (base + amount).clamp(i32::MIN.into(), i32::MAX.into()),
            );
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

fn pack(epoch: u32, balance: i64) -> u64 {
    (u64::from(epoch) << 32) | u64::from(balance as i32 as u32)
}

fn unpack(v: u64) -> (u32, i32) {
    ((v >> 32) as u32, v as u32 as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn withdraw_all(b: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while b.try_withdraw_at(now) {
            n += 1;
            assert!(n < 1_000_000, "budget never runs out");
        }
        n
    }

    #[test]
    fn under_budget_retries_are_allowed() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(0.2, 0, DEFAULT_WINDOW, t0);
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        // 20 % of 100 requests.
        for i in 0..20 {
            assert!(b.try_withdraw_at(t0 + secs(0.5)), "retry {i}");
        }
    }

    #[test]
    fn over_budget_retries_are_refused() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(0.2, 0, DEFAULT_WINDOW, t0);
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 20);
        assert!(!b.try_withdraw_at(t0));
        // Five more requests buy one more retry.
        for _ in 0..5 {
            b.deposit_at(t0 + secs(1.0));
        }
        assert_eq!(withdraw_all(&b, t0 + secs(1.0)), 1);
    }

    #[test]
    fn no_traffic_and_no_floor_means_no_retries() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(0.2, 0, DEFAULT_WINDOW, t0);
        assert!(!b.try_withdraw_at(t0));
        let none = RetryBudget::new_at(0.0, 0, DEFAULT_WINDOW, t0);
        for _ in 0..1000 {
            none.deposit_at(t0);
        }
        assert!(!none.try_withdraw_at(t0));
    }

    #[test]
    fn floor_allows_retries_at_low_traffic() {
        let t0 = Instant::now();
        // Default: 10/s over 10 s = 100 retries with no traffic at all.
        let b = RetryBudget::new_at(DEFAULT_RATIO, DEFAULT_MIN_PER_SECOND, DEFAULT_WINDOW, t0);
        assert_eq!(withdraw_all(&b, t0), 100);
        // The floor adds to the ratio: 50 requests give 10 more.
        let b = RetryBudget::new_at(DEFAULT_RATIO, DEFAULT_MIN_PER_SECOND, DEFAULT_WINDOW, t0);
        for _ in 0..50 {
            b.deposit_at(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 110);
    }

    #[test]
    fn deposits_expire_with_the_window() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(0.2, 0, DEFAULT_WINDOW, t0);
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        // Still in the window 9.9 s later.
        assert_eq!(b.balance_at(t0 + secs(9.9)), 20_000);
        // A whole window later, gone.
        assert_eq!(b.balance_at(t0 + secs(10.0)), 0);
        assert!(!b.try_withdraw_at(t0 + secs(10.5)));
        // And long after (the slot is reused for a new epoch, not added to).
        for _ in 0..10 {
            b.deposit_at(t0 + secs(100.0));
        }
        assert_eq!(withdraw_all(&b, t0 + secs(100.0)), 2);
    }

    #[test]
    fn withdrawals_expire_so_the_floor_refills() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(0.2, 1, DEFAULT_WINDOW, t0);
        assert_eq!(withdraw_all(&b, t0), 10);
        assert_eq!(withdraw_all(&b, t0 + secs(5.0)), 0);
        // The withdrawals of t0 left the window.
        assert_eq!(withdraw_all(&b, t0 + secs(10.0)), 10);
    }

    #[test]
    fn window_slides_slot_by_slot() {
        let t0 = Instant::now();
        let b = RetryBudget::new_at(1.0, 0, DEFAULT_WINDOW, t0);
        for s in 0..10 {
            b.deposit_at(t0 + secs(f64::from(s)));
        }
        assert_eq!(b.balance_at(t0 + secs(9.5)), 10_000);
        assert_eq!(b.balance_at(t0 + secs(10.5)), 9_000);
        assert_eq!(b.balance_at(t0 + secs(15.5)), 4_000);
        assert_eq!(b.balance_at(t0 + secs(19.5)), 0);
    }

    #[test]
    fn concurrent_use_keeps_counts() {
        let t0 = Instant::now();
        let b = std::sync::Arc::new(RetryBudget::new_at(0.5, 0, DEFAULT_WINDOW, t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        b.deposit_at(t0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.balance_at(t0), 2_000_000);
    }
}
