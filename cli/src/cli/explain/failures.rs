//! `ambit explain --last-failure`: each failed flow as a paragraph saying when, who called
//! whom, which hop failed and why, the response flags (Envoy's letters, as both proxies
//! report them) put into words.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use ambit_controller::telemetry::api::{FlowRecord, PartyRecord};

pub fn render(workload: &str, records: &[FlowRecord]) -> String {
    if records.is_empty() {
        return format!(
            "No failed request or connection of {workload} on record: the proxies have reported none since the controller started (or the workload's name is not the one its proxies report).\n"
        );
    }
    let mut out = format!(
        "The last {} failure{} of {workload}, newest first:\n",
        records.len(),
        if records.len() == 1 { "" } else { "s" }
    );
    for r in records {
        let _ = write!(out, "\n{}\n", describe_failure(r));
    }
    out
}

fn party(p: &PartyRecord) -> String {
    match (p.namespace.as_str(), p.workload.as_str()) {
        (ns, w) if !ns.is_empty() && !w.is_empty() => format!("{ns}/{w}"),
        _ if !p.identity.is_empty() => p.identity.clone(),
        _ if !p.address.is_empty() => p.address.clone(),
        _ => "an unknown peer".into(),
    }
}

fn hop(r: &FlowRecord) -> String {
    match r.reporter_kind.as_str() {
        "ztunnel" => format!("the ztunnel on node {}", r.reporter),
        "waypoint" => format!("waypoint {}", r.reporter),
        other => format!("{other} {}", r.reporter),
    }
}

fn duration(ms: f64) -> String {
    if ms < 1.0 {
        return format!("{ms:.2}ms");
    }
    humantime::format_duration(Duration::from_millis(ms.round() as u64)).to_string()
}

/// One failure as a paragraph.
pub fn describe_failure(r: &FlowRecord) -> String {
    let when = humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_millis(u64::try_from(r.start_unix_ms).unwrap_or(0)),
    );
    let callee = if !r.destination_service.is_empty() {
        r.destination_service.clone()
    } else {
        party(&r.destination)
    };
    let what = if r.method.is_empty() {
        "a TCP connection".to_string()
    } else {
        format!("{} {}", r.method, r.path)
    };
    let status = match (r.status, r.grpc_status) {
        (_, Some(g)) if g != 0 => format!(" with gRPC status {g}"),
        (0, _) => String::new(),
        (s, _) => format!(" with status {s}"),
    };
    let outcome = if r.failed { "failed" } else { "went through" };
    let mut text = format!(
        "{when}: {} -> {callee}:{} ({what}) {outcome} at {}{status}.",
        party(&r.source),
        r.destination_port,
        hop(r)
    );
    let flags: Vec<&str> = r
        .response_flags
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty() && *f != "-")
        .collect();
    for flag in &flags {
        let _ = write!(text, " {}.", capitalised(&flag_sentence(flag, r)));
    }
    if flags.is_empty() {
        let why = if r.would_deny && !r.policy.is_empty() {
            format!(
                "Authorization policy {} would have denied it; it is in observer mode, so the flow went through and the would-deny was logged and counted",
                r.policy
            )
        } else if r.grpc_status.is_some_and(|g| g != 0) || r.status >= 500 {
            "The destination itself answered with an error: the application failed, not the mesh"
                .to_string()
        } else {
            "No response flag: the proxy saw it end badly".to_string()
        };
        let _ = write!(text, " {why}.");
    }
    if !r.route.is_empty() {
        let backend = if r.backend_service.is_empty() {
            String::new()
        } else {
            format!(", backend {}", r.backend_service)
        };
        let _ = write!(text, " Route {}{backend}.", r.route);
    }
    if r.attempts > 1 && !flags.contains(&"URX") {
        let _ = write!(text, " {} attempts.", r.attempts);
    }
    if !r.reason.is_empty() {
        let _ = write!(text, " {} said: \"{}\".", capitalised(&hop(r)), r.reason);
    }
    let _ = write!(text, " It took {}.", duration(r.duration_ms));
    text
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One response flag, in words, with what the record says about it (policy, route, service,
/// attempts). Covers every flag ztunnel (`FailureReason::response_flag`) and the waypoint
/// (`local_reply::Flag`) emit.
pub fn flag_sentence(flag: &str, r: &FlowRecord) -> String {
    let service = if !r.backend_service.is_empty() {
        r.backend_service.as_str()
    } else if !r.destination_service.is_empty() {
        r.destination_service.as_str()
    } else {
        "the destination"
    };
    let at_ztunnel = r.reporter_kind == "ztunnel";
    match flag {
        "RBAC" if !r.policy.is_empty() && r.would_deny => format!(
            "the authorization policy {} would have denied it; it is in observer mode, so it was only logged and counted",
            r.policy
        ),
        "RBAC" if !r.policy.is_empty() => {
            format!("the authorization policy {} denied it", r.policy)
        }
        "RBAC" if r.reason.contains("mTLS") || r.reason.contains("strict") => "the destination requires mutual TLS (ambit.io/mtls-mode: strict) and the caller sent plain text from outside the mesh".to_string(),
        "RBAC" => "an authorization policy denied it".to_string(),
        "UT" => {
            let route = if r.route.is_empty() {
                String::new()
            } else {
                format!(" of route {}", r.route)
            };
            format!(
                "it timed out after {} (the timeout{route}): {service} did not answer in time",
                duration(r.duration_ms)
            )
        }
        "UO" => format!(
            "the circuit breaker for {service} was open: its limit of connections, pending requests or retries was reached, so the waypoint refused it at once (503) rather than queue it"
        ),
        "URX" => format!(
            "it gave up after {} attempt{}: every retry the route allows failed as well",
            r.attempts,
            if r.attempts == 1 { "" } else { "s" }
        ),
        "UF" => format!(
            "connecting to {service} failed (refused, unreachable, or the mutual TLS tunnel to it could not be opened)"
        ),
        "UH" if at_ztunnel => format!(
            "no healthy upstream: {service} has no ready endpoint, or the waypoint it must go through is unavailable"
        ),
        "UH" => format!("no healthy endpoint: every pod of {service} is down or ejected"),
        "NR" if at_ztunnel && r.reason.contains("egress scope") => "the caller's namespace declares an egress scope and this destination is outside it: add it to the declaration (egressScope, or the annotation ambit.io/egress-scope) or call something inside it".to_string(),
        "NR" if at_ztunnel => "nowhere to send it: the caller or its destination is unknown to the ztunnel, or it aimed at a port of the proxy itself".to_string(),
        "NR" => "no route matched the request (404): no rule of the service's HTTPRoutes fits its path, method or headers".to_string(),
        "UC" => format!("the connection to {service} broke after the request was sent"),
        "UR" => format!("{service} reset the request's stream"),
        "UPE" => format!("{service} answered with something that is not valid HTTP (502)"),
        "DC" => "the caller went away before the answer came".to_string(),
        "NC" => "the route cannot serve it: a backend that does not exist, or only zero weights (500)".to_string(),
        "DPE" => "the request's path cannot be normalised (an escaped slash or a malformed escape), so the waypoint refused it (400)".to_string(),
        other => format!("response flag {other}"),
    }
}
