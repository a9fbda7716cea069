//! Which services each workload backs, as one sorted set of (endpoint, service) pairs: a
//! workload's services are the range of entries under its uid. The uid is read off the
//! service's own endpoint list, so the index keeps neither a key nor a list per workload:
//! a map from uid to a list of services was a B-tree entry of 32 B and a 32 B block for the
//! list per workload, where an entry here is 16 B (`state_memory`, served shape).

use std::cmp::Ordering;
use std::sync::Arc;

use equivalent::{Comparable, Equivalent};

use super::{Service, Set};

/// That `service` lists workload `service.endpoints[index]` among its endpoints. Ordered by
/// that uid, then by the service's key.
#[derive(Debug, Clone)]
pub(super) struct Backing {
    pub(super) service: Arc<Service>,
    index: u32,
}

impl Backing {
    /// Every endpoint `service` lists.
    pub(super) fn of(service: &Arc<Service>) -> impl Iterator<Item = Backing> + '_ {
        (0..service.endpoints.len()).map(|i| Backing {
            service: service.clone(),
            // `Endpoints::of` refuses more endpoints than a u32 counts.
            index: i as u32,
        })
    }

    pub(super) fn uid(&self) -> &str {
        self.service.endpoints.get(self.index as usize)
    }

    fn pair(&self) -> (&str, &str) {
        (self.uid(), &self.service.key)
    }
}

impl PartialEq for Backing {
    fn eq(&self, other: &Self) -> bool {
        self.pair() == other.pair()
    }
}

impl Eq for Backing {}

impl PartialOrd for Backing {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Backing {
    fn cmp(&self, other: &Self) -> Ordering {
        self.pair().cmp(&other.pair())
    }
}

/// Just before (or after) every entry of one workload (by uid): the ends of its range. Equal
/// to no entry, so that imbl's search, which takes an equal key for the one it seeks, finds
/// the range's edge and not one entry within it.
struct Edge<'a> {
    uid: &'a str,
    after: bool,
}

impl Equivalent<Backing> for Edge<'_> {
    fn equivalent(&self, _: &Backing) -> bool {
        false
    }
}

impl Comparable<Backing> for Edge<'_> {
    fn compare(&self, b: &Backing) -> Ordering {
        match self.uid.cmp(b.uid()) {
            Ordering::Equal if self.after => Ordering::Greater,
            Ordering::Equal => Ordering::Less,
            other => other,
        }
    }
}

/// The one entry of a workload (by uid) and a service (by key).
struct Pair<'a>(&'a str, &'a str);

impl Equivalent<Backing> for Pair<'_> {
    fn equivalent(&self, b: &Backing) -> bool {
        (self.0, self.1) == b.pair()
    }
}

impl Comparable<Backing> for Pair<'_> {
    fn compare(&self, b: &Backing) -> Ordering {
        (self.0, self.1).cmp(&b.pair())
    }
}

/// The services workload `uid` backs, in the order of their keys.
pub(super) fn services_of<'a>(
    index: &'a Set<Backing>,
    uid: &str,
) -> impl Iterator<Item = &'a Arc<Service>> + use<'a> {
    index
        .range(Edge { uid, after: false }..Edge { uid, after: true })
        .map(|b| &b.service)
}

/// Takes `service`'s entries out of `index`, those that are its own (not a service since put
/// in under the same key).
pub(super) fn remove(index: &mut Set<Backing>, service: &Arc<Service>) {
    for uid in service.endpoints.iter() {
        let pair = Pair(uid, &service.key);
        if index
            .get(&pair)
            .is_some_and(|b| Arc::ptr_eq(&b.service, service))
        {
            index.remove(&pair);
        }
    }
}
