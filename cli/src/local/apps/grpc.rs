//! gRPC in the sample server: the standard health service (`grpc.health.v1.Health`, from
//! `tonic-health`'s protos, so any gRPC client can call it), with a unary method (Check) and a
//! server-streaming one (Watch). The service name asked for picks the behaviour:
//!
//! - [`UNAVAILABLE`]: Check always fails with UNAVAILABLE;
//! - [`FLAKY`]: Check fails with UNAVAILABLE every other call, the first included, so a
//!   proxy that retries UNAVAILABLE once turns each call into a success;
//! - `stream:N` ([`STREAM_PREFIX`]): Watch sends N statuses (SERVING, NOT_SERVING, …) 20 ms
//!   apart, then ends with OK;
//! - anything else: SERVING (Watch: 3 statuses).
//!
//! Every answer carries the pod's name in the `x-served-by` metadata.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckResponse, health_server};

use super::AccessLine;

pub const UNAVAILABLE: &str = "unavailable";
pub const FLAKY: &str = "flaky";
pub const STREAM_PREFIX: &str = "stream:";

pub(super) struct Health {
    pod: String,
    access_log: bool,
    flaky_calls: AtomicU64,
}

impl Health {
    pub(super) fn new(pod: String, access_log: bool) -> Self {
        Health {
            pod,
            access_log,
            flaky_calls: AtomicU64::new(0),
        }
    }

    fn log(&self, method: &str, service: &str, code: tonic::Code) {
        if self.access_log {
            AccessLine {
                pod: self.pod.clone(),
                method: "POST".into(),
                uri: format!("/grpc.health.v1.Health/{method}"),
                version: "HTTP/2.0".into(),
                status: 200,
                grpc_service: Some(service.into()),
                grpc_code: Some(code as i32),
                ..Default::default()
            }
            .emit();
        }
    }

    fn served_by<T>(&self, mut response: Response<T>) -> Response<T> {
        if let Ok(value) = self.pod.parse() {
            response.metadata_mut().insert("x-served-by", value);
        }
        response
    }
}

fn status(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s as i32 }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        let fail = match service.as_str() {
            UNAVAILABLE => true,
            FLAKY => self
                .flaky_calls
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2),
            _ => false,
        };
        if fail {
            self.log("Check", &service, tonic::Code::Unavailable);
            let mut refusal =
                Status::unavailable(format!("{} fails {service:?} on purpose", self.pod));
            if let Ok(value) = self.pod.parse() {
                refusal.metadata_mut().insert("x-served-by", value);
            }
            return Err(refusal);
        }
        self.log("Check", &service, tonic::Code::Ok);
        Ok(self.served_by(Response::new(status(ServingStatus::Serving))))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        let count: u32 = service
            .strip_prefix(STREAM_PREFIX)
            .and_then(|n| n.parse().ok())
            .unwrap_or(3)
            .min(10_000);
        self.log("Watch", &service, tonic::Code::Ok);
        let stream = futures::stream::unfold(0u32, move |i| async move {
            if i >= count {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let s = if i % 2 == 0 {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            Some((Ok(status(s)), i + 1))
        });
        Ok(self.served_by(Response::new(Box::pin(stream) as WatchStream)))
    }
}
