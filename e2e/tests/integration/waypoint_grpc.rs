//! gRPC through the waypoint, from a real gRPC client (tonic) to the sample server's standard
//! health service (`grpc.health.v1.Health`): a unary call, a server stream, UNAVAILABLE
//! retried as the GRPCRoute says, and `grpc_response_status` in the waypoint's metrics.

use std::time::Duration;

use ambit_cli::local::apps::{FLAKY, STREAM_PREFIX, UNAVAILABLE};
use ambit_cli::local::metrics;
use ambit_e2e::{WAYPOINT_MESH, access_log, can_run, eventually, in_pod, start};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::waypoint::{WAYPOINT_ID, sources_into, waypoint_metrics};

const GRPC: &str = "http://10.96.1.22:9090";

/// What the client saw.
#[derive(Debug)]
struct Seen {
    unary: Result<(i32, Option<String>), tonic::Status>,
    stream: Result<Vec<i32>, tonic::Status>,
    flaky: Vec<Result<i32, tonic::Code>>,
    unavailable: Result<i32, tonic::Status>,
}

fn ask(service: &str) -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    })
}

async fn client_calls() -> anyhow::Result<Seen> {
    let channel = tonic::transport::Endpoint::from_static(GRPC)
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let unary = client.check(ask("")).await.map(|r| {
        let served_by = r
            .metadata()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (r.into_inner().status, served_by)
    });
    let stream = async {
        let mut stream = client
            .watch(ask(&format!("{STREAM_PREFIX}5")))
            .await?
            .into_inner();
        let mut statuses = Vec::new();
        while let Some(message) = stream.message().await? {
            statuses.push(message.status);
        }
        Ok::<_, tonic::Status>(statuses)
    }
    .await;
    let mut flaky = Vec::new();
    for _ in 0..20 {
        flaky.push(
            client
                .check(ask(FLAKY))
                .await
                .map(|r| r.into_inner().status)
                .map_err(|s| s.code()),
        );
    }
    let unavailable = client
        .check(ask(UNAVAILABLE))
        .await
        .map(|r| r.into_inner().status);
    Ok(Seen {
        unary,
        stream,
        flaky,
        unavailable,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_retried_unavailable_through_the_waypoint() -> anyhow::Result<()> {
    if !can_run("grpc_through_the_waypoint") {
        return Ok(());
    }
    let mesh = start("waypoint-grpc", Some(WAYPOINT_MESH)).await?;
    let seen = in_pod(&mesh, "l7", "client", client_calls)??;

    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(
        seen.unary.as_ref().ok(),
        Some(&(serving, Some("grpc".to_string()))),
        "unary Check: {seen:?}"
    );
    assert_eq!(
        seen.stream.as_ref().ok(),
        Some(&vec![serving, not_serving, serving, not_serving, serving]),
        "server-streaming Watch: {seen:?}"
    );
    // The server fails every other FLAKY call with UNAVAILABLE; the route retries it.
    assert!(
        seen.flaky.iter().all(|r| r == &Ok(serving)),
        "UNAVAILABLE reached the client although the route retries it: {:?}",
        seen.flaky
    );
    let log = access_log(&mesh, "l7", "grpc");
    let flaky_tries: Vec<_> = log
        .iter()
        .filter(|l| l.grpc_service.as_deref() == Some(FLAKY))
        .collect();
    let failed_tries = flaky_tries
        .iter()
        .filter(|l| l.grpc_code == Some(14))
        .count();
    assert!(
        flaky_tries.len() >= 40 && failed_tries >= 20,
        "the server saw {} tries ({failed_tries} UNAVAILABLE) for 20 calls",
        flaky_tries.len()
    );
    // One that always fails: retried, then its UNAVAILABLE reaches the client.
    assert_eq!(
        seen.unavailable.as_ref().map_err(|s| s.code()),
        Err(tonic::Code::Unavailable),
        "{seen:?}"
    );
    let tries = log
        .iter()
        .filter(|l| l.grpc_service.as_deref() == Some(UNAVAILABLE))
        .count();
    assert!(
        tries >= 2,
        "an always-UNAVAILABLE call was tried {tries} time(s): not retried"
    );

    // A request is counted when the waypoint has finished its response, which may be just
    // after the client read the trailers: poll until the last call's UNAVAILABLE is counted.
    let status = |text: &str, code: &str| {
        metrics::sum(
            text,
            "istio_requests_total",
            &[("reporter", "waypoint"), ("grpc_response_status", code)],
        )
    };
    let mut text = String::new();
    let counted = eventually(Duration::from_secs(5), async || {
        text = waypoint_metrics(&mesh, "waypoint").await.ok()?;
        (status(&text, "0") >= 22.0 && status(&text, "14") >= 1.0).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "grpc_response_status=\"0\" (22) or \"14\" (1) missing or short:\n{text}"
    );
    let sources = sources_into(&mesh, "node-b", "grpc").await?;
    assert!(sources.contains(WAYPOINT_ID), "{sources:?}");
    mesh.down()?;
    Ok(())
}
