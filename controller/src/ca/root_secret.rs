//! The CA root kept in a Kubernetes Secret, so every controller replica and every restart signs
//! with the same root. The first controller to find no Secret generates a root and creates it;
//! a replica that loses that race (409 Conflict) loads the winner's, so all agree.

use std::collections::BTreeMap;

use ambit_proto::identity::{CertificateAuthority, IdentityError, TrustBundle};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use super::NamespacedName;

/// The Secret's key holding the root certificate (PEM).
pub const CERT_KEY: &str = "ca-cert.pem";
/// The Secret's key holding the root's private key (PEM).
pub const KEY_KEY: &str = "ca-key.pem";

/// Every (group, resource, verb) loading or creating the root calls the API with, in the
/// Secret's namespace only. The Role in manifests/controller.yaml grants `get` on that one
/// Secret by name, and `create` unrestricted: the API server cannot restrict a create by name.
/// The manifests test checks that the Role grants exactly these and the publisher's.
pub const REQUIRED_PERMISSIONS: &[(&str, &str, &str)] =
    &[("", "secrets", "get"), ("", "secrets", "create")];

const FIX: &str = "put the root certificate in ca-cert.pem and its private key in ca-key.pem (both PEM), or delete the Secret to have a new root generated (every proxy must then trust the new root)";

#[derive(Debug, thiserror::Error)]
pub enum RootSecretError {
    #[error(
        "could not {action} the CA root Secret {secret}: {source}: check that the API server is reachable and that the controller may get and create secrets in namespace {namespace} (RBAC)",
        namespace = secret.namespace
    )]
    Api {
        action: &'static str,
        secret: NamespacedName,
        source: Box<kube::Error>,
    },
    #[error("the CA root Secret {secret} has no key {key}: {FIX}")]
    MissingKey {
        secret: NamespacedName,
        key: &'static str,
    },
    #[error("the CA root Secret {secret}'s key {key} is not text (PEM): {FIX}")]
    NotText {
        secret: NamespacedName,
        key: &'static str,
    },
    #[error("the CA root Secret {secret}'s key {key} is not usable: {source}: {FIX}")]
    BadPem {
        secret: NamespacedName,
        key: &'static str,
        source: Box<IdentityError>,
    },
    #[error("could not generate a CA root for the Secret {secret}: {source}")]
    Generate {
        secret: NamespacedName,
        source: Box<IdentityError>,
    },
    #[error(
        "creating the CA root Secret {secret} conflicted with another writer, yet it cannot be read back: is something deleting it? Start again"
    )]
    Vanished { secret: NamespacedName },
}

/// The root in `secret`, or a new one stored there if the Secret does not exist.
pub async fn load_or_create(
    client: kube::Client,
    secret: &NamespacedName,
    trust_domain: &str,
) -> Result<CertificateAuthority, RootSecretError> {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let api_error = |action, source| RootSecretError::Api {
        action,
        secret: secret.clone(),
        source: Box::new(source),
    };
    if let Some(existing) = api
        .get_opt(&secret.name)
        .await
        .map_err(|e| api_error("read", e))?
    {
        tracing::info!(%secret, "loaded the CA root from its Secret");
        return from_secret(&existing, secret, trust_domain);
    }
    let ca = CertificateAuthority::generate(trust_domain).map_err(|source| {
        RootSecretError::Generate {
            secret: secret.clone(),
            source: Box::new(source),
        }
    })?;
    match api
        .create(&PostParams::default(), &to_secret(&ca, secret))
        .await
    {
        Ok(_) => {
            tracing::info!(%secret, "generated a new CA root and stored it in its Secret");
            Ok(ca)
        }
        Err(e) if is_conflict(&e) => {
            let theirs = api
                .get_opt(&secret.name)
                .await
                .map_err(|e| api_error("read", e))?
                .ok_or_else(|| RootSecretError::Vanished {
                    secret: secret.clone(),
                })?;
            tracing::info!(%secret, "another controller created the CA root Secret first; using its root");
            from_secret(&theirs, secret, trust_domain)
        }
        Err(e) => Err(api_error("create", e)),
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn from_secret(
    found: &Secret,
    secret: &NamespacedName,
    trust_domain: &str,
) -> Result<CertificateAuthority, RootSecretError> {
    let text = |key: &'static str| {
        let bytes = found
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .filter(|value| !value.0.is_empty())
            .ok_or_else(|| RootSecretError::MissingKey {
                secret: secret.clone(),
                key,
            })?;
        std::str::from_utf8(&bytes.0).map_err(|_| RootSecretError::NotText {
            secret: secret.clone(),
            key,
        })
    };
    let bad = |key, source| RootSecretError::BadPem {
        secret: secret.clone(),
        key,
        source: Box::new(source),
    };
    let (cert, key) = (text(CERT_KEY)?, text(KEY_KEY)?);
    // The certificate alone first, so that an error names the key of the Secret at fault.
    TrustBundle::from_pem(trust_domain, cert).map_err(|e| bad(CERT_KEY, e))?;
    CertificateAuthority::from_pem(trust_domain, cert, key).map_err(|e| bad(KEY_KEY, e))
}

fn to_secret(ca: &CertificateAuthority, secret: &NamespacedName) -> Secret {
    let data = BTreeMap::from([
        (CERT_KEY.to_string(), ByteString(ca.root_pem().into())),
        (KEY_KEY.to_string(), ByteString(ca.root_key_pem().into())),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "ambit-controller".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}
