//! Certificates from the controller's CA: ztunnel asks, on behalf of each local pod's service
//! account, proving itself with its node's bootstrap token.

use std::time::Duration;

use ambit_proto::api::security::{
    CreateCertificateRequest, certificate_service_client::CertificateServiceClient,
};
use ambit_proto::identity::{BoxFuture, CertificateProvider, IdentityError, SpiffeId};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

pub struct CaClient {
    channel: Channel,
    address: String,
    node: String,
    token: String,
}

impl CaClient {
    /// Connects lazily: certificates are fetched on first use and retried on renewal, so a CA
    /// that is not up yet is no reason to fail at start.
    pub fn new(address: &str, node: &str, token: &str) -> Result<Self, IdentityError> {
        let channel = Endpoint::from_shared(address.to_string())
            .map_err(|e| IdentityError::TlsConfig {
                what: format!("the CA address {address:?}"),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy();
        Ok(CaClient {
            channel,
            address: address.into(),
            node: node.into(),
            token: token.into(),
        })
    }
}

impl CertificateProvider for CaClient {
    fn fetch<'a>(
        &'a self,
        identity: &'a SpiffeId,
        csr_pem: String,
    ) -> BoxFuture<'a, Result<Vec<String>, IdentityError>> {
        Box::pin(async move {
            let fail = |reason: String| IdentityError::Fetch {
                identity: identity.clone(),
                reason,
            };
            let mut request = tonic::Request::new(CreateCertificateRequest {
                csr: csr_pem,
                validity_seconds: 0,
                identity: identity.to_string(),
            });
            let bearer: MetadataValue<_> =
                format!("Bearer {}", self.token).parse().map_err(|_| {
                    fail("the bootstrap token has characters not allowed in a header".into())
                })?;
            request.metadata_mut().insert("authorization", bearer);
            let node: MetadataValue<_> = self
                .node
                .parse()
                .map_err(|_| fail("the node name is not a valid header value".into()))?;
            request.metadata_mut().insert("ambit-node", node);
            let response = CertificateServiceClient::new(self.channel.clone())
                .create_certificate(request)
                .await
                .map_err(|status| {
                    fail(format!(
                        "the CA at {} answered {:?}: {}",
                        self.address,
                        status.code(),
                        status.message()
                    ))
                })?;
            Ok(response.into_inner().cert_chain)
        })
    }
}
