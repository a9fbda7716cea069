//! `ambit explain`: how a request from one workload to one destination travels through the
//! mesh and what decides its fate, read from the mesh model: capture at the source, the
//! waypoint (and why), the routes, timeouts, retries and traffic policy it applies, the
//! endpoints and their nodes, the mTLS mode, and every authorization policy on the way with
//! the rule that decides (computed by the proxies' own policy code: see [`policies`]).
//! Served as JSON by the controller's `GET /api/explain` and rendered by the CLI.

mod path;
mod policies;
mod routes;
mod target;
mod types;

use std::net::IpAddr;

pub use types::*;

use crate::model::MeshModel;

/// Why there is nothing to explain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "source {given:?} is not <namespace>/<workload>: name the calling pod, e.g. demo/client"
    )]
    BadSource { given: String },
    #[error(
        "no workload {workload}{}",
        nearby_text(.nearby, "its namespace has", .namespaces)
    )]
    UnknownWorkload {
        workload: String,
        /// The workloads of the namespace asked for.
        nearby: Vec<String>,
        /// Every namespace with workloads or services (when the namespace has none).
        namespaces: Vec<String>,
    },
    #[error(
        "no service or workload {destination}{}{}",
        list_text("; services there: ", .services),
        list_text("; workloads there: ", .workloads)
    )]
    UnknownDestination {
        destination: String,
        services: Vec<String>,
        workloads: Vec<String>,
    },
    #[error(
        "no service VIP or pod has address {address}: give a service (<namespace>/<name> or its host name) or a pod address"
    )]
    UnknownAddress { address: IpAddr },
    #[error(
        "{given:?} has no valid port after ':': write <destination>:<port>, e.g. demo/reviews:9080"
    )]
    BadPort { given: String },
    #[error("{destination} has no port {port}; its ports: {}", .ports.join(", "))]
    NoSuchPort {
        destination: String,
        port: u16,
        ports: Vec<String>,
    },
    #[error("{destination} has several ports or none known; add one as {destination}:<port> (ports: {})", if .ports.is_empty() { "none declared".to_string() } else { .ports.join(", ") })]
    PortRequired {
        destination: String,
        ports: Vec<String>,
    },
    /// A policy the proxies could not compile either (the model should have refused it).
    #[error("authorization policy {policy} cannot be evaluated: {reason}")]
    Policy { policy: String, reason: String },
}

impl ExplainError {
    /// The status an HTTP API answers this with: 404 for a name the mesh does not have, 400
    /// for input that names nothing, 500 for a policy the proxies could not evaluate either.
    pub fn status(&self) -> http::StatusCode {
        match self {
            ExplainError::UnknownWorkload { .. }
            | ExplainError::UnknownDestination { .. }
            | ExplainError::UnknownAddress { .. }
            | ExplainError::NoSuchPort { .. } => http::StatusCode::NOT_FOUND,
            ExplainError::BadSource { .. }
            | ExplainError::BadPort { .. }
            | ExplainError::PortRequired { .. } => http::StatusCode::BAD_REQUEST,
            ExplainError::Policy { .. } => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn list_text(prefix: &str, items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("{prefix}{}", items.join(", "))
    }
}

fn nearby_text(nearby: &[String], prefix: &str, namespaces: &[String]) -> String {
    if nearby.is_empty() {
        format!(
            "; that namespace has no workloads (namespaces with some: {})",
            namespaces.join(", ")
        )
    } else {
        format!("; {prefix}: {}", nearby.join(", "))
    }
}

/// How a request from `from` (`<namespace>/<workload>`) to `to` (a service as
/// `<namespace>/<name>`, host name or VIP, or a workload as `<namespace>/<name>` or address;
/// `:port` optional when the destination has one port) travels, and what decides it.
pub fn explain(model: &MeshModel, from: &str, to: &str) -> Result<Explanation, ExplainError> {
    let source = target::source(model, from)?;
    let destination = target::destination(model, to)?;
    path::explain(model, source, destination)
}

#[cfg(test)]
mod tests;
