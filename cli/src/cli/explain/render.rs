//! An [`Explanation`] as a numbered walk of the hops: capture, the source's ztunnel, the
//! waypoint, the route rules, the backends and their endpoints, the destination's ztunnel,
//! the policies, and the verdict.

use std::fmt::Write;

use ambit_controller::explain::*;

/// The whole explanation as text, ending with a newline.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let d = &e.destination;
    let host = if d.hostname.is_empty() {
        String::new()
    } else {
        format!(" ({})", d.hostname)
    };
    let _ = writeln!(
        out,
        "{} -> {}:{}{host}\n",
        e.source.workload, d.name, d.port
    );
    let mut steps: Vec<String> = Vec::new();
    steps.push(capture(e));
    let through = e.waypoint.as_ref().filter(|w| w.on_path);
    if let Some(w) = &e.waypoint {
        steps.push(waypoint(e, w));
    }
    if through.is_some_and(|w| w.l7) {
        steps.push(routes(e));
    }
    steps.push(backends(e));
    steps.push(delivery(e));
    steps.push(policies(e));
    let at = e.endpoint_verdicts.first().map(|v| &v.enforced_at);
    steps.push(format!("Verdict: {}", verdict(&e.verdict, at, e)));
    for (i, step) in steps.iter().enumerate() {
        let _ = writeln!(out, "{}. {step}", i + 1);
    }
    out
}

fn capture(e: &Explanation) -> String {
    let s = &e.source;
    let at = format!(
        "{} ({}, node {})",
        s.workload,
        s.addresses.first().map_or("no address", String::as_str),
        s.node
    );
    match &s.capture {
        Capture::Enrolled { namespace } => format!(
            "Capture: {at} is in the mesh (namespace {namespace} has ambit.io/dataplane-mode: ambient). The ztunnel on node {} intercepts its connection and proves its identity {} to the next hop over mutual TLS.",
            s.node, s.identity
        ),
        Capture::NamespaceNotEnrolled { namespace, value } => format!(
            "Capture: not captured: namespace {namespace} is not in the mesh ({}), so the request leaves {at} in plain text and the mesh sees nothing of it until it reaches a meshed destination. To mesh it: label the namespace ambit.io/dataplane-mode=ambient.",
            match value {
                Some(v) => format!("its ambit.io/dataplane-mode is {v:?}"),
                None => "no ambit.io/dataplane-mode label".to_string(),
            }
        ),
        Capture::PodOptedOut { namespace } => format!(
            "Capture: not captured: {at} opts out with ambit.io/dataplane-mode: none (its namespace {namespace} is in the mesh), so the request leaves in plain text and the mesh sees nothing of it until it reaches a meshed destination."
        ),
    }
}

fn waypoint(e: &Explanation, w: &WaypointInfo) -> String {
    let why = match &w.chosen_by {
        WaypointChoice::ServiceLabel { service } => {
            format!(
                "service {service} has ambit.io/use-waypoint: {}",
                short(&w.name)
            )
        }
        WaypointChoice::NamespaceLabel { namespace } => format!(
            "namespace {namespace} has ambit.io/use-waypoint: {}",
            short(&w.name)
        ),
        WaypointChoice::PodLabel { workload } => {
            format!(
                "pod {workload} has ambit.io/use-waypoint: {}",
                short(&w.name)
            )
        }
    };
    if !w.on_path {
        return format!(
            "Waypoint: {} is asked for ({why}) but is not on this path: plain text from outside the mesh goes to the endpoints directly, so its routes and L7 policy checks do not apply.",
            w.name
        );
    }
    let at = w.addresses.first().map_or("no address yet", String::as_str);
    let treats = match (w.protocol.as_str(), w.l7) {
        ("detected", _) => {
            "it tells HTTP from opaque TCP by the first bytes (a pod address has no appProtocol)"
                .to_string()
        }
        (p, true) => format!(
            "port {} is {p} (appProtocol), so it handles each request: routes, timeouts, retries, and policy conditions on method, path and headers",
            e.destination.port
        ),
        (p, false) => format!(
            "port {} is {p} (appProtocol): it carries the bytes as they are, with no routes and L4 policy only",
            e.destination.port
        ),
    };
    format!(
        "Waypoint: {why}, so the ztunnel on node {} sends the connection over HBONE to waypoint {} (node {}, {at}) instead of to a pod; {treats}.",
        e.source.node,
        w.name,
        if w.node.is_empty() {
            "none yet"
        } else {
            &w.node
        }
    )
}

