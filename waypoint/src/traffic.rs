//! Traffic policies (`ambit.traffic.v1.TrafficPolicy`, Istio's DestinationRule `trafficPolicy`
//! in Ambit's shape) compiled per service with each config update: the service's circuit
//! breaker limits ([`crate::breaker`]), its outlier detection ([`crate::outlier`]) and its
//! connection-pool settings ([`crate::upstream::PoolPolicy`]). Every service the waypoint knows
//! gets an entry, with the defaults below when no policy targets it, so the breaker counts (and
//! protects) every service.
//!
//! Defaults, for a service without a policy or a field left at 0:
//!
//! | setting | default | why |
//! |---|---|---|
//! | `max_connections` | 65,536 | see below |
//! | `max_pending_requests` | 65,536 | |
//! | `max_requests` | 65,536 | |
//! | `max_retries` | 65,536 | retries are bounded by the retry budget already |
//! | `idle_timeout_ms` | the waypoint's (60 s) | |
//! | `max_requests_per_connection` | no limit | |
//! | `http2_multiplexing` | on | |
//! | outlier detection | off | |
//! | `base_ejection_time_ms` (when on) | 30 s | Envoy's and Istio's |
//! | `max_ejection_percent` (when on) | 10 % | Envoy's and Istio's (at least one endpoint) |
//!
//! Why 65,536 (per service, per waypoint): Envoy's 1,024 is reached by a healthy service at
//! about 1,000 requests per second with a 1 s latency, and then fails requests with 503 `UO`
//! that nobody asked for (Istio raised its defaults to "unlimited" for that reason). 65,536
//! requests in flight to one service is more than one waypoint serves to it (two cores, tens of
//! thousands of requests per second at millisecond latencies): only a pile-up (a hung backend)
//! gets there, and that is when a limit should stop the waypoint's memory from growing. Envoy's
//! `max_retries` default of 3 refuses retries on a busy service all the time; the retry budget
//! (20 % of recent requests plus 10 per second) is what bounds retries, so the default here
//! only stops a runaway.
//!
//! A policy is checked when the update arrives; one the waypoint cannot honour (a percentage
//! over 100, outlier detection that counts nothing, two policies for one service…) makes the
//! update refused whole (NACK) with the reason naming the policy, and the old config stays.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ambit_discovery::state::ProxyState;
use ambit_proto::api::traffic as api;
use metrics::{Counter, Label};

use crate::breaker::{Admission, Breaker, Limit, Limits, Overflow, Slot};
use crate::endpoints::{Backend, Endpoint};
use crate::outlier::{self, Ejections, Health, Observed};
use crate::telemetry::RequestMetrics;
use crate::upstream::{PoolPolicy, Terms};

pub const DEFAULT_LIMIT: u32 = 65_536;
pub const DEFAULT_LIMITS: Limits = Limits {
    max_connections: DEFAULT_LIMIT,
    max_pending: DEFAULT_LIMIT,
    max_requests: DEFAULT_LIMIT,
    max_retries: DEFAULT_LIMIT,
};
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Longer base ejection times are refused: a pod that bad is better taken out of the service.
pub const MAX_BASE_EJECTION_TIME: Duration = Duration::from_secs(24 * 3600);

/// Requests refused by a service's circuit breaker, by the limit they hit.
pub const OVERFLOW_TOTAL: &str = "ambit_upstream_overflow_total";
/// Endpoints ejected by outlier detection.
pub const EJECTIONS_TOTAL: &str = "ambit_outlier_ejections_total";
/// Endpoints ejected now.
pub const EJECTED: &str = "ambit_outlier_ejected";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("traffic policy {policy:?} is invalid: {reason}")]
pub struct TrafficPolicyError {
    /// "<namespace>/<name>".
    pub policy: String,
    pub reason: String,
}

