//! What `ambit up` prints: per client and service, how requests fared (from the clients' own
//! reports) and how the mesh carried them (from each node's ztunnel and each waypoint), then
//! the checks that say the mesh did its job: HBONE across nodes, passthrough out of the mesh,
//! policy refusals seen as refusals, and traffic through a waypoint split as its routes say
//! (each server pod answers with its name, so the answers are counted per pod).
//!
//! The live table's rate and success are those of the window since the previous table, so an
//! outage shows at once; the totals since the start stand beside them (a running total alone
//! still read 99% while most new calls failed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use ambit_discovery::dump::ztunnel::ConfigDump;
use ambit_discovery::dump::ztunnel::Direction;

use super::routes::{self, Expectation};
use super::waypoints::WaypointView;
use crate::local::LocalMesh;
use crate::local::apps::DriveReport;
use ambit_controller::model::AppProtocol;
use ambit_controller::source::file::TopologyPod;

/// One client calling one service port.
#[derive(Debug, Clone)]
pub struct Flow {
    pub client: String,
    pub client_uid: String,
    pub client_node: String,
    /// `<namespace>/<name>`.
    pub service: String,
    /// The URL, then each request header after a `|` (the driver's target).
    pub target: String,
    /// Request headers sent (a flow per header value a route pins).
    pub headers: Vec<(String, String)>,
    /// The waypoint the service's traffic goes through (`<namespace>/<name>`).
    pub waypoint: Option<String>,
    /// Who should answer, by the service's routes.
    pub expected: Option<Expectation>,
    /// Since the start.
    pub ok: u64,
    pub failed: u64,
    /// Since the previous live table.
    pub window_ok: u64,
    pub window_failed: u64,
    /// The last second's latency.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub last_error: Option<String>,
    /// Which server pod answered, by the pod's own words ("hello from reviews-v2").
    pub answered_by: BTreeMap<String, u64>,
}

pub struct Summary {
    pub flows: Vec<Flow>,
    /// Node of each pod, by name.
    pod_nodes: BTreeMap<String, String>,
    /// Services whose endpoints are all outside the mesh.
    unmeshed_services: BTreeSet<String>,
    /// Every authorization policy, `<namespace>/<name>`, to name the one behind a refusal.
    policies: Vec<String>,
    /// Each client pod's SPIFFE identity, by pod name, to find its refusals in a waypoint's log.
    identities: BTreeMap<String, String>,
}

/// What the ztunnels reported about one flow.
#[derive(Debug, Default)]
struct Carried {
    hbone: usize,
    tcp: usize,
    refusals: BTreeSet<String>,
}

impl Summary {
    /// Each client (see [`clients`]) calls every HTTP port of every service, on the service's
    /// first IPv4 VIP; the first client also sends each header value a route pins.
    pub fn plan(mesh: &LocalMesh) -> Self {
        let model = &mesh.file().model;
        let expectations = routes::expectations(model);
        let mut flows = Vec::new();
        let mut pod_nodes = BTreeMap::new();
        for pod in &mesh.file().topology.pods {
            pod_nodes.insert(pod.name.clone(), pod.node.clone());
        }
        let clients: Vec<_> = clients(mesh).collect();
        let mut unmeshed_services = BTreeSet::new();
        for entry in model.services() {
            let svc = &entry.service;
            let key = format!("{}/{}", svc.namespace, svc.name);
            let endpoints: Vec<_> = entry
                .endpoints
                .iter()
                .filter_map(|k| model.workload(k))
                .collect();
            if !endpoints.is_empty() && endpoints.iter().all(|w| !w.meshed) {
                unmeshed_services.insert(key.clone());
            }
            let Some(vip) = svc.vips.iter().find(|v| v.is_ipv4()) else {
                continue;
            };
            let waypoint = entry.waypoint.as_ref().map(|k| k.to_string());
            let expected = |headers: &[(String, String)]| {
                expectations
                    .iter()
                    .find(|e| e.service == key && e.headers == headers)
                    .cloned()
            };
            for port in svc
                .ports
                .iter()
                .filter(|p| p.app_protocol == AppProtocol::Http)
            {
                let url = format!("http://{vip}:{}/", port.port);
                let pinned: Vec<Vec<(String, String)>> = expectations
                    .iter()
                    .filter(|e| e.service == key && !e.headers.is_empty())
                    .map(|e| e.headers.clone())
                    .collect();
                let runs = clients.iter().map(|c| (*c, Vec::new())).chain(
                    clients
                        .first()
                        .into_iter()
                        .flat_map(|first| pinned.iter().map(move |h| (*first, h.clone()))),
                );
                for (client, headers) in runs {
                    let uid = model
                        .workloads()
                        .find(|w| w.pod.name == client.name && w.pod.namespace == client.namespace)
                        .map(|w| w.uid.clone())
                        .unwrap_or_default();
                    let target = std::iter::once(url.clone())
                        .chain(headers.iter().map(|(k, v)| format!("{k}: {v}")))
                        .collect::<Vec<_>>()
                        .join("|");
                    flows.push(Flow {
                        client: client.name.clone(),
                        client_uid: uid,
                        client_node: client.node.clone(),
                        service: key.clone(),
                        target,
                        expected: expected(&headers),
                        headers,
                        waypoint: waypoint.clone(),
                        ok: 0,
                        failed: 0,
                        window_ok: 0,
                        window_failed: 0,
                        p50_ms: 0.0,
                        p99_ms: 0.0,
                        last_error: None,
                        answered_by: BTreeMap::new(),
                    });
                }
            }
        }
        Summary {
            flows,
            pod_nodes,
            unmeshed_services,
            policies: model
                .policies()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
            identities: model
                .workloads()
                .map(|w| (w.pod.name.clone(), w.identity.to_string()))
                .collect(),
        }
    }