fn short(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

fn routes(e: &Explanation) -> String {
    let d = &e.destination;
    if e.routes.is_empty() {
        return format!(
            "Route: no HTTPRoute applies to {} port {}: every request goes to the service itself, with no timeout or retry of the mesh's.",
            d.name, d.port
        );
    }
    let mut out = String::from("Route:");
    for r in &e.routes {
        let hosts = if r.hostnames.is_empty() {
            String::new()
        } else {
            format!(" (for host {})", r.hostnames.join(", "))
        };
        let _ = write!(out, "\n     HTTPRoute {}{hosts}:", r.name);
        for rule in &r.rules {
            let _ = write!(out, "\n       rule {}: {}", rule.index, rule_text(rule));
        }
    }
    out.push_str(
        "\n     The waypoint picks the most specific matching rule (Gateway API precedence: exact path, longest prefix, method, most headers).",
    );
    let catch_all = e
        .routes
        .iter()
        .any(|r| r.hostnames.is_empty() && r.rules.iter().any(|rule| rule.matches.is_empty()));
    if !catch_all {
        out.push_str(" A request no rule matches is answered 404 (flag NR).");
    }
    out
}

fn rule_text(rule: &RouteRuleInfo) -> String {
    let (when, go) = if rule.matches.is_empty() {
        ("every request".to_string(), "goes")
    } else {
        let ways: Vec<String> = rule.matches.iter().map(match_text).collect();
        (format!("requests with {}", ways.join(", or ")), "go")
    };
    let be = if go == "goes" { "is" } else { "are" };
    let to = if let Some(redirect) = &rule.redirect {
        format!("{be} redirected ({redirect})")
    } else if rule.backends.is_empty() || rule.backends.iter().all(|b| b.weight == 0) {
        format!("{be} answered 500 (no backend with weight)")
    } else {
        let parts: Vec<String> = rule
            .backends
            .iter()
            .map(|b| format!("{}:{} ({:.0}%)", b.service, b.port, b.percent))
            .collect();
        format!("{go} to {}", parts.join(", "))
    };
    let mut text = format!("{when} {to}");
    match (rule.request_timeout_ms, rule.backend_request_timeout_ms) {
        (Some(all), Some(each)) => {
            let _ = write!(text, "; timeout {} in all, {} per try", ms(all), ms(each));
        }
        (Some(all), None) => {
            let _ = write!(text, "; timeout {}", ms(all));
        }
        (None, Some(each)) => {
            let _ = write!(text, "; timeout {} per try", ms(each));
        }
        (None, None) => {}
    }
    if let Some(r) = &rule.retry {
        let on: Vec<String> = r
            .codes
            .iter()
            .map(u32::to_string)
            .chain(r.grpc_codes.iter().map(|c| format!("grpc-status {c}")))
            .collect();
        let _ = write!(
            text,
            "; retried up to {} more time{} on {}{}",
            r.attempts,
            if r.attempts == 1 { "" } else { "s" },
            if on.is_empty() {
                "connection failures".to_string()
            } else {
                format!("{} and connection failures", on.join(", "))
            },
            if r.backoff_ms > 0 {
                format!(", {} apart", ms(r.backoff_ms))
            } else {
                String::new()
            }
        );
    }
    text
}

fn match_text(m: &RouteMatchInfo) -> String {
    let mut parts = Vec::new();
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    if let Some(path) = &m.path {
        parts.push(format!("path {path}"));
    }
    parts.extend(m.headers.iter().map(|h| format!("header {h}")));
    parts.extend(m.query_params.iter().map(|q| format!("query {q}")));
    if parts.is_empty() {
        "anything".into()
    } else {
        parts.join(" and ")
    }
}

fn backends(e: &Explanation) -> String {
    let mut out = String::from("Endpoints:");
    for b in &e.backends {
        let name = if b.service.is_empty() {
            "the pod itself".to_string()
        } else {
            format!(
                "{} port {} (pods listen on {})",
                b.service, b.port, b.target_port
            )
        };
        let _ = write!(out, "\n     {name}");
        if let Some(tp) = &b.traffic_policy {
            let _ = write!(out, "\n       traffic policy {}: {}", tp.name, breaker(tp));
        }
        if b.endpoints.is_empty() {
            out.push_str("\n       - no endpoint: requests sent here fail (no healthy upstream)");
        }
        for ep in &b.endpoints {
            let _ = write!(
                out,
                "\n       - {} at {} on node {}, {}, {}",
                ep.workload,
                ep.address,
                ep.node,
                if ep.healthy {
                    "healthy"
                } else {
                    "NOT healthy (receives nothing)"
                },
                if ep.meshed {
                    format!("in the mesh (mTLS {})", ep.mtls_mode)
                } else {
                    "outside the mesh (plain TCP)".to_string()
                }
            );
        }
    }
    out
}

fn breaker(tp: &TrafficPolicyInfo) -> String {
    let mut limits = Vec::new();
    let mut limit = |v: Option<u32>, what: &str| {
        if let Some(v) = v {
            limits.push(format!("{v} {what}"));
        }
    };
    limit(tp.max_connections, "connections");
    limit(tp.max_pending_requests, "pending requests");
    limit(tp.max_requests, "requests in flight");
    limit(tp.max_retries, "retries in flight");
    let mut parts = Vec::new();
    if !limits.is_empty() {
        parts.push(format!(
            "circuit breaker at {} (beyond that the waypoint answers 503 at once, flag UO)",
            limits.join(", ")
        ));
    }
    if let Some(o) = &tp.outlier_detection {
        let mut after = Vec::new();
        for (n, what) in [
            (o.consecutive_5xx, "5xx answers"),
            (o.consecutive_gateway_errors, "gateway errors"),
            (o.consecutive_connect_failures, "connect failures"),
        ] {
            if n > 0 {
                after.push(format!("{n} consecutive {what}"));
            }
        }
        parts.push(format!(
            "an endpoint is ejected after {} for {} (longer each time), at most {}% of them",
            if after.is_empty() {
                "failures".to_string()
            } else {
                after.join(" or ")
            },
            ms(o.base_ejection_time_ms),
            o.max_ejection_percent
        ));
    }
    if parts.is_empty() {
        "the waypoint's defaults".into()
    } else {
        parts.join("; ")
    }
}

fn delivery(e: &Explanation) -> String {
    let mut nodes: Vec<&str> = e
        .backends
        .iter()
        .flat_map(|b| &b.endpoints)
        .filter(|ep| ep.meshed)
        .map(|ep| ep.node.as_str())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let unmeshed = e
        .backends
        .iter()
        .flat_map(|b| &b.endpoints)
        .any(|ep| !ep.meshed);
    let from = match (&e.waypoint, e.source.captured) {
        (Some(w), _) if w.on_path => format!("waypoint {}", w.name),
        (_, true) => format!("the ztunnel on node {}", e.source.node),
        (_, false) => e.source.workload.clone(),
    };
    let mut text = if nodes.is_empty() {
        "Delivery: no endpoint is in the mesh: no ztunnel receives the connection.".to_string()
    } else if e.waypoint.as_ref().is_some_and(|w| w.on_path) {
        format!(
            "Delivery: the ztunnel on node {} receives the connection from {from} over HBONE and hands it to the pod; it does not judge it again (the waypoint did, against the original caller).",
            nodes.join(" / ")
        )
    } else if e.source.captured {
        format!(
            "Delivery: the ztunnel on node {} receives the connection from {from} over HBONE (mutual TLS), checks the pod's policies and hands it to the pod.",
            nodes.join(" / ")
        )
    } else {
        format!(
            "Delivery: the ztunnel on node {} receives plain text from {from}, without an identity: it refuses it if the namespace requires mTLS, else checks the pod's policies (rules naming principals or namespaces cannot match).",
            nodes.join(" / ")
        )
    };
    if unmeshed && !nodes.is_empty() {
        text.push_str(
            " Endpoints outside the mesh get plain TCP, with no ztunnel in front of them.",
        );
    }
    text
}

fn enforcer(e: &Enforcer) -> String {
    match e {
        Enforcer::Ztunnel { node } => format!("the ztunnel on node {node} (L4)"),
        Enforcer::Waypoint { name, l7: true } => format!("waypoint {name} (L7)"),
        Enforcer::Waypoint { name, l7: false } => format!("waypoint {name} (L4, opaque TCP)"),
        Enforcer::Nobody => "nobody (the endpoint is outside the mesh)".into(),
    }
}

fn policies(e: &Explanation) -> String {
    if e.policies.is_empty() {
        return "Policies: no authorization policy selects the endpoints: nothing is refused."
            .into();
    }
    let mut out = String::from("Policies:");
    for p in &e.policies {
        let at: Vec<String> = p.enforced_at.iter().map(enforcer).collect();
        let _ = write!(
            out,
            "\n     {} ({}{}) selects {}; checked on port {} by {}.",
            p.name,
            p.action,
            if p.dry_run {
                ", observer mode: reported, never enforced"
            } else {
                ""
            },
            p.workloads.join(", "),
            p.port,
            at.join(" and ")
        );
        if p.rules.is_empty() {
            out.push_str("\n       It has no rules, so it matches nothing.");
        }
        for r in &p.rules {
            let clauses: Vec<String> = r
                .clauses
                .iter()
                .map(|c| format!("{} {}: {}", c.part, c.text, clause(c.result)))
                .collect();
            let result = match &r.result {
                RuleResult::Matches => "matches".to_string(),
                RuleResult::DoesNotMatch => "does not match".to_string(),
                RuleResult::DependsOnRequest { fields } => {
                    format!("matches only requests whose {} fit", fields.join("/"))
                }
            };
            let detail = if clauses.is_empty() {
                "an empty rule, which matches everything".to_string()
            } else {
                clauses.join("; ")
            };
            let _ = write!(out, "\n       rule {} {result} ({detail})", r.index);
        }
        let _ = write!(out, "\n       -> {}", outcome(p));
    }
    out
}

fn clause(r: ClauseResult) -> &'static str {
    match r {
        ClauseResult::Matches => "yes",
        ClauseResult::DoesNotMatch => "NO",
        ClauseResult::NeedsRequest => "depends on the request",
        ClauseResult::NotCheckedAtL4 => {
            "cannot be checked without a waypoint (ztunnel fails it closed)"
        }
    }
}

