//! What the client of an HTTP/2 server connection sends, watched frame by frame underneath the
//! HTTP/2 library. h2 bounds the size of a header block and the number of its CONTINUATION
//! frames, but not how long it may take: a client that opens a header block and then trickles
//! it (or stops) holds the connection for ever, since no other frame may come in between
//! (RFC 9113 §6.10). The watch gives each header block a deadline and fails the connection's
//! reads when it passes. It also counts what the client sent, so that when h2 closes a
//! connection with ENHANCE_YOUR_CALM the log can say which of its limits the client broke.
//!
//! It reads only the 9-byte frame headers as the bytes go by: no copy, no allocation beyond
//! one timer per connection that ever leaves a header block open.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The client connection preface (RFC 9113 §3.4), which comes before the first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// What the watch needs to know about the server's own HTTP/2 settings.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// A header block must end (END_HEADERS) within this long of its first frame.
    pub header_timeout: Duration,
    /// The server's SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// The server's SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// The server's limit on streams the client resets before they are accepted.
    pub max_pending_accept_reset_streams: usize,
}

/// Which abuse limit an HTTP/2 connection most likely broke when it was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    /// A header block outlived the header timeout (slow headers).
    SlowHeaders,
    /// More CONTINUATION frames in one header block than its size allows (CVE-2024-27919).
    ContinuationFlood,
    /// A header block far over SETTINGS_MAX_HEADER_LIST_SIZE.
    OversizedHeaders,
    /// Streams reset by the client faster than they were served (CVE-2023-44487).
    RapidReset,
    /// Anything else h2 calls abuse: too many streams the server itself had to reset (the
    /// client kept breaking the protocol on streams, or opened more than
    /// SETTINGS_MAX_CONCURRENT_STREAMS), or a flood of tiny DATA frames.
    StreamErrors,
}

impl Abuse {
    pub const ALL: [Abuse; 5] = [
        Abuse::SlowHeaders,
        Abuse::ContinuationFlood,
        Abuse::OversizedHeaders,
        Abuse::RapidReset,
        Abuse::StreamErrors,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Abuse::SlowHeaders => "slow_headers",
            Abuse::ContinuationFlood => "continuation_flood",
            Abuse::OversizedHeaders => "oversized_headers",
            Abuse::RapidReset => "rapid_reset",
            Abuse::StreamErrors => "stream_errors",
        }
    }
}

impl fmt::Display for Abuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counts of what one connection's client sent, readable after the connection is gone.
#[derive(Debug, Default)]
pub struct FrameStats {
    resets: AtomicU64,
    header_blocks: AtomicU64,
    /// The most CONTINUATION frames seen in one header block, and the most bytes.
    largest_block_frames: AtomicU64,
    largest_block_bytes: AtomicU64,
    header_timeout: AtomicBool,
}

impl FrameStats {
    /// RST_STREAM frames received.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Header blocks started (HEADERS frames).
    pub fn header_blocks(&self) -> u64 {
        self.header_blocks.load(Ordering::Relaxed)
    }

    /// Whether the connection was failed because a header block outlived the header timeout.
    pub fn header_timed_out(&self) -> bool {
        self.header_timeout.load(Ordering::Relaxed)
    }

    /// Which limit the client most likely broke, for a connection h2 closed with
    /// ENHANCE_YOUR_CALM, COMPRESSION_ERROR or our own read error; judged from what it sent,
    /// with h2's own thresholds.
    pub fn abuse(&self, settings: &WatchSettings) -> Abuse {
        if self.header_timed_out() {
            return Abuse::SlowHeaders;
        }
        if self.largest_block_frames.load(Ordering::Relaxed)
            > max_continuation_frames(settings) as u64
        {
            return Abuse::ContinuationFlood;
        }
        if self.largest_block_bytes.load(Ordering::Relaxed)
            > u64::from(settings.max_header_list_size)
        {
            return Abuse::OversizedHeaders;
        }
        if self.resets() > settings.max_pending_accept_reset_streams as u64 {
            return Abuse::RapidReset;
        }
        Abuse::StreamErrors
    }

