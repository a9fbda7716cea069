//! One lock per namespace, for the root certificate ConfigMap the namespace's waypoint Gateways
//! share. Each Gateway's reconcile computes that ConfigMap's owner list from the Gateway cache
//! and applies it whole; two reconciles of one namespace running at once (the runtime runs
//! different Gateways concurrently) could compute their lists from different moments of the
//! cache and the older list could land last, dropping an owner until the next resync. Holding
//! the namespace's lock from computing the list to the end of the write makes the last write
//! the one computed last. Entries are removed when nobody holds or waits for them, so the map
//! stays as small as the set of namespaces being reconciled right now.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub(super) struct NamespaceLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held while a namespace's root certificate ConfigMap is read, judged and written.
pub(super) struct NamespaceGuard<'a> {
    locks: &'a NamespaceLocks,
    namespace: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl NamespaceLocks {
    /// Waits for `namespace`'s lock (a tokio lock: it is held across API calls).
    pub(super) async fn lock(&self, namespace: &str) -> NamespaceGuard<'_> {
        let lock = self
            .locks
            .lock()
            .entry(namespace.to_string())
            .or_default()
            .clone();
        NamespaceGuard {
            locks: self,
            namespace: namespace.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().len()
    }
}

impl Drop for NamespaceGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.locks.locks.lock();
        // Only the map's reference left: nobody holds it and nobody waits (a waiter cloned
        // its Arc under this same map lock).
        if locks
            .get(&self.namespace)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_namespace_is_serialised_others_are_not_and_the_map_empties() {
        let locks = Arc::new(NamespaceLocks::default());
        let first = locks.lock("demo").await;
        // Another namespace is not held up.
        drop(
            tokio::time::timeout(Duration::from_secs(1), locks.lock("other"))
                .await
                .unwrap(),
        );
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("demo").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the same namespace was not serialised"
        );
        assert_eq!(locks.len(), 1, "the waiter keeps the entry");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(locks.len(), 0);
    }
}
