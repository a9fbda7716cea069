//! Flows counted by shape (source identity, destination, port, method, path prefix), what
//! `ambit policy suggest` proposes rules from. A bounded table: past its bound the least
//! recently seen shapes go, a sixteenth of the table at a time so a flood of new shapes costs
//! each one little.
//!
//! The data path either looks a shape up per flow (a read lock and a hash of borrowed
//! strings: the waypoint) or keeps the [`Shape`] it got beside what it caches per flow's label
//! set and records on it directly (two atomic adds: ztunnel).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use ambit_proto::api::telemetry::FlowShape;
use parking_lot::RwLock;

use super::unix_ms;

/// A shape as the data path names it, borrowing its strings. ztunnel fills the destination
/// workload and namespace; the waypoint the service, method and path prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ShapeView<'a> {
    pub source_identity: &'a str,
    pub destination_workload: &'a str,
    pub destination_namespace: &'a str,
    pub destination_service: &'a str,
    pub destination_port: u32,
    pub method: &'a str,
    pub path_prefix: &'a str,
}

/// The counters of one shape.
pub struct Shape {
    source_identity: Box<str>,
    destination_workload: Box<str>,
    destination_namespace: Box<str>,
    destination_service: Box<str>,
    destination_port: u32,
    method: Box<str>,
    path_prefix: Box<str>,
    count: AtomicU64,
    failed: AtomicU64,
    first_seen: i64,
    last_seen: AtomicI64,
    /// Cleared when the table lets it go; a holder that records on it again puts it back.
    held: AtomicBool,
}

impl Shape {
    fn new(v: &ShapeView<'_>) -> Shape {
        let now = unix_ms();
        Shape {
            source_identity: v.source_identity.into(),
            destination_workload: v.destination_workload.into(),
            destination_namespace: v.destination_namespace.into(),
            destination_service: v.destination_service.into(),
            destination_port: v.destination_port,
            method: v.method.into(),
            path_prefix: v.path_prefix.into(),
            count: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_seen: now,
            last_seen: AtomicI64::new(now),
            held: AtomicBool::new(true),
        }
    }

    pub fn view(&self) -> ShapeView<'_> {
        ShapeView {
            source_identity: &self.source_identity,
            destination_workload: &self.destination_workload,
            destination_namespace: &self.destination_namespace,
            destination_service: &self.destination_service,
            destination_port: self.destination_port,
            method: &self.method,
            path_prefix: &self.path_prefix,
        }
    }

    fn to_proto(&self) -> FlowShape {
        FlowShape {
            source_identity: self.source_identity.to_string(),
            destination_workload: self.destination_workload.to_string(),
            destination_namespace: self.destination_namespace.to_string(),
            destination_service: self.destination_service.to_string(),
            destination_port: self.destination_port,
            method: self.method.to_string(),
            path_prefix: self.path_prefix.to_string(),
            count: self.count.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            first_seen_unix_ms: self.first_seen,
            last_seen_unix_ms: self.last_seen.load(Ordering::Relaxed),
        }
    }
}

pub struct Shapes {
    max: usize,
    hasher: RandomState,
    table: RwLock<Table>,
}

#[derive(Default)]
struct Table {
    /// By the hash of the shape's view; a bucket holds the rare collisions.
    by_hash: HashMap<u64, Vec<Arc<Shape>>>,
    len: usize,
}

impl Shapes {
    pub fn new(max: usize) -> Shapes {
        Shapes {
            max: max.max(1),
            hasher: RandomState::new(),
            table: RwLock::default(),
        }
    }

    fn hash(&self, view: &ShapeView<'_>) -> u64 {
        self.hasher.hash_one(view)
    }

    /// The shape's counters, added to the table if new.
    pub fn get(&self, view: &ShapeView<'_>) -> Arc<Shape> {
        let hash = self.hash(view);
        if let Some(found) = self.table.read().find(hash, view) {
            return found;
        }
        let mut table = self.table.write();
        if let Some(found) = table.find(hash, view) {
            return found;
        }
        let shape = Arc::new(Shape::new(view));
        self.insert(&mut table, hash, shape.clone());
        shape
    }

    /// One more flow of this shape, failed or not.
    pub fn record(&self, shape: &Arc<Shape>, failed: bool) {
        shape.count.fetch_add(1, Ordering::Relaxed);
        if failed {
            shape.failed.fetch_add(1, Ordering::Relaxed);
        }
        shape.last_seen.store(unix_ms(), Ordering::Relaxed);
        if !shape.held.load(Ordering::Relaxed) {
            // Let go while its holder kept it: seen again, so it is back.
            let hash = self.hash(&shape.view());
            let mut table = self.table.write();
            if !shape.held.swap(true, Ordering::Relaxed)
                && table.find(hash, &shape.view()).is_none()
            {
                self.insert(&mut table, hash, shape.clone());
            }
        }
    }

