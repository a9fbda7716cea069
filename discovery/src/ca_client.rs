//! Certificates from the controller's CA, asked for over the [`ControllerLink`] with its
//! credentials: a ztunnel asks on behalf of each local pod's service account (its node token
//! speaks for them), a waypoint for its own identity.

use ambit_proto::api::security::{
    CreateCertificateRequest, certificate_service_client::CertificateServiceClient,
};
use ambit_proto::identity::{BoxFuture, CertificateProvider, IdentityError, SpiffeId};

use crate::link::ControllerLink;

/// A [`CertificateProvider`] backed by the controller's CA.
pub struct CaClient {
    link: ControllerLink,
}

impl CaClient {
    /// Certificates are fetched on first use and retried on renewal, so a CA that is not up yet
    /// is no reason to fail at start.
    pub fn new(link: ControllerLink) -> Self {
        CaClient { link }
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
            self.link
                .authorize(&mut request)
                .map_err(|e| fail(e.to_string()))?;
            let response = CertificateServiceClient::new(self.link.channel())
                .create_certificate(request)
                .await
                .map_err(|status| {
                    fail(format!(
                        "the CA at {} answered {:?}: {}",
                        self.link.address(),
                        status.code(),
                        status_detail(&status)
                    ))
                })?;
            Ok(response.into_inner().cert_chain)
        })
    }
}

/// A status's message and, for a transport failure (TLS refused, nobody listening), its causes:
/// tonic's own message for those is just "transport error".
pub fn status_detail(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
