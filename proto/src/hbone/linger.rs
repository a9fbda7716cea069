//! Closing an HBONE connection without losing the bytes it wrote last.
//!
//! When a socket is closed while bytes it received sit unread (a WINDOW_UPDATE, a PING, the
//! peer's GOAWAY), the kernel answers with a TCP reset and throws away what it had not yet
//! sent, and the peer, on the reset, may throw away what it had received but not yet read.
//! h2 ends a connection by flushing its frames and shutting the write side down, then drops
//! the socket at once: the tail of the last tunnel's bytes could vanish on the way, which a
//! 64 MiB copy test caught about once in a few dozen runs under load. So after the write side
//! is shut, the connection reads and discards until the peer closes too (it has then read all
//! we sent), or until [`LINGER`] passes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a closing connection waits for its peer to close: long enough for a healthy peer
/// to read a full socket buffer, short enough that a stalled one cannot hold a task for long.
pub(crate) const LINGER: Duration = Duration::from_secs(5);

/// A connection's transport whose shutdown completes once the peer has closed too.
pub(crate) struct LingeringClose<T> {
    io: T,
    linger: Duration,
    state: Closing,
}

enum Closing {
    Open,
    /// Our side is shut; discarding what comes until the peer closes or the time is up.
    Draining(Pin<Box<Sleep>>),
    Closed,
}

impl<T> LingeringClose<T> {
    pub(crate) fn new(io: T) -> Self {
        Self::with_linger(io, LINGER)
    }

    pub(crate) fn with_linger(io: T, linger: Duration) -> Self {
        LingeringClose {
            io,
            linger,
            state: Closing::Open,
        }
    }
}

impl<T: AsyncRead + Unpin> LingeringClose<T> {
    /// Ready once the peer closed, the read failed, or the linger time passed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Closing::Draining(deadline) = &mut self.state else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 4096];
        loop {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(()),
                Ok(()) => continue,
                // A reset or an unclean end also means the peer is gone.
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LingeringClose<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Closing::Open = this.state {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.state = Closing::Draining(Box::pin(tokio::time::sleep(this.linger)));
        }
        ready!(this.poll_drain(cx));
        this.state = Closing::Closed;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn shutdown_waits_for_the_peer_to_close_and_discards_what_it_sends_meanwhile() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = LingeringClose::with_linger(ours, Duration::from_secs(3600));
        ours.write_all(b"last bytes").await.unwrap();
        let shutdown = tokio::spawn(async move { ours.shutdown().await });
        let mut got = [0u8; 10];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"last bytes");
        assert_eq!(theirs.read(&mut got).await.unwrap(), 0, "our side is shut");
        theirs.write_all(b"a late window update").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !shutdown.is_finished(),
            "what the peer sent is not its close"
        );
        drop(theirs);
        shutdown.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_never_closes_is_given_up_on_after_the_linger_time() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let linger = Duration::from_millis(200);
        let mut ours = LingeringClose::with_linger(ours, linger);
        let started = tokio::time::Instant::now();
        ours.shutdown().await.unwrap();
        assert!(started.elapsed() >= linger);
    }
}
