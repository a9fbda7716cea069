//! The waypoint's config: the mesh state its discovery stream keeps (services, workloads,
//! policies, routes, traffic policies) and the routes and traffic policies compiled from it,
//! built together on a copy and swapped in whole, so a request sees one consistent version and
//! never waits for an update. What must outlive a version (circuit breaker counts, ejections)
//! is carried from the previous one by the compile.

use std::sync::Arc;

use ambit_discovery::Current;
use ambit_discovery::state::ProxyState;
use tokio::sync::watch;

use crate::route::Routes;
use crate::traffic::Traffic;

impl ambit_discovery::Apply for Store {
    type Error = String;

    fn apply(
        &self,
        response: &ambit_proto::api::discovery::SubscribeResponse,
    ) -> Result<(), String> {
        Store::apply(self, response)
    }

    fn versions(&self) -> std::collections::HashMap<String, String> {
        self.current().mesh.known_versions()
    }
}

/// One consistent version of the config.
#[derive(Default)]
pub struct Snapshot {
    pub mesh: ProxyState,
    pub routes: Routes,
    /// Every service's traffic policy (or the defaults) and its breaker and ejections.
    pub traffic: Traffic,
}

/// Holds the current snapshot; updated by the discovery client.
pub struct Store {
    current: Current<Snapshot>,
    /// Counts applied updates; `0` until the first, which readiness waits for.
    applied: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            current: Current::default(),
            applied: watch::channel(0).0,
        }
    }
}

impl Store {
    /// The snapshot to serve one request or tunnel with (no lock: an update never makes a
    /// request wait).
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.get()
    }

    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Applies a discovery response on a copy of the current state, compiles its routes and
    /// traffic policies and swaps all in; a response that fails any is refused whole (NACK)
    /// and nothing changes.
    pub fn apply(
        &self,
        response: &ambit_proto::api::discovery::SubscribeResponse,
    ) -> Result<(), String> {
        let current = self.current();
        let mut mesh = current.mesh.clone();
        mesh.apply(response).map_err(|e| e.to_string())?;
        let routes = Routes::from_api(
            &mesh
                .routes()
                .map(|(_, r)| (**r).clone())
                .collect::<Vec<_>>(),
        )
        .map_err(|e| e.to_string())?;
        let traffic = Traffic::compile(&mesh, &current.traffic).map_err(|e| e.to_string())?;
        // Let go of it first, so that unless a request still holds it, the snapshot replaced is
        // freed here, on the updater's (blocking) thread.
        drop(current);
        self.current.replace(Snapshot {
            mesh,
            routes,
            traffic,
        });
        self.applied.send_modify(|n| *n += 1);
        Ok(())
    }
}
