//! What `explain` finds, as data: the JSON of `GET /api/explain` and what `ambit explain`
//! renders into sentences. Nothing here is prose the renderer has to parse; the few `reason`
//! strings are the proxies' own words, shown as they would log them. Field names are the wire
//! format: add fields, do not rename them.

use serde::{Deserialize, Serialize};

/// How a request from one workload to one destination travels, and what decides its fate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub source: SourceInfo,
    pub destination: DestinationInfo,
    /// The waypoint the destination asks for; see [`WaypointInfo::on_path`].
    pub waypoint: Option<WaypointInfo>,
    /// The routes the waypoint applies to this service port, in name order (the waypoint orders
    /// their matches by Gateway API precedence). Empty: requests go to the service itself.
    pub routes: Vec<RouteInfo>,
    /// Where the request can end up: each backend service (the destination itself when no
    /// route applies) with its traffic policy and endpoints.
    pub backends: Vec<BackendInfo>,
    /// The hops between the proxies are mutual TLS (the source is captured).
    pub mutual_tls: bool,
    /// Every authorization policy selecting an endpoint, and what it decides for this source.
    pub policies: Vec<PolicyInfo>,
    /// What happens at each endpoint (they may be selected by different policies).
    pub endpoint_verdicts: Vec<EndpointVerdict>,
    /// The outcome over all endpoints.
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `<namespace>/<name>`.
    pub workload: String,
    pub node: String,
    pub addresses: Vec<String>,
    /// Its SPIFFE identity (what it proves over mTLS when captured).
    pub identity: String,
    /// Its traffic goes through the ztunnel of its node.
    pub captured: bool,
    pub capture: Capture,
}

