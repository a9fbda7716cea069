//! The request path: one request from a client, through its route (match, filters, weighted
//! backend), its timeouts and retries, authorization on the chosen endpoint, to that endpoint,
//! and the response back. Each stage is its own module; this one only strings them together
//! in the order DESIGN.md gives, so a new policy slots in as a stage here.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_discovery::state::{AppProtocol, Protocol as WorkloadProtocol, Workload};
use ambit_discovery::telemetry::baggage::SourceWorkload;
use ambit_proto::identity::SpiffeId;
use http::{Request, Response, Version, request};
use hyper::body::Incoming;

use crate::authz::{self, Denied};
use crate::balance::{Balancer, InFlight};
use crate::body::{self, Body};
use crate::breaker::{Overflow, Slot};
use crate::destination::Destination;
use crate::endpoints::{Backend, Endpoint};
use crate::filters;
use crate::local_reply::{self, FLAGS_HEADER, Flag};
use crate::outlier::Observed;
use crate::path::{self, EscapedSlashes};
use crate::report::{Report, Telemetry};
use crate::retry::policy::{self, Outcome, Policy};
use crate::retry::{DEFAULT_CAP, ReplayBody, RetryBudget};
use crate::route::{Lookup, Rule};
use crate::state::{Snapshot, Store};
use crate::telemetry::Protocol;
use crate::traffic::ServiceTraffic;
use crate::upstream::{HttpVersion, Target, Transport, Upstream, UpstreamError};

/// Who a tunnel's requests come from and what they are for; one per tunnel.
#[derive(Debug)]
pub struct Downstream {
    /// The client's identity, proven by the certificate its ztunnel presented for it.
    pub peer: SpiffeId,
    /// The client's address (from `forwarded`, else the tunnel's peer address).
    pub client_addr: SocketAddr,
    /// The client's workload, when the config knows it (telemetry).
    pub source: Option<Workload>,
    /// The client's workload as its ztunnel named it (`baggage`), when the config does not
    /// know it: a waypoint's config holds the workloads it sends to, not its clients.
    pub claimed: Option<SourceWorkload>,
    pub destination: Destination,
}

/// Why the waypoint answers a request itself.
#[derive(Debug)]
pub struct Failure {
    pub flag: Flag,
    pub detail: String,
    /// The authorization policy that denied the request.
    pub policy: Option<Box<str>>,
}

impl Failure {
    fn new(flag: Flag, detail: String) -> Self {
        Failure {
            flag,
            detail,
            policy: None,
        }
    }
}

pub struct Forwarder {
    store: Arc<Store>,
    upstream: Upstream,
    balancer: Balancer,
    budget: RetryBudget,
    telemetry: Arc<Telemetry>,
    /// For requests whose rule sets no `timeouts.request` (or that match no route): no wait
    /// on an upstream is unbounded.
    default_timeout: Duration,
    escaped_slashes: EscapedSlashes,
}

impl Forwarder {
    pub fn new(
        store: Arc<Store>,
        upstream: Upstream,
        telemetry: Arc<Telemetry>,
        default_timeout: Duration,
    ) -> Self {
        Forwarder {
            store,
            upstream,
            balancer: Balancer::new(),
            budget: RetryBudget::default(),
            telemetry,
            default_timeout,
            escaped_slashes: EscapedSlashes::default(),
        }
    }