    /// Looks the shape up and records one flow of it.
    pub fn count(&self, view: &ShapeView<'_>, failed: bool) {
        let shape = self.get(view);
        self.record(&shape, failed);
    }

    /// Every shape held, as the report carries them.
    pub fn snapshot(&self) -> Vec<FlowShape> {
        let table = self.table.read();
        let mut shapes: Vec<FlowShape> = table
            .by_hash
            .values()
            .flatten()
            .map(|s| s.to_proto())
            .collect();
        shapes.sort_by_key(|s| s.first_seen_unix_ms);
        shapes
    }

    pub fn len(&self) -> usize {
        self.table.read().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, table: &mut Table, hash: u64, shape: Arc<Shape>) {
        if table.len >= self.max {
            self.evict(table);
        }
        table.by_hash.entry(hash).or_default().push(shape);
        table.len += 1;
    }

    /// Lets the least recently seen sixteenth go (at least one).
    fn evict(&self, table: &mut Table) {
        let mut seen: Vec<i64> = table
            .by_hash
            .values()
            .flatten()
            .map(|s| s.last_seen.load(Ordering::Relaxed))
            .collect();
        let n = (self.max / 16).max(1).min(seen.len());
        if n == 0 {
            return;
        }
        let (_, cutoff, _) = seen.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let mut removed = 0;
        table.by_hash.retain(|_, bucket| {
            bucket.retain(|s| {
                let keep = removed >= n || s.last_seen.load(Ordering::Relaxed) > cutoff;
                if !keep {
                    s.held.store(false, Ordering::Relaxed);
                    removed += 1;
                }
                keep
            });
            !bucket.is_empty()
        });
        table.len -= removed;
    }
}

impl Table {
    fn find(&self, hash: u64, view: &ShapeView<'_>) -> Option<Arc<Shape>> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|s| s.view() == *view)
            .cloned()
    }
}

/// The path's first segment with its slashes: "/api/" of "/api/v1/users/7", "/" for the
/// root, the whole path when it has one segment ("/health"); the query is left out.
pub fn path_prefix(path: &str) -> &str {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.len() <= 1 {
        return "/";
    }
    match path[1..].find('/') {
        Some(i) => &path[..i + 2],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(port: u32) -> ShapeView<'static> {
        ShapeView {
            source_identity: "spiffe://cluster.local/ns/demo/sa/client",
            destination_workload: "reviews-v1",
            destination_namespace: "demo",
            destination_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn path_prefixes() {
        for (path, prefix) in [
            ("/api/v1/users/7", "/api/"),
            ("/", "/"),
            ("", "/"),
            ("/health", "/health"),
            ("/health?full=1", "/health"),
            ("/api/", "/api/"),
            ("/?q=1", "/"),
        ] {
            assert_eq!(path_prefix(path), prefix, "{path}");
        }
    }

    #[test]
    fn counts_by_shape_and_lets_the_least_recently_seen_go() {
        let shapes = Shapes::new(16);
        shapes.count(&view(8080), false);
        shapes.count(&view(8080), true);
        shapes.count(&view(9090), false);
        let snap = shapes.snapshot();
        assert_eq!(snap.len(), 2);
        let s8080 = snap.iter().find(|s| s.destination_port == 8080).unwrap();
        assert_eq!((s8080.count, s8080.failed), (2, 1));
        assert_eq!(s8080.destination_workload, "reviews-v1");

        // A holder keeps port 1; the table fills past its bound; 1 was seen least recently.
        let held = shapes.get(&view(1));
        shapes.record(&held, false);
        std::thread::sleep(std::time::Duration::from_millis(5));
        for port in 2..40 {
            shapes.count(&view(port), false);
        }
        assert!(shapes.len() <= 16, "bounded: {}", shapes.len());
        assert!(!shapes.snapshot().iter().any(|s| s.destination_port == 1));
        // Seen again through the holder's handle: back in the table, its count kept.
        shapes.record(&held, true);
        let back = shapes.snapshot();
        let one = back.iter().find(|s| s.destination_port == 1).unwrap();
        assert_eq!((one.count, one.failed), (2, 1));
        assert!(shapes.len() <= 16);
    }
}
