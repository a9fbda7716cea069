//! Copies bytes both ways between a connection and its upstream until both sides are done,
//! passing half-closes through and turning an abort on one side into an abort on the other.

use std::io;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

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
