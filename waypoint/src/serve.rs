//! The HTTP server side of one tunnel: hyper serves HTTP/1.1 or HTTP/2 (as detected or
//! declared) on the tunnel's inner stream and hands each request to the request path, within
//! the per-connection limits of [`HttpLimits`]: a client over one loses its connection (or,
//! for what HTTP/2 scopes to a stream, that stream), and nobody else notices.
//!
//! hyper's and h2's own knobs carry most limits; our code adds only what they lack: the
//! HTTP/1.1 smuggling check ([`crate::smuggling`]), a deadline on HTTP/2 header blocks and the
//! naming of the limit an HTTP/2 client broke ([`FrameWatch`]), and the bound on requests
//! cancelled before their response (rapid reset paced below h2's accept-queue bound).

use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambit_proto::hbone::{Abuse, FrameWatch, WatchSettings};
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use crate::body::{self, Body};
use crate::detect::Protocol;
use crate::forward::{Downstream, Forwarder};
use crate::http_limits::{HttpLimits, Refusal, Refusals};
use crate::smuggling::Follow;

/// HTTP/2 keepalive: a dead client connection is noticed within interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow control (hyper's defaults, made explicit): what a client may send ahead of
/// the waypoint reading it is bounded by the connection window, whatever its stream count.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// The smallest HTTP/2 frame size (RFC 9113 §4.2).
const MAX_FRAME_SIZE: u32 = 16 * 1024;
/// HTTP/1.1's read buffer holds the largest head plus this much (the start of a body).
const HTTP1_READ_SLACK: usize = 16 * 1024;
/// hyper's default header count, for which it parses on the stack.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The waypoint's HTTP server: hyper's builders, set up once from the limits, and the
/// refusals they led to.
pub struct HttpServer {
    limits: HttpLimits,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    http1_max_buf: usize,
    watch: WatchSettings,
    refusals: Arc<Refusals>,
}

impl HttpServer {
    pub fn new(limits: HttpLimits) -> Self {
        let max_header_bytes = limits.max_header_bytes as usize;
        let http1_max_buf = max_header_bytes + HTTP1_READ_SLACK;
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(max_header_bytes)
            .max_buf_size(http1_max_buf)
            .keep_alive(true);
        // Setting it at all moves hyper's header parsing to the heap for every request.
        if limits.http1_max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(limits.http1_max_headers);
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes)
            .max_pending_accept_reset_streams(limits.http2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(limits.http2_max_local_error_reset_streams)
            .max_send_buf_size(limits.http2_max_send_buf_size);
        let watch = WatchSettings {
            header_timeout: limits.header_timeout,
            max_header_list_size: limits.max_header_bytes,
            max_frame_size: MAX_FRAME_SIZE,
            max_pending_accept_reset_streams: limits.http2_max_pending_accept_reset_streams,
        };
        HttpServer {
            limits,
            http1,
            http2,
            http1_max_buf,
            watch,
            refusals: Arc::new(Refusals::default()),
        }
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// What was refused so far, by limit.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Serves `stream` until the client closes it, it fails, or the client goes over a limit.
    pub async fn serve<S>(
        &self,
        stream: S,
        protocol: Protocol,
        forwarder: Arc<Forwarder>,
        downstream: Arc<Downstream>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match protocol {
            Protocol::Http2 => self.http2(stream, forwarder, downstream).await,
            _ => self.http1(stream, forwarder, downstream).await,
        }
    }

    async fn http1<S>(&self, stream: S, forwarder: Arc<Forwarder>, downstream: Arc<Downstream>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (stream, verdicts) = Follow::new(
            stream,
            self.http1_max_buf,
            self.limits.max_header_bytes as usize,
            self.limits.http1_max_headers,
        );
        let seen = verdicts.clone();
        let down = downstream.clone();
        let refusals = self.refusals.clone();
        // hyper hands one request at a time to an HTTP/1.1 service, in order.
        let next = Cell::new(0u64);
        let service = service_fn(move |request: http::Request<Incoming>| {
            let index = next.replace(next.get() + 1);
            let refused = verdicts.is_ambiguous(index).then(|| refusals.clone());
            let forwarder = forwarder.clone();
            let downstream = down.clone();
            async move {
                if let Some(refusals) = refused {
                    refusals.record(
                        Refusal::AmbiguousLength,
                        &downstream,
                        "a request with both Content-Length and Transfer-Encoding (request smuggling) was answered 400 and not forwarded",
                    );
                    return Ok::<_, Infallible>(ambiguous_length());
                }
                Ok(forwarder.handle(&downstream, request).await)
            }
        });
        let Err(e) = self
            .http1
            .serve_connection(TokioIo::new(stream), service)
            .await
        else {
            return;
        };
        let (refusal, detail) = if e.is_timeout() {
            // hyper's header timer also runs while a kept-alive connection waits for its
            // next request: closing that one is housekeeping, not a refusal.
            if !seen.head_pending() {
                tracing::debug!(client = %downstream.client_addr, "closed an idle HTTP/1.1 connection at the header timeout");
                return;
            }
            (
                Refusal::SlowHeaders,
                format!(
                    "no whole request head within {:?}",
                    self.limits.header_timeout
                ),
            )
        } else if e.is_parse_too_large() {
            (
                Refusal::OversizedHeaders,
                format!(
                    "a request head over {} bytes or {} headers was answered 431",
                    self.limits.max_header_bytes, self.limits.http1_max_headers
                ),
            )
        } else if e.is_parse() {
            (
                Refusal::MalformedRequest,
                format!("a request head was answered 400: {e}"),
            )
        } else {
            tracing::debug!(client = %downstream.client_addr, error = %e, "client HTTP/1.1 connection ended with an error");
            return;
        };
        self.refusals.record(refusal, &downstream, &detail);
    }

    async fn http2<S>(&self, stream: S, forwarder: Arc<Forwarder>, downstream: Arc<Downstream>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (stream, frames) = FrameWatch::new(stream, self.watch);
        let streams = Arc::new(Streams {
            started: AtomicU64::new(0),
            premature: AtomicU64::new(0),
            max_premature: self.limits.http2_max_premature_resets,
            over: Notify::new(),
        });
        let down = downstream.clone();
        let counted = streams.clone();
        let service = service_fn(move |request: http::Request<Incoming>| {
            let in_flight = InFlight::start(counted.clone());
            let forwarder = forwarder.clone();
            let downstream = down.clone();
            async move {
                let response = forwarder.handle(&downstream, request).await;
                in_flight.finish();
                Ok::<_, Infallible>(response)
            }
        });
        let connection = self.http2.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = streams.over.notified() => {
                // Dropping the connection closes the tunnel: the client loses every stream.
                let detail = format!(
                    "{} of its {} requests were cancelled before their response began (more than {} and half of them)",
                    streams.premature.load(Ordering::Relaxed),
                    streams.started.load(Ordering::Relaxed),
                    streams.max_premature,
                );
                self.refusals.record(Refusal::PrematureResets, &downstream, &detail);
                return;
            }
        };
        let Err(e) = result else { return };
        match frames.abuse_in(&e, &self.watch) {
            Some(abuse) => {
                let detail = self.abuse_detail(abuse);
                self.refusals.record(abuse.into(), &downstream, &detail);
            }
            None => {
                tracing::debug!(client = %downstream.client_addr, error = %e, "client HTTP/2 connection ended with an error")
            }
        }
    }

