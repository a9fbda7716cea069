//! The pods ztunnel captures on its node: adding one installs its redirect rules and starts its
//! listeners inside its namespace; removing one drains them and removes the rules.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::drain::{self, DrainTrigger};
use ambit_proto::hbone::{AuthorityCheck, HboneClient, HboneServer, Keepalive, ServerSettings};
use tokio::sync::Mutex;

use crate::capture::{self, CaptureError, PodDialer, PodNetns, rules};
use crate::proxy::{InboundHandler, PodContext, ProxyContext, serve_outbound, serve_plaintext};
use crate::state::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(
        "pod {uid} is not in ztunnel's config: only workloads the controller sent for this node can be captured (is the pod on this node, and has the config arrived?)"
    )]
    UnknownWorkload { uid: String },
    #[error(
        "pod {uid} is not meshed (its namespace did not opt in with ambit.io/dataplane-mode=ambient, or the pod opted out): it is left untouched"
    )]
    NotMeshed { uid: String },
    #[error("capturing pod {uid} failed: {source}")]
    Capture { uid: String, source: CaptureError },
    #[error("no certificate for pod {uid}: {source}")]
    Certificate {
        uid: String,
        source: ambit_proto::identity::IdentityError,
    },
}

struct CapturedPod {
    netns: Arc<PodNetns>,
    trigger: DrainTrigger,
}

/// How long a removed pod's open connections get to finish.
const POD_DRAIN: Duration = Duration::from_secs(5);

pub struct Pods {
    ctx: Arc<ProxyContext>,
    captured: Mutex<HashMap<String, CapturedPod>>,
}

impl Pods {
    pub fn new(ctx: Arc<ProxyContext>) -> Self {
        Pods {
            ctx,
            captured: Mutex::new(HashMap::new()),
        }
    }

    /// Captures the pod whose workload uid is `uid`, living in the namespace at `netns_path`;
    /// connections to `exclude_ports` bypass ztunnel. Adding a pod already captured in the same
    /// namespace does nothing.
    pub async fn add(
        &self,
        uid: &str,
        netns_path: &Path,
        exclude_ports: &[u16],
    ) -> Result<(), PodError> {
        let workload = self
            .ctx
            .workload(uid)
            .ok_or_else(|| PodError::UnknownWorkload { uid: uid.into() })?;
        if workload.protocol != Protocol::Hbone {
            return Err(PodError::NotMeshed { uid: uid.into() });
        }
        let capture_err = |source| PodError::Capture {
            uid: uid.into(),
            source,
        };
        let netns = Arc::new(PodNetns::open(netns_path).map_err(capture_err)?);
        let mut captured = self.captured.lock().await;
        if let Some(existing) = captured.get(uid) {
            if existing.netns.inode() == netns.inode() {
                return Ok(());
            }
            // The pod was recreated in a new namespace: start over.
            let old = captured.remove(uid).expect("present");
            Self::teardown(uid, old).await;
        }
        let certs = self
            .ctx
            .certs
            .watch(&workload.identity)
            .await
            .map_err(|source| PodError::Certificate {
                uid: uid.into(),
                source,
            })?;
        let outbound = capture::listen(&netns, rules::OUTBOUND_PORT).map_err(capture_err)?;
        let plaintext =
            capture::listen(&netns, rules::INBOUND_PLAINTEXT_PORT).map_err(capture_err)?;
        let hbone = capture::listen(&netns, rules::HBONE_PORT).map_err(capture_err)?;
        rules::install(&netns, exclude_ports).map_err(capture_err)?;

        let dialer = PodDialer::new(netns.clone());
        let pod = Arc::new(PodContext {
            uid: uid.into(),
            netns: netns.clone(),
            dialer: dialer.clone(),
            hbone: HboneClient::new(
                self.ctx.certs.clone(),
                Arc::new(dialer),
                Keepalive::default(),
            ),
        });
        let (trigger, watch) = drain::channel();
        for l in outbound {
            tokio::spawn(serve_outbound(
                l,
                pod.clone(),
                self.ctx.clone(),
                watch.clone(),
            ));
        }
        for l in plaintext {
            tokio::spawn(serve_plaintext(
                l,
                pod.clone(),
                self.ctx.clone(),
                watch.clone(),
            ));
        }
        let handler = Arc::new(InboundHandler {
            pod: pod.clone(),
            ctx: self.ctx.clone(),
        });
        for l in hbone {
            let server = HboneServer::new(
                certs.clone(),
                self.ctx.certs.trust_bundle(),
                ServerSettings {
                    authority_check: AuthorityCheck::LocalAddress,
                    drain_grace: POD_DRAIN,
                    ..ServerSettings::default()
                },
            )
            .map_err(|source| PodError::Certificate {
                uid: uid.into(),
                source,
            })?;
            tokio::spawn(server.serve(l, handler.clone(), watch.clone()));
        }
        drop(watch);
        tracing::info!(pod = uid, netns = %netns_path.display(), identity = %workload.identity, "captured pod");
        captured.insert(uid.into(), CapturedPod { netns, trigger });
        Ok(())
    }

    /// Stops capturing `uid`: closes its listeners, lets its connections finish (bounded) and
    /// removes its rules. Returns false if it was not captured.
    pub async fn remove(&self, uid: &str) -> bool {
        let pod = self.captured.lock().await.remove(uid);
        match pod {
            Some(pod) => {
                Self::teardown(uid, pod).await;
                true
            }
            None => false,
        }
    }

    /// Removes every pod (ztunnel is shutting down).
    pub async fn remove_all(&self) {
        let all: Vec<(String, CapturedPod)> = self.captured.lock().await.drain().collect();
        let teardowns = all.into_iter().map(|(uid, pod)| async move {
            Self::teardown(&uid, pod).await;
        });
        futures::future::join_all(teardowns).await;
    }

    pub async fn captured(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .captured
            .lock()
            .await
            .iter()
            .map(|(uid, p)| (uid.clone(), p.netns.path().display().to_string()))
            .collect();
        v.sort();
        v
    }

    async fn teardown(uid: &str, pod: CapturedPod) {
        // Rules first, so no new connection is redirected to listeners about to close.
        if let Err(e) = rules::remove(&pod.netns) {
            tracing::warn!(pod = uid, error = %e, "could not remove the pod's redirect rules");
        }
        let outcome = pod.trigger.drain(POD_DRAIN).await;
        tracing::info!(pod = uid, ?outcome, "released pod");
    }
}
