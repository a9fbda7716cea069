//! TrafficPolicy (circuit breaking, outlier ejection, the connection pool of one service's
//! upstream) to its wire form, for both sources: the mesh file's `trafficPolicies` items and
//! Ambit's `ambit.io/v1alpha1 TrafficPolicy` read the same [`spec`] shape, Istio's
//! DestinationRule `trafficPolicy` field names with a Gateway API `targetRef` to a Service of the
//! policy's namespace. The waypoint of that service applies it to the requests it sends there.
//!
//! **Fail closed, whole.** A policy with a field Ambit does not implement (see [`UNSUPPORTED`]), a
//! value out of range or a target that is no Service of its namespace is refused whole and
//! reported (Kubernetes: logged, the rest of the mesh served; mesh file: the file is refused):
//! the service then runs with the waypoint's defaults, which a reader of the report can tell.
//! Ignoring the field instead would leave the user believing a limit (or a TLS or balancing
//! setting) is in force that is not, and a policy used in part is one nobody wrote.
//!
//! What is left out is sent as 0 / absent: the waypoint's defaults, documented with the waypoint.
//! Outlier detection is the exception: when `outlierDetection` is given, what it leaves out takes
//! Istio's defaults here ([`DEFAULT_CONSECUTIVE_5XX`], [`DEFAULT_BASE_EJECTION_MS`],
//! [`DEFAULT_MAX_EJECTION_PERCENT`]), so that an Istio policy ejects as it did there.

pub mod spec;

use std::collections::BTreeMap;
use std::str::FromStr;

use ambit_proto::api::traffic as tpb;
use serde_saphyr::Spanned;

use crate::model::{self, ObjectKey, USE_WAYPOINT_LABEL};

/// Istio's: consecutive 5xx answers that eject an endpoint when `outlierDetection` is given
/// without `consecutive5xxErrors` (0 turns the count off).
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Istio's `baseEjectionTime` default.
pub const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
/// Istio's `maxEjectionPercent` default.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// Istio `trafficPolicy` fields Ambit's waypoint does not implement, with what to do instead.
/// Given, the policy is refused (see the module's doc).
pub const UNSUPPORTED: [(&str, &str); 17] = [
    (
        "loadBalancer",
        "the waypoint picks endpoints by power of two choices on requests in flight",
    ),
    (
        "tls",
        "the waypoint reaches meshed endpoints over HBONE (mTLS) and others over plain TCP",
    ),
    (
        "portLevelSettings",
        "a TrafficPolicy applies to every port of its service",
    ),
    ("tunnel", ""),
    ("proxyProtocol", ""),
    (
        "retryBudget",
        "bound retries with connectionPool.http.maxRetries",
    ),
    (
        "targetRef.sectionName",
        "a TrafficPolicy applies to every port of its service",
    ),
    ("connectionPool.tcp.connectTimeout", ""),
    ("connectionPool.tcp.tcpKeepalive", ""),
    ("connectionPool.tcp.maxConnectionDuration", ""),
    (
        "connectionPool.tcp.idleTimeout",
        "the pool's idle timeout is connectionPool.http.idleTimeout",
    ),
    ("connectionPool.http.h2UpgradePolicy", H2_CHOICE),
    ("connectionPool.http.useClientProtocol", H2_CHOICE),
    (
        "outlierDetection.interval",
        "the waypoint counts each answer as it comes, with no sweep interval",
    ),
    ("outlierDetection.minHealthPercent", ""),
    (
        "outlierDetection.splitExternalLocalOriginErrors",
        "consecutiveLocalOriginFailures counts connection failures on its own, with no switch",
    ),
    (
        "outlierDetection.consecutiveErrors",
        "write consecutive5xxErrors (Istio deprecated this name)",
    ),
];

const H2_CHOICE: &str = "the waypoint speaks HTTP/2 upstream when the client does or the service port's appProtocol is http2 or grpc; set appProtocol";

/// What policies are checked against: the services of the model input.
pub struct TrafficContext<'a> {
    /// Each service, and whether it uses a waypoint (its own label, else its namespace's).
    services: BTreeMap<ObjectKey, bool>,
    trust_domain: &'a str,
}

