//! A counting global allocator, so a bench can say how many heap bytes a structure costs rather
//! than read a page-granular, never-shrinking RSS. Bytes are counted per thread class: a bench
//! that runs a server and its clients in one process puts them on different runtimes and tags
//! those threads, so the server's figure does not include what its clients hold.
//!
//! Install it in a bench binary with `#[global_allocator] static A: Counting = Counting;`.
//! A block freed on a thread of another class than the one that allocated it is credited to the
//! freeing class; tasks that keep to their own runtime make that rare.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

/// Who a thread allocates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The code under measurement (the default for every thread).
    Measured = 0,
    /// Load generators, clients and other harness threads.
    Harness = 1,
}

const CLASSES: usize = 2;

static LIVE: [AtomicIsize; CLASSES] = [AtomicIsize::new(0), AtomicIsize::new(0)];
static PEAK: [AtomicIsize; CLASSES] = [AtomicIsize::new(0), AtomicIsize::new(0)];

thread_local! {
    static CLASS: Cell<u8> = const { Cell::new(Class::Measured as u8) };
}

/// Tags the calling thread (e.g. from a tokio runtime's `on_thread_start`).
pub fn set_thread_class(class: Class) {
    CLASS.with(|c| c.set(class as u8));
}

fn class() -> usize {
    // During thread teardown the slot may be gone; such frees go to the measured class.
    CLASS.try_with(Cell::get).unwrap_or(0) as usize
}

fn add(bytes: isize) {
    let c = class();
    let now = LIVE[c].fetch_add(bytes, Ordering::Relaxed) + bytes;
    // Loading first keeps the common case (no new peak) to one atomic write.
    if now > PEAK[c].load(Ordering::Relaxed) {
        PEAK[c].fetch_max(now, Ordering::Relaxed);
    }
}

/// Heap bytes currently allocated by threads of `class` (net of their frees).
pub fn live(class: Class) -> isize {
    LIVE[class as usize].load(Ordering::Relaxed)
}

/// The highest `live(class)` since the last [`reset_peak`].
pub fn peak(class: Class) -> isize {
    PEAK[class as usize].load(Ordering::Relaxed)
}

/// Starts a new peak window at the current live figure.
pub fn reset_peak(class: Class) {
    PEAK[class as usize].store(live(class), Ordering::Relaxed);
}

/// Forwards to the system allocator, counting bytes.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counters have no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`), for a cross-check against the counts.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
