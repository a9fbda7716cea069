//! HTTP/1.1 request smuggling. hyper itself answers 400 and closes the connection for two
//! differing Content-Lengths and for a Transfer-Encoding whose last coding is not `chunked`.
//! A request with both Content-Length and `Transfer-Encoding: chunked` it serves by the
//! Transfer-Encoding and only closes the connection after it (RFC 9112 §6.3 allows that), but
//! such a request is what a smuggling attempt looks like, and the waypoint refuses it with
//! 400 before anything is forwarded.
//!
//! hyper does not tell whether a request had both: the Content-Length is gone from the head it
//! hands over. So [`Follow`] reads the connection's bytes as hyper reads them: it finds each
//! request head with the parser hyper uses (httparse, same settings), follows each body's
//! framing as hyper's decoder does to find the next head, and notes the place of the first
//! ambiguous head; the service asks, for each request, whether it is that one. Where hyper
//! would refuse the bytes (and close), or after a request that may switch protocols, it stops
//! following: no later request on that connection can be found ambiguous, and hyper's own
//! rule (Transfer-Encoding wins, then close) still holds.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Headers parsed on the stack up to this many (hyper does the same).
const STACK_HEADERS: usize = 128;
const NONE: u64 = u64::MAX;

/// Which request of a connection (counting from 0) was the first with an ambiguous length.
#[derive(Debug)]
pub struct Verdicts {
    first_ambiguous: AtomicU64,
    /// Part of a head has come and not the rest (or the follow stopped, and nobody knows).
    pending_head: AtomicBool,
}

impl Verdicts {
    /// Whether request `index` of the connection carried both Content-Length and
    /// Transfer-Encoding.
    pub fn is_ambiguous(&self, index: u64) -> bool {
        self.first_ambiguous.load(Ordering::Acquire) == index
    }

    /// Whether a request head is partly read: a connection that times out then was sending
    /// one too slowly, one that times out without was only kept alive, idle.
    pub fn head_pending(&self) -> bool {
        self.pending_head.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunked, u64),
    Stopped,
}

/// The framing a parsed head gives its body, as hyper reads it.
enum Framing {
    Length(u64),
    Chunked,
    /// Both Content-Length and chunked: served chunked by hyper, refused by us.
    Ambiguous,
    /// hyper refuses the head, or the connection may switch protocols after it.
    Stop,
}

/// A connection's inbound bytes, followed on their way to hyper's HTTP/1.1 server.
#[derive(Debug)]
pub struct Follow<S> {
    inner: S,
    state: State,
    head: Vec<u8>,
    /// hyper's read buffer bound and header limits, which end a head hyper would refuse.
    max_buf: usize,
    max_head: usize,
    max_headers: usize,
    index: u64,
    verdicts: Arc<Verdicts>,
}

impl<S> Follow<S> {
    pub fn new(
        inner: S,
        max_buf: usize,
        max_head: usize,
        max_headers: usize,
    ) -> (Self, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts {
            first_ambiguous: AtomicU64::new(NONE),
            pending_head: AtomicBool::new(false),
        });
        let follow = Follow {
            inner,
            state: State::Head,
            head: Vec::new(),
            max_buf,
            max_head,
            max_headers,
            index: 0,
            verdicts: verdicts.clone(),
        };
        (follow, verdicts)
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = match self.state {
                State::Stopped => return,
                State::Head => self.head_bytes(data),
                State::Length(left) => {
                    let n = left.min(data.len() as u64);
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Length(left - n)
                    };
                    &data[n as usize..]
                }
                State::Chunked(Chunked::Body, left) => {
                    let n = left.min(data.len() as u64);
                    self.state = if n == left {
                        State::Chunked(Chunked::BodyCr, 0)
                    } else {
                        State::Chunked(Chunked::Body, left - n)
                    };
                    &data[n as usize..]
                }
                State::Chunked(at, size) => {
                    self.state = chunked(at, size, data[0]);
                    &data[1..]
                }
            };
        }
    }

    /// Adds bytes to the head being read; returns those after it once it is whole.
    fn head_bytes<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let old = self.head.len();
        let take = data.len().min(self.max_buf.saturating_sub(old));
        self.head.extend_from_slice(&data[..take]);
        // A head ends with a line feed: parsing before one comes would only say "partial".
        if !data[..take].contains(&b'\n') {
            if self.head.len() >= self.max_buf {
                self.state = State::Stopped;
            }
            return &[];
        }
        let parsed = if self.max_headers <= STACK_HEADERS {
            let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
            parse(&self.head, &mut headers[..self.max_headers])
        } else {
            let mut headers = vec![httparse::EMPTY_HEADER; self.max_headers];
            parse(&self.head, &mut headers)
        };
        let (len, framing) = match parsed {
            None => {
                if self.head.len() >= self.max_buf {
                    self.state = State::Stopped;
                }
                return &[];
            }
            Some(Err(())) => {
                self.state = State::Stopped;
                return &[];
            }
            Some(Ok(done)) => done,
        };
        if len <= old || len > self.max_head {
            self.state = State::Stopped;
            return &[];
        }
        self.head.clear();
        let index = self.index;
        self.index += 1;
        self.state = match framing {
            Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Start, 0),
            Framing::Ambiguous => {
                // hyper closes the connection after this request: nothing later matters.
                self.verdicts
                    .first_ambiguous
                    .store(index, Ordering::Release);
                State::Stopped
            }
            Framing::Stop => State::Stopped,
        };
        &data[len - old..]
    }
}