impl<'a> TrafficContext<'a> {
    pub fn new<'s>(
        namespaces: &'s [model::Namespace],
        services: impl IntoIterator<Item = &'s model::Service, IntoIter: 's>,
        trust_domain: &'a str,
    ) -> Self {
        let services = model::requested_waypoints(namespaces, services)
            .map(|(s, waypoint)| {
                let uses = waypoint.is_some();
                (ObjectKey::new(&s.namespace, &s.name), uses)
            })
            .collect();
        TrafficContext {
            services,
            trust_domain,
        }
    }
}

/// The policy's object metadata.
pub struct Meta<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// Prefix of field paths in reasons: `spec.` for a Kubernetes object, empty for a mesh file
    /// item (whose spec fields are at its top level).
    pub spec_path: &'a str,
}

/// One reason a policy is refused, and where (a mesh file line, when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub line: Option<u64>,
}

/// What became of a policy.
#[derive(Debug)]
pub struct Outcome {
    /// Refused: every reason found, so one fix round fixes them all.
    pub policy: Result<tpb::TrafficPolicy, Vec<Refusal>>,
    /// Said whether or not the policy is used: nothing is wrong with it (its service uses no
    /// waypoint yet, say).
    pub notes: Vec<String>,
}

/// The line of a value read from a mesh file; `None` for one read from Kubernetes.
fn line<T>(s: &Spanned<T>) -> Option<u64> {
    Some(s.referenced.line()).filter(|l| *l > 0)
}

/// Collects refusals while a policy is converted.
struct Check<'a> {
    spec_path: &'a str,
    refusals: Vec<Refusal>,
}

impl Check<'_> {
    fn refuse(&mut self, at: Option<u64>, reason: String) {
        self.refusals.push(Refusal { reason, line: at });
    }

    /// Refuses an unsupported field that is set; `field` is its path in [`UNSUPPORTED`].
    fn unsupported(&mut self, value: &spec::Refused, field: &str) {
        let Some(value) = value else {
            return;
        };
        let hint = UNSUPPORTED
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, h)| *h)
            .unwrap_or_default();
        let instead = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        self.refuse(
            line(value),
            format!(
                "{}{field} is not implemented by Ambit's waypoint{instead}; remove it",
                self.spec_path
            ),
        );
    }

    /// A count of 1 or more that fits the wire's u32 (`min` 0 where 0 means something).
    fn count(&mut self, value: Option<i64>, field: &str, min: u32, at: Option<u64>) -> u32 {
        let Some(v) = value else {
            return 0;
        };
        match u32::try_from(v) {
            Ok(n) if n >= min => n,
            Ok(0) => {
                let why = match field {
                    "maxRetries" => {
                        "it would mean the waypoint's default, not \"no retry\" (to make no retry, take `retry` off the service's routes)"
                    }
                    _ => "it would refuse every request",
                };
                self.refuse(
                    at,
                    format!(
                        "{}{field} 0 is refused: {why}; give at least 1, or leave it out for the waypoint's default",
                        self.path(field)
                    ),
                );
                0
            }
            _ => {
                self.refuse(
                    at,
                    format!(
                        "{}{field} {v} is out of range; give {min} to {}",
                        self.path(field),
                        u32::MAX
                    ),
                );
                0
            }
        }
    }

    /// The prefix of a field's path, from its name (every field name is unique in the shape).
    fn path(&self, field: &str) -> String {
        let parent = match field {
            "maxConnections" => "connectionPool.tcp.",
            "http1MaxPendingRequests"
            | "http2MaxRequests"
            | "maxRequestsPerConnection"
            | "maxRetries"
            | "idleTimeout"
            | "maxConcurrentStreams" => "connectionPool.http.",
            _ => "outlierDetection.",
        };
        format!("{}{parent}", self.spec_path)
    }

    /// Milliseconds of a Gateway API duration, more than 0.
    fn duration(&mut self, value: Option<&str>, field: &str, at: Option<u64>) -> u64 {
        let Some(v) = value else {
            return 0;
        };
        let path = self.path(field);
        match gateway_api::Duration::from_str(v) {
            Ok(d) if !d.is_zero() => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ok(_) => {
                self.refuse(
                    at,
                    format!(
                        "{path}{field} {v:?} is zero; give a time above 0, or leave it out for the default"
                    ),
                );
                0
            }
            Err(why) => {
                self.refuse(
                    at,
                    format!(
                        "{path}{field} {v:?} is not a Gateway API duration ({why}); write e.g. \"500ms\", \"30s\" or \"1h\""
                    ),
                );
                0
            }
        }
    }
}

