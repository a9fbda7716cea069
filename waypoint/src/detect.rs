//! Which protocol a tunnel's inner stream speaks, when the service port does not say
//! (`appProtocol`): HTTP/2 with prior knowledge (gRPC), HTTP/1.x, or anything else, carried as
//! opaque TCP. Decided from the first bytes the client sends, which are then replayed to
//! whichever server takes the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ambit_proto::copy::{Buffer, Stream};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest HTTP/1 method worth recognising (`PROPPATCH`, `UPDATEREDIRECTREF` is 17).
const MAX_METHOD: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Opaque: forwarded with L4 policy only.
    Tcp,
}

impl Protocol {
    /// The protocol a service port's `appProtocol` names, if it names one we serve as such.
    pub fn from_app_protocol(app_protocol: &str) -> Option<Protocol> {
        match app_protocol.to_ascii_lowercase().as_str() {
            "http" => Some(Protocol::Http1),
            "http2" | "grpc" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "tcp" => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

/// What the bytes so far say.
fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        // "PRI" is also an HTTP/1 method token: only the whole preface says HTTP/2.
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let method = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match buf.get(method) {
        Some(b' ') if method > 0 => Some(Protocol::Http1),
        None if method < MAX_METHOD => None,
        _ => Some(Protocol::Tcp),
    }
}

/// Reads from `stream` until its protocol is known, for at most `wait` (a client that sends
/// nothing first, as for server-first protocols, is TCP). Returns the protocol and a stream
/// that replays what was read.
pub async fn detect<S>(mut stream: S, wait: Duration) -> io::Result<(Protocol, Prefixed<S>)>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + wait;
    let protocol = loop {
        if let Some(p) = classify(&buf) {
            break p;
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break Protocol::Tcp,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((
        protocol,
        Prefixed {
            prefix: buf,
            inner: stream,
        },
    ))
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

ambit_proto::forward_async_write!(Prefixed);

/// A TCP flow through the waypoint keeps the inner stream's chunk handling (a tunnel's: no
/// copy), after the prefix.
impl<S: Stream> Stream for Prefixed<S> {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Buffer,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(Some(self.prefix.split().freeze())));
        }
        self.inner.poll_chunk(cx, buf)
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write_chunk(cx, chunk)
    }

    fn read_ahead(&mut self, cx: &mut Context<'_>, buf: &mut Buffer) -> io::Result<bool> {
        if !self.prefix.is_empty() {
            return Ok(false);
        }
        self.inner.read_ahead(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn classification() {
        let table: [(&[u8], Option<Protocol>); 12] = [
            (b"", None),
            (b"GET / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"POST ", Some(Protocol::Http1)),
            (b"OPTIONS * HTTP/1.1", Some(Protocol::Http1)),
            (b"GE", None),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0",
                Some(Protocol::Http2),
            ),
            // A prefix of the preface could still be either.
            (b"PRI * HTTP/2.0\r\n", None),
            (b"PRI", None),
            // Lower case, binary, TLS, a too-long token: not HTTP.
            (b"get / HTTP/1.1", Some(Protocol::Tcp)),
            (b"\x16\x03\x01\x02\x00", Some(Protocol::Tcp)),
            (b" GET", Some(Protocol::Tcp)),
            (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", Some(Protocol::Tcp)),
        ];
        for (bytes, expected) in table {
            assert_eq!(
                classify(bytes),
                expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    async fn detect_sent(chunks: &[&[u8]], close: bool) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        if close {
            client.shutdown().await.unwrap();
        }
        let (protocol, mut stream) = detect(server, Duration::from_millis(200)).await.unwrap();
        drop(client);
        let mut replayed = Vec::new();
        stream.read_to_end(&mut replayed).await.unwrap();
        (protocol, replayed)
    }

    #[tokio::test]
    async fn what_was_read_is_replayed_whatever_the_verdict() {
        let all = [
            (
                &[b"GET / HTTP/1.1\r\nhost: a\r\n\r\n".as_slice()][..],
                false,
                Protocol::Http1,
            ),
            (
                &[&H2_PREFACE[..10], &H2_PREFACE[10..]][..],
                false,
                Protocol::Http2,
            ),
            (&[b"\x16\x03\x01".as_slice()][..], false, Protocol::Tcp),
            // A server-first protocol: the client says nothing, and waits.
            (&[][..], false, Protocol::Tcp),
            (&[b"GE".as_slice()][..], true, Protocol::Tcp),
        ];
        for (chunks, close, expected) in all {
            let (protocol, replayed) = detect_sent(chunks, close).await;
            assert_eq!(protocol, expected, "{chunks:?}");
            assert_eq!(replayed, chunks.concat(), "{chunks:?}");
        }
    }
}