fn outcome(p: &PolicyInfo) -> String {
    let does = match p.action.as_str() {
        "ALLOW" => "allows",
        "DENY" => "denies",
        _ => "reports (AUDIT)",
    };
    let would = if p.dry_run { "would have " } else { "" };
    match &p.outcome {
        PolicyOutcome::Matches { rule } => {
            let does = match (p.dry_run, p.action.as_str()) {
                (true, "ALLOW") => "would have allowed",
                (true, "DENY") => "would have denied",
                _ => does,
            };
            format!("it {does} this caller (rule {rule}).")
        }
        PolicyOutcome::DependsOnRequest { rules } => format!(
            "it {would}{does} some requests of this caller, by their method, path or headers (rule{} {}).",
            if rules.len() == 1 { "" } else { "s" },
            rules
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        PolicyOutcome::NoRuleMatches => match p.action.as_str() {
            "ALLOW" => format!(
                "no rule matches this caller, so it {}does not allow it (once an ALLOW policy selects a pod, what none allows is denied).",
                if p.dry_run { "would " } else { "" }
            ),
            "DENY" => "no rule matches this caller: it does not deny it.".into(),
            _ => "no rule matches this caller: nothing to report.".into(),
        },
    }
}

/// The verdict in a sentence (recursing into the cases of one that depends on the request).
fn verdict(v: &Verdict, at: Option<&Enforcer>, e: &Explanation) -> String {
    let place = at.map(enforcer).unwrap_or_default();
    let how_denied = match at {
        Some(Enforcer::Waypoint { l7: true, .. }) => "the caller gets 403 with x-ambit-flags: RBAC",
        _ => "the connection is refused (reset)",
    };
    match v {
        Verdict::Allowed { policy, audited } => {
            let by = match policy {
                Some(p) => format!(" (ALLOW policy {p} lets it in)"),
                None => String::new(),
            };
            let audit = if audited.is_empty() {
                String::new()
            } else {
                format!("; reported by AUDIT {}", audited.join(", "))
            };
            format!("ALLOWED{by}{audit}.")
        }
        Verdict::Denied { policy, reason } => {
            format!("DENIED by authorization policy {policy}, at {place}: {reason}; {how_denied}.")
        }
        Verdict::WouldBeDenied { policy, reason } => format!(
            "allowed, but authorization policy {policy} WOULD DENY it ({reason}); it is in observer mode (ambit.io/policy-mode: audit), so {place} only logs and counts it. Enforce it and this request fails."
        ),
        Verdict::DependsOnRequest {
            policies,
            fields,
            best_case,
            worst_case,
        } => format!(
            "DEPENDS ON THE REQUEST: {} decide{} by the request's {}. At best: {} At worst: {}",
            policies.join(", "),
            if policies.len() == 1 { "s" } else { "" },
            fields.join("/"),
            verdict(best_case, at, e),
            verdict(worst_case, at, e)
        ),
        Verdict::PlaintextRefused { namespace } => format!(
            "REFUSED: namespace {namespace} requires mutual TLS (ambit.io/mtls-mode: strict) and this caller speaks plain text from outside the mesh: mesh the caller, or make the namespace permissive."
        ),
        Verdict::OutsideEgressScope {
            namespace,
            declared,
            invalid: None,
        } => format!(
            "REFUSED by the caller's ztunnel: namespace {namespace} declares the egress scope {declared:?} and {} is outside it (ambit_connection_failures_total{{reason=\"outside_egress_scope\"}}): add it there, or call something inside it.",
            e.destination.name
        ),
        Verdict::OutsideEgressScope {
            namespace,
            declared,
            invalid: Some(reason),
        } => format!(
            "REFUSED by the caller's ztunnel: namespace {namespace}'s egress scope {declared:?} cannot be read ({reason}), so its pods reach no mesh destination until it is fixed."
        ),
        Verdict::Unreachable { reason } => format!("FAILS: {reason}."),
        Verdict::DependsOnEndpoint => {
            let mut text =
                String::from("DEPENDS ON THE ENDPOINT (different policies select them):");
            for ev in &e.endpoint_verdicts {
                let _ = write!(
                    text,
                    "\n     {}: {}",
                    ev.endpoint,
                    verdict(&ev.verdict, Some(&ev.enforced_at), e)
                );
            }
            text
        }
    }
}
