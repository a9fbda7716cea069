//! The config a proxy serves with, as one value swapped whole: readers (every connection,
//! every request) take the current version without a lock and never wait for an update; an
//! update builds the next version beside it and swaps it in. The version replaced is freed by
//! the updater, off the data path, once no reader holds it: freeing a 50k-workload state is
//! milliseconds of work a data-path worker must not do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// How long the updater waits for readers to let go of a replaced version before it leaves the
/// freeing to the last of them. Most readers hold a version for one connection's setup; a
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

    /// Swaps `next` in and frees the version it replaced once no reader holds it. Call it from
    /// the updater's own thread (a blocking one), never from a data-path worker: it may wait
    /// for readers.
    pub fn replace(&self, next: T) {
        let old = self.value.swap(Arc::new(next));
        retire(old);
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
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    fn a_replaced_version_is_freed_by_the_updater_after_its_last_reader() {
        let dropped_on = Arc::new(parking_lot::Mutex::new(None));
        let current = Arc::new(Current::new(Tracked {
            dropped_on: dropped_on.clone(),
        }));
        // A reader holds the first version while the update happens.
        let held = current.get();
        let reader = {
            let released = Arc::new(AtomicUsize::new(0));
            let r = released.clone();
            let handle = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                r.store(1, Ordering::SeqCst);
                drop(held);
                std::thread::current().id()
            });
            (handle, released)
        };
        current.replace(Tracked {
            dropped_on: Arc::new(parking_lot::Mutex::new(None)),
        });
        assert_eq!(
            reader.1.load(Ordering::SeqCst),
            1,
            "replace returned before the reader let go"
        );
        let reader_thread = reader.0.join().unwrap();
        let freed_on = dropped_on.lock().expect("the old version was freed");
        assert_eq!(freed_on, std::thread::current().id());
        assert_ne!(freed_on, reader_thread);
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