    /// Targets each client pod (namespace, name) drives.
    pub fn targets(&self, client: &str) -> Vec<String> {
        self.flows
            .iter()
            .filter(|f| f.client == client)
            .map(|f| f.target.clone())
            .collect()
    }

    pub fn record(&mut self, client: &str, report: &DriveReport) {
        let Some(flow) = self
            .flows
            .iter_mut()
            .find(|f| f.client == client && f.target == report.target)
        else {
            return;
        };
        flow.ok += report.ok;
        flow.failed += report.failed;
        flow.window_ok += report.ok;
        flow.window_failed += report.failed;
        flow.p50_ms = report.p50_ms;
        flow.p99_ms = report.p99_ms;
        if report.last_error.is_some() {
            flow.last_error = report.last_error.clone();
        }
        for (answer, count) in &report.answers {
            if let Some(server) = answer.strip_prefix("hello from ") {
                *flow
                    .answered_by
                    .entry(server.trim().to_string())
                    .or_default() += count;
            }
        }
    }

    fn carried(&self, flow: &Flow, dumps: &[ConfigDump]) -> Carried {
        let mut c = Carried::default();
        for dump in dumps.iter().filter(|d| d.node == flow.client_node) {
            for conn in dump.connections.iter().filter(|c| {
                c.direction == Direction::Outbound
                    && c.pod == flow.client_uid
                    && c.destination_service.as_deref() == Some(flow.service.as_str())
            }) {
                match &conn.error {
                    Some(e) if e.contains("401") => {
                        let policy = e
                            .split("policy ")
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .unwrap_or("an authorization policy");
                        c.refusals.insert(policy.to_string());
                    }
                    _ if conn.protocol == "HBONE" => c.hbone += 1,
                    _ => c.tcp += 1,
                }
            }
        }
        c
    }

    /// What a flow's service calls the flow in the tables: the service, and the headers sent.
    fn label(flow: &Flow) -> String {
        if flow.headers.is_empty() {
            flow.service.clone()
        } else {
            let headers: Vec<String> = flow
                .headers
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{}{{{}}}", flow.service, headers.join(","))
        }
    }

