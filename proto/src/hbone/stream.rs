//! One tunnel: an HTTP/2 stream read and written as a byte stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::copy;

/// Largest chunk handed to HTTP/2 in one DATA write; the connection splits it into frames.
const MAX_WRITE: usize = 256 * 1024;

/// An open HBONE tunnel. Reading yields the peer's bytes; `shutdown` half-closes (END_STREAM);
/// dropping it without shutdown resets the stream (RST_STREAM CANCEL), as a TCP RST would.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    send_closed: bool,
    // Keeps the pooled connection's stream count right for as long as the tunnel lives.
    _slot: Option<Box<dyn Send + Sync>>,
}

impl Tunnel {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        slot: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Tunnel {
            send,
            recv,
            pending: Bytes::new(),
            send_closed: false,
            _slot: slot,
        }
    }

    /// Aborts the tunnel: the peer sees a reset, as it would see a TCP RST.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }

    /// The next DATA frame's bytes, `None` at the end of the stream.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(data)) => {
                // Give the window back at once: the tunnel holds at most one frame, so the
                // peer's sending is bounded by our reading anyway.
                let _ = self.recv.flow_control().release_capacity(data.len());
                Poll::Ready(Ok(Some(data)))
            }
            Some(Err(e)) => Poll::Ready(Err(h2_to_io(e))),
            None => Poll::Ready(Ok(None)),
        }
    }

    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        loop {
            let cap = self.send.capacity();
            if cap > 0 {
                return Poll::Ready(Ok(cap.min(want)));
            }
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the tunnel was closed by the peer",
                    )));
                }
                Poll::Pending => {
                    // A peer that resets the stream never grants capacity again: notice it.
                    if let Poll::Ready(reason) = self.send.poll_reset(cx) {
                        return Poll::Ready(Err(reset_to_io(reason.map_err(h2_to_io)?)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The copy hands a tunnel the chunks it read and takes the DATA frames as they came, so the
/// bytes of a tunnel are not copied between the socket and HTTP/2.
impl copy::Stream for Tunnel {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        _buf: &mut copy::Buffer,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        self.poll_data(cx)
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.poll_capacity(cx, chunk.len()))?;
        self.send
            .send_data(chunk.split_to(n), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn read_ahead(&mut self, _cx: &mut Context<'_>, _buf: &mut copy::Buffer) -> io::Result<bool> {
        // Frames arrive whole; nothing to gain from gathering them.
        Ok(false)
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            match ready!(this.poll_data(cx))? {
                Some(data) => this.pending = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_capacity(cx, buf.len()))?;
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.send_closed {
            self.send_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

fn reset_to_io(reason: Reason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("the peer reset the tunnel ({reason})"),
    )
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if let Some(reason) = e.reason()
        && e.is_reset()
    {
        return reset_to_io(reason);
    }
    if e.is_io() {
        return e.into_io().expect("is_io");
    }
    io::Error::other(e)
}
