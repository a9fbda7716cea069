//! Ztunnel-like subscribers: one gRPC connection each, subscribed as a node, ACKing every
//! response as soon as it is decoded, and reporting what arrived when. They do not build a
//! proxy's state: what is measured is the controller's push, not a ztunnel applying it.

use std::sync::Arc;
use std::time::Instant;

use ambit_proto::api::discovery::discovery_client::DiscoveryClient;
use ambit_proto::api::discovery::{ProxyKind, Resource, SubscribeRequest, Subscriber};
use ambit_proto::control;
use ambit_proto::response_parts::Reassembly;
use anyhow::Context;
use prost::Message;
use rustls::ClientConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::mesh::{node_name, node_token};

/// One response as a subscriber saw it.
pub struct Event {
    pub node: usize,
    pub at: Instant,
    /// The response's encoded protobuf size.
    pub bytes: usize,
    pub full: bool,
    /// For a delta: `<type>/<name>` of each resource sent, `removed:<type>/<name>` of each
    /// removal. Empty for a full state (its size says enough, and listing 50k keys per node
    /// would cost the harness more than the controller).
    pub keys: Vec<String>,
}

pub type Events = mpsc::UnboundedSender<Result<Event, String>>;

pub fn ztunnel(node: usize) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: node_name(node),
        version: "controller-bench".into(),
        ..Default::default()
    }
}

pub fn key_of(r: &Resource) -> String {
    r.key()
}

/// Subscribes as `node` and reports every response until the stream ends or fails.
pub async fn run(address: String, tls: Arc<ClientConfig>, node: usize, events: Events) {
    if let Err(e) = session(&address, tls, node, &events).await {
        let _ = events.send(Err(format!("ztunnel of {}: {e:#}", node_name(node))));
    }
}

async fn session(
    address: &str,
    tls: Arc<ClientConfig>,
    node: usize,
    events: &Events,
) -> anyhow::Result<()> {
    let channel = control::channel(address, tls)?;
    // No size limit: the bench measures what the controller sends, whatever its size (the
    // report says separately whether ztunnel's own client, with its own limit, copes).
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(8);
    tx.send(SubscribeRequest {
        subscriber: Some(ztunnel(node)),
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .subscribe(authorized(rx, node))
        .await
        .context("subscribing")?
        .into_inner();
    // Parts are put back together as ztunnel does; a response's size is that of all its parts.
    let mut parts = Reassembly::new(usize::MAX);
    let mut bytes = 0;
    while let Some(part) = stream.message().await.context("reading the stream")? {
        bytes += part.encoded_len();
        let Some(response) = parts.push(part)? else {
            continue;
        };
        let at = Instant::now();
        let ack = SubscribeRequest {
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return Ok(());
        }
        let keys = if response.full_state {
            Vec::new()
        } else {
            let removed = response
                .removed
                .iter()
                .map(|r| format!("removed:{}/{}", r.r#type().key_name(), r.name));
            response
                .resources
                .iter()
                .map(key_of)
                .chain(removed)
                .collect()
        };
        let event = Event {
            node,
            at,
            bytes: std::mem::take(&mut bytes),
            full: response.full_state,
            keys,
        };
        if events.send(Ok(event)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Subscribes as `node` with ztunnel's discovery client limits (per message and per response)
/// and returns the first response's size, or why it could not be read.
pub async fn default_limits_probe(
    address: &str,
    tls: Arc<ClientConfig>,
    node: usize,
) -> Result<usize, String> {
    let channel = control::channel(address, tls).map_err(|e| e.to_string())?;
    let mut client = DiscoveryClient::new(channel)
        .max_decoding_message_size(ambit_ztunnel::xds::MAX_CONFIG_MESSAGE);
    let (tx, rx) = mpsc::channel(1);
    tx.send(SubscribeRequest {
        subscriber: Some(ztunnel(node)),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut stream = client
        .subscribe(authorized(rx, node))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let mut parts = Reassembly::new(ambit_ztunnel::xds::MAX_CONFIG_RESPONSE);
    let mut bytes = 0;
    loop {
        let part = match stream.message().await {
            Ok(Some(part)) => part,
            Ok(None) => return Err("the stream ended before the first response".into()),
            Err(s) => return Err(s.message().to_string()),
        };
        bytes += part.encoded_len();
        if parts.push(part).map_err(|e| e.to_string())?.is_some() {
            return Ok(bytes);
        }
    }
}

/// A subscription carrying `node`'s bootstrap token, as ztunnel's does.
fn authorized(
    rx: mpsc::Receiver<SubscribeRequest>,
    node: usize,
) -> tonic::Request<ReceiverStream<SubscribeRequest>> {
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", node_token(node));
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("a token is ASCII"));
    request
}