/// A service's traffic policy, checked, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// "<namespace>/<name>" of the policy; `None`: the defaults.
    pub policy: Option<Arc<str>>,
    pub limits: Limits,
    pub pool: PoolPolicy,
    pub outlier: Option<outlier::Policy>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: None,
            limits: DEFAULT_LIMITS,
            pool: PoolPolicy::DEFAULT,
            outlier: None,
        }
    }
}

impl Settings {
    /// Checks a policy from the wire.
    pub fn from_api(p: &api::TrafficPolicy) -> Result<Self, TrafficPolicyError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let invalid = |reason: String| TrafficPolicyError {
            policy: key.clone(),
            reason,
        };
        if p.target.is_empty() {
            return Err(invalid(
                "it names no target service; give the service's hostname, e.g. reviews.demo.svc.cluster.local".into(),
            ));
        }
        let or_default = |v: u32| if v == 0 { DEFAULT_LIMIT } else { v };
        let pool = p.connection_pool.unwrap_or_default();
        let limits = Limits {
            max_connections: or_default(pool.max_connections),
            max_pending: or_default(pool.max_pending_requests),
            max_requests: or_default(pool.max_requests),
            max_retries: or_default(pool.max_retries),
        };
        let multiplex = match api::H2Multiplexing::try_from(pool.http2_multiplexing) {
            Ok(api::H2Multiplexing::Default | api::H2Multiplexing::On) => true,
            Ok(api::H2Multiplexing::Off) => false,
            Err(_) => {
                return Err(invalid(format!(
                    "connection_pool.http2_multiplexing {} is not a value this waypoint knows (0 default, 1 on, 2 off); is the controller newer than the waypoint?",
                    pool.http2_multiplexing
                )));
            }
        };
        let outlier = p
            .outlier_detection
            .as_ref()
            .map(|o| outlier_policy(o).map_err(invalid))
            .transpose()?;
        Ok(Settings {
            policy: Some(key.as_str().into()),
            limits,
            pool: PoolPolicy {
                multiplex,
                max_requests_per_connection: NonZeroU32::new(pool.max_requests_per_connection),
                idle_timeout: (pool.idle_timeout_ms > 0)
                    .then(|| Duration::from_millis(pool.idle_timeout_ms)),
            },
            outlier,
        })
    }
}

fn outlier_policy(o: &api::OutlierDetection) -> Result<outlier::Policy, String> {
    if o.consecutive_5xx == 0
        && o.consecutive_gateway_errors == 0
        && o.consecutive_connect_failures == 0
    {
        return Err("outlier_detection counts nothing (consecutive_5xx, consecutive_gateway_errors and consecutive_connect_failures are all 0), so it would never eject; set one, or leave outlier_detection out to turn ejection off".into());
    }
    if o.max_ejection_percent > 100 {
        return Err(format!(
            "outlier_detection.max_ejection_percent {} is over 100; give 1 to 100 (0: the default, {DEFAULT_MAX_EJECTION_PERCENT})",
            o.max_ejection_percent
        ));
    }
    let base = match o.base_ejection_time_ms {
        0 => DEFAULT_BASE_EJECTION_TIME,
        ms => Duration::from_millis(ms),
    };
    if base > MAX_BASE_EJECTION_TIME {
        return Err(format!(
            "outlier_detection.base_ejection_time_ms {} is over a day; an endpoint that bad is better taken out of the service",
            o.base_ejection_time_ms
        ));
    }
    Ok(outlier::Policy {
        consecutive_5xx: o.consecutive_5xx,
        consecutive_gateway: o.consecutive_gateway_errors,
        consecutive_connect: o.consecutive_connect_failures,
        base_ejection_time: base,
        max_ejection_percent: match o.max_ejection_percent {
            0 => DEFAULT_MAX_EJECTION_PERCENT,
            p => p,
        },
    })
}

/// What outlives a config version of one service: its counts and ejections.
struct Shared {
    breaker: Arc<Breaker>,
    ejections: Arc<Ejections>,
    /// `ambit_upstream_overflow_total` of the service, by [`Limit`].
    overflow: OnceLock<[Counter; 4]>,
}