    /// The limit `error` (the connection's end, or any error whose sources include it) says
    /// the client broke, if it was one: our header timeout, or an h2 GOAWAY of its own for
    /// abuse. A client going away, or breaking the protocol otherwise, is none.
    pub fn abuse_in(
        &self,
        error: &(dyn std::error::Error + 'static),
        settings: &WatchSettings,
    ) -> Option<Abuse> {
        if self.header_timed_out() {
            return Some(Abuse::SlowHeaders);
        }
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                let calm = matches!(
                    h2.reason(),
                    Some(h2::Reason::ENHANCE_YOUR_CALM | h2::Reason::COMPRESSION_ERROR)
                );
                return (calm && h2.is_go_away() && h2.is_library()).then(|| self.abuse(settings));
            }
            next = e.source();
        }
        None
    }
}

/// h2's bound on CONTINUATION frames in one header block (`calc_max_continuation_frames` in
/// h2 0.4): enough frames of the largest size to carry the largest list, plus a quarter.
fn max_continuation_frames(settings: &WatchSettings) -> usize {
    let frames =
        (settings.max_header_list_size as usize / settings.max_frame_size.max(1) as usize).max(1);
    (frames + frames / 4).max(5)
}

/// Where in the inbound byte stream the watch is.
#[derive(Debug)]
enum Position {
    Preface(usize),
    Header {
        bytes: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    Payload(usize),
}

/// Why a connection's read failed: its open header block outlived the header timeout.
#[derive(Debug)]
pub struct HeaderTimeout(pub Duration);

impl fmt::Display for HeaderTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an HTTP/2 header block was not finished within {:?}",
            self.0
        )
    }
}

impl std::error::Error for HeaderTimeout {}

/// An HTTP/2 server connection's transport, watched (see the module docs).
pub struct FrameWatch<S> {
    inner: S,
    settings: WatchSettings,
    position: Position,
    /// Frames and bytes of the header block now open, if one is.
    block: Option<(u64, u64)>,
    deadline: Option<Pin<Box<Sleep>>>,
    stats: Arc<FrameStats>,
}

impl<S> FrameWatch<S> {
    /// Watches `inner` from its first byte, which must be the client preface.
    pub fn new(inner: S, settings: WatchSettings) -> (Self, Arc<FrameStats>) {
        let stats = Arc::new(FrameStats::default());
        let watch = FrameWatch {
            inner,
            settings,
            position: Position::Preface(PREFACE_LEN),
            block: None,
            deadline: None,
            stats: stats.clone(),
        };
        (watch, stats)
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.position {
                Position::Preface(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.position = Position::Header {
                            bytes: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                Position::Header { bytes, have } => {
                    let n = (FRAME_HEADER_LEN - *have).min(data.len());
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == FRAME_HEADER_LEN {
                        let length = usize::from(bytes[0]) << 16
                            | usize::from(bytes[1]) << 8
                            | usize::from(bytes[2]);
                        let (kind, flags) = (bytes[3], bytes[4]);
                        self.on_frame(kind, flags, length as u64);
                        self.position = Position::Payload(length);
                    }
                }
                Position::Payload(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                }
            }
            if let Position::Payload(0) = self.position {
                self.position = Position::Header {
                    bytes: [0; FRAME_HEADER_LEN],
                    have: 0,
                };
            }
        }
    }

    fn on_frame(&mut self, kind: u8, flags: u8, length: u64) {
        let stats = &self.stats;
        match kind {
            HEADERS => {
                stats.header_blocks.fetch_add(1, Ordering::Relaxed);
                stats
                    .largest_block_bytes
                    .fetch_max(length, Ordering::Relaxed);
                if flags & END_HEADERS == 0 {
                    self.block = Some((0, length));
                    let at = Instant::now() + self.settings.header_timeout;
                    match &mut self.deadline {
                        Some(sleep) => sleep.as_mut().reset(at),
                        None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                } else {
                    self.block = None;
                }
            }
            CONTINUATION => {
                if let Some((frames, bytes)) = &mut self.block {
                    *frames += 1;
                    *bytes += length;
                    stats
                        .largest_block_frames
                        .fetch_max(*frames, Ordering::Relaxed);
                    stats
                        .largest_block_bytes
                        .fetch_max(*bytes, Ordering::Relaxed);
                }
                if flags & END_HEADERS != 0 {
                    self.block = None;
                }
            }
            RST_STREAM => {
                stats.resets.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.observe(&buf.filled()[before..]);
        }
        // Polled whether or not bytes came, so that a block left open wakes the connection
        // at its deadline even when nothing more arrives.
        if this.block.is_some()
            && let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.stats.header_timeout.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                HeaderTimeout(this.settings.header_timeout),
            )));
        }
        read
    }
}

