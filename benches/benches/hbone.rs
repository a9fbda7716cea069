//! HBONE against plain TCP on the same loopback, in one process and one run:
//! - one long tunnel's throughput (bytes client → server);
//! - small request/response exchanges, each on a new tunnel (pooled connection), per second.
//!
//! Rounds alternate mesh and direct; the report gives medians and mesh/direct ratios.
//!
//! `cargo bench -p ambit-benches --bench hbone [-- --rounds N --seconds S --megabytes M --bulk-only]`
//!
//! `--bulk-only` leaves out the request/response part, whose work depends on how fast the
//! machine is: what is left is a fixed amount of work, so instruction counts (callgrind) of two
//! runs with different `--megabytes` give the instructions per MiB a tunnel costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambit_benches::{Args, median, report};
use ambit_proto::drain;
use ambit_proto::hbone::{
    ConnectRequest, HboneClient, HboneServer, Keepalive, ServerSettings, TcpDialer, TunnelHandler,
    TunnelRequest,
};
use ambit_proto::identity::{CertManager, CertificateAuthority, SpiffeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MESSAGE: usize = 64;
const CHUNK: usize = 256 * 1024;
const CONCURRENCY: usize = 16;

struct Options {
    rounds: usize,
    seconds: u64,
    megabytes: usize,
    bulk_only: bool,
}

fn options() -> Options {
    let mut o = Options {
        rounds: 5,
        seconds: 2,
        megabytes: 512,
        bulk_only: false,
    };
    let args = Args::from_env();
    o.rounds = args.value("--rounds", o.rounds).max(1);
    o.seconds = args.value("--seconds", o.seconds).max(1);
    o.megabytes = args.value("--megabytes", o.megabytes).max(1);
    o.bulk_only = args.flag("--bulk-only");
    o
}

/// Server side of both scenarios, identical for mesh and direct: a stream that starts with
/// 'B' is drained and acknowledged with one byte; one that starts with 'R' gets its
/// request echoed.
async fn serve_stream(mut s: impl AsyncRead + AsyncWrite + Unpin) {
    let mut kind = [0u8; 1];
    if s.read_exact(&mut kind).await.is_err() {
        return;
    }
    match kind[0] {
        b'B' => {
            let mut buf = vec![0u8; CHUNK];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = s.write_all(b"k").await;
        }
        _ => {
            let mut buf = [0u8; MESSAGE];
            if s.read_exact(&mut buf).await.is_ok() {
                let _ = s.write_all(&buf).await;
            }
        }
    }
    let _ = s.shutdown().await;
}

struct Handler;

impl TunnelHandler for Handler {
    async fn handle(&self, request: TunnelRequest) {
        if let Ok(tunnel) = request.accept() {
            serve_stream(tunnel).await;
        }
    }
}

async fn bulk(mut s: impl AsyncRead + AsyncWrite + Unpin, bytes: usize) -> Duration {
    let start = Instant::now();
    let chunk = vec![0x5au8; CHUNK];
    s.write_all(b"B").await.unwrap();
    let mut sent = 0;
    while sent < bytes {
        let n = CHUNK.min(bytes - sent);
        s.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
    start.elapsed()
}

async fn exchange(mut s: impl AsyncRead + AsyncWrite + Unpin) {
    let mut msg = [0x42u8; 1 + MESSAGE];
    msg[0] = b'R';
    s.write_all(&msg).await.unwrap();
    let mut back = [0u8; MESSAGE];
    s.read_exact(&mut back).await.unwrap();
}

struct Paths {
    client: HboneClient,
    mesh: ConnectRequest,
    direct: SocketAddr,
}

impl Paths {
    async fn bulk(&self, mesh: bool, bytes: usize) -> f64 {
        let elapsed = if mesh {
            bulk(self.client.connect(&self.mesh).await.unwrap(), bytes).await
        } else {
            bulk(TcpStream::connect(self.direct).await.unwrap(), bytes).await
        };
        bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
    }

    async fn requests_per_second(self: &Arc<Self>, mesh: bool, seconds: u64) -> f64 {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let paths = self.clone();
                let done = done.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if mesh {
                            exchange(paths.client.connect(&paths.mesh).await.unwrap()).await;
                        } else {
                            let tcp = TcpStream::connect(paths.direct).await.unwrap();
                            let _ = tcp.set_nodelay(true);
                            exchange(tcp).await;
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    }
}

async fn setup() -> Arc<Paths> {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let certs = CertManager::with_local_ca(ca, Duration::from_secs(3600));
    let server_id = SpiffeId::new("cluster.local", "bench", "server").unwrap();
    let client_id = SpiffeId::new("cluster.local", "bench", "client").unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone_addr = listener.local_addr().unwrap();
    let server = HboneServer::new(
        certs.watch(&server_id).await.unwrap(),
        certs.trust_bundle(),
        ServerSettings::default(),
    )
    .unwrap();
    let (trigger, watch) = drain::channel();
    std::mem::forget(trigger);
    tokio::spawn(server.serve(listener, Arc::new(Handler), watch));

    let direct_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let direct = direct_listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = direct_listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_stream(tcp));
        }
    });

    let client = HboneClient::new(certs, Arc::new(TcpDialer), Keepalive::default());
    let mesh = ConnectRequest {
        source: client_id,
        endpoint: hbone_addr,
        destination_identity: server_id,
        authority: SocketAddr::new(hbone_addr.ip(), 8080),
        forwarded_for: None,
        baggage: None,
        traceparent: None,
    };
    Arc::new(Paths {
        client,
        mesh,
        direct,
    })
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let paths = setup().await;
        // Warm-up: certificates, the pooled connection, page cache.
        paths.bulk(true, 16 << 20).await;
        if !o.bulk_only {
            paths.requests_per_second(true, 1).await;
        }
        let bytes = o.megabytes << 20;
        let (mut mesh_gbps, mut direct_gbps, mut mesh_rps, mut direct_rps) =
            (vec![], vec![], vec![], vec![]);
        for round in 0..o.rounds {
            // Alternate which path goes first so drift on a shared machine hits both alike.
            for mesh in [round % 2 == 0, round % 2 != 0] {
                let gbps = paths.bulk(mesh, bytes).await;
                if mesh {
                    mesh_gbps.push(gbps);
                } else {
                    direct_gbps.push(gbps);
                }
                if !o.bulk_only {
                    let rps = paths.requests_per_second(mesh, o.seconds).await;
                    if mesh {
                        mesh_rps.push(rps);
                    } else {
                        direct_rps.push(rps);
                    }
                }
            }
        }
        println!(
            "hbone bench: {} rounds, {} MiB per bulk transfer, {} s of {}-way request/response per round (medians)",
            o.rounds, o.megabytes, o.seconds, CONCURRENCY
        );
        report(
            "one tunnel throughput",
            "Gbit/s",
            median(mesh_gbps),
            median(direct_gbps),
            None,
        );
        if o.bulk_only {
            return;
        }
        report(
            "new tunnel per 64 B request/response",
            "req/s",
            median(mesh_rps),
            median(direct_rps),
            None,
        );
    });
}
