//! The mesh bench's floor relay (`bench-relay`) over real sockets on loopback: it carries bytes
//! both ways, passes a half-close on, and survives a target that refuses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

/// The relay, killed when dropped.
struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench-relay"))
            .args(["127.0.0.1:0", &target.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bench-relay starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("bench-relay says where it listens");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bench-relay said {line:?}"));
        Relay { child, addr }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("the relay accepts");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that sends back everything it reads, then closes once the client has.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut back);
                let _ = back.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn carries_bytes_both_ways_and_passes_the_close_on() {
    let relay = Relay::start(echo_server());
    let sent: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut conn = relay.connect();
    let mut reader = conn.try_clone().unwrap();
    let received = thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });
    conn.write_all(&sent).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    // read_to_end returns only once the echo's close came back through the relay.
    let got = received.join().unwrap().expect("the echo comes back");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the bytes came back changed");
}

#[test]
fn a_refusing_target_closes_the_connection_and_the_relay_goes_on() {
    // A port nothing listens on: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = Relay::start(closed);
    for _ in 0..2 {
        let mut conn = relay.connect();
        let mut buf = [0u8; 16];
        let read = conn.read(&mut buf);
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the connection should end, it read {read:?}"
        );
    }
}
