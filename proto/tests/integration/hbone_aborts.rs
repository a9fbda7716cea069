//! Tunnels aborted by either end while the other still has bytes in flight: the late frames
//! are the race every abort has, not the peer's fault, and must never cost the pooled
//! connection (and every other tunnel on it) its life.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use ambit_proto::hbone::{Tunnel, TunnelHandler, TunnelRequest};
use ambit_proto::identity::CertificateAuthority;

/// More aborts than either end's budget of error resets (h2 counts 1,024 on a client, ours
/// is 256 on a server), so an abort that were counted would show.
const TUNNELS: usize = 2_000;
/// Tunnels in flight at once: well under one connection's stream limit, so all share one.
const CONCURRENCY: usize = 32;
const REQUEST: &[u8] = b"request";
const REPLY: &[u8] = b"reply";
const CHATTER: &[u8] = &[0x2a; 1024];
/// A chatty end that never hears of the abort is a bug of its own; this bounds the test.
const CHATTER_LIMIT: Duration = Duration::from_secs(5);

/// Far more than the run needs; only a hang reaches it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Writes until the peer's reset stops it, so frames are always in flight when it comes.
async fn chatter(tunnel: &mut Tunnel) {
    let until_reset = async {
        while tunnel.write_all(CHATTER).await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(CHATTER_LIMIT, until_reset)
        .await
        .expect("a reset tunnel refuses writes");
}

/// Reads the peer's first chatter: from then on its frames are in flight.
async fn first_chatter(tunnel: &mut Tunnel) {
    let mut buf = [0u8; 1];
    tunnel
        .read_exact(&mut buf)
        .await
        .expect("the peer chatters");
}

/// Server side. `aborts`: read the request, answer, wait for the client's chatter, reset.
/// Otherwise: read the request, answer, chatter until the client resets.
struct Server {
    aborts: bool,
    served: AtomicUsize,
}

impl TunnelHandler for Server {
    async fn handle(&self, request: TunnelRequest) {
        let Ok(mut tunnel) = request.accept() else {
            return;
        };
        let mut buf = [0u8; REQUEST.len()];
        if tunnel.read_exact(&mut buf).await.is_err() || tunnel.write_all(REPLY).await.is_err() {
            return;
        }
        if self.aborts {
            first_chatter(&mut tunnel).await;
            tunnel.reset();
        } else {
            chatter(&mut tunnel).await;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `TUNNELS` tunnels, `CONCURRENCY` at a time, against a server that aborts or not; the
/// client does the other.
async fn run(server_aborts: bool) {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let handler = Arc::new(Server {
        aborts: server_aborts,
        served: AtomicUsize::new(0),
    });
    let server = serve(
        &certs,
        &id("demo", "server"),
        handler.clone(),
        "127.0.0.1:0",
    )
    .await;
    let client = client(certs);
    let req = request(&id("demo", "client"), server.addr, &id("demo", "server"));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, req, next) = (client.clone(), req.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < TUNNELS {
                    let mut tunnel = client.connect(&req).await.expect("tunnel opens");
                    tunnel.write_all(REQUEST).await.expect("request sent");
                    let mut reply = [0u8; REPLY.len()];
                    tunnel.read_exact(&mut reply).await.expect("reply read");
                    assert_eq!(reply, REPLY, "the reply arrives whole");
                    if server_aborts {
                        chatter(&mut tunnel).await;
                    } else {
                        first_chatter(&mut tunnel).await;
                        drop(tunnel);
                    }
                }
            })
        })
        .collect();
    let all = async {
        for w in workers {
            w.await.expect("every tunnel got its reply");
        }
    };
    tokio::time::timeout(RUN_LIMIT, all)
        .await
        .expect("the tunnels finish");
    assert!(
        eventually(Duration::from_secs(5), || handler
            .served
            .load(Ordering::Relaxed)
            == TUNNELS)
        .await,
        "the server saw every tunnel to its end"
    );
    assert_eq!(
        client.connections_opened(),
        1,
        "one connection carried every tunnel: late frames on aborted tunnels did not close it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_aborting_tunnels_with_replies_in_flight_keep_their_connection() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_aborting_tunnels_with_requests_in_flight_keep_their_connection() {
    run(true).await;
}