    /// Who answered, as shares: "reviews-v1@node-a 90.1%, reviews-v2@node-b 9.9%".
    fn split(&self, flow: &Flow) -> String {
        let answered: u64 = flow.answered_by.values().sum();
        flow.answered_by
            .iter()
            .map(|(server, n)| {
                let node = self
                    .pod_nodes
                    .get(server)
                    .map(String::as_str)
                    .unwrap_or("?");
                format!("{server}@{node} {}", percent(*n, answered))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Why a flow through a waypoint is refused: what the client saw, and the policy named by
    /// the refusal itself, by the client's ztunnel, or by the waypoint's log.
    fn waypoint_refusal(
        &self,
        flow: &Flow,
        dumps: &[ConfigDump],
        waypoints: &[WaypointView],
    ) -> Option<(String, Option<String>)> {
        let waypoint = flow.waypoint.as_ref()?;
        if flow.ok > 0 || flow.failed == 0 {
            return None;
        }
        let seen = flow.last_error.clone().unwrap_or_default();
        let refused = seen.contains("RBAC") || seen.starts_with("HTTP 403");
        let carried = self.carried(flow, dumps);
        if let Some(policy) = carried.refusals.iter().next() {
            return Some((
                format!("waypoint {waypoint} refused the tunnel"),
                Some(policy.clone()),
            ));
        }
        if !refused {
            return None;
        }
        let identity = self.identities.get(&flow.client);
        let log = waypoints
            .iter()
            .find(|w| &w.key == waypoint)
            .map_or("", |w| w.log.as_str());
        let policy = self
            .policies
            .iter()
            .find(|p| {
                let name = p.rsplit('/').next().unwrap_or(p);
                seen.contains(name)
                    || log.lines().any(|l| {
                        l.contains(name) && identity.is_none_or(|id| l.contains(id.as_str()))
                    })
            })
            .cloned();
        // Once the policy is named, the status and flags say the rest ("HTTP 403 [RBAC]").
        let seen = match &policy {
            Some(_) => seen.split(": ").next().unwrap_or(&seen).to_string(),
            None => seen,
        };
        Some((format!("waypoint {waypoint}: {seen}"), policy))
    }

    /// How the mesh carried a flow, in words.
    fn how(&self, flow: &Flow, dumps: &[ConfigDump], waypoints: &[WaypointView]) -> String {
        let carried = self.carried(flow, dumps);
        if let Some((what, policy)) = self.waypoint_refusal(flow, dumps, waypoints) {
            return match policy {
                Some(p) => format!("refused by policy {p} at {what}"),
                None => format!("refused at {what}"),
            };
        }
        if let Some(waypoint) = &flow.waypoint {
            if flow.ok > 0 {
                return format!("HBONE via waypoint {waypoint}: {}", self.split(flow));
            }
            // Nothing answered through the waypoint: what the waypoint said is the story
            // (`HTTP 504 [UT]`: the route's timeout), not the tunnels below it.
            if let Some(e) = &flow.last_error {
                return format!("failing at waypoint {waypoint}: {e}");
            }
        }
        if !carried.refusals.is_empty() && flow.ok == 0 {
            format!(
                "refused by policy {}",
                carried
                    .refusals
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else if carried.hbone > 0 {
            format!(
                "HBONE (mTLS) from {} to {}",
                flow.client_node,
                self.split(flow)
            )
        } else if carried.tcp > 0 {
            "plain TCP passthrough (outside the mesh)".to_string()
        } else {
            match &flow.last_error {
                Some(e) => format!("failing: {e}"),
                None => "waiting".to_string(),
            }
        }
    }

    /// Starts a new window: the next live table counts from here.
    pub fn next_window(&mut self) {
        for flow in &mut self.flows {
            flow.window_ok = 0;
            flow.window_failed = 0;
        }
    }

    /// The live table (`window`: the seconds since the previous one; rate and success of
    /// that window, then the totals), or the final one (`None`: totals only).
    pub fn render(
        &self,
        dumps: &[ConfigDump],
        waypoints: &[WaypointView],
        window: Option<f64>,
    ) -> String {
        let totals = window.is_none();
        let mut out = String::new();
        match window {
            Some(secs) => {
                let _ = writeln!(
                    out,
                    "REQ/S and OK % over the last {secs:.1}s; TOTAL and TOTAL OK % since the start"
                );
                let _ = writeln!(
                    out,
                    "{:<16} {:<26} {:>8} {:>7} {:>8} {:>8} {:>8} {:>10}  HOW",
                    "CLIENT", "SERVICE", "REQ/S", "OK %", "P50 ms", "P99 ms", "TOTAL", "TOTAL OK %"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<16} {:<26} {:>8} {:>7} {:>8} {:>8}  HOW",
                    "CLIENT", "SERVICE", "REQUESTS", "OK %", "P50 ms", "P99 ms"
                );
            }
        }
        for flow in &self.flows {
            let total = flow.ok + flow.failed;
            let how = self.how(flow, dumps, waypoints);
            let label = Self::label(flow);
            match window {
                Some(secs) => {
                    let in_window = flow.window_ok + flow.window_failed;
                    let _ = writeln!(
                        out,
                        "{:<16} {:<26} {:>8.1} {:>7} {:>8.2} {:>8.2} {:>8} {:>10}  {}",
                        flow.client,
                        label,
                        in_window as f64 / secs.max(0.001),
                        percent(flow.window_ok, in_window),
                        flow.p50_ms,
                        flow.p99_ms,
                        total,
                        percent(flow.ok, total),
                        how
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<16} {:<26} {:>8} {:>7} {:>8.2} {:>8.2}  {}",
                        flow.client,
                        label,
                        total,
                        percent(flow.ok, total),
                        flow.p50_ms,
                        flow.p99_ms,
                        how
                    );
                }
            }
        }
        if totals {
            let _ = writeln!(out, "(latency: the last second of traffic)");
        }
        if !waypoints.is_empty() {
            let _ = writeln!(
                out,
                "waypoints (requests since they started, by service, status and response flag):"
            );
            for w in waypoints {
                let _ = writeln!(out, "  {}", w.line());
            }
        }
        let seen = identities_seen(dumps);
        if !seen.is_empty() {
            let _ = writeln!(
                out,
                "identities seen by servers (as their ztunnel verified them):"
            );
            for (server, ids) in seen {
                let _ = writeln!(
                    out,
                    "  {server:<22} <- {}",
                    ids.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
        out
    }
}

#[path = "summary_checks.rs"]
mod checks;

/// The mesh's client pods: those without a sample app, which call every service.
pub fn clients(mesh: &LocalMesh) -> impl Iterator<Item = &TopologyPod> {
    mesh.file().topology.pods.iter().filter(|p| p.app.is_none())
}

/// Server pod -> the SPIFFE IDs its ztunnel accepted tunnels from.
fn identities_seen(dumps: &[ConfigDump]) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dump in dumps {
        for conn in &dump.connections {
            if conn.direction == Direction::Inbound
                && conn.error.is_none()
                && let Some(id) = &conn.source_identity
            {
                let pod = conn.pod.rsplit('/').next().unwrap_or(&conn.pod).to_string();
                seen.entry(pod).or_default().insert(id.clone());
            }
        }
    }
    seen
}

/// `ok` of `all` as a percentage, or "-" when there was nothing to count.
fn percent(ok: u64, all: u64) -> String {
    if all == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * ok as f64 / all as f64)
    }
}
