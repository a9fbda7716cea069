//! Many entries put into a state's B-tree at once, in an order that fills its leaves.
//!
//! imbl's B-tree splits a full leaf (16 entries) at its middle and never merges the halves
//! again while they only grow, so entries inserted in key order (as a response lists its
//! workloads) leave every leaf half full: 56 B per workload by uid, 77 B by address, twice
//! what the entries are. Inserted every other one first and the rest after, each leaf the
//! first pass left half full takes the keys between its own and comes out full. Nothing
//! depends on that for correctness: inserted in any order the map holds the same entries.

use super::Map;

/// Puts every `(key, value)` of `entries` into `map`; a key listed more than once keeps its
/// last value, as inserting them in turn would. Calls `replaced` with each value `map` held
/// before under a key of `entries` (not with the earlier values of a key listed twice, which
/// never went in).
pub(super) fn insert_all<K: Ord + Clone, V: Clone>(
    map: &mut Map<K, V>,
    entries: Vec<(K, V)>,
    mut replaced: impl FnMut(V),
) {
    for (k, v) in in_fill_order(entries, |(k, _)| k) {
        if let Some(old) = map.insert(k, v) {
            replaced(old);
        }
    }
}

/// `entries` in the order that fills a B-tree's leaves, each key (`key` of an entry) once: the
/// last entry listed under it.
pub(super) fn in_fill_order<T, K: Ord + ?Sized>(
    mut entries: Vec<T>,
    key: impl Fn(&T) -> &K,
) -> impl Iterator<Item = T> {
    // Stable, so of a key listed twice the later stays last; then only it is kept.
    entries.sort_by(|a, b| key(a).cmp(key(b)));
    let mut kept: Vec<T> = Vec::with_capacity(entries.len());
    for e in entries {
        match kept.last_mut() {
            Some(last) if key(last) == key(&e) => *last = e,
            _ => kept.push(e),
        }
    }
    let (evens, odds): (Vec<_>, Vec<_>) =
        kept.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    evens.into_iter().chain(odds).map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_goes_in_and_the_last_of_a_key_wins() {
        let mut map: Map<u32, &str> = Map::new();
        map.insert(7, "held");
        let mut entries: Vec<(u32, &str)> = (0..1_000).rev().map(|k| (k, "first")).collect();
        entries.push((5, "second"));
        let mut replaced = vec![];
        insert_all(&mut map, entries, |v| replaced.push(v));
        assert_eq!(map.len(), 1_000);
        assert_eq!(map.get(&5), Some(&"second"));
        assert_eq!(map.get(&999), Some(&"first"));
        assert_eq!(replaced, ["held"]);
        assert!(map.keys().copied().eq(0..1_000));
    }

    #[test]
    fn a_key_listed_twice_replaces_only_what_the_map_held() {
        let mut map: Map<u32, u32> = Map::new();
        let mut replaced = vec![];
        insert_all(&mut map, vec![(1, 1), (1, 2), (0, 0)], |v| replaced.push(v));
        assert_eq!(map.get(&1), Some(&2));
        assert!(replaced.is_empty());
    }
}
