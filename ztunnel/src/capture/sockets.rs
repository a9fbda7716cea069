//! Sockets made inside a pod's namespace: the pod's capture listeners, and the marked
//! connections ztunnel opens from the pod (HBONE to other pods, passthrough, delivery to the
//! app), which the redirect rules let through untouched.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use ambit_proto::hbone::Dialer;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::rules::MARK;
use super::{CaptureError, PodNetns};

/// Listens on `port` (all addresses, v4 and v6 apart) inside the namespace. The v6 listener
/// is skipped when the pod has no IPv6.
pub fn listen(netns: &PodNetns, port: u16) -> Result<Vec<TcpListener>, CaptureError> {
    let mut listeners = Vec::new();
    for ip in [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ] {
        let addr = SocketAddr::new(ip, port);
        let made = netns.run(|| -> io::Result<std::net::TcpListener> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            Ok(socket.into())
        })?;
        match made {
            Ok(l) => {
                listeners.push(
                    TcpListener::from_std(l).map_err(|source| CaptureError::Listen {
                        netns: netns.path().into(),
                        addr,
                        source,
                    })?,
                )
            }
            Err(e) if addr.is_ipv6() && e.raw_os_error() == Some(libc_eafnosupport()) => {
                tracing::debug!(netns = %netns.path().display(), "no IPv6 in the pod; IPv4 capture only");
            }
            Err(source) => {
                return Err(CaptureError::Listen {
                    netns: netns.path().into(),
                    addr,
                    source,
                });
            }
        }
    }
    Ok(listeners)
}

fn libc_eafnosupport() -> i32 {
    nix::errno::Errno::EAFNOSUPPORT as i32
}

/// The address a redirected connection was headed for (SO_ORIGINAL_DST).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("SO_ORIGINAL_DST returned a non-IP address"))
}

/// Opens TCP connections from inside a pod's namespace, marked so capture lets them pass.
#[derive(Debug, Clone)]
pub struct PodDialer {
    netns: Arc<PodNetns>,
}

impl PodDialer {
    pub fn new(netns: Arc<PodNetns>) -> Self {
        PodDialer { netns }
    }

    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self
            .netns
            .run(|| -> io::Result<Socket> {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                s.set_mark(MARK)?;
                s.set_nonblocking(true)?;
                s.set_tcp_nodelay(true)?;
                Ok(s)
            })
            .map_err(|e| io::Error::other(e.to_string()))??;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        socket.connect(addr).await
    }
}

impl Dialer for PodDialer {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> {
        let dialer = self.clone();
        Box::pin(async move { dialer.connect(addr).await })
    }
}