/// Why the source is captured or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Capture {
    /// Its namespace has `ambit.io/dataplane-mode: ambient`.
    Enrolled { namespace: String },
    /// Its namespace is not enrolled (`value`: the label's value, if any).
    NamespaceNotEnrolled {
        namespace: String,
        value: Option<String>,
    },
    /// The namespace is enrolled but the pod opts out with `ambit.io/dataplane-mode: none`.
    PodOptedOut { namespace: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    Service,
    Workload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationInfo {
    pub kind: DestinationKind,
    /// `<namespace>/<name>` of the service or workload.
    pub name: String,
    /// The service's host name; empty for a workload.
    pub hostname: String,
    /// VIPs (service) or pod addresses (workload).
    pub addresses: Vec<String>,
    /// The port asked for (a service port, or the workload's port).
    pub port: u16,
    /// The service port's name; empty for a workload.
    pub port_name: String,
    /// Where the endpoints listen (the service port's `targetPort`; the port itself for a
    /// workload).
    pub target_port: u16,
    /// The service port's `appProtocol` (`tcp`, `http`, `http2`, `grpc`); empty for a workload.
    pub app_protocol: String,
}

/// Why traffic to the destination goes through a waypoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaypointChoice {
    /// `ambit.io/use-waypoint` on the service.
    ServiceLabel { service: String },
    /// `ambit.io/use-waypoint` on the service's namespace.
    NamespaceLabel { namespace: String },
    /// `ambit.io/use-waypoint` on the destination pod.
    PodLabel { workload: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaypointInfo {
    /// `<namespace>/<name>`.
    pub name: String,
    pub node: String,
    pub addresses: Vec<String>,
    pub identity: String,
    pub chosen_by: WaypointChoice,
    /// `http` (HTTP/1.1, or HTTP/2 with prior knowledge, detected), `http2`, `grpc` or `tcp`
    /// (opaque: no routes, L4 policy only), from the port's `appProtocol`.
    pub protocol: String,
    /// The waypoint handles requests one by one (routes, L7 policy conditions); false for
    /// opaque TCP.
    pub l7: bool,
    /// The request passes through it. False when the source is not captured: plain text from
    /// outside the mesh never reaches the waypoint.
    pub on_path: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// `<namespace>/<name>`.
    pub name: String,
    /// Host names the request's host must match; empty: any.
    pub hostnames: Vec<String>,
    pub rules: Vec<RouteRuleInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRuleInfo {
    pub index: usize,
    /// Each way a request can match, every condition of one holding; empty: every request.
    pub matches: Vec<RouteMatchInfo>,
    /// Empty with a redirect, or when the rule cannot serve (answered 500).
    pub backends: Vec<RouteBackend>,
    /// Where the waypoint redirects instead (`Location`, status), if it does.
    pub redirect: Option<String>,
    /// The whole request, retries included; `None`: no limit.
    pub request_timeout_ms: Option<u64>,
    /// Each try.
    pub backend_request_timeout_ms: Option<u64>,
    pub retry: Option<RetryInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatchInfo {
    /// `exact /x`, `prefix /api`, `regex ^/v[0-9]+`; `None`: any path.
    pub path: Option<String>,
    /// `None`: any method.
    pub method: Option<String>,
    /// `name = value` or `name ~ regex`.
    pub headers: Vec<String>,
    pub query_params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteBackend {
    /// `<namespace>/<name>` (the host name when it is no service the mesh knows).
    pub service: String,
    pub port: u16,
    pub weight: u32,
    /// Its share of the rule's requests, 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryInfo {
    /// Retries after the first try.
    pub attempts: u32,
    pub codes: Vec<u32>,
    pub grpc_codes: Vec<u32>,
    pub backoff_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `<namespace>/<name>`.
    pub service: String,
    pub port: u16,
    pub target_port: u16,
    pub traffic_policy: Option<TrafficPolicyInfo>,
    pub endpoints: Vec<EndpointInfo>,
}

/// The circuit breaker and outlier ejection the waypoint applies to a backend service. `None`
/// fields are not set (the waypoint's defaults apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPolicyInfo {
    /// `<namespace>/<name>`.
    pub name: String,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub idle_timeout_ms: Option<u64>,
    pub outlier_detection: Option<OutlierInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierInfo {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// `<namespace>/<name>`.
    pub workload: String,
    /// The address and target port it is reached on.
    pub address: String,
    pub node: String,
    pub healthy: bool,
    /// A ztunnel receives its traffic.
    pub meshed: bool,
    /// `strict` or `permissive` (what its ztunnel accepts); always permissive outside the mesh.
    pub mtls_mode: String,
}

/// Where a policy is checked for this request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Enforcer {
    /// The destination's ztunnel, at L4 (L7 conditions fail closed).
    Ztunnel { node: String },
    /// The waypoint, with the request in hand (every condition), or at L4 for opaque TCP.
    Waypoint { name: String, l7: bool },
    /// Nobody: the endpoint is outside the mesh and no waypoint is on the path.
    Nobody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `<namespace>/<name>`.
    pub name: String,
    /// `ALLOW`, `DENY` or `AUDIT`.
    pub action: String,
    /// Observer mode (`ambit.io/policy-mode: audit`): evaluated and reported, never enforced.
    pub dry_run: bool,
    /// The port it is checked on: the endpoints' target port. A policy selecting endpoints of
    /// backends on different ports is listed once per port.
    pub port: u16,
    /// The endpoints it selects.
    pub workloads: Vec<String>,
    /// Where it is checked (one entry per distinct place among its workloads).
    pub enforced_at: Vec<Enforcer>,
    pub rules: Vec<RuleCheck>,
    pub outcome: PolicyOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleCheck {
    pub index: usize,
    pub clauses: Vec<ClauseCheck>,
    pub result: RuleResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClauseCheck {
    /// `from`, `to` or `when`.
    pub part: String,
    /// The clause as written, e.g. `principals [spiffe://…/sa/x]`, `ports [8080]`,
    /// `methods [GET]`.
    pub text: String,
    pub result: ClauseResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClauseResult {
    Matches,
    DoesNotMatch,
    /// An L7 condition: decided by each request at the waypoint.
    NeedsRequest,
    /// An L7 condition where no waypoint checks it: ztunnel fails it closed (an ALLOW rule with
    /// it never matches, a DENY or AUDIT rule matches on its other conditions alone).
    NotCheckedAtL4,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleResult {
    Matches,
    DoesNotMatch,
    /// Matches when the request's L7 attributes (`fields`: methods, paths, hosts, headers) do.
    DependsOnRequest {
        fields: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicyOutcome {
    /// Rule `rule` matches this source on this port.
    Matches { rule: usize },
    /// Some rules match only for some requests.
    DependsOnRequest { rules: Vec<usize> },
    /// No rule matches (a policy without rules matches nothing).
    NoRuleMatches,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointVerdict {
    pub endpoint: String,
    pub enforced_at: Enforcer,
    pub verdict: Verdict,
}

/// What happens to the request, as the proxies on its path decide it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// `policy`: the ALLOW policy that let it in; `None`: no policy stands in the way.
    Allowed {
        policy: Option<String>,
        /// AUDIT policies that match (reported, deciding nothing).
        audited: Vec<String>,
    },
    Denied {
        policy: String,
        /// The deciding proxy's own words.
        reason: String,
    },
    /// Allowed only because `policy` is in observer mode; the proxy logs and counts it.
    WouldBeDenied { policy: String, reason: String },
    /// Some requests pass and some do not: policies with L7 conditions decide per request.
    DependsOnRequest {
        /// The policies with rules that depend on the request.
        policies: Vec<String>,
        /// The L7 fields involved (methods, paths, hosts, headers).
        fields: Vec<String>,
        /// When every such condition goes the request's way / against it.
        best_case: Box<Verdict>,
        worst_case: Box<Verdict>,
    },
    /// Plain text to workloads of a namespace that requires mTLS
    /// (`ambit.io/mtls-mode: strict`, or the mesh-wide mode): their ztunnels refuse it.
    PlaintextRefused { namespace: String },
    /// The source's namespace declares an egress scope the destination is outside of (or one
    /// that cannot be read, `invalid`): the source's ztunnel refuses the connection.
    OutsideEgressScope {
        namespace: String,
        declared: String,
        invalid: Option<String>,
    },
    /// Nothing can answer: no endpoint, none healthy, or a waypoint with no address.
    Unreachable { reason: String },
    /// The endpoints disagree (different policies select them); see `endpoint_verdicts`.
    DependsOnEndpoint,
}

impl Verdict {
    /// The request (or some of them) gets through.
    pub fn may_pass(&self) -> bool {
        match self {
            Verdict::Allowed { .. } | Verdict::WouldBeDenied { .. } => true,
            Verdict::DependsOnRequest { best_case, .. } => best_case.may_pass(),
            Verdict::Denied { .. }
            | Verdict::PlaintextRefused { .. }
            | Verdict::OutsideEgressScope { .. }
            | Verdict::Unreachable { .. } => false,
            Verdict::DependsOnEndpoint => true,
        }
    }
}
