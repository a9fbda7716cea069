//! How a proxy reaches the controller: one TLS channel, pinned to the controller's identity,
//! that discovery and the CA share, and the credentials that say who is calling.
//!
//! Who is calling, as the controller checks it (`controller/src/ca/authn.rs`):
//! - a ztunnel sends its node's name (`ambit-node`) and a token that speaks for that node (the
//!   node's bootstrap token from the mesh file, or the ztunnel's service-account token);
//! - a waypoint in Kubernetes sends its own service-account token and no node;
//! - a waypoint from a mesh file sends its node's name and that node's bootstrap token.
//!
//! The token is read from its file on every call rather than once: in Kubernetes it is a
//! projected service-account token that the kubelet replaces before it expires, and a proxy
//! that kept the first one would be refused certificates an hour later.

use std::path::PathBuf;
use std::sync::Arc;

use ambit_proto::control::{self, ControlAddressError};
use ambit_proto::identity::{IdentityError, SpiffeId, TrustBundle};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

/// Why the link could not be set up, or a call could not be given its credentials.
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

/// A lazily connected channel to one controller address, with the caller's credentials.
#[derive(Clone)]
pub struct ControllerLink {
    address: Arc<str>,
    /// Sent as `ambit-node`; checked once, when the link is made.
    node: Option<AsciiMetadataValue>,
    token_file: Option<Arc<PathBuf>>,
    channel: Channel,
}

impl ControllerLink {
    /// Nothing is dialled until the first call. `node` is the node this proxy speaks for: a
    /// ztunnel's own, a mesh-file waypoint's; `None` for a proxy that speaks only for its own
    /// service account (a waypoint in Kubernetes).
    pub fn new(
        address: &str,
        controller: SpiffeId,
        bundle: &TrustBundle,
        node: Option<&str>,
        token_file: Option<PathBuf>,
    ) -> Result<Self, LinkError> {
        let node = node
            .map(|node| {
                node.parse().map_err(|_| LinkError::NodeNotAHeader {
                    node: node.to_string(),
                })
            })
            .transpose()?;
        let tls = control::client_config(bundle, controller)?;
        Ok(ControllerLink {
            address: address.into(),
            node,
            token_file: token_file.map(Arc::new),
            channel: control::channel(address, Arc::new(tls))?,
        })
    }

    /// The controller's address, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The shared channel; cloning it is cheap and every clone shares the connection.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Adds `authorization: Bearer <token>` (when there is a token file) and `ambit-node`
    /// (when the proxy speaks for a node).
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), LinkError> {
        if let Some(node) = &self.node {
            request.metadata_mut().insert("ambit-node", node.clone());
        }
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

#[cfg(test)]
mod tests {
    use ambit_proto::identity::CertificateAuthority;

    use super::*;

    fn link(node: Option<&str>, token_file: Option<PathBuf>) -> Result<ControllerLink, LinkError> {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let controller = control::default_controller_identity("cluster.local").unwrap();
        ControllerLink::new(
            "https://controller.test:15010",
            controller,
            &ca.trust_bundle(),
            node,
            token_file,
        )
    }

    fn sent(link: &ControllerLink) -> Result<(Option<String>, Option<String>), LinkError> {
        let mut request = tonic::Request::new(());
        link.authorize(&mut request)?;
        let header = |name| {
            let value = request.metadata().get(name)?;
            Some(value.to_str().unwrap().to_string())
        };
        Ok((header("ambit-node"), header("authorization")))
    }

    #[tokio::test]
    async fn a_node_is_sent_when_the_proxy_speaks_for_one_and_the_token_when_there_is_one() {
        let dir = std::env::temp_dir().join(format!("ambit-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "secret\n").unwrap();
        let table = [
            // ztunnel, or a mesh-file waypoint: node and its token.
            (
                Some("node-a"),
                Some(token.clone()),
                Some("node-a"),
                Some("Bearer secret"),
            ),
            // A Kubernetes waypoint: its service-account token only.
            (None, Some(token.clone()), None, Some("Bearer secret")),
            (Some("node-a"), None, Some("node-a"), None),
        ];
        for (node, file, want_node, want_token) in table {
            let (n, t) = sent(&link(node, file).unwrap()).unwrap();
            assert_eq!((n.as_deref(), t.as_deref()), (want_node, want_token));
        }
        std::fs::write(&token, "  \n").unwrap();
        let err = sent(&link(None, Some(token.clone())).unwrap()).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let missing = dir.join("missing");
        let err = sent(&link(None, Some(missing)).unwrap()).unwrap_err();
        assert!(err.to_string().contains("--token-file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = link(Some("node\na"), None).err().unwrap();
        assert!(err.to_string().contains("node name"), "{err}");
    }
}
