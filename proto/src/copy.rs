//! Copying both ways between two byte streams (a connection and its tunnel or upstream) until
//! both sides are done: half-closes pass through, and the bytes are reported as each chunk is
//! written, so metrics move while a connection is open and keep what moved when it ends in
//! an error.
//!
//! Each direction's buffer starts small and grows only while reads fill it: a request/response
//! connection holds a few KiB, a bulk transfer reaches the size that moves it in few syscalls
//! and few HTTP/2 frames. (tokio's copy takes one fixed size for both, paid up front by every
//! connection, idle or not.)

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A direction's first buffer: a typical request or response head fits.
pub const INITIAL_BUFFER: usize = 4 * 1024;
/// Where growth stops: a bulk transfer moves in 128 KiB reads and writes.
pub const MAX_BUFFER: usize = 128 * 1024;

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
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
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

/// One direction: read into the buffer, write it all out, again; at EOF shut the writer down.
struct Transfer {
    buf: Vec<u8>,
    /// `buf[pos..filled]` is read and not yet written.
    pos: usize,
    filled: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    written: u64,
}

impl Transfer {
    fn new() -> Self {
        Transfer {
            buf: Vec::new(),
            pos: 0,
            filled: 0,
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
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.filled && !self.read_done {
                self.make_room();
                let mut read = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.filled = n;
                        }
                    }
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
            while self.pos < self.filled {
                let written =
                    Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.filled]);
                let Poll::Ready(written) = written else {
                    // The writer is busy: read into the rest of the buffer meanwhile, so that
                    // the next write (a TLS record, an HTTP/2 frame) carries more.
                    self.read_more(cx, reader)?;
                    return Poll::Pending;
                };
                let n = written?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the other side accepts no more bytes",
                    )));
                }
                self.pos += n;
                self.written += n as u64;
                self.need_flush = true;
                moved(n);
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Reads what is ready into the free end of the buffer, if there is room and no EOF yet.
    fn read_more<R>(&mut self, cx: &mut Context<'_>, reader: &mut R) -> io::Result<()>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if self.read_done || self.filled == self.buf.len() {
            return Ok(());
        }
        let mut read = ReadBuf::new(&mut self.buf[self.filled..]);
        match Pin::new(&mut *reader).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => self.read_done = true,
            Poll::Ready(Ok(())) => self.filled += read.filled().len(),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
        Ok(())
    }

    /// Before a read, with nothing pending: the first buffer, or a bigger one when the last read
    /// filled this one (the flow is faster than one buffer per wake-up).
    fn make_room(&mut self) {
        let len = self.buf.len();
        if len == 0 {
            self.buf = vec![0; INITIAL_BUFFER];
        } else if self.filled == len && len < MAX_BUFFER {
            self.buf = vec![0; (len * 4).min(MAX_BUFFER)];
        }
        self.pos = 0;
        self.filled = 0;
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
