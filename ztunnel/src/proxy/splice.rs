//! Carries a connection: bytes both ways between it and its upstream until both sides are done
//! ([`ambit_proto::copy`]: half-closes pass through, buffers grow with the flow), counted in
//! the metrics as each chunk is written, and an abort on one side turned into an abort on the
//! other.

use std::io;
use std::sync::Arc;

use ambit_proto::copy::{self, Moved, Progress, Stream};
use socket2::SockRef;
use tokio::net::TcpStream;

use ambit_discovery::telemetry::Reporter;

use super::flows::{Failure, Flow};
use crate::connections::TrackedConnection;
use crate::metrics::ConnectionCounters;

/// Copies both ways; what moved each way (`forward`: from `downstream`), error or not.
pub async fn splice<U>(
    mut downstream: TcpStream,
    mut upstream: U,
    progress: &impl Progress,
) -> (Moved, io::Result<()>)
where
    U: Stream,
{
    let (moved, result) = copy::bidirectional(&mut downstream, &mut upstream, progress).await;
    if result.is_err() {
        // The other side must see an abort, not a clean close: an RST for TCP (linger 0),
        // and dropping the tunnel without END_STREAM resets the stream.
        let _ = SockRef::from(&downstream).set_linger(Some(std::time::Duration::ZERO));
    }
    (moved, result)
}

/// Which way the bytes of a spliced connection count: Istio's "sent" are those towards the
/// destination, which is `tcp` on the inbound side (the app) and `other` on the outbound side.
struct Counting<'a> {
    counters: &'a ConnectionCounters,
    tcp_is_destination: bool,
}

impl Progress for Counting<'_> {
    fn moved(&self, from_tcp: bool, n: usize) {
        if from_tcp != self.tcp_is_destination {
            self.counters.sent(n as u64);
        } else {
            self.counters.received(n as u64);
        }
    }
}

/// Splices `tcp` with `other` and records the outcome in metrics, the connection tracker and
/// the report to the controller.
pub(crate) async fn carry<U>(
    tcp: TcpStream,
    other: U,
    tcp_is_destination: bool,
    counters: Arc<ConnectionCounters>,
    tracked: TrackedConnection,
    reporter: &Reporter,
    flow: Flow<'_>,
) where
    U: Stream,
{
    let counting = Counting {
        counters: &counters,
        tcp_is_destination,
    };
    let (moved, result) = splice(tcp, other, &counting).await;
    let (sent, received) = if tcp_is_destination {
        (moved.backward, moved.forward)
    } else {
        (moved.forward, moved.backward)
    };
    counters.closed();
    let failure = result.as_ref().err().map(Failure::reset);
    flow.ended(reporter, Some(&counters), sent, received, failure);
    tracked.finish(sent, received, result.err().map(|e| e.to_string()));
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

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream that behaves until it has handed over `fail_after` bytes, then fails its
    /// next read as a reset peer would.
    struct ResetAfter<S> {
        inner: S,
        fail_after: usize,
        read: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for ResetAfter<S> {
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

    ambit_proto::forward_async_write!(ResetAfter);

    impl<S: AsyncRead + AsyncWrite + Unpin> Stream for ResetAfter<S> {}

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
    async fn an_upstream_reset_resets_the_client() {
        let (mut client, accepted) = tcp_pair().await;
        let (inner, mut server) = tokio::io::duplex(64 * 1024);
        let upstream = ResetAfter {
            inner,
            fail_after: 5,
            read: 0,
        };
        let spliced = tokio::spawn(async move { splice(accepted, upstream, &()).await });
        server.write_all(b"hello, then nothing").await.unwrap();
        let err = spliced.await.unwrap().1.unwrap_err();
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

    /// The value of the one series of `name` on the metrics page.
    fn series(metrics: &crate::metrics::Metrics, name: &str) -> u64 {
        let text = metrics.render(&ambit_proto::hbone::ConnectionLimits::default());
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn bytes_show_in_metrics_while_open_and_stay_counted_after_a_reset() {
        use crate::connections::{ConnectionInfo, ConnectionTracker, Direction};
        use crate::metrics::{Metrics, tests::parties};

        let metrics = std::sync::Arc::new(Metrics::new());
        let tracker = std::sync::Arc::new(ConnectionTracker::default());
        let (mut client, accepted) = tcp_pair().await;
        let (inner, mut server) = tokio::io::duplex(64 * 1024);
        let upstream = ResetAfter {
            inner,
            fail_after: 304,
            read: 0,
        };
        let info = ConnectionInfo::starting(
            Direction::Outbound,
            "client",
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            "HBONE",
        );
        let counters = metrics.connection_opened(&parties());
        let tracked = tracker.track(info);
        let carried = tokio::spawn(async move {
            let p = parties();
            let flow = crate::proxy::flows::Flow {
                parties: &p,
                peer: "10.0.0.1:40000".parse().unwrap(),
                target: "10.0.0.2:8080".parse().unwrap(),
                dialled_service: false,
                started: std::time::Instant::now(),
                would_deny: None,
            };
            let reporter = Reporter::detached();
            carry(
                accepted, upstream, false, counters, tracked, &reporter, flow,
            )
            .await
        });

        // Open: 1,000 bytes out and 300 back are on the metrics page already.
        client.write_all(&[1; 1000]).await.unwrap();
        let mut got = [0; 1000];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(&[2; 300]).await.unwrap();
        client.read_exact(&mut got[..300]).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while series(&metrics, "istio_tcp_received_bytes_total") < 300 {
            assert!(
                std::time::Instant::now() < deadline,
                "received bytes never showed"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(series(&metrics, "istio_tcp_sent_bytes_total"), 1000);
        assert_eq!(series(&metrics, "istio_tcp_connections_closed_total"), 0);
        let activity = tracker.activity();
        assert_eq!((activity.opened, activity.closed), (1, 0), "one open");

        // The upstream resets: the connection ends in an error, and its bytes stay counted.
        server.write_all(b"more").await.unwrap();
        carried.await.unwrap();
        assert_eq!(series(&metrics, "istio_tcp_connections_closed_total"), 1);
        assert_eq!(series(&metrics, "istio_tcp_sent_bytes_total"), 1000);
        assert_eq!(series(&metrics, "istio_tcp_received_bytes_total"), 304);
        let ended = tracker.snapshot().pop().unwrap();
        assert_eq!(ended.sent, Some(1000));
        assert_eq!(ended.received, Some(304), "{ended:?}");
        assert!(ended.error.is_some(), "{ended:?}");
        let activity = tracker.activity();
        assert_eq!((activity.opened, activity.closed), (1, 1), "quiet again");
    }
}
