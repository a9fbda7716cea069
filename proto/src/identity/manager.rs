//! Holds one certificate per local identity and renews each before it expires. Consumers watch
//! the current certificate, so a renewal reaches new handshakes without touching open
//! connections.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{
    CertificateAuthority, IdentityError, SpiffeId, TrustBundle, Validity, WorkloadCertificate,
    WorkloadKey,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where certificates come from: the controller's CA service over gRPC, or a CA in this process
/// (standalone use and tests).
pub trait CertificateProvider: Send + Sync + 'static {
    /// Signs `csr_pem` for `identity`; returns the PEM chain, leaf first.
    fn fetch<'a>(
        &'a self,
        identity: &'a SpiffeId,
        csr_pem: String,
    ) -> BoxFuture<'a, Result<Vec<String>, IdentityError>>;
}

/// An in-process CA issuing certificates of a fixed lifetime.
pub struct LocalCa {
    /// Shared, so a process that serves the CA can also issue its own certificates with it.
    pub ca: Arc<CertificateAuthority>,
    pub ttl: Duration,
}

impl CertificateProvider for LocalCa {
    fn fetch<'a>(
        &'a self,
        identity: &'a SpiffeId,
        csr_pem: String,
    ) -> BoxFuture<'a, Result<Vec<String>, IdentityError>> {
        Box::pin(async move {
            self.ca
                .sign_csr(&csr_pem, identity, Validity::for_ttl(self.ttl))
        })
    }
}

type SlotInner = tokio::sync::Mutex<Option<watch::Sender<Arc<WorkloadCertificate>>>>;
type Slot = Arc<SlotInner>;

struct Inner {
    provider: Arc<dyn CertificateProvider>,
    bundle: TrustBundle,
    slots: Mutex<HashMap<SpiffeId, Slot>>,
}

/// Fetches certificates on first use and renews them half-way through their lifetime.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