    /// What an escaped slash in a request's path does (`--path-escaped-slashes`).
    pub fn with_escaped_slashes(mut self, escaped_slashes: EscapedSlashes) -> Self {
        self.escaped_slashes = escaped_slashes;
        self
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Forgets what is kept per endpoint (load counts, pooled connections) for endpoints that
    /// left the config; called after each config update.
    pub fn prune(&self) {
        let snapshot = self.store.current();
        let live: HashSet<IpAddr> = snapshot
            .mesh
            .workloads()
            .flat_map(|w| w.addresses().iter().copied())
            .collect();
        self.balancer.retain(|e| live.contains(&e.ip()));
        self.upstream.retain(|t| live.contains(&t.endpoint.ip()));
    }

    /// Serves one request; never fails (failures are local replies).
    pub async fn handle(
        &self,
        down: &Arc<Downstream>,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let (mut head, body) = request.into_parts();
        let mut report = Report::start(&mut head);
        let (body, request_bytes) = crate::report::count(body::boxed(body));
        report.request_bytes = Some(request_bytes);
        let snapshot = self.store.current();
        // Once, first: routing, policy and the upstream all see the normalised path.
        let routed = match self.normalise(&mut head) {
            Ok(()) => self.route(&snapshot, down, head, body, &mut report).await,
            Err(failure) => Err(failure),
        };
        let response = match routed {
            Ok(response) => response,
            Err(failure) => {
                report.flag = Some(failure.flag);
                tracing::debug!(flag = failure.flag.letters(), detail = %failure.detail, "local reply");
                let reply = local_reply::reply(
                    failure.flag,
                    &failure.detail,
                    report.protocol == Protocol::Grpc,
                );
                report.detail = Some(failure.detail);
                report.policy = failure.policy;
                reply
            }
        };
        self.telemetry.finish(down, report, response)
    }

    /// Route stage: which backend, under which rule; then the request timeout around the rest.
    async fn route(
        &self,
        snapshot: &Snapshot,
        down: &Downstream,
        mut head: request::Parts,
        body: Body,
        report: &mut Report,
    ) -> Result<Response<Body>, Failure> {
        let (backend, rule) = match &down.destination {
            Destination::Workload { workload, port } => (
                Backend::Workload {
                    workload: workload.clone(),
                    port: *port,
                },
                None,
            ),
            Destination::Service { service, port } => {
                match snapshot.routes.lookup(&service.hostname, port.port, &head) {
                    Lookup::NoRoutes => (
                        Backend::Service {
                            service: service.clone(),
                            port: port.port,
                        },
                        None,
                    ),
                    Lookup::NoMatch => {
                        return Err(Failure::new(
                            Flag::NoRoute,
                            format!(
                                "no route of service {} matches {} {}",
                                service.hostname,
                                head.method,
                                head.uri.path()
                            ),
                        ));
                    }
                    Lookup::Matched(matched) => {
                        let rule = matched.rule.clone();
                        report.route = Some(rule.clone());
                        if let Some(redirect) = &rule.filters.redirect {
                            let (parts, ()) =
                                filters::redirect(redirect, matched.prefix, port.port, &head)
                                    .into_parts();
                            return Ok(Response::from_parts(parts, body::empty()));
                        }
                        filters::apply_request(&rule.filters, matched.prefix, &mut head);
                        // A rewrite's replacement may reintroduce `//` or `..`.
                        self.normalise(&mut head)?;
                        let backend = self.backend(snapshot, &rule)?;
                        (backend, Some(rule))
                    }
                }
            }
        };
        report.backend = backend.service().cloned();
        let version = upstream_version(&head, &down.destination);
        let mut deadline = rule
            .as_ref()
            .and_then(|r| r.timeouts.request)
            .unwrap_or(self.default_timeout);
        if report.protocol == Protocol::Grpc
            && let Some(grpc) = policy::grpc_timeout(&head.headers)
        {
            deadline = deadline.min(grpc);
        }
        let attempts = self.attempts(
            snapshot,
            down,
            head,
            body,
            &backend,
            rule.as_deref(),
            version,
            report,
        );
        let mut response = tokio::time::timeout(deadline, attempts)
            .await
            .map_err(|_| {
                Failure::new(
                    Flag::Timeout,
                    format!(
                        "no response from {backend} within the request timeout of {deadline:?}"
                    ),
                )
            })??;
        if let Some(rule) = &rule {
            let (mut parts, body) = response.into_parts();
            filters::apply_response(&rule.filters, &mut parts);
            response = Response::from_parts(parts, body);
        }
        Ok(response)
    }

    fn normalise(&self, head: &mut request::Parts) -> Result<(), Failure> {
        path::normalise_uri(&mut head.uri, self.escaped_slashes).map_err(|e| {
            Failure::new(
                Flag::BadPath,
                format!("bad request path {:?}: {e}", head.uri.path()),
            )
        })
    }

    /// A rule's weighted choice of backend, resolved to a service the waypoint knows.
    fn backend(&self, snapshot: &Snapshot, rule: &Rule) -> Result<Backend, Failure> {
        let Some(chosen) = rule.next_backend() else {
            return Err(Failure::new(
                Flag::BadBackend,
                format!("route {} has no backend with a weight above 0", rule.route),
            ));
        };
        let Some(service) = snapshot.mesh.service_by_hostname(&chosen.service) else {
            return Err(Failure::new(
                Flag::BadBackend,
                format!(
                    "backend {} of route {} is not a service the waypoint knows (check the backendRef's name and namespace)",
                    chosen.service, rule.route
                ),
            ));
        };
        Ok(Backend::Service {
            service: service.clone(),
            port: chosen.port,
        })
    }

    /// Retry stage: tries until one answers, the policy says stop or the budget is spent.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        snapshot: &Snapshot,
        down: &Downstream,
        head: request::Parts,
        body: Body,
        backend: &Backend,
        rule: Option<&Rule>,
        version: HttpVersion,
        report: &mut Report,
    ) -> Result<Response<Body>, Failure> {
        let retry = rule.and_then(|r| r.retry.as_ref()).map(Policy::from_route);
        let per_try = rule.and_then(|r| r.timeouts.backend_request);
        let body = ReplayBody::new(body, DEFAULT_CAP);
        self.budget.deposit();
        // The backend service's circuit breaker, outlier detection and pool settings.
        let traffic = snapshot.traffic.of(backend);
        if let Some(t) = traffic {
            t.bind_metrics(self.telemetry.metrics());
        }
        let mut retry_slot: Option<Slot> = None;
        let mut failed: Option<SocketAddr> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let admission = match traffic {
                Some(t) => Some(t.admit(retry_slot.take()).map_err(|o| overflow(t, o))?),
                None => None,
            };
            let (endpoint, mut in_flight, would_deny) =
                self.endpoint(snapshot, backend, down, failed, Some(&head))?;
            report.would_deny = would_deny;
            in_flight.hold(admission);
            let target = Target {
                endpoint: endpoint.target,
                transport: match endpoint.workload.protocol {
                    WorkloadProtocol::Hbone => Transport::Hbone {
                        identity: endpoint.workload.shared.identity.clone(),
                    },
                    WorkloadProtocol::Tcp => Transport::Plain,
                },
                version,
            };
            report.attempts = attempt;
            report.endpoint = Some(endpoint.clone());
            let request = Request::from_parts(head.clone(), body::boxed(body.clone()));
            let sent = Instant::now();
            let terms = traffic.map(|t| t.terms()).unwrap_or_default();
            let send = self
                .upstream
                .send_with(&target, Some(down.client_addr), request, terms);
            let result = match per_try {
                None => send.await.map_err(Tried::Failed),
                Some(limit) => match tokio::time::timeout(limit, send).await {
                    Ok(r) => r.map_err(Tried::Failed),
                    Err(_) => Err(Tried::TimedOut(limit)),
                },
            };
            report.upstream_time = Some(sent.elapsed());
            if let Some(t) = traffic {
                if let Err(Tried::Failed(e)) = &result
                    && let Some(o) = e.overflow()
                {
                    // Refused by the pool at the pending limit: at once, never retried.
                    report.in_flight = Some(in_flight);
                    return Err(overflow(t, o));
                }
                let observed = match &result {
                    Ok(response) => Some(Observed::Status(response.status().as_u16())),
                    Err(Tried::TimedOut(_)) => Some(Observed::Timeout),
                    Err(Tried::Failed(e)) => Observed::of_error(e),
                };
                if let Some(observed) = observed {
                    t.observe(endpoint.target, observed);
                }
            }
            let outcome = match &result {
                Ok(response) => Outcome::Response {
                    status: response.status(),
                    headers: response.headers(),
                },
                Err(Tried::TimedOut(_)) => Outcome::PerTryTimeout,
                Err(Tried::Failed(e)) if e.request_not_sent() => Outcome::NotSent,
                Err(Tried::Failed(_)) => Outcome::Reset,
            };
            let retryable = retry.as_ref().is_some_and(|p| p.is_retryable(&outcome))
                || matches!(outcome, Outcome::NotSent);
            let again = policy::decide(retry.as_ref(), attempt, &outcome, body.is_capped());
            if let Err(Tried::Failed(e)) = &result {
                tracing::debug!(attempt, error = %e, "attempt failed");
                failed = Some(e.endpoint());
            }
            let mut refused_by_budget = false;
            // UO: the service's max_retries said no; the last answer is passed on.
            let mut refused_by_breaker: Option<String> = None;
            if let Some(delay) = again {
                match traffic.map(|t| t.retry().map_err(|o| t.overflowed(o))) {
                    Some(Err(detail)) => refused_by_breaker = Some(detail),
                    slot => {
                        if self.budget.try_withdraw() {
                            retry_slot = slot.and_then(Result::ok);
                            drop(result);
                            drop(in_flight);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            continue;
                        }
                        tracing::debug!(attempt, "retry budget spent; not retrying");
                        refused_by_budget = true;
                    }
                }
            }
            // URX: the policy wanted another try and had none left, or the budget said no.
            let exhausted = retryable && (attempt > 1 || refused_by_budget);
            report.in_flight = Some(in_flight);
            if let Some(detail) = refused_by_breaker {
                return match result {
                    Ok(mut response) => {
                        report.flag = Some(Flag::Overflow);
                        response.headers_mut().insert(
                            FLAGS_HEADER,
                            http::HeaderValue::from_static(Flag::Overflow.letters()),
                        );
                        Ok(response)
                    }
                    Err(Tried::TimedOut(limit)) => Err(Failure::new(
                        Flag::Overflow,
                        format!(
                            "no answer within the backendRequest timeout of {limit:?}, and no retry: {detail}"
                        ),
                    )),
                    Err(Tried::Failed(e)) => Err(Failure::new(
                        Flag::Overflow,
                        format!("{e}, and no retry: {detail}"),
                    )),
                };
            }
            return match result {
                Ok(mut response) => {
                    if exhausted {
                        report.flag = Some(Flag::RetriesExhausted);
                        response.headers_mut().insert(
                            FLAGS_HEADER,
                            http::HeaderValue::from_static(Flag::RetriesExhausted.letters()),
                        );
                    }
                    Ok(response)
                }
                Err(Tried::TimedOut(limit)) => Err(Failure::new(
                    Flag::Timeout,
                    format!(
                        "{} did not answer within the backendRequest timeout of {limit:?} (attempt {attempt})",
                        endpoint.target
                    ),
                )),
                Err(Tried::Failed(e)) => Err(Failure::new(
                    Flag::from_letters(e.response_flag()),
                    format!("{e} (attempt {attempt})"),
                )),
            };
        }
    }

    /// Balance and authorization stages: the endpoint for one try (or one opaque connection),
    /// least loaded of two random healthy ones, avoiding the one that just failed when there is
    /// another; then that endpoint's policies on the client and its `request` (`None`: opaque
    /// TCP, judged at L4).
    pub fn endpoint(
        &self,
        snapshot: &Snapshot,
        backend: &Backend,
        down: &Downstream,
        failed: Option<SocketAddr>,
        request: Option<&request::Parts>,
    ) -> Result<(Endpoint, InFlight, Option<Denied>), Failure> {
        let (endpoint, in_flight) = self.choose(snapshot, backend, down, failed)?;
        let ask = authz::Ask {
            identity: &down.peer,
            client_addr: down.client_addr,
            request,
        };
        let would_deny = authz::check(
            &snapshot.mesh,
            &endpoint.workload,
            endpoint.target.port(),
            &ask,
            &self.telemetry,
        )
        .map_err(|denied| Failure {
            policy: Some(denied.policy.clone()),
            ..Failure::new(Flag::Denied, denied.to_string())
        })?;
        Ok((endpoint, in_flight, would_deny))
    }

    fn choose(
        &self,
        snapshot: &Snapshot,
        backend: &Backend,
        down: &Downstream,
        failed: Option<SocketAddr>,
    ) -> Result<(Endpoint, InFlight), Failure> {
        let mut endpoints = backend.endpoints(&snapshot.mesh, down.client_addr.ip());
        if endpoints.len() > 1
            && let Some(failed) = failed
        {
            endpoints.retain(|e| e.target != failed);
        }
        if let Some(t) = snapshot.traffic.of(backend) {
            t.skip_ejected(&mut endpoints);
        }
        let addresses: Vec<SocketAddr> = endpoints.iter().map(|e| e.target).collect();
        let Some(picked) = self.balancer.pick(&addresses) else {
            return Err(Failure::new(
                Flag::NoHealthyUpstream,
                format!(
                    "{backend} has no healthy endpoint (check that its pods are running and ready)"
                ),
            ));
        };
        let index = addresses
            .iter()
            .position(|a| *a == picked.endpoint())
            .expect("the balancer picks one of the candidates");
        Ok((endpoints.swap_remove(index), picked))
    }
}

/// A refusal by the service's circuit breaker: counted, logged, answered 503 `UO`.
fn overflow(traffic: &ServiceTraffic, overflow: Overflow) -> Failure {
    Failure::new(Flag::Overflow, traffic.overflowed(overflow))
}

/// How one try ended without a response.
enum Tried {
    Failed(UpstreamError),
    TimedOut(Duration),
}

/// HTTP/2 upstream when the client spoke it (gRPC) or the port declares it; else HTTP/1.1.
fn upstream_version(head: &request::Parts, destination: &Destination) -> HttpVersion {
    let declared = matches!(
        destination.app_protocol(),
        AppProtocol::Http2 | AppProtocol::Grpc
    );
    if declared || head.version == Version::HTTP_2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    }
}
