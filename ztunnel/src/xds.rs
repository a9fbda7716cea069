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
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::state::{ProxyState, StateError};

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("controller address {address:?} is not a valid URI: {reason}")]
    Address { address: String, reason: String },
    #[error("could not connect to the controller at {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the controller at {address} refused the subscription: {status}")]
    Subscribe {
        address: String,
        status: tonic::Status,
    },
    #[error("the stream from the controller at {address} broke: {status}")]
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
    pub address: String,
    pub node: String,
    pub applier: Arc<Applier>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
                    tracing::warn!(controller = %self.address, "the controller closed the config stream; reconnecting (serving the last good config meanwhile)")
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
        let endpoint = tonic::transport::Endpoint::from_shared(self.address.clone())
            .map_err(|e| XdsError::Address {
                address: self.address.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| XdsError::Connect {
                address: self.address.clone(),
                source,
            })?;
        let mut client = DiscoveryClient::new(channel);
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
        let mut stream = client
            .subscribe(ReceiverStream::new(rx))
            .await
            .map_err(|status| XdsError::Subscribe {
                address: self.address.clone(),
                status,
            })?
            .into_inner();
        tracing::info!(controller = %self.address, node = %self.node, "subscribed for config");
        loop {
            let response = stream.message().await.map_err(|status| XdsError::Stream {
                address: self.address.clone(),
                status,
            })?;
            let Some(response) = response else {
                return Ok(());
            };
            let answer = self.applier.answer(&response);
            if tx.send(answer).await.is_err() {
                return Ok(());
            }
        }
    }
}
