//! The config a proxy serves with, as one value swapped whole: readers (every connection,
//! every request) take the current version without a lock and never wait for an update; an
//! update builds the next version beside it and swaps it in. The version replaced is freed by
//! the updater, or once its readers let go by a thread of its own, never by a reader: freeing
//! a 50k-workload state is milliseconds of work a data-path worker must not do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// How long a retiring thread waits for readers to let go of a replaced version before it
/// leaves the freeing to the last of them. Most readers hold a version for one connection's setup; a
/// long request through a waypoint may hold it longer, and then frees it itself.
const RETIRE_WAIT: Duration = Duration::from_secs(2);
/// The first pause between looks at the readers; it doubles up to the last.
const RETIRE_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));

/// The current version of `T`; see the module docs.
pub struct Current<T> {
    value: ArcSwap<T>,
}

impl<T: Default> Default for Current<T> {
    fn default() -> Self {
        Current::new(T::default())
    }
}

impl<T> Current<T> {
    pub fn new(value: T) -> Self {
        Current {
            value: ArcSwap::from_pointee(value),
        }
    }

    /// The current version, for a short look (one lookup, one decision): no lock, no
    /// reference count touched. Hold it across no await.
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.value.load()
    }

    /// The current version, to keep (a request that must see one version throughout).
    pub fn get(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Swaps `next` in; the version it replaced is freed here if no reader holds it, else by
    /// a thread of its own once they let go. Call it from the updater's own thread (a blocking
    /// one), never from a data-path worker.
    pub fn replace(&self, next: T)
    where
        T: Send + Sync + 'static,
    {
        let old = self.value.swap(Arc::new(next));
        if let Err(held) = Arc::try_unwrap(old).map(drop) {
            // Most readers hold a version for microseconds; the update need not wait for them.
            let _ = std::thread::Builder::new()
                .name("config-retire".into())
                .spawn(move || retire(held));
        }
    }
}

/// Drops `old` here once this is its last holder; after [`RETIRE_WAIT`] the last reader
/// frees it.
fn retire<T>(mut old: Arc<T>) {
    let deadline = Instant::now() + RETIRE_WAIT;
    let mut pause = RETIRE_POLL.0;
    loop {
        match Arc::try_unwrap(old) {
            Ok(value) => {
                drop(value);
                return;
            }
            Err(shared) if Instant::now() < deadline => {
                old = shared;
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETIRE_POLL.1);
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts where it was dropped.
    struct Tracked {
        dropped_on: Arc<parking_lot::Mutex<Option<std::thread::ThreadId>>>,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            *self.dropped_on.lock() = Some(std::thread::current().id());
        }
    }

    #[test]
    fn a_replaced_version_is_freed_off_the_readers_thread_once_they_let_go() {
        let dropped_on = Arc::new(parking_lot::Mutex::new(None));
        let current = Current::new(Tracked {
            dropped_on: dropped_on.clone(),
        });
        // A reader holds the first version while the update happens; the update does not
        // wait for it.
        let held = current.get();
        current.replace(Tracked {
            dropped_on: Arc::new(parking_lot::Mutex::new(None)),
        });
        assert!(dropped_on.lock().is_none(), "freed while a reader held it");
        let reader = std::thread::spawn(move || {
            drop(held);
            std::thread::current().id()
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let freed_on = loop {
            if let Some(id) = *dropped_on.lock() {
                break id;
            }
            assert!(Instant::now() < deadline, "never freed");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_ne!(freed_on, reader, "the reader freed it");
        assert_ne!(freed_on, std::thread::current().id(), "the updater waited");
    }

    #[test]
    fn a_version_no_reader_holds_is_freed_by_the_updater() {
        let dropped_on = Arc::new(parking_lot::Mutex::new(None));
        let current = Current::new(Tracked {
            dropped_on: dropped_on.clone(),
        });
        current.replace(Tracked {
            dropped_on: Arc::new(parking_lot::Mutex::new(None)),
        });
        assert_eq!(*dropped_on.lock(), Some(std::thread::current().id()));
    }

    #[test]
    fn readers_see_the_new_version_at_once() {
        let current = Current::new(1u32);
        assert_eq!(**current.load(), 1);
        current.replace(2);
        assert_eq!(**current.load(), 2);
        assert_eq!(*current.get(), 2);
    }
}
