//! ztunnel's side of discovery: the config the controller (or a local file) sends is applied
//! to the shared [`ProxyState`] the data path reads, and readiness waits for the first update.
//! The subscription itself is `ambit_discovery`'s [`Client`], subscribed for this node.

use std::collections::HashMap;
use std::sync::Arc;

use ambit_discovery::client::{self, Apply, Client};
use ambit_discovery::{ControllerLink, Current, Lookups, ProxyState, StateError};
use ambit_proto::api::discovery::{ProxyKind, SubscribeResponse, Subscriber};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The limits ztunnel's discovery client applies to what the controller sends (benches that
/// play a ztunnel use the same).
pub use ambit_discovery::client::{MAX_CONFIG_MESSAGE, MAX_CONFIG_RESPONSE};

/// Applies config to the shared state; the discovery client answers ACK or NACK from it.
pub struct Applier {
    pub state: Arc<Current<ProxyState>>,
    /// Its per-pair counters are resolved again from each new config version.
    pub metrics: Arc<Metrics>,
    /// Counts applied updates; `0` until the first one, which is what readiness waits for.
    pub applied: watch::Sender<u64>,
}

impl Apply for Applier {
    type Error = StateError;

    /// The next state is built beside the current one (on the caller's thread, a blocking
    /// one) and swapped in whole, so connections keep reading the current one meanwhile and
    /// never wait for the update. Only one task applies (the discovery client or the local
    /// file), so no update is lost between the two.
    fn apply(&self, response: &SubscribeResponse) -> Result<(), StateError> {
        let next = self.state.get().applied(response)?;
        self.state.replace(next);
        self.metrics.config_changed();
        self.applied.send_modify(|n| *n += 1);
        Ok(())
    }

    fn versions(&self) -> HashMap<String, String> {
        self.state.load().known_versions()
    }
}

/// The discovery client for ztunnel on `node`: subscribed as that node's ztunnel, on demand
/// when it has `lookups`.
pub fn client(
    link: ControllerLink,
    node: &str,
    applier: Arc<Applier>,
    lookups: Option<Arc<Lookups>>,
) -> Client<Applier> {
    let client = Client::new(link, subscriber(node), applier);
    match lookups {
        Some(l) => client.on_demand(l),
        None => client,
    }
}

/// How ztunnel on `node` names itself to the controller (discovery and telemetry alike).
pub fn subscriber(node: &str) -> Subscriber {
    client::subscriber(ProxyKind::Ztunnel, node, "")
}

#[cfg(test)]
mod tests {
    use ambit_discovery::testing::{response, uid, workload};
    use ambit_proto::api::workload as wl;

    use super::*;

    #[test]
    fn readiness_counts_applied_updates_only() {
        let (applied, applied_rx) = watch::channel(0);
        let applier = Applier {
            state: Arc::new(Current::default()),
            metrics: Arc::new(Metrics::new()),
            applied,
        };
        let good = response(
            true,
            vec![workload("a", &["10.244.1.2"], wl::Protocol::Hbone)],
        );
        let bad = response(
            true,
            vec![workload("a", &["not-an-ip"], wl::Protocol::Hbone)],
        );
        // (response, NACK expected, applied count after)
        for (r, nack, count) in [(&good, false, 1), (&bad, true, 1), (&good, false, 2)] {
            let answer = client::answer(&applier, r);
            assert_eq!(
                !answer.error_detail.is_empty(),
                nack,
                "{}",
                answer.error_detail
            );
            assert_eq!(*applied_rx.borrow(), count);
        }
        assert!(applier.state.load().workload(&uid("a")).is_some());
        assert_eq!(
            applier
                .versions()
                .get(&format!("workload/{}", uid("a")))
                .map(String::as_str),
            Some("1")
        );
    }
}
