//! Copying both ways between two byte streams (a connection and its tunnel or upstream) until
//! both sides are done: half-closes pass through, and the bytes are reported as each chunk is
//! written, so metrics move while a connection is open and keep what moved when it ends in
//! an error.
//!
//! Each direction's buffer starts small and grows only while reads fill it: a request/response
//! connection holds a few KiB, a bulk transfer reaches the size that moves it in few syscalls
//! and few HTTP/2 frames. (tokio's copy takes one fixed size for both, paid up front by every
//! connection, idle or not.) Bytes move as [`Bytes`] chunks, so a stream that already holds its
//! bytes in shared buffers (an HBONE tunnel: HTTP/2 DATA frames) hands them over and takes them
//! whole, without a copy on either side of the tunnel.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpStream;

/// A direction's first buffer: a typical request or response head fits.
pub const INITIAL_BUFFER: usize = 4 * 1024;
/// Where growth stops: a bulk transfer moves in 256 KiB reads and writes (each one HTTP/2 frame
/// and one wake-up of the connection's task, where 64 KiB cost four).
pub const MAX_BUFFER: usize = 256 * 1024;

/// A byte stream the copy moves bytes between. By default it reads into the copy's buffer and
/// writes by reference, as `AsyncRead` and `AsyncWrite` do; a stream whose bytes already travel
/// in shared buffers overrides both to hand over and take whole chunks.
pub trait Stream: AsyncRead + AsyncWrite + Unpin {
    /// The next bytes read, `None` at EOF.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Buffer,
    ) -> Poll<io::Result<Option<Bytes>>> {
        buf.poll_read(self, cx)
    }

    /// Writes from the front of `chunk` and advances it past what was written.
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut *self).poll_write(cx, chunk))?;
        chunk.advance(n);
        Poll::Ready(Ok(n))
    }

    /// While the other side's write waits: reads what is ready into the free end of `buf`, so
    /// that the next write (a TLS record, an HTTP/2 frame) carries more. Returns whether EOF
    /// was read.
    fn read_ahead(&mut self, cx: &mut Context<'_>, buf: &mut Buffer) -> io::Result<bool> {
        buf.read_ahead(self, cx)
    }
}

impl Stream for TcpStream {}
impl Stream for DuplexStream {}
/// A direction's read buffer: starts at [`INITIAL_BUFFER`], grows while reads fill it. Chunks
/// are split off it; once a chunk is written and dropped its room is reused.
pub struct Buffer {
    data: BytesMut,
    /// The room each read gets.
    size: usize,
}

impl Buffer {
    fn new() -> Self {
        Buffer {
            data: BytesMut::new(),
            size: 0,
        }
    }

    /// What was read ahead, or else one read from `reader` into fresh room.
    pub fn poll_read<R>(
        &mut self,
        reader: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if self.data.is_empty() {
            if self.size == 0 {
                self.size = INITIAL_BUFFER;
            }
            self.data.reserve(self.size);
            let room = self.data.capacity();
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(reader),
                cx,
                &mut self.data
            ))?;
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            if n == room {
                // The flow is faster than one buffer per wake-up.
                self.size = (self.size * 4).min(MAX_BUFFER);
            }
        }
        Poll::Ready(Ok(Some(self.data.split().freeze())))
    }

    /// Reads what is ready into the room left, without growing; whether EOF was read.
    pub fn read_ahead<R>(&mut self, reader: &mut R, cx: &mut Context<'_>) -> io::Result<bool>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if self.data.capacity() == self.data.len() {
            return Ok(false);
        }
        match tokio_util::io::poll_read_buf(Pin::new(reader), cx, &mut self.data) {
            Poll::Ready(Ok(0)) => Ok(true),
            Poll::Ready(Ok(_)) | Poll::Pending => Ok(false),
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    #[cfg(test)]
    fn size(&self) -> usize {
        self.size
    }
}

/// Told of every chunk written, as it is written.
pub trait Progress {
    /// `n` bytes went from `a` to `b` (`forward`), or from `b` to `a`.
    fn moved(&self, forward: bool, n: usize);
}

/// No one to tell.
impl Progress for () {
    fn moved(&self, _forward: bool, _n: usize) {}
}

/// Bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub forward: u64,
    pub backward: u64,
}

/// Copies `a` → `b` and `b` → `a` until both have ended (EOF read and passed on as a
/// half-close), or until either side fails. The counts are those written, error or not.
pub async fn bidirectional<A, B, P>(a: &mut A, b: &mut B, progress: &P) -> (Moved, io::Result<()>)
where
    A: Stream + ?Sized,
    B: Stream + ?Sized,
    P: Progress + ?Sized,
{
    let mut forward = Transfer::new();
    let mut backward = Transfer::new();
    let result = poll_fn(|cx| {
        let f = forward.poll(cx, &mut *a, &mut *b, |n| progress.moved(true, n));
        let r = backward.poll(cx, &mut *b, &mut *a, |n| progress.moved(false, n));
        match (f, r) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    let moved = Moved {
        forward: forward.written,
        backward: backward.written,
    };
    (moved, result)
}

/// One direction: take a chunk from the reader, write it all out, again; at EOF shut the
/// writer down.
struct Transfer {
    buf: Buffer,
    /// Read and not yet written.
    chunk: Bytes,
    read_done: bool,
    need_flush: bool,
    done: bool,
    written: u64,
}

impl Transfer {
    fn new() -> Self {
        Transfer {
            buf: Buffer::new(),
            chunk: Bytes::new(),
            read_done: false,
            need_flush: false,
            done: false,
            written: 0,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        mut moved: impl FnMut(usize),
    ) -> Poll<io::Result<()>>
    where
        R: Stream + ?Sized,
        W: Stream + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.chunk.is_empty() && !self.buf.data.is_empty() {
                // Read ahead while the last write waited.
                self.chunk = self.buf.data.split().freeze();
            }
            if self.chunk.is_empty() && !self.read_done {
                match reader.poll_chunk(cx, &mut self.buf) {
                    Poll::Ready(Ok(Some(chunk))) => self.chunk = chunk,
                    Poll::Ready(Ok(None)) => self.read_done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read now: what was written must not sit in a buffer.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while !self.chunk.is_empty() {
                let Poll::Ready(written) = writer.poll_write_chunk(cx, &mut self.chunk) else {
                    if !self.read_done {
                        self.read_done = reader.read_ahead(cx, &mut self.buf)?;
                    }
                    return Poll::Pending;
                };
                let n = written?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the other side accepts no more bytes",
                    )));
                }
                self.written += n as u64;
                self.need_flush = true;
                moved(n);
            }
            if self.read_done && self.buf.data.is_empty() {
                // EOF, and everything before it written.
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
