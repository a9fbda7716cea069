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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream that behaves until it has handed over `fail_after` bytes, then fails its
    /// next read as a reset peer would.
    struct ResetAfter {
        inner: DuplexStream,
        fail_after: usize,
        read: usize,
    }

    impl AsyncRead for ResetAfter {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.read >= self.fail_after {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            self.read += buf.filled().len() - before;
            polled
        }
    }

    impl AsyncWrite for ResetAfter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A client connected over loopback, and the accepted side that ztunnel would splice.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    #[tokio::test]
    async fn half_closes_pass_through_and_bytes_are_counted() {
        let (mut client, accepted) = tcp_pair().await;
        let (upstream, mut server) = tokio::io::duplex(64 * 1024);
        let spliced = tokio::spawn(splice(accepted, upstream));
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // The server sees the request and then EOF, while it can still answer.
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        server.write_all(b"a longer response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, b"a longer response");
        assert_eq!(spliced.await.unwrap().unwrap(), (7, 17));
    }

    #[tokio::test]
    async fn an_upstream_reset_resets_the_client() {
        let (mut client, accepted) = tcp_pair().await;
        let (inner, mut server) = tokio::io::duplex(64 * 1024);
        let upstream = ResetAfter {
            inner,
            fail_after: 5,
            read: 0,
        };
        let spliced = tokio::spawn(splice(accepted, upstream));
        server.write_all(b"hello, then nothing").await.unwrap();
        let err = spliced.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        // What came before the reset may arrive; then the client sees a reset, not a clean
        // EOF it could take for a complete answer.
        let mut got = Vec::new();
        let end = loop {
            let mut buf = [0u8; 64];
            match client.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        assert!(b"hello, then nothing".starts_with(&got), "{got:?}");
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn a_refused_client_sees_a_reset() {
        let (mut client, accepted) = tcp_pair().await;
        reset(accepted);
        let mut buf = [0u8; 8];
        let got = client.read(&mut buf).await.map_err(|e| e.kind());
        assert_eq!(got, Err(io::ErrorKind::ConnectionReset));
    }
}
