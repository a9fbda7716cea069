//! The discovery client: one stream to the controller, subscribed as the caller names itself
//! (a ztunnel for its node, a waypoint as `<namespace>/<name>`). Each response, reassembled
//! from its parts, is applied whole or refused whole (NACK, with the reason, keeping the old
//! config); when the controller goes away, the last good config keeps serving and the client
//! reconnects with backoff, telling the controller what it holds so only differences are
//! resent.
//!
//! What a response is applied to is the caller's: anything that implements [`Apply`].

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::discovery::{
    ProxyKind, SubscribeRequest, SubscribeResponse, Subscriber, discovery_client::DiscoveryClient,
};
use ambit_proto::drain::DrainWatch;
use ambit_proto::response_parts::{PartError, Reassembly};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ca_client::status_detail;
use crate::link::{ControllerLink, LinkError};
use crate::lookups::Lookups;

/// Why a subscription ended; the client reconnects after any of them.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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

/// Who takes the config: the proxy's state, behind whatever lock or swap it uses.
pub trait Apply: Send + Sync {
    /// Why a response was refused; its text is the NACK's `error_detail`.
    type Error: Display;

    /// Applies one whole response, all of it or none of it.
    fn apply(&self, response: &SubscribeResponse) -> Result<(), Self::Error>;

    /// What is held now, `<type>/<name>` to version: sent on reconnect so the controller
    /// resends only what differs.
    fn versions(&self) -> HashMap<String, String>;
}

/// The controller sends responses in parts of about a megabyte (see `response_parts`), but one
/// resource may be larger than that, and tonic's 4 MiB default is not a limit worth having here.
/// The controller is authenticated (its identity is pinned), so these bound mistakes, not
/// attacks.
pub const MAX_CONFIG_MESSAGE: usize = 256 << 20;
/// The most one response may hold across its parts: the full state of a 50k-workload mesh is
/// ~14 MiB.
pub const MAX_CONFIG_RESPONSE: usize = 1 << 30;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a proxy names itself to the controller, which scopes what it sends by this: a ztunnel
/// by its node (`namespace` empty), a waypoint by its name and namespace.
pub fn subscriber(kind: ProxyKind, name: &str, namespace: &str) -> Subscriber {
    Subscriber {
        kind: kind.into(),
        name: name.into(),
        namespace: namespace.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        on_demand: false,
    }
}

/// The ACK or NACK for a response, once `applier` has applied it or refused it.
pub fn answer<A: Apply + ?Sized>(applier: &A, response: &SubscribeResponse) -> SubscribeRequest {
    let error_detail = match applier.apply(response) {
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
        response_nonce: response.nonce.clone(),
        error_detail,
        ..Default::default()
    }
}

/// A subscription kept up until drained; see the module docs.
pub struct Client<A> {
    link: ControllerLink,
    subscriber: Subscriber,
    applier: Arc<A>,
    lookups: Option<Arc<Lookups>>,
}