/// How long to wait before retrying a failed renewal: short, since the current certificate
/// keeps working only until it expires.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl CertManager {
    pub fn new(provider: Arc<dyn CertificateProvider>, bundle: TrustBundle) -> Self {
        CertManager {
            inner: Arc::new(Inner {
                provider,
                bundle,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A manager backed by a CA in this process.
    pub fn with_local_ca(ca: impl Into<Arc<CertificateAuthority>>, ttl: Duration) -> Self {
        let ca = ca.into();
        let bundle = ca.trust_bundle();
        Self::new(Arc::new(LocalCa { ca, ttl }), bundle)
    }

    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.inner.bundle
    }

    /// The current certificate for `identity` as a watch, fetching the first one if needed.
    /// Concurrent first callers share one fetch.
    pub async fn watch(
        &self,
        identity: &SpiffeId,
    ) -> Result<watch::Receiver<Arc<WorkloadCertificate>>, IdentityError> {
        let slot = self.slot(identity);
        let mut guard = slot.lock().await;
        if let Some(tx) = guard.as_ref() {
            return Ok(tx.subscribe());
        }
        let cert = fetch(&self.inner, identity).await?;
        let renew_at = cert.renew_at();
        let (tx, rx) = watch::channel(cert);
        *guard = Some(tx);
        tokio::spawn(renew_loop(
            Arc::downgrade(&self.inner),
            Arc::downgrade(&slot),
            identity.clone(),
            renew_at,
        ));
        Ok(rx)
    }

    /// The current certificate for `identity`.
    pub async fn get(
        &self,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        Ok(self.watch(identity).await?.borrow().clone())
    }

    /// Fetches a new certificate now (new key too) and publishes it.
    pub async fn rotate(
        &self,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        self.watch(identity).await?;
        renew(&self.inner, identity).await
    }

    /// Stops renewing `identity` (its last workload left the node).
    pub fn forget(&self, identity: &SpiffeId) {
        self.inner.slots.lock().remove(identity);
    }

    /// The identities held now, with their current certificates.
    pub fn certificates(&self) -> Vec<Arc<WorkloadCertificate>> {
        let slots: Vec<Slot> = self.inner.slots.lock().values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| s.try_lock().ok()?.as_ref().map(|tx| tx.borrow().clone()))
            .collect()
    }

    fn slot(&self, identity: &SpiffeId) -> Slot {
        self.inner
            .slots
            .lock()
            .entry(identity.clone())
            .or_default()
            .clone()
    }
}

async fn fetch(
    inner: &Inner,
    identity: &SpiffeId,
) -> Result<Arc<WorkloadCertificate>, IdentityError> {
    let key = WorkloadKey::generate()?;
    let csr = key.csr_pem(identity)?;
    let chain = inner.provider.fetch(identity, csr).await?;
    let cert = WorkloadCertificate::new(key, &chain, &inner.bundle)?;
    if cert.identity() != identity {
        return Err(IdentityError::Fetch {
            identity: identity.clone(),
            reason: format!("the CA returned a certificate for {}", cert.identity()),
        });
    }
    Ok(Arc::new(cert))
}

async fn renew(
    inner: &Inner,
    identity: &SpiffeId,
) -> Result<Arc<WorkloadCertificate>, IdentityError> {
    let cert = fetch(inner, identity).await?;
    let slot = inner.slots.lock().get(identity).cloned();
    if let Some(slot) = slot
        && let Some(tx) = slot.lock().await.as_ref()
    {
        tx.send_replace(cert.clone());
    }
    Ok(cert)
}

/// Renews `identity` whenever its certificate reaches its renewal time; ends when the manager
/// is dropped or the identity forgotten. An identity forgotten and then used again has a new
/// slot with a loop of its own, so this one ends rather than renew it a second time.
async fn renew_loop(
    inner: Weak<Inner>,
    own: Weak<SlotInner>,
    identity: SpiffeId,
    first: SystemTime,
) {
    let mut next = first;
    loop {
        let wait = next
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(slot) = inner.slots.lock().get(&identity).cloned() else {
            return;
        };
        if !std::ptr::eq(Arc::as_ptr(&slot), own.as_ptr()) {
            return;
        }
        // A manual rotation may have moved the renewal time on.
        let current = slot.lock().await.as_ref().map(|tx| tx.borrow().renew_at());
        if let Some(at) = current
            && at > SystemTime::now()
        {
            next = at;
            continue;
        }
        next = match renew(&inner, &identity).await {
            Ok(cert) => {
                tracing::info!(%identity, serial = cert.serial(), "renewed workload certificate");
                // A CA that hands out certificates already past their renewal time must not
                // turn this loop into a busy one.
                cert.renew_at().max(SystemTime::now() + RETRY_AFTER)
            }
            Err(e) => {
                tracing::warn!(%identity, error = %e, "certificate renewal failed; retrying in {RETRY_AFTER:?} (the current certificate stays in use until it expires)");
                SystemTime::now() + RETRY_AFTER
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the certificates it signs.
    struct Counting {
        ca: CertificateAuthority,
        ttl: Duration,
        fetched: AtomicUsize,
    }

    impl CertificateProvider for Counting {
        fn fetch<'a>(
            &'a self,
            identity: &'a SpiffeId,
            csr_pem: String,
        ) -> BoxFuture<'a, Result<Vec<String>, IdentityError>> {
            self.fetched.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                // Slow, as a remote CA is: two renewals started together both get this far.
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.ca
                    .sign_csr(&csr_pem, identity, Validity::for_ttl(self.ttl))
            })
        }
    }

    #[tokio::test]
    async fn an_identity_forgotten_and_used_again_is_renewed_by_one_loop() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let bundle = ca.trust_bundle();
        // Valid from a minute ago: a 64 s TTL puts the renewal 2 s from now, and every 2 s.
        let provider = Arc::new(Counting {
            ca,
            ttl: Duration::from_secs(64),
            fetched: AtomicUsize::new(0),
        });
        let certs = CertManager::new(provider.clone(), bundle);
        let id = SpiffeId::new("cluster.local", "demo", "app").unwrap();
        certs.watch(&id).await.unwrap();
        certs.forget(&id);
        certs.watch(&id).await.unwrap();
        assert_eq!(provider.fetched.load(Ordering::Relaxed), 2);
        // The first loop defers to the second certificate's renewal time, so both loops would
        // wake together and both renew. Between the first renewal (~2.3 s from here) and the
        // second (~4.6 s): one renewal, not one per loop ever started.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(provider.fetched.load(Ordering::Relaxed), 3);
    }
}
