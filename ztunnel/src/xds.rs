//! The discovery client: one stream to the controller, subscribed for this node. Each response
//! is applied whole or refused whole (NACK, with the reason, keeping the old config); when the
//! controller goes away, the last good config keeps serving and the client reconnects, telling
//! the controller what it holds so only differences are resent.

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::discovery::{
    ProxyKind, SubscribeRequest, SubscribeResponse, Subscriber, discovery_client::DiscoveryClient,
};
use ambit_proto::drain::DrainWatch;
use ambit_proto::response_parts::{PartError, Reassembly};
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::ca_client::status_detail;
use crate::controller_link::{ControllerLink, LinkError};
use crate::state::{ProxyState, StateError};

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("could not authenticate to the controller at {address}: {source}")]
    Credentials { address: String, source: LinkError },
    #[error("the controller at {address} refused the subscription ({:?}): {}", status.code(), status_detail(status))]
    Subscribe {
        address: String,
        status: tonic::Status,
    },
    #[error("the config stream from the controller at {address} is broken: {source}")]
    Parts { address: String, source: PartError },
    #[error("the stream from the controller at {address} broke ({:?}): {}", status.code(), status_detail(status))]
    Stream {
        address: String,
        status: tonic::Status,
    },
}

/// Applies discovery responses to the shared state and answers ACK or NACK.
pub struct Applier {
    pub state: Arc<RwLock<ProxyState>>,
    /// Counts applied updates; `0` until the first one, which is what readiness waits for.
    pub applied: watch::Sender<u64>,
}

impl Applier {
    pub fn apply(&self, response: &SubscribeResponse) -> Result<(), StateError> {
        self.state.write().apply(response)?;
        self.applied.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The ACK or NACK for a response.
    pub fn answer(&self, response: &SubscribeResponse) -> SubscribeRequest {
        let error_detail = match self.apply(response) {
            Ok(()) => {
                tracing::info!(
                    version = %response.system_version,
                    changed = response.resources.len(),
                    removed = response.removed.len(),
                    full = response.full_state,
                    "applied config from the controller"
                );
                String::new()
            }
            Err(e) => {
                tracing::warn!(version = %response.system_version, error = %e, "refused config update from the controller (NACK); keeping the previous config");
                e.to_string()
            }
        };
        SubscribeRequest {
            subscriber: None,
            known_versions: Default::default(),
            response_nonce: response.nonce.clone(),
            error_detail,
        }
    }
}

pub struct XdsClient {
    pub link: ControllerLink,
    pub node: String,
    pub applier: Arc<Applier>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The controller sends responses in parts of about a megabyte (see `response_parts`), but one
/// resource may be larger than that, and tonic's 4 MiB default is not a limit worth having here.
/// The controller is authenticated (its identity is pinned), so these bound mistakes, not
/// attacks.
pub const MAX_CONFIG_MESSAGE: usize = 256 << 20;
/// The most one response may hold across its parts: the full state of a 50k-workload mesh is
/// ~14 MiB.
pub const MAX_CONFIG_RESPONSE: usize = 1 << 30;

impl XdsClient {
    /// Keeps a subscription up until `drain` fires.
    pub async fn run(self, drain: DrainWatch) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let session = tokio::select! {
                r = self.session() => r,
                () = drain.signaled() => return,
            };
            match session {
                Ok(()) => {
                    tracing::warn!(controller = %self.link.address(), "the controller closed the config stream; reconnecting (serving the last good config meanwhile)")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no config stream; serving the last good config and retrying in {backoff:?}")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = drain.signaled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&self) -> Result<(), XdsError> {
        let address = || self.link.address().to_string();
        let mut client =
            DiscoveryClient::new(self.link.channel()).max_decoding_message_size(MAX_CONFIG_MESSAGE);
        let (tx, rx) = mpsc::channel(8);
        let known_versions = self.applier.state.read().versions().clone();
        let first = SubscribeRequest {
            subscriber: Some(Subscriber {
                kind: ProxyKind::Ztunnel.into(),
                name: self.node.clone(),
                namespace: String::new(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            known_versions,
            response_nonce: String::new(),
            error_detail: String::new(),
        };
        tx.send(first).await.expect("the receiver is alive");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        self.link
            .authorize(&mut request)
            .map_err(|source| XdsError::Credentials {
                address: address(),
                source,
            })?;
        let mut stream = client
            .subscribe(request)
            .await
            .map_err(|status| XdsError::Subscribe {
                address: address(),
                status,
            })?
            .into_inner();
        tracing::info!(controller = %self.link.address(), node = %self.node, "subscribed for config");
        let mut parts = Reassembly::new(MAX_CONFIG_RESPONSE);
        loop {
            let part = stream.message().await.map_err(|status| XdsError::Stream {
                address: address(),
                status,
            })?;
            let Some(part) = part else {
                return Ok(());
            };
            let response = match parts.push(part) {
                Ok(Some(whole)) => whole,
                Ok(None) => continue,
                Err(source) => {
                    return Err(XdsError::Parts {
                        address: address(),
                        source,
                    });
                }
            };
            let answer = self.applier.answer(&response);
            if tx.send(answer).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ambit_proto::api::discovery::{Resource, resource::Kind};
    use ambit_proto::api::workload as wl;

    use super::*;

    fn response(nonce: &str, address: &str) -> SubscribeResponse {
        SubscribeResponse {
            system_version: format!("v-{nonce}"),
            nonce: nonce.into(),
            resources: vec![Resource {
                name: "Kubernetes//Pod/demo/client".into(),
                version: "1".into(),
                kind: Some(Kind::Workload(wl::Workload {
                    uid: "Kubernetes//Pod/demo/client".into(),
                    name: "client".into(),
                    namespace: "demo".into(),
                    service_account: "client".into(),
                    addresses: vec![address.into()],
                    protocol: wl::Protocol::Hbone as i32,
                    ..Default::default()
                })),
            }],
            removed: vec![],
            full_state: true,
            more: false,
        }
    }

    #[test]
    fn acks_what_it_applies_and_nacks_the_rest_keeping_the_last_good() {
        let (applied, applied_rx) = watch::channel(0);
        let applier = Applier {
            state: Arc::new(RwLock::new(ProxyState::default())),
            applied,
        };
        // (response, NACK expected, applied count after, address held after)
        let table = [
            (response("1", "10.244.1.2"), false, 1, "10.244.1.2"),
            (response("2", "not-an-ip"), true, 1, "10.244.1.2"),
            (response("3", "10.244.1.7"), false, 2, "10.244.1.7"),
        ];
        for (r, nack, count, held) in table {
            let answer = applier.answer(&r);
            assert_eq!(
                answer.response_nonce, r.nonce,
                "the answer names the response"
            );
            assert_eq!(
                !answer.error_detail.is_empty(),
                nack,
                "{}",
                answer.error_detail
            );
            if nack {
                assert!(
                    answer.error_detail.contains("not-an-ip"),
                    "{}",
                    answer.error_detail
                );
            }
            assert_eq!(
                *applied_rx.borrow(),
                count,
                "readiness counts applied updates only"
            );
            let state = applier.state.read();
            let w = state.workload("Kubernetes//Pod/demo/client").expect("kept");
            assert_eq!(w.addresses[0].to_string(), held);
        }
    }
}
