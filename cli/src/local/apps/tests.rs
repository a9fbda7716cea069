//! The sample server over real sockets on loopback (no root): HTTP/1.1 and HTTP/2 with prior
//! knowledge on one port, the answers the query string shapes, and gRPC's health service from
//! a tonic client.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;

async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(serve_on(
        ServerKind::HttpEcho,
        vec![listener],
        "pod-a".into(),
        false,
    ));
    addr
}

#[tokio::test]
async fn http1_answers_and_the_query_shapes_the_answer() {
    let url = format!("http://{}/", server().await);
    let r = request(&url, &[]).await.expect("an answer");
    assert_eq!((r.status, r.body.as_str()), (200, "hello from pod-a\n"));
    let r = request(&format!("{url}?status=418"), &[])
        .await
        .expect("an answer");
    assert_eq!(r.status, 418);
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            request(&format!("{url}?fail=0.5"), &[])
                .await
                .expect("an answer")
                .status,
        );
    }
    assert_eq!(codes, [200, 503, 200, 503]);
    let start = Instant::now();
    let r = request(&format!("{url}?delay_ms=150"), &[])
        .await
        .expect("an answer");
    assert_eq!(r.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn http2_with_prior_knowledge_on_the_same_port() {
    let addr = server().await;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let request = hyper::Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let response = sender.send_request(request).await.expect("an answer");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response.into_body().collect().await.expect("a body");
        assert_eq!(body.to_bytes(), "hello from pod-a\n");
    }
}

fn ask(service: &str) -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    })
}

#[tokio::test]
async fn grpc_health_unary_streaming_and_unavailable_on_demand() {
    let addr = server().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("connects");
    let mut client = HealthClient::new(channel);
    let r = client.check(ask("")).await.expect("SERVING");
    assert_eq!(
        r.metadata()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok()),
        Some("pod-a")
    );
    assert_eq!(r.into_inner().status, ServingStatus::Serving as i32);

    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(match client.check(ask(FLAKY)).await {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        });
    }
    use tonic::Code::{Ok as Fine, Unavailable};
    assert_eq!(codes, [Unavailable, Fine, Unavailable, Fine]);
    let always = client
        .check(ask(UNAVAILABLE))
        .await
        .expect_err("UNAVAILABLE");
    assert_eq!(always.code(), Unavailable);

    let mut stream = client
        .watch(ask(&format!("{STREAM_PREFIX}4")))
        .await
        .expect("a stream")
        .into_inner();
    let mut statuses = Vec::new();
    while let Some(m) = stream.message().await.expect("a message") {
        statuses.push(m.status);
    }
    let (s, n) = (
        ServingStatus::Serving as i32,
        ServingStatus::NotServing as i32,
    );
    assert_eq!(statuses, [s, n, s, n]);
}