impl<A: Apply + 'static> Client<A> {
    /// Nothing happens until [`Client::run`].
    pub fn new(link: ControllerLink, subscriber: Subscriber, applier: Arc<A>) -> Self {
        Client {
            link,
            subscriber,
            applier,
            lookups: None,
        }
    }

    /// Subscribes on demand: destinations off the node come only as `lookups` asks for them
    /// (see [`crate::lookups`]).
    pub fn on_demand(mut self, lookups: Arc<Lookups>) -> Self {
        self.subscriber.on_demand = true;
        self.lookups = Some(lookups);
        self
    }

    /// Keeps a subscription up until `drain` fires.
    pub async fn run(self, drain: DrainWatch) {
        let mut backoff = FIRST_BACKOFF;
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

    /// The subscription's first request: who subscribes, and what it holds already.
    fn first_request(&self) -> SubscribeRequest {
        SubscribeRequest {
            subscriber: Some(self.subscriber.clone()),
            known_versions: self.applier.versions(),
            lookup: self.lookups.as_ref().map(|l| l.held()).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Takes one part; once a response's last part is in, applies the whole response and
    /// returns the answer to send. The apply runs on a blocking thread: building the next
    /// state of a large mesh takes long enough to hold up whatever else this runtime runs.
    async fn on_part(
        &self,
        parts: &mut Reassembly,
        part: SubscribeResponse,
    ) -> Result<Option<SubscribeRequest>, ClientError> {
        let whole = match parts.push(part) {
            Ok(Some(whole)) => whole,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(ClientError::Parts {
                    address: self.link.address().to_string(),
                    source,
                });
            }
        };
        let applier = self.applier.clone();
        let nonce = whole.nonce.clone();
        let changes = whole.resources.len() + whole.removed.len();
        let lookups = self.lookups.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let reply = answer(&*applier, &whole);
            // Told only once the config holds what the answers say is there.
            if let Some(l) = lookups {
                if reply.error_detail.is_empty() {
                    l.answered(&whole.answered, &whole.unknown);
                } else {
                    l.refused(&whole.answered);
                }
            }
            reply
        })
        .await;
        // The decoded response is gone with the apply's closure; the memory it freed is
        // given back after the answer, which need not wait for that.
        if changes >= crate::memory::LARGE_UPDATE {
            tokio::task::spawn_blocking(move || crate::memory::trim_after_update(changes));
        }
        Ok(Some(applied.unwrap_or_else(|e| {
            // A bug in the apply, not in the config: refused, so the controller shows it, and
            // the proxy keeps serving the previous config.
            tracing::error!(error = %e, "applying a config update panicked; keeping the previous config");
            SubscribeRequest {
                response_nonce: nonce,
                error_detail: format!("applying the update failed inside the proxy ({e}); this is a bug, please report it"),
                ..Default::default()
            }
        })))
    }

    /// [`Self::subscribed`], with the lookups told whether the stream is up.
    async fn session(&self) -> Result<(), ClientError> {
        let Some(lookups) = &self.lookups else {
            return self.subscribed(None).await;
        };
        struct Down<'a>(&'a Lookups);
        impl Drop for Down<'_> {
            fn drop(&mut self) {
                self.0.set_connected(false);
            }
        }
        let _down = Down(lookups);
        self.subscribed(Some(lookups)).await
    }

    async fn subscribed(&self, lookups: Option<&Lookups>) -> Result<(), ClientError> {
        let address = || self.link.address().to_string();
        let mut client =
            DiscoveryClient::new(self.link.channel()).max_decoding_message_size(MAX_CONFIG_MESSAGE);
        let (tx, rx) = mpsc::channel(8);
        tx.send(self.first_request())
            .await
            .expect("the receiver is alive");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        self.link
            .authorize(&mut request)
            .map_err(|source| ClientError::Credentials {
                address: address(),
                source,
            })?;
        let mut stream = client
            .subscribe(request)
            .await
            .map_err(|status| ClientError::Subscribe {
                address: address(),
                status,
            })?
            .into_inner();
        let s = &self.subscriber;
        tracing::info!(controller = %self.link.address(), kind = ?ProxyKind::try_from(s.kind), name = %s.name, namespace = %s.namespace, on_demand = s.on_demand, "subscribed for config");
        if let Some(l) = lookups {
            l.set_connected(true);
        }
        let mut parts = Reassembly::new(MAX_CONFIG_RESPONSE);
        let mut sweep = tokio::time::interval(lookups.map_or(MAX_BACKOFF, Lookups::sweep_every));
        loop {
            let wanted = async {
                match lookups {
                    Some(l) => l.wanted().await,
                    None => std::future::pending().await,
                }
            };
            let part = tokio::select! {
                part = stream.message() => part.map_err(|status| ClientError::Stream {
                    address: address(),
                    status,
                })?,
                () = wanted => {
                    if let Some(request) = lookups.and_then(lookup_request)
                        && tx.send(request).await.is_err()
                    {
                        return Ok(());
                    }
                    continue;
                }
                _ = sweep.tick() => {
                    if let Some(l) = lookups {
                        let released = l.release_idle();
                        if released > 0 {
                            tracing::debug!(released, "releasing destinations no connection used for the idle time");
                        }
                    }
                    continue;
                }
            };
            let Some(part) = part else {
                return Ok(());
            };
            let Some(answer) = self.on_part(&mut parts, part).await? else {
                continue;
            };
            if tx.send(answer).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The request asking the lookups and releases in `lookups`' outbox, if there are any.
fn lookup_request(lookups: &Lookups) -> Option<SubscribeRequest> {
    let (lookup, release) = lookups.take_outbox();
    (!lookup.is_empty() || !release.is_empty()).then(|| SubscribeRequest {
        lookup,
        release,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