crate::forward_async_write!(FrameWatch);

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn settings(timeout: Duration) -> WatchSettings {
        WatchSettings {
            header_timeout: timeout,
            max_header_list_size: 16 * 1024,
            max_frame_size: 16 * 1024,
            max_pending_accept_reset_streams: 20,
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn an_open_header_block_fails_the_read_at_its_deadline_and_a_closed_one_never() {
        const TIMEOUT: Duration = Duration::from_millis(200);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (mut watch, stats) = FrameWatch::new(server, settings(TIMEOUT));
        let mut sent = PREFACE.to_vec();
        // A complete block, a reset, then a block left open; written a byte at a time so
        // that frame headers straddle reads.
        sent.extend(frame(HEADERS, END_HEADERS, 1, b"abc"));
        sent.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        sent.extend(frame(HEADERS, 0, 3, b"abcd"));
        sent.extend(frame(CONTINUATION, 0, 3, b"ef"));
        let writer = tokio::spawn(async move {
            for b in sent {
                client.write_all(&[b]).await.unwrap();
            }
            client
        });
        let mut buf = [0u8; 256];
        // The client stays connected and silent: only the deadline can end the reads (the
        // outer timeout only catches a hang).
        let error = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match watch.read(&mut buf).await {
                    Ok(n) => assert!(n > 0, "EOF before the deadline"),
                    Err(e) => break e,
                }
            }
        })
        .await
        .expect("the open header block ends the reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!((stats.header_blocks(), stats.resets()), (2, 1));
        assert_eq!(stats.abuse(&settings(TIMEOUT)), Abuse::SlowHeaders);
        drop(writer.await.unwrap());

        // The same, with the block finished: reads go on well past the deadline.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (mut watch, stats) = FrameWatch::new(server, settings(TIMEOUT));
        let mut sent = PREFACE.to_vec();
        sent.extend(frame(HEADERS, 0, 1, b"abcd"));
        sent.extend(frame(CONTINUATION, END_HEADERS, 1, b"ef"));
        client.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        watch.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(3 * TIMEOUT).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(watch.read(&mut buf).await.unwrap(), 1);
        assert!(!stats.header_timed_out());
    }

    #[tokio::test]
    async fn the_cause_of_a_calm_down_is_told_from_what_was_sent() {
        let s = settings(Duration::from_secs(10));
        let observe = |frames: Vec<Vec<u8>>| {
            let (mut watch, stats) = FrameWatch::new(tokio::io::empty(), s);
            watch.observe(PREFACE);
            for f in frames {
                watch.observe(&f);
            }
            stats.abuse(&s)
        };
        let mut flood = vec![frame(HEADERS, 0, 1, b"a")];
        flood.extend((0..6).map(|_| frame(CONTINUATION, 0, 1, b"")));
        assert_eq!(observe(flood), Abuse::ContinuationFlood);
        let big = vec![0u8; 17 * 1024];
        assert_eq!(
            observe(vec![frame(HEADERS, END_HEADERS, 1, &big)]),
            Abuse::OversizedHeaders
        );
        let resets = (0..21u32)
            .flat_map(|i| {
                [
                    frame(HEADERS, END_HEADERS, 2 * i + 1, b"a"),
                    frame(RST_STREAM, 0, 2 * i + 1, &[0, 0, 0, 8]),
                ]
            })
            .collect();
        assert_eq!(observe(resets), Abuse::RapidReset);
        assert_eq!(
            observe(vec![frame(HEADERS, END_HEADERS, 1, b"a")]),
            Abuse::StreamErrors
        );
    }
}
