//! The mesh bench's floor (`--relay`): a plain TCP relay, `bench-relay LISTEN TARGET`. Each
//! connection accepted on LISTEN is joined to a new one to TARGET by two threads, each reading
//! into a 256 KiB buffer and writing what it read: one copy in and one copy out per chunk, no
//! TLS, no HTTP/2, no poller. A pair of these on the mesh's path costs what any proxy that must
//! see the bytes pays at least (the same three TCP connections, the same socket copies), so its
//! figures bound what a user-space proxy could reach on this machine.
//!
//! Prints `listening on ADDR` once it listens (LISTEN may give port 0). Exits with a message
//! when its arguments or its listener are wrong; a connection that fails, or that comes past
//! [`MAX_CONNECTIONS`] open, is reported on stderr and closed, and the relay goes on.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// As large as the proxies' largest copy buffer, so that bulk flows move in the same chunks.
const BUFFER: usize = 256 * 1024;
/// A target that does not answer fails the connection rather than holding it forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that sends or takes nothing for this long fails the connection. Well past the
/// bench's pauses: iperf3's control connection is quiet for a whole run (10 s by default).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections carried at once; past it one is refused (closed, with a line on stderr) rather
/// than given two more threads. Far above the bench's 64 connections plus iperf3's control one.
const MAX_CONNECTIONS: usize = 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, target) = match args.as_slice() {
        [listen, target] => match (listen.parse::<SocketAddr>(), target.parse::<SocketAddr>()) {
            (Ok(l), Ok(t)) => (l, t),
            _ => return usage("LISTEN and TARGET must be ip:port addresses"),
        },
        _ => return usage("takes two arguments"),
    };
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-relay: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The address bound, port 0 resolved, for whoever started the relay.
    match listener.local_addr() {
        Ok(bound) => println!("listening on {bound}"),
        Err(e) => {
            eprintln!("bench-relay: no address for the listener on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let open = Arc::new(AtomicUsize::new(0));
    for accepted in listener.incoming() {
        match accepted {
            Ok(client) => carry(client, target, &open),
            // Out of descriptors or the like: this connection is lost, the next may not be.
            Err(e) => eprintln!("bench-relay: accept on {listen}: {e}"),
        }
    }
    ExitCode::SUCCESS
}

/// Relays `client` on a thread of its own, unless [`MAX_CONNECTIONS`] are open already or no
/// thread can be started; then it is closed, and said so.
fn carry(client: TcpStream, target: SocketAddr, open: &Arc<AtomicUsize>) {
    if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
        open.fetch_sub(1, Ordering::Relaxed);
        eprintln!("bench-relay: refused a connection: {MAX_CONNECTIONS} are open already");
        return;
    }
    let done = Arc::clone(open);
    let started = thread::Builder::new().spawn(move || {
        if let Err(e) = relay(client, target) {
            eprintln!("bench-relay: a connection to {target} failed: {e}");
        }
        done.fetch_sub(1, Ordering::Relaxed);
    });
    if let Err(e) = started {
        open.fetch_sub(1, Ordering::Relaxed);
        eprintln!("bench-relay: refused a connection: no thread for it: {e}");
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "bench-relay: {why}; usage: bench-relay LISTEN TARGET (e.g. 0.0.0.0:15001 10.0.0.2:80)"
    );
    ExitCode::from(2)
}

/// Joins `client` to a new connection to `target` until both directions have ended.
fn relay(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    for socket in [&client, &server] {
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(STALL_TIMEOUT))?;
        socket.set_write_timeout(Some(STALL_TIMEOUT))?;
    }
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    let up = thread::Builder::new().spawn(move || copy(client_in, server_out))?;
    let down = copy(server, client);
    let up = up
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the upload thread panicked")));
    down.and(up)
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side. On an error both
/// sockets are shut down, so the other direction's thread ends too.
fn copy(mut from: TcpStream, mut to: TcpStream) -> io::Result<()> {
    let mut buf = vec![0; BUFFER];
    let result = (|| loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return to.shutdown(Shutdown::Write);
        }
        to.write_all(&buf[..n])?;
    })();
    if result.is_err() {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
    result
}
