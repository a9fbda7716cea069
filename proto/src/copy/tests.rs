use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf, duplex};

use super::*;

/// Counts what it is told, per direction.
#[derive(Default)]
struct Tally {
    forward: AtomicU64,
    backward: AtomicU64,
}

impl Progress for Tally {
    fn moved(&self, forward: bool, n: usize) {
        let counter = if forward {
            &self.forward
        } else {
            &self.backward
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Two pipes: the test holds `client` and `server`; the copy runs between `a` and `b`.
fn pipes() -> ((DuplexStream, DuplexStream), (DuplexStream, DuplexStream)) {
    let (client, a) = duplex(256 * 1024);
    let (b, server) = duplex(256 * 1024);
    ((client, a), (b, server))
}

#[tokio::test]
async fn half_closes_pass_through_and_counts_are_per_direction() {
    let ((mut client, mut a), (mut b, mut server)) = pipes();
    let copy = tokio::spawn(async move { bidirectional(&mut a, &mut b, &()).await });
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut request = Vec::new();
    server.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"request");
    server.write_all(b"a longer response").await.unwrap();
    server.shutdown().await.unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).await.unwrap();
    assert_eq!(response, b"a longer response");
    let (moved, result) = copy.await.unwrap();
    result.unwrap();
    assert_eq!(
        moved,
        Moved {
            forward: 7,
            backward: 17
        }
    );
}

#[tokio::test]
async fn bytes_are_reported_while_the_connection_is_open() {
    let ((mut client, mut a), (mut b, mut server)) = pipes();
    let tally = std::sync::Arc::new(Tally::default());
    let copy = tokio::spawn({
        let tally = tally.clone();
        async move { bidirectional(&mut a, &mut b, &*tally).await }
    });
    client.write_all(&[7; 1000]).await.unwrap();
    let mut got = [0; 1000];
    server.read_exact(&mut got).await.unwrap();
    server.write_all(&[8; 300]).await.unwrap();
    client.read_exact(&mut got[..300]).await.unwrap();
    // Both chunks are through and the connection is still open.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tally.backward.load(Ordering::Relaxed) < 300 {
        assert!(tokio::time::Instant::now() < deadline, "never reported");
        tokio::task::yield_now().await;
    }
    assert_eq!(tally.forward.load(Ordering::Relaxed), 1000);
    assert_eq!(tally.backward.load(Ordering::Relaxed), 300);
    assert!(!copy.is_finished());
    drop((client, server));
    let _ = copy.await;
}

/// A stream that yields `data` and then fails, as a reset peer does.
struct FailsAfter {
    data: Vec<u8>,
}

impl AsyncRead for FailsAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.data.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let n = self.data.len().min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FailsAfter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Stream for FailsAfter {}

#[tokio::test]
async fn what_moved_before_an_error_is_counted() {
    let (mut client, mut a) = duplex(256 * 1024);
    let mut upstream = FailsAfter {
        data: vec![1; 10_000],
    };
    let tally = Tally::default();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        got.len()
    });
    let (moved, result) = bidirectional(&mut a, &mut upstream, &tally).await;
    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
    assert_eq!(moved.backward, 10_000);
    assert_eq!(tally.backward.load(Ordering::Relaxed), 10_000);
    drop(a);
    assert_eq!(reader.await.unwrap(), 10_000);
}

#[tokio::test]
async fn buffers_stay_small_for_small_messages_and_grow_for_a_bulk_flow() {
    // Small messages, one at a time: the first buffer is enough.
    let (mut writer, mut reader) = duplex(1024 * 1024);
    let (mut sink, mut drain) = duplex(1024 * 1024);
    let mut t = Transfer::new();
    for _ in 0..100 {
        writer.write_all(&[1; 200]).await.unwrap();
        poll_fn(|cx| {
            let _ = t.poll(cx, &mut reader, &mut sink, |_| {});
            Poll::Ready(())
        })
        .await;
        let mut got = [0; 200];
        drain.read_exact(&mut got).await.unwrap();
    }
    assert_eq!(t.buf.size(), INITIAL_BUFFER);

    // A megabyte written at once fills buffer after buffer: it grows to the largest.
    let mut t = Transfer::new();
    writer.write_all(&vec![2; 1024 * 1024]).await.unwrap();
    writer.shutdown().await.unwrap();
    let copied = tokio::spawn(async move {
        let mut got = Vec::new();
        drain.read_to_end(&mut got).await.unwrap();
        got.len()
    });
    poll_fn(|cx| t.poll(cx, &mut reader, &mut sink, |_| {}))
        .await
        .unwrap();
    drop(sink);
    assert_eq!(t.buf.size(), MAX_BUFFER);
    assert_eq!(copied.await.unwrap(), 1024 * 1024);
}

#[tokio::test]
async fn a_slow_writer_gets_every_byte_in_order() {
    // The far side's pipe holds 1 KiB: writes are Pending most of the time, and the copy reads
    // ahead into the rest of its buffer meanwhile.
    let (mut client, mut a) = duplex(256 * 1024);
    let (mut b, mut server) = duplex(1024);
    let data: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        got
    });
    // The reader's end closes once it has read everything, which ends the way back.
    let (moved, result) = bidirectional(&mut a, &mut b, &()).await;
    result.unwrap();
    assert_eq!(moved.forward, data.len() as u64);
    assert_eq!(reader.await.unwrap(), data);
    drop(writer.await.unwrap());
}
