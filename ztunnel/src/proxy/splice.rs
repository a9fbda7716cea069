//! Copies bytes both ways between a connection and its upstream until both sides are done,
//! passing half-closes through and turning an abort on one side into an abort on the other.

use std::io;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::connections::TrackedConnection;
use crate::metrics::ConnectionCounters;

/// Large enough that a bulk transfer moves in few syscalls and few HTTP/2 DATA frames.
const BUFFER: usize = 128 * 1024;

/// Returns (bytes to upstream, bytes back from upstream).
pub async fn splice<U>(mut downstream: TcpStream, mut upstream: U) -> io::Result<(u64, u64)>
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional_with_sizes(&mut downstream, &mut upstream, BUFFER, BUFFER)
        .await
    {
        Ok(counts) => Ok(counts),
        Err(e) => {
            // The other side must see an abort, not a clean close: an RST for TCP (linger 0),
            // and dropping the tunnel without END_STREAM resets the stream.
            let _ = SockRef::from(&downstream).set_linger(Some(std::time::Duration::ZERO));
            Err(e)
        }
    }
}

/// Splices `tcp` with `other` and records the outcome in metrics and the connection tracker.
/// Bytes "sent" are those towards the destination, as Istio counts them: `tcp` is the
/// destination on the inbound side (the app), `other` on the outbound side.
pub(crate) async fn carry<U>(
    tcp: TcpStream,
    other: U,
    tcp_is_destination: bool,
    counters: ConnectionCounters,
    tracked: TrackedConnection,
) where
    U: AsyncRead + AsyncWrite + Unpin,
{
    match splice(tcp, other).await {
        Ok((to_other, to_tcp)) => {
            let (sent, received) = if tcp_is_destination {
                (to_tcp, to_other)
            } else {
                (to_other, to_tcp)
            };
            counters.closed(sent, received);
            tracked.finish(sent, received, None);
        }
        Err(e) => {
            counters.closed(0, 0);
            tracked.finish(0, 0, Some(e.to_string()));
        }
    }
}

/// Closes a connection with RST, so the app sees "connection reset" at once instead of a
/// clean EOF it might mistake for an empty answer.
pub(crate) fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}