/// One service's traffic policy and state, in one config version.
pub struct ServiceTraffic {
    host: Arc<str>,
    settings: Settings,
    shared: Arc<Shared>,
    /// Each endpoint's record (pod address and target port), with outlier detection only.
    health: HashMap<SocketAddr, Arc<Health>>,
    /// Its ready endpoints, which `max_ejection_percent` is a share of.
    endpoints: usize,
}

/// Every service's [`ServiceTraffic`], by hostname.
#[derive(Default)]
pub struct Traffic {
    services: HashMap<Box<str>, Arc<ServiceTraffic>>,
}

impl Traffic {
    /// Checks the policies of `mesh` and compiles them per service; counts, ejections and
    /// endpoint records are carried over from `previous` for the services still there.
    pub fn compile(mesh: &ProxyState, previous: &Traffic) -> Result<Traffic, TrafficPolicyError> {
        let mut policies: Vec<_> = mesh.traffic_policies().collect();
        // Sorted, so that which of two policies for one service is named first is stable.
        policies.sort_unstable_by_key(|(name, _)| *name);
        let mut by_target: HashMap<&str, Settings> = HashMap::new();
        for (_, p) in policies {
            let settings = Settings::from_api(p)?;
            if let Some(first) = by_target.get(p.target.as_str()) {
                return Err(TrafficPolicyError {
                    policy: format!("{}/{}", p.namespace, p.name),
                    reason: format!(
                        "it targets {}, as traffic policy {} does; a service takes one traffic policy: merge them, or delete one",
                        p.target,
                        first.policy.as_deref().unwrap_or_default()
                    ),
                });
            }
            by_target.insert(&p.target, settings);
        }
        let mut services = HashMap::new();
        for service in mesh.services() {
            let host = &*service.hostname;
            let settings = by_target.remove(host).unwrap_or_default();
            let old = previous.services.get(host);
            let shared = match old {
                Some(old) => old.shared.clone(),
                None => Arc::new(Shared {
                    breaker: Breaker::new(),
                    ejections: Ejections::new(host.into()),
                    overflow: OnceLock::new(),
                }),
            };
            let workloads: Vec<_> = service
                .endpoints
                .iter()
                .filter_map(|uid| mesh.workload(uid))
                .collect();
            let mut health = HashMap::new();
            if settings.outlier.is_some() {
                for w in &workloads {
                    for ip in w.addresses().iter() {
                        for port in service.ports.iter() {
                            let addr = SocketAddr::new(*ip, port.target_port);
                            let record = old
                                .and_then(|o| o.health.get(&addr).cloned())
                                .unwrap_or_default();
                            health.insert(addr, record);
                        }
                    }
                }
            }
            let traffic = ServiceTraffic {
                host: host.into(),
                endpoints: workloads.iter().filter(|w| w.healthy).count(),
                settings,
                shared,
                health,
            };
            services.insert(host.into(), Arc::new(traffic));
        }
        Ok(Traffic { services })
    }

    pub fn service(&self, hostname: &str) -> Option<&Arc<ServiceTraffic>> {
        self.services.get(hostname)
    }

    /// The traffic of a backend service; `None` for a workload addressed directly (no
    /// policy targets one).
    pub fn of(&self, backend: &Backend) -> Option<&Arc<ServiceTraffic>> {
        self.service(&backend.service()?.hostname)
    }
}