/// Checks and converts one policy; `Err` lists every reason it is refused.
pub fn traffic_policy(
    meta: &Meta<'_>,
    spec: &spec::TrafficPolicySpec,
    ctx: &TrafficContext<'_>,
) -> Outcome {
    let mut c = Check {
        spec_path: meta.spec_path,
        refusals: Vec::new(),
    };
    let mut notes = Vec::new();
    c.unsupported(&spec.load_balancer, "loadBalancer");
    c.unsupported(&spec.tls, "tls");
    c.unsupported(&spec.port_level_settings, "portLevelSettings");
    c.unsupported(&spec.tunnel, "tunnel");
    c.unsupported(&spec.proxy_protocol, "proxyProtocol");
    c.unsupported(&spec.retry_budget, "retryBudget");
    let target = target(meta, &spec.target_ref, ctx, &mut c, &mut notes);
    let connection_pool = spec
        .connection_pool
        .as_ref()
        .map(|pool| connection_pool(pool, &mut c));
    let outlier_detection = spec
        .outlier_detection
        .as_ref()
        .map(|o| outlier_detection(o, &mut c));
    if spec.connection_pool.is_none() && spec.outlier_detection.is_none() {
        c.refuse(
            line(&spec.target_ref),
            format!(
                "it sets neither {0}connectionPool nor {0}outlierDetection, so it would change nothing; give one",
                meta.spec_path
            ),
        );
    }
    let policy = match target {
        Some(target) if c.refusals.is_empty() => Ok(tpb::TrafficPolicy {
            name: meta.name.into(),
            namespace: meta.namespace.into(),
            target,
            connection_pool,
            outlier_detection,
        }),
        _ => Err(c.refusals),
    };
    Outcome { policy, notes }
}

/// The hostname of the target Service, which must exist in the policy's namespace.
fn target(
    meta: &Meta<'_>,
    spanned: &Spanned<spec::TargetRef>,
    ctx: &TrafficContext<'_>,
    c: &mut Check<'_>,
    notes: &mut Vec<String>,
) -> Option<String> {
    let t = &spanned.value;
    let at = line(spanned);
    let field = format!("{}targetRef", meta.spec_path);
    c.unsupported(&t.section_name, "targetRef.sectionName");
    let group = t.group.as_deref().unwrap_or_default();
    if !matches!(group, "" | "core") || t.kind != "Service" {
        c.refuse(
            at,
            format!(
                "{field} is a {} of group {group:?}; a TrafficPolicy targets a Service: {{group: \"\", kind: Service, name: <service>}}",
                t.kind
            ),
        );
        return None;
    }
    let service = ObjectKey::new(meta.namespace, &t.name);
    let Some(uses_waypoint) = ctx.services.get(&service) else {
        c.refuse(
            at,
            format!(
                "{field} names service {service}, which does not exist (or was left out); create it or fix the name (a TrafficPolicy targets a service of its own namespace)"
            ),
        );
        return None;
    };
    if !uses_waypoint {
        notes.push(format!(
            "{field}: service {service} uses no waypoint, so nothing applies this policy to its traffic yet; label the service (or its namespace) {USE_WAYPOINT_LABEL}=<waypoint>"
        ));
    }
    Some(model::service_hostname(
        &service.name,
        &service.namespace,
        ctx.trust_domain,
    ))
}