/// `None`: not whole yet; `Err`: hyper refuses it.
fn parse<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Option<Result<(usize, Framing), ()>> {
    let mut request = httparse::Request::new(headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Err(())),
    };
    let http11 = request.version == Some(1);
    let mut upgrade = request.method == Some("CONNECT");
    // As hyper's `Server::parse_headers`: the last Transfer-Encoding line decides chunked; a
    // Content-Length after a Transfer-Encoding is not even parsed.
    let (mut te, mut te_chunked, mut cl, mut has_cl) = (false, false, None, false);
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Some(Ok((len, Framing::Stop)));
            }
            te = true;
            te_chunked = last_coding_is_chunked(header.value);
        } else if header.name.eq_ignore_ascii_case("content-length") {
            has_cl = true;
            if te {
                continue;
            }
            let Some(n) = digits(header.value) else {
                return Some(Ok((len, Framing::Stop)));
            };
            if cl.is_some_and(|prev| prev != n) {
                return Some(Ok((len, Framing::Stop)));
            }
            cl = Some(n);
        } else if header.name.eq_ignore_ascii_case("upgrade") && http11 {
            upgrade = true;
        }
    }
    let framing = if (te && !te_chunked) || upgrade {
        Framing::Stop
    } else if te && has_cl {
        Framing::Ambiguous
    } else if te {
        Framing::Chunked
    } else {
        Framing::Length(cl.unwrap_or(0))
    };
    Some(Ok((len, framing)))
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
    })
}

/// A Content-Length as hyper reads it: decimal digits only, no sign, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// One byte of chunked framing outside chunk data, as hyper's `ChunkedState` reads it.
fn chunked(at: Chunked, size: u64, b: u8) -> State {
    use Chunked::*;
    let hex = |size: u64| {
        let d = (b as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(d))
    };
    let next = match (at, b) {
        (Start, _) => match hex(0) {
            Some(s) => return State::Chunked(Size, s),
            None => return State::Stopped,
        },
        (Size, b'\t' | b' ') => SizeLws,
        (Size, b';') | (SizeLws, b';') => Extension,
        (Size, b'\r') | (SizeLws, b'\r') | (Extension, b'\r') => SizeLf,
        (Size, _) => match hex(size) {
            Some(s) => return State::Chunked(Size, s),
            None => return State::Stopped,
        },
        (SizeLws, b'\t' | b' ') => SizeLws,
        (Extension, b'\n') => return State::Stopped,
        (Extension, _) => Extension,
        (SizeLf, b'\n') if size == 0 => EndCr,
        (SizeLf, b'\n') => return State::Chunked(Body, size),
        (BodyCr, b'\r') => BodyLf,
        (BodyLf, b'\n') => Start,
        (EndCr, b'\r') => EndLf,
        (EndCr, _) | (Trailer, _) if b != b'\r' => Trailer,
        (Trailer, b'\r') => TrailerLf,
        (TrailerLf, b'\n') => EndCr,
        (EndLf, b'\n') => return State::Head,
        _ => return State::Stopped,
    };
    State::Chunked(next, size)
}

impl<S: AsyncRead + Unpin> AsyncRead for Follow<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && this.state != State::Stopped
        {
            this.feed(&buf.filled()[before..]);
            let pending = match this.state {
                State::Head => !this.head.is_empty(),
                State::Stopped => true,
                _ => false,
            };
            this.verdicts.pending_head.store(pending, Ordering::Relaxed);
        }
        read
    }
}

ambit_proto::forward_async_write!(Follow);

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `step` bytes; the index of the ambiguous request, if any,
    /// and the state at the end.
    fn follow(stream: &[u8], step: usize) -> (Option<u64>, State) {
        let (mut f, verdicts) = Follow::new(tokio::io::empty(), 64 * 1024, 60 * 1024, 100);
        for piece in stream.chunks(step) {
            f.feed(piece);
        }
        let first = verdicts.first_ambiguous.load(Ordering::Relaxed);
        ((first != NONE).then_some(first), f.state)
    }

    #[test]
    fn bodies_are_skipped_by_their_framing_and_the_ambiguous_head_is_found() {
        // Bodies that look like heads must not be taken for heads.
        let body = "GET /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = "GET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let stream = [
            "\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n".to_string(),
            format!(
                "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\ntrailer: t\r\n\r\n".to_string(),
            format!(
                "5;ext=1\r\nhello\r\n{:X} \t\r\n{chunk}\r\n0\r\nt: 1\r\n\r\n",
                chunk.len()
            ),
            "GET / HTTP/1.1\r\nhost: a\r\n\r\n".to_string(),
            "POST /s HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"
                .to_string(),
            "0\r\n\r\n".to_string(),
        ]
        .concat()
        .into_bytes();
        for step in [1, 3, 7, stream.len()] {
            assert_eq!(
                follow(&stream, step),
                (Some(4), State::Stopped),
                "in pieces of {step}"
            );
        }
        // Either order of the two headers.
        let cl_first =
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(follow(cl_first, 5).0, Some(0));
    }

    #[test]
    fn heads_hyper_refuses_or_that_may_switch_protocols_stop_the_follow() {
        for head in [
            &b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert_eq!(
                follow(head, 4),
                (None, State::Stopped),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Chunk framing hyper rejects.
        let bad = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\nhello";
        assert_eq!(follow(bad, 2), (None, State::Stopped));
        // Two of the same Content-Length are one.
        let same = b"POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nhi";
        assert_eq!(follow(same, 2), (None, State::Head));
    }
}