impl ServiceTraffic {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.shared.breaker
    }

    /// Endpoints of the service ejected now.
    pub fn ejected(&self) -> usize {
        self.shared.ejections.ejected()
    }

    /// Whether `endpoint` is ejected now (returning it if its time is up).
    pub fn is_ejected(&self, endpoint: SocketAddr) -> bool {
        self.health.get(&endpoint).is_some_and(|h| {
            self.shared
                .ejections
                .is_ejected(endpoint, h, Instant::now())
        })
    }

    /// Registers the service's metrics with the waypoint's, once (a load after that).
    pub fn bind_metrics(&self, metrics: &RequestMetrics) {
        let service = || Label::new("destination_service", self.host.to_string());
        self.shared.overflow.get_or_init(|| {
            Limit::ALL.map(|limit| {
                metrics.counter(
                    OVERFLOW_TOTAL,
                    "Requests the waypoint refused (503 UO) because a circuit breaker limit of their service was reached",
                    vec![service(), Label::new("limit", limit.label())],
                )
            })
        });
        if self.settings.outlier.is_some() {
            self.shared.ejections.bind_metrics(|| {
                (
                    metrics.counter(
                        EJECTIONS_TOTAL,
                        "Endpoints ejected by outlier detection",
                        vec![service()],
                    ),
                    metrics.gauge(
                        EJECTED,
                        "Endpoints ejected by outlier detection now",
                        vec![service()],
                    ),
                )
            });
        }
    }

    /// The breaker's admission of one try (`retry`: the slot of a retry, taken when it was
    /// decided).
    pub fn admit(&self, retry: Option<Slot>) -> Result<Admission, Overflow> {
        let request = self
            .shared
            .breaker
            .acquire(Limit::Requests, self.settings.limits.max_requests)?;
        Ok(Admission::new(request, retry))
    }

    /// A retry slot, unless the service's retries in flight are at their limit.
    pub fn retry(&self) -> Result<Slot, Overflow> {
        self.shared
            .breaker
            .acquire(Limit::Retries, self.settings.limits.max_retries)
    }

    /// What the pool needs of the service for one request.
    pub fn terms(&self) -> Terms<'_> {
        Terms {
            pool: &self.settings.pool,
            breaker: Some((&self.shared.breaker, &self.settings.limits)),
        }
    }

    /// Counts and logs a refusal by the breaker; the reason for the local reply.
    pub fn overflowed(&self, overflow: Overflow) -> String {
        if let Some(counters) = self.shared.overflow.get() {
            let i = Limit::ALL
                .iter()
                .position(|l| *l == overflow.limit)
                .unwrap_or_default();
            counters[i].increment(1);
        }
        tracing::debug!(service = %self.host, limit = overflow.limit.label(), max = overflow.max, source = %self.source(), "circuit breaker: request refused");
        format!(
            "circuit breaker of {}: {overflow}, set by {}",
            self.host,
            self.source()
        )
    }

    fn source(&self) -> Source<'_> {
        Source(self.settings.policy.as_deref())
    }

    /// Leaves out the ejected endpoints, unless that leaves none (then all are kept: better a
    /// pod that may answer than failing every request).
    pub fn skip_ejected(&self, endpoints: &mut Vec<Endpoint>) {
        if self.settings.outlier.is_none() || self.shared.ejections.ejected() == 0 {
            return;
        }
        let now = Instant::now();
        let ejections = &self.shared.ejections;
        let out = |e: &Endpoint| {
            self.health
                .get(&e.target)
                .is_some_and(|h| ejections.is_ejected(e.target, h, now))
        };
        if endpoints.iter().all(out) {
            tracing::debug!(service = %self.host, "every endpoint is ejected: using them anyway");
            return;
        }
        endpoints.retain(|e| !out(e));
    }

    /// Counts how a try to `endpoint` ended (outlier detection), ejecting it at a threshold.
    pub fn observe(&self, endpoint: SocketAddr, observed: Observed) {
        let (Some(policy), Some(health)) = (&self.settings.outlier, self.health.get(&endpoint))
        else {
            return;
        };
        self.shared.ejections.observe(
            policy,
            endpoint,
            health,
            observed,
            self.endpoints,
            Instant::now(),
        );
    }
}

/// Where a service's settings come from, for log lines and local replies.
struct Source<'a>(Option<&'a str>);

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(policy) => write!(f, "traffic policy {policy}"),
            None => f.write_str("the waypoint's default"),
        }
    }
}

impl fmt::Debug for ServiceTraffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceTraffic")
            .field("host", &self.host)
            .field("settings", &self.settings)
            .field("breaker", &self.shared.breaker)
            .field("ejected", &self.ejected())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