fn connection_pool(
    spanned: &Spanned<spec::ConnectionPool>,
    c: &mut Check<'_>,
) -> tpb::ConnectionPool {
    let mut pool = tpb::ConnectionPool::default();
    if let Some(tcp) = &spanned.value.tcp {
        let at = line(tcp);
        let t = &tcp.value;
        pool.max_connections = c.count(t.max_connections, "maxConnections", 1, at);
        c.unsupported(&t.connect_timeout, "connectionPool.tcp.connectTimeout");
        c.unsupported(&t.tcp_keepalive, "connectionPool.tcp.tcpKeepalive");
        c.unsupported(
            &t.max_connection_duration,
            "connectionPool.tcp.maxConnectionDuration",
        );
        c.unsupported(&t.idle_timeout, "connectionPool.tcp.idleTimeout");
    }
    if let Some(http) = &spanned.value.http {
        let at = line(http);
        let h = &http.value;
        pool.max_pending_requests = c.count(
            h.http1_max_pending_requests,
            "http1MaxPendingRequests",
            1,
            at,
        );
        pool.max_requests = c.count(h.http2_max_requests, "http2MaxRequests", 1, at);
        pool.max_retries = c.count(h.max_retries, "maxRetries", 1, at);
        // 0 is Istio's "no limit", which is also the wire's.
        pool.max_requests_per_connection = c.count(
            h.max_requests_per_connection,
            "maxRequestsPerConnection",
            0,
            at,
        );
        pool.idle_timeout_ms = c.duration(h.idle_timeout.as_deref(), "idleTimeout", at);
        pool.http2_multiplexing = match h.max_concurrent_streams {
            None => tpb::H2Multiplexing::Default,
            Some(1) => tpb::H2Multiplexing::Off,
            Some(n) => {
                c.refuse(
                    at,
                    format!(
                        "{}maxConcurrentStreams {n} is not supported: Ambit's waypoint either multiplexes requests on an HTTP/2 connection with no limit of its own (leave it out) or sends one at a time per connection (1)",
                        c.path("maxConcurrentStreams")
                    ),
                );
                tpb::H2Multiplexing::Default
            }
        }
        .into();
        c.unsupported(&h.h2_upgrade_policy, "connectionPool.http.h2UpgradePolicy");
        c.unsupported(
            &h.use_client_protocol,
            "connectionPool.http.useClientProtocol",
        );
    }
    pool
}

fn outlier_detection(
    spanned: &Spanned<spec::OutlierDetection>,
    c: &mut Check<'_>,
) -> tpb::OutlierDetection {
    let at = line(spanned);
    let o = &spanned.value;
    let consecutive_5xx = match o.consecutive_5xx_errors {
        None => DEFAULT_CONSECUTIVE_5XX,
        given => c.count(given, "consecutive5xxErrors", 0, at),
    };
    let consecutive_gateway_errors = c.count(
        o.consecutive_gateway_errors,
        "consecutiveGatewayErrors",
        0,
        at,
    );
    let consecutive_connect_failures = c.count(
        o.consecutive_local_origin_failures,
        "consecutiveLocalOriginFailures",
        0,
        at,
    );
    let base_ejection_time_ms = match o.base_ejection_time.as_deref() {
        None => DEFAULT_BASE_EJECTION_MS,
        given => c.duration(given, "baseEjectionTime", at),
    };
    let max_ejection_percent = match o.max_ejection_percent.map(u32::try_from) {
        None => DEFAULT_MAX_EJECTION_PERCENT,
        Some(Ok(p @ 1..=100)) => p,
        Some(_) => {
            let p = o.max_ejection_percent.unwrap_or_default();
            c.refuse(
                at,
                format!(
                    "{}maxEjectionPercent {p} is out of range; give 1 to 100 (0 would never eject: remove outlierDetection to turn ejection off)",
                    c.path("maxEjectionPercent")
                ),
            );
            0
        }
    };
    // Only when every count was written as 0: a bad count is refused on its own already.
    let counted = [
        o.consecutive_5xx_errors,
        o.consecutive_gateway_errors,
        o.consecutive_local_origin_failures,
    ];
    if consecutive_5xx == 0 && counted.iter().all(|v| v.is_none_or(|v| v == 0)) {
        c.refuse(
            at,
            format!(
                "{}outlierDetection counts no error (consecutive5xxErrors, consecutiveGatewayErrors and consecutiveLocalOriginFailures are all 0), so it would never eject; remove it to turn ejection off",
                c.spec_path
            ),
        );
    }
    c.unsupported(&o.interval, "outlierDetection.interval");
    c.unsupported(&o.min_health_percent, "outlierDetection.minHealthPercent");
    c.unsupported(
        &o.split_external_local_origin_errors,
        "outlierDetection.splitExternalLocalOriginErrors",
    );
    c.unsupported(&o.consecutive_errors, "outlierDetection.consecutiveErrors");
    tpb::OutlierDetection {
        consecutive_5xx,
        consecutive_gateway_errors,
        consecutive_connect_failures,
        base_ejection_time_ms,
        max_ejection_percent,
    }
}

#[cfg(test)]
mod tests;
