//! A small mesh for HBONE tests: a CA, certificate managers, servers on loopback.
pub mod interop;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_proto::drain::{self, DrainTrigger};
use ambit_proto::hbone::{
    ConnectRequest, HboneClient, HboneServer, Keepalive, ServerSettings, TcpDialer, TunnelHandler,
    TunnelRequest,
};
use ambit_proto::identity::{
    BoxFuture, CertManager, CertificateAuthority, CertificateProvider, IdentityError, SpiffeId,
    Validity,
};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const TD: &str = "cluster.local";

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

/// Signs with a fixed validity window, e.g. one that ended yesterday.
pub struct FixedValidityCa {
    pub ca: CertificateAuthority,
    pub validity: Validity,
}

impl CertificateProvider for FixedValidityCa {
    fn fetch<'a>(
        &'a self,
        identity: &'a SpiffeId,
        csr_pem: String,
    ) -> BoxFuture<'a, Result<Vec<String>, IdentityError>> {
        Box::pin(async move { self.ca.sign_csr(&csr_pem, identity, self.validity) })
    }
}

pub fn expired() -> Validity {
    let now = SystemTime::now();
    Validity {
        not_before: now - Duration::from_secs(7200),
        not_after: now - Duration::from_secs(3600),
    }
}

pub fn manager(ca: CertificateAuthority) -> CertManager {
    CertManager::with_local_ca(ca, Duration::from_secs(3600))
}

pub fn client(certs: CertManager) -> HboneClient {
    HboneClient::new(certs, Arc::new(TcpDialer), Keepalive::default())
}

pub fn request(source: &SpiffeId, endpoint: SocketAddr, dest: &SpiffeId) -> ConnectRequest {
    ConnectRequest {
        source: source.clone(),
        endpoint,
        destination_identity: dest.clone(),
        authority: SocketAddr::new(endpoint.ip(), 8080),
        forwarded_for: None,
        baggage: None,
        traceparent: None,
    }
}

pub struct RunningServer {
    pub addr: SocketAddr,
    pub trigger: Option<DrainTrigger>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(t) = self.trigger.take() {
            tokio::spawn(t.drain(Duration::from_secs(1)));
        }
    }
}

/// Starts an HBONE server on `bind` presenting `identity`'s certificate from `certs`.
pub async fn serve<H: TunnelHandler>(
    certs: &CertManager,
    identity: &SpiffeId,
    handler: Arc<H>,
    bind: &str,
) -> RunningServer {
    serve_with(certs, identity, handler, bind, ServerSettings::default()).await
}

/// `serve` with other settings (timeouts, limits).
pub async fn serve_with<H: TunnelHandler>(
    certs: &CertManager,
    identity: &SpiffeId,
    handler: Arc<H>,
    bind: &str,
    settings: ServerSettings,
) -> RunningServer {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let watch = certs.watch(identity).await.unwrap();
    let server = HboneServer::new(watch, certs.trust_bundle(), settings).unwrap();
    let (trigger, drain) = drain::channel();
    tokio::spawn(server.serve(listener, handler, drain));
    RunningServer {
        addr,
        trigger: Some(trigger),
    }
}

/// Echoes every tunnel's bytes back, half-closing when the client does; records who called.
#[derive(Default)]
pub struct Echo {
    pub peers: Mutex<Vec<(SpiffeId, String, SocketAddr)>>,
}

impl TunnelHandler for Echo {
    async fn handle(&self, request: TunnelRequest) {
        self.peers.lock().push((
            request.peer.clone(),
            request.peer_serial.to_string(),
            request.peer_addr,
        ));
        let Ok(tunnel) = request.accept() else { return };
        let (mut rd, mut wr) = tokio::io::split(tunnel);
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = wr.shutdown().await;
    }
}

impl Echo {
    pub fn distinct_connections(&self) -> usize {
        let mut addrs: Vec<SocketAddr> = self.peers.lock().iter().map(|p| p.2).collect();
        addrs.sort();
        addrs.dedup();
        addrs.len()
    }
}

/// Sends `msg` through a tunnel and returns what came back.
pub async fn echo_once(
    tunnel: &mut ambit_proto::hbone::Tunnel,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    tunnel.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tunnel.read_exact(&mut buf).await?;
    Ok(buf)
}

/// A deterministic byte pattern that catches reordering, loss and duplication.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)).wrapping_mul(31) as u8)
        .collect()
}

/// File descriptors this process has open now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's open files (Linux)")
        .count()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
