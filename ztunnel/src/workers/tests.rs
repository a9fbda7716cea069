use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread::ThreadId;
use std::time::Duration;

use ambit_proto::drain;
use ambit_proto::hbone::{
    ConnectRequest, HboneClient, HboneServer, Keepalive, ServerSettings, TcpDialer, TunnelHandler,
    TunnelRequest,
};
use ambit_proto::identity::{CertManager, CertificateAuthority, SpiffeId};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// Waits up to 5 s for `cond`.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A loopback listener driven by worker 0, where the tests accept.
fn listener_on_worker_0(workers: &DataWorkers) -> TcpListener {
    let _w0 = workers.handle(0).enter();
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    TcpListener::from_std(std).unwrap()
}

#[test]
fn connections_spread_evenly_over_the_workers_and_leave_their_count_when_done() {
    let (workers, threads) = start(2).unwrap();
    let listener = listener_on_worker_0(&workers);
    let addr = listener.local_addr().unwrap();
    let (placed_tx, placed_rx) = std::sync::mpsc::channel();
    let placer = workers.clone();
    // Every connection is accepted on worker 0 and placed; each says where it runs, then
    // holds its connection until the client closes it.
    workers.handle(0).spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let placed_tx = placed_tx.clone();
            placer.place(tcp, move |mut tcp| async move {
                placed_tx.send(current()).unwrap();
                let _ = tcp.read(&mut [0u8; 1]).await;
            });
        }
    });
    let mut clients = Vec::new();
    let mut placed = Vec::new();
    for _ in 0..4 {
        clients.push(std::net::TcpStream::connect(addr).unwrap());
        placed.push(placed_rx.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    placed.sort();
    assert_eq!(placed, [Some(0), Some(0), Some(1), Some(1)]);
    assert_eq!(workers.load(), [2, 2]);
    drop(clients);
    assert!(
        eventually(|| workers.load() == [0, 0]),
        "load {:?}",
        workers.load()
    );
    threads.stop();
}

const TD: &str = "cluster.local";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa).unwrap()
}

/// Records the thread each tunnel's handler runs on, by the client address of its connection.
#[derive(Default)]
struct Recorder {
    tunnels: Mutex<Vec<(SocketAddr, ThreadId, Option<usize>)>>,
}

impl TunnelHandler for Recorder {
    async fn handle(&self, request: TunnelRequest) {
        self.tunnels
            .lock()
            .push((request.peer_addr, std::thread::current().id(), current()));
        let Ok(mut tunnel) = request.accept() else {
            return;
        };
        // Echoes until the client closes: a tunnel dropped with bytes unsent is reset.
        let mut byte = [0u8; 1];
        while let Ok(1..) = tunnel.read(&mut byte).await {
            let _ = tunnel.write_all(&byte).await;
        }
    }
}

/// Places on the workers, recording the thread each connection (its TLS and HTTP/2 task) runs
/// on, by the client's address.
struct RecordingPlacement {
    workers: Arc<DataWorkers>,
    connections: Arc<Mutex<HashMap<SocketAddr, ThreadId>>>,
}

impl Placement for RecordingPlacement {
    fn place(&self, tcp: TcpStream, serve: Box<dyn FnOnce(TcpStream) -> ServeConnection + Send>) {
        let connections = self.connections.clone();
        self.workers.place(tcp, move |tcp| async move {
            let peer = tcp.peer_addr().unwrap();
            connections.lock().insert(peer, std::thread::current().id());
            serve(tcp).await
        });
    }
}

#[test]
fn an_hbone_connection_and_its_tunnels_run_on_one_worker_thread() {
    let (workers, threads) = start(2).unwrap();
    let test = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let certs = test.block_on(async {
        CertManager::with_local_ca(
            CertificateAuthority::generate(TD).unwrap(),
            Duration::from_secs(3600),
        )
    });
    let server_id = id("server");
    let recorder = Arc::new(Recorder::default());
    let connections = Arc::new(Mutex::new(HashMap::new()));
    let (trigger, drain) = drain::channel();
    let addr = test.block_on(async {
        let watch = certs.watch(&server_id).await.unwrap();
        let server =
            HboneServer::new(watch, certs.trust_bundle(), ServerSettings::default()).unwrap();
        let placement = Arc::new(RecordingPlacement {
            workers: workers.clone(),
            connections: connections.clone(),
        });
        let listener = listener_on_worker_0(&workers);
        let addr = listener.local_addr().unwrap();
        let recorder = recorder.clone();
        workers
            .handle(0)
            .spawn(server.serve_placed(listener, recorder, drain, placement));
        addr
    });
    // Two clients, so two HBONE connections, each carrying three tunnels.
    test.block_on(async {
        let mut tunnels = Vec::new();
        for c in 0..2 {
            let client = HboneClient::new(certs.clone(), Arc::new(TcpDialer), Keepalive::default());
            let request = ConnectRequest {
                source: id(&format!("client-{c}")),
                endpoint: addr,
                destination_identity: server_id.clone(),
                authority: SocketAddr::new(addr.ip(), 8080),
                forwarded_for: None,
                baggage: None,
                traceparent: None,
            };
            for _ in 0..3 {
                let mut tunnel = client.connect(&request).await.unwrap();
                tunnel.write_all(b"x").await.unwrap();
                let mut back = [0u8; 1];
                tunnel.read_exact(&mut back).await.unwrap();
                tunnels.push(tunnel);
            }
        }
    });
    let tunnels = recorder.tunnels.lock().clone();
    let connections = connections.lock().clone();
    assert_eq!(connections.len(), 2, "two HBONE connections");
    let mut workers_used: Vec<_> = tunnels.iter().map(|t| t.2).collect();
    workers_used.sort();
    workers_used.dedup();
    assert_eq!(
        workers_used,
        [Some(0), Some(1)],
        "one connection on each worker"
    );
    for (peer, thread, _) in &tunnels {
        assert_eq!(
            connections.get(peer),
            Some(thread),
            "a tunnel of the connection from {peer} ran on another thread than its connection"
        );
    }
    test.block_on(trigger.drain(Duration::from_secs(1)));
    drop(test);
    threads.stop();
}
