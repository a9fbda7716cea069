//! How ztunnel reaches the controller: one TLS channel, pinned to the controller's identity,
//! that discovery and the CA share, and the token that says which node this ztunnel speaks for.
//!
//! The token is read from its file on every call rather than once: in Kubernetes it is a
//! projected service-account token that the kubelet replaces before it expires, and a ztunnel
//! that kept the first one would be refused certificates an hour later.

use std::path::PathBuf;
use std::sync::Arc;

use ambit_proto::control::{self, ControlAddressError};
use ambit_proto::identity::{IdentityError, SpiffeId, TrustBundle};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Address(#[from] ControlAddressError),
    #[error("the TLS setup for the controller failed: {0}")]
    Tls(#[from] IdentityError),
    #[error("could not read the token {} (--token-file): {source}", path.display())]
    ReadToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token in {} is empty: the file must hold the node's bootstrap token or a service-account token", path.display())]
    EmptyToken { path: PathBuf },
    #[error("the token in {} has characters not allowed in a gRPC header", path.display())]
    TokenNotAHeader { path: PathBuf },
    #[error("the node name {node:?} is not allowed in a gRPC header")]
    NodeNotAHeader { node: String },
}

/// A lazily connected channel to one controller address, with this node's credentials.
#[derive(Clone)]
pub struct ControllerLink {
    address: Arc<str>,
    node: Arc<str>,
    token_file: Option<Arc<PathBuf>>,
    channel: Channel,
}

impl ControllerLink {
    /// Nothing is dialled until the first call.
    pub fn new(
        address: &str,
        controller: SpiffeId,
        bundle: &TrustBundle,
        node: &str,
        token_file: Option<PathBuf>,
    ) -> Result<Self, LinkError> {
        let tls = control::client_config(bundle, controller)?;
        Ok(ControllerLink {
            address: address.into(),
            node: node.into(),
            token_file: token_file.map(Arc::new),
            channel: control::channel(address, Arc::new(tls))?,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Adds `authorization: Bearer <token>` (when there is a token file) and `ambit-node`.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), LinkError> {
        let node: MetadataValue<_> = self.node.parse().map_err(|_| LinkError::NodeNotAHeader {
            node: self.node.to_string(),
        })?;
        request.metadata_mut().insert("ambit-node", node);
        let Some(path) = &self.token_file else {
            return Ok(());
        };
        let path = path.as_ref();
        let token = std::fs::read_to_string(path).map_err(|source| LinkError::ReadToken {
            path: path.clone(),
            source,
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(LinkError::EmptyToken { path: path.clone() });
        }
        let bearer: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| LinkError::TokenNotAHeader { path: path.clone() })?;
        request.metadata_mut().insert("authorization", bearer);
        Ok(())
    }
}
