//! The TCP socket under an HBONE connection's TLS: reads go through a buffer.
//!
//! rustls reads its socket into a buffer that holds at most one record (~16 KiB; 4 KiB after
//! it ran empty), so a stream of full 16 KiB records costs at least one `recvfrom` per record,
//! more when a record straddles two reads: 69 for 1 MiB in the test below. Reading the socket in
//! [`READ_BUFFER`] pieces and serving rustls's reads from memory costs one copy of what is read
//! and saves most of those calls (18 for 1 MiB); writes go straight through (vectored, so
//! HTTP/2 still hands a frame's head and payload to rustls in one call and rustls fills whole
//! records).

use tokio::io::{AsyncRead, BufReader};
use tokio::net::TcpStream;

/// What one read of an HBONE connection's socket may take: four full TLS records.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// An HBONE connection's socket, as TLS sees it.
pub(crate) type Socket = BufReader<TcpStream>;

/// `io` with its reads buffered in [`READ_BUFFER`] pieces.
pub(crate) fn buffered<S: AsyncRead>(io: S) -> BufReader<S> {
    BufReader::with_capacity(READ_BUFFER, io)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::identity::{
        CertManager, CertificateAuthority, SpiffeId, client_config, server_config,
    };

    /// Counts the reads that brought bytes.
    struct Counted<S> {
        inner: S,
        reads: Arc<AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.reads.fetch_add(1, Ordering::Relaxed);
            }
            polled
        }
    }

    crate::forward_async_write!(Counted);

    #[tokio::test]
    async fn a_tls_stream_is_read_from_its_socket_in_large_pieces() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let certs = CertManager::with_local_ca(ca, Duration::from_secs(3600));
        let server_id = SpiffeId::new("cluster.local", "ns", "server").unwrap();
        let client_id = SpiffeId::new("cluster.local", "ns", "client").unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(
            server_config(certs.watch(&server_id).await.unwrap(), certs.trust_bundle()).unwrap(),
        ));
        let connector = TlsConnector::from(Arc::new(
            client_config(
                certs.watch(&client_id).await.unwrap(),
                certs.trust_bundle(),
                server_id,
            )
            .unwrap(),
        ));
        const SENT: usize = 1 << 20;
        let (client_end, server_end) = tokio::io::duplex(2 * SENT);
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            inner: server_end,
            reads: reads.clone(),
        };
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(buffered(counted)).await.unwrap();
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = connector.connect(name, client_end).await.unwrap();
        tls.write_all(&vec![7; SENT]).await.unwrap();
        tls.shutdown().await.unwrap();
        assert_eq!(server.await.unwrap(), SENT);
        // 1 MiB is 64 full records: rustls on its own reads at most one record at a time (69
        // reads); through the buffer a read brings several (16 reads if each fills it).
        let records = SENT / (16 * 1024);
        let reads = reads.load(Ordering::Relaxed);
        assert!(reads < records, "{reads} reads for {records} records");
    }
}
