//! Ambit's shared wire code, used by every component: the gRPC APIs between them ([`api`]), the
//! TLS they travel in ([`control`]) and how discovery responses go out (resources encoded once,
//! large responses in parts) and are put back together ([`response_parts`]), workload identity
//! ([`identity`]), HBONE tunnels ([`hbone`]), graceful shutdown ([`drain`]), rate limits for
//! log lines a peer can trigger ([`log_limit`]) and ztunnel's node agent socket
//! ([`node_agent`]), and which pods are in the mesh ([`enrolment`]).

pub mod api;
pub mod control;
pub mod copy;
pub mod drain;
pub mod enrolment;
pub mod exposition;
pub mod hbone;
pub mod identity;
pub mod log_limit;
pub mod node_agent;
pub mod response_parts;

/// `AsyncWrite` for a wrapper `$wrapper<S>` with an `inner: S` field that only watches or
/// prefixes what is *read*: every write goes straight to `inner`, vectored writes included
/// (so the wrapper costs the write path nothing).
#[macro_export]
macro_rules! forward_async_write {
    ($wrapper:ident) => {
        impl<S: ::tokio::io::AsyncWrite + Unpin> ::tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                data: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
            }

            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}
