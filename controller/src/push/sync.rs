//! Where each subscribed proxy stands: the config version the controller wants it to hold, and
//! whether it has ACKed it, for `/debug/syncz` and `ambit status`.
//!
//! A proxy can have more than one subscription open for a while: a ztunnel that reconnects opens
//! the new one before the controller sees the old one end. Each subscription therefore keeps its
//! own row, and a proxy is shown as its newest open subscription; an older one that ends later
//! takes only its own row with it (it used to remove the proxy's row after the new subscription
//! had been ACKed, and the new one re-created it empty: `ackedVersion: null` for good).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// "ztunnel" or "waypoint".
    pub kind: String,
    /// The node (ztunnel) or `<namespace>/<name>` (waypoint).
    pub name: String,
    /// The version of the proxy's whole scope as the controller has it now.
    pub desired_version: String,
    /// The last version the proxy ACKed.
    pub acked_version: Option<String>,
    /// Why the proxy refused the last response, if it did.
    pub last_nack: Option<String>,
}

impl SyncStatus {
    pub fn in_sync(&self) -> bool {
        self.acked_version.as_deref() == Some(self.desired_version.as_str())
    }
}

/// `(kind, name)` of a proxy.
type Proxy = (String, String);

#[derive(Debug, Default)]
struct Inner {
    /// Each proxy's open subscriptions by the order they opened in.
    rows: Mutex<BTreeMap<Proxy, BTreeMap<u64, SyncStatus>>>,
    opened: AtomicU64,
}

/// Shared between the discovery server (which writes) and the admin endpoint (which reads).
#[derive(Debug, Clone, Default)]
pub struct SyncTable {
    inner: Arc<Inner>,
}

/// One subscription's row; dropping it removes the row.
#[derive(Debug)]
pub struct SyncEntry {
    table: Arc<Inner>,
    proxy: Proxy,
    id: u64,
}

impl SyncTable {
    /// A row for a new subscription of proxy `kind`/`name`, which from now on is what the
    /// table shows for that proxy.
    pub fn open(&self, kind: &str, name: &str) -> SyncEntry {
        let id = self.inner.opened.fetch_add(1, Ordering::Relaxed);
        let proxy = (kind.to_string(), name.to_string());
        let status = SyncStatus {
            kind: kind.into(),
            name: name.into(),
            desired_version: String::new(),
            acked_version: None,
            last_nack: None,
        };
        self.inner
            .rows
            .lock()
            .entry(proxy.clone())
            .or_default()
            .insert(id, status);
        SyncEntry {
            table: self.inner.clone(),
            proxy,
            id,
        }
    }

    /// Each proxy as its newest open subscription has it.
    pub fn snapshot(&self) -> Vec<SyncStatus> {
        let rows = self.inner.rows.lock();
        let newest = rows.values().filter_map(|subs| subs.values().next_back());
        newest.cloned().collect()
    }
}

impl SyncEntry {
    pub fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        let mut rows = self.table.rows.lock();
        if let Some(status) = rows
            .get_mut(&self.proxy)
            .and_then(|subs| subs.get_mut(&self.id))
        {
            f(status);
        }
    }
}

impl Drop for SyncEntry {
    fn drop(&mut self) {
        let mut rows = self.table.rows.lock();
        if let Some(subs) = rows.get_mut(&self.proxy) {
            subs.remove(&self.id);
            if subs.is_empty() {
                rows.remove(&self.proxy);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(table: &SyncTable) -> Vec<(String, Option<String>)> {
        table
            .snapshot()
            .into_iter()
            .map(|s| (s.desired_version, s.acked_version))
            .collect()
    }

    #[test]
    fn an_older_subscription_ending_late_leaves_the_newer_ones_row() {
        let table = SyncTable::default();
        let old = table.open("ztunnel", "node-a");
        old.update(|s| {
            s.desired_version = "v1".into();
            s.acked_version = Some("v1".into());
        });
        let new = table.open("ztunnel", "node-a");
        new.update(|s| s.desired_version = "v1".into());
        assert_eq!(shown(&table), [("v1".into(), None)], "the newest is shown");
        new.update(|s| s.acked_version = Some("v1".into()));
        drop(old);
        new.update(|s| s.desired_version = "v1".into());
        assert_eq!(shown(&table), [("v1".into(), Some("v1".into()))]);
        assert!(table.snapshot()[0].in_sync());
        // The newest ending first leaves the one before it shown.
        let newer = table.open("ztunnel", "node-a");
        assert_eq!(shown(&table), [(String::new(), None)]);
        drop(newer);
        assert_eq!(shown(&table), [("v1".into(), Some("v1".into()))]);
        drop(new);
        assert!(table.snapshot().is_empty());
    }
}
