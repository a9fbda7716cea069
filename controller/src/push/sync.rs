//! Where each subscribed proxy stands: the config version the controller wants it to hold, and
//! whether it has ACKed it, for `/debug/syncz` and `ambit status`.

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// Shared between the discovery server (which writes) and the admin endpoint (which reads).
#[derive(Debug, Clone, Default)]
pub struct SyncTable {
    inner: Arc<Mutex<BTreeMap<(String, String), SyncStatus>>>,
}

impl SyncTable {
    pub fn update(&self, kind: &str, name: &str, f: impl FnOnce(&mut SyncStatus)) {
        let mut t = self.inner.lock();
        let entry = t
            .entry((kind.to_string(), name.to_string()))
            .or_insert_with(|| SyncStatus {
                kind: kind.into(),
                name: name.into(),
                desired_version: String::new(),
                acked_version: None,
                last_nack: None,
            });
        f(entry);
    }

    pub fn remove(&self, kind: &str, name: &str) {
        self.inner
            .lock()
            .remove(&(kind.to_string(), name.to_string()));
    }

    pub fn snapshot(&self) -> Vec<SyncStatus> {
        self.inner.lock().values().cloned().collect()
    }
}
