//! The client pod's side, as its ztunnel would carry it: an HBONE tunnel to the waypoint whose
//! `:authority` is the service VIP and port the app dialled, then HTTP/1.1 or HTTP/2 (prior
//! knowledge) over the tunnel with hyper's client connections.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_proto::hbone::{ConnectRequest, HboneClient, HboneError, Tunnel};
use ambit_proto::identity::SpiffeId;
use ambit_waypoint::body::{self, Body};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long any one exchange may take before the test fails (generous: debug builds).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One client identity, able to open tunnels to the waypoint.
#[derive(Clone)]
pub struct Client {
    pub hbone: HboneClient,
    pub identity: SpiffeId,
    pub waypoint: SocketAddr,
    pub waypoint_identity: SpiffeId,
    /// The client address its tunnels claim (`forwarded`), as a ztunnel sends; none by default.
    pub forwarded_for: Option<SocketAddr>,
    /// The `baggage` its tunnels carry (the client workload, as ztunnel names it); none by
    /// default.
    pub baggage: Option<String>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `x-ambit-flags`, if any.
    pub fn flags(&self) -> Option<&str> {
        self.headers
            .get("x-ambit-flags")
            .and_then(|v| v.to_str().ok())
    }

    /// The pod that answered (`x-pod`), if one did.
    pub fn pod(&self) -> Option<&str> {
        self.headers.get("x-pod").and_then(|v| v.to_str().ok())
    }
}

impl Client {
    /// This client, its tunnels claiming to carry `addr` (the `forwarded` header).
    pub fn claiming(mut self, addr: SocketAddr) -> Self {
        self.forwarded_for = Some(addr);
        self
    }

    /// This client, its tunnels naming its workload in `baggage` as its ztunnel does.
    pub fn naming(mut self, baggage: String) -> Self {
        self.baggage = Some(baggage);
        self
    }

    /// A tunnel to the waypoint for `authority` (a service VIP and port).
    pub async fn tunnel(&self, authority: SocketAddr) -> Result<Tunnel, HboneError> {
        let request = ConnectRequest {
            source: self.identity.clone(),
            endpoint: self.waypoint,
            destination_identity: self.waypoint_identity.clone(),
            authority,
            forwarded_for: self.forwarded_for,
            baggage: self.baggage.clone(),
            traceparent: None,
        };
        tokio::time::timeout(PATIENCE, self.hbone.connect(&request))
            .await
            .expect("the waypoint answers the tunnel request in time")
    }

    /// An HTTP/1.1 connection to `authority` through the waypoint.
    pub async fn http1(&self, authority: SocketAddr) -> Http1 {
        let tunnel = self
            .tunnel(authority)
            .await
            .expect("the waypoint accepts the tunnel");
        let (send, connection) = http1::handshake(TokioIo::new(tunnel))
            .await
            .expect("HTTP/1.1 handshake over the tunnel");
        tokio::spawn(connection);
        Http1 { send, authority }
    }

    /// An HTTP/2 (prior knowledge) connection to `authority` through the waypoint.
    pub async fn http2(&self, authority: SocketAddr) -> Http2 {
        let tunnel = self
            .tunnel(authority)
            .await
            .expect("the waypoint accepts the tunnel");
        let (send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tunnel))
            .await
            .expect("HTTP/2 handshake over the tunnel");
        tokio::spawn(connection);
        Http2 { send, authority }
    }
}

/// What a test request looks like: method, path, headers, body.
pub struct Call {
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Call {
    pub fn get(path: &str) -> Self {
        Call {
            method: http::Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: body::empty(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn post(path: &str, body: Body) -> Self {
        Call {
            method: http::Method::POST,
            path: path.into(),
            headers: Vec::new(),
            body,
        }
    }
}

pub struct Http1 {
    send: http1::SendRequest<Body>,
    authority: SocketAddr,
}

impl Http1 {
    pub async fn call(&mut self, call: Call) -> Reply {
        let mut request = Request::builder()
            .method(call.method)
            .uri(&call.path)
            .header(
                "host",
                format!("reviews.demo.svc.cluster.local:{}", self.authority.port()),
            );
        for (name, value) in call.headers {
            request = request.header(name, value);
        }
        let request = request.body(call.body).unwrap();
        let exchange = async {
            self.send
                .ready()
                .await
                .expect("the HTTP/1.1 connection is usable");
            let response = self.send.send_request(request).await.expect("a response");
            read(response).await
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("the exchange ends in time")
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.call(Call::get(path)).await
    }
}

#[derive(Clone)]
pub struct Http2 {
    send: http2::SendRequest<Body>,
    authority: SocketAddr,
}

impl Http2 {
    pub async fn call(&mut self, call: Call) -> Reply {
        let uri = format!(
            "http://reviews.demo.svc.cluster.local:{}{}",
            self.authority.port(),
            call.path
        );
        let mut request = Request::builder()
            .method(call.method)
            .version(http::Version::HTTP_2)
            .uri(uri);
        for (name, value) in call.headers {
            request = request.header(name, value);
        }
        let request = request.body(call.body).unwrap();
        let exchange = async {
            self.send
                .ready()
                .await
                .expect("the HTTP/2 connection is usable");
            let response = self.send.send_request(request).await.expect("a response");
            read(response).await
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("the exchange ends in time")
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.call(Call::get(path)).await
    }
}

async fn read(response: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