    fn abuse_detail(&self, abuse: Abuse) -> String {
        let l = &self.limits;
        match abuse {
            Abuse::SlowHeaders => format!(
                "an HTTP/2 header block was not finished within {:?}",
                l.header_timeout
            ),
            Abuse::ContinuationFlood => format!(
                "more CONTINUATION frames in one header block than {} bytes of headers need (GOAWAY ENHANCE_YOUR_CALM)",
                l.max_header_bytes
            ),
            Abuse::OversizedHeaders => format!(
                "a header block far over {} bytes (GOAWAY)",
                l.max_header_bytes
            ),
            Abuse::RapidReset => format!(
                "more than {} streams reset before they were accepted (rapid reset; GOAWAY ENHANCE_YOUR_CALM)",
                l.http2_max_pending_accept_reset_streams
            ),
            Abuse::StreamErrors => format!(
                "more than {} streams reset for its protocol errors, or a flood of tiny DATA frames (GOAWAY ENHANCE_YOUR_CALM)",
                l.http2_max_local_error_reset_streams
            ),
        }
    }
}

/// The 400 for a request whose length is ambiguous; hyper closes the connection after it.
fn ambiguous_length() -> Response<Body> {
    let mut response = Response::new(body::full(
        "the request has both Content-Length and Transfer-Encoding, so its length is ambiguous (RFC 9112 section 6.3); send only one of them\n",
    ));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// An HTTP/2 connection's requests: how many began, how many the client cancelled before
/// their response, and the signal that it cancelled too many.
struct Streams {
    started: AtomicU64,
    premature: AtomicU64,
    max_premature: u64,
    over: Notify,
}

/// One request in the service; dropped before [`InFlight::finish`], it was cancelled.
struct InFlight {
    streams: Arc<Streams>,
    finished: bool,
}

impl InFlight {
    fn start(streams: Arc<Streams>) -> Self {
        streams.started.fetch_add(1, Ordering::Relaxed);
        InFlight {
            streams,
            finished: false,
        }
    }

    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let s = &self.streams;
        let premature = s.premature.fetch_add(1, Ordering::Relaxed) + 1;
        // Half of all requests or more: a client whose deadlines are short now and then is
        // not an attacker, one that cancels nearly everything it starts is.
        if premature > s.max_premature && premature * 2 >= s.started.load(Ordering::Relaxed) {
            s.over.notify_one();
        }
    }
}
