//! What each waypoint of a running local mesh did, from its own metrics
//! (`istio_requests_total{reporter="waypoint"}`): requests per service, status and response
//! flag, for the live summary and its checks.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::local::WaypointState;
use crate::local::apps::fetch;
use crate::local::metrics::samples;

/// Requests one waypoint reported, by (destination service, response code, response flags).
#[derive(Debug, Clone, Default)]
pub struct WaypointView {
    /// `<namespace>/<name>`.
    pub key: String,
    pub node: String,
    /// Whether its metrics answered.
    pub up: bool,
    pub requests: BTreeMap<(String, String, String), u64>,
    /// Lines of its log (access log included), for naming the policy behind a refusal.
    pub log: String,
}

impl WaypointView {
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// One line: "demo/waypoint (node-a): 312 requests; reviews.demo.svc.cluster.local 200
    /// ×290, 403 RBAC ×22".
    pub fn line(&self) -> String {
        if !self.up {
            return format!("{} ({}): not answering", self.key, self.node);
        }
        let mut out = format!("{} ({}): {} requests", self.key, self.node, self.total());
        let mut by_service: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((service, code, flags), n) in &self.requests {
            let flags = if flags.is_empty() || flags == "-" {
                String::new()
            } else {
                format!(" {flags}")
            };
            by_service
                .entry(service)
                .or_default()
                .push(format!("{code}{flags} x{n}"));
        }
        for (service, parts) in by_service {
            let _ = write!(out, "; {service} {}", parts.join(", "));
        }
        out
    }
}

/// Every waypoint's view now; one that does not answer is shown as such.
pub async fn views(waypoints: &[WaypointState]) -> Vec<WaypointView> {
    let mut out = Vec::new();
    for w in waypoints {
        let mut view = WaypointView {
            key: w.key(),
            node: w.node.clone(),
            log: std::fs::read_to_string(&w.log).unwrap_or_default(),
            ..Default::default()
        };
        if let Ok((200, text)) = fetch(&format!("http://{}/metrics", w.metrics)).await {
            view.up = true;
            for sample in samples(&text, "istio_requests_total") {
                if sample.labels.get("reporter").map(String::as_str) != Some("waypoint") {
                    continue;
                }
                let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
                *view
                    .requests
                    .entry((
                        label("destination_service"),
                        label("response_code"),
                        label("response_flags"),
                    ))
                    .or_default() += sample.value as u64;
            }
        }
        out.push(view);
    }
    out
}
