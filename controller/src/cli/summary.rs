//! What `ambit up` prints: per client and service, how requests fared (from the clients' own
//! reports) and how the mesh carried them (from each node's ztunnel), then the checks that
//! say the mesh did its job: HBONE across nodes, passthrough out of the mesh, and policy
//! refusals seen as refusals.
//!
//! The live table's rate and success are those of the window since the previous table, so an
//! outage shows at once; the totals since the start stand beside them (a running total alone
//! still read 99% while most new calls failed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use ambit_ztunnel::admin::ConfigDump;
use ambit_ztunnel::connections::Direction;

use crate::local::LocalMesh;
use crate::local::apps::DriveReport;
use crate::model::AppProtocol;
use crate::source::file::TopologyPod;

/// One client calling one service port.
#[derive(Debug, Clone)]
pub struct Flow {
    pub client: String,
    pub client_uid: String,
    pub client_node: String,
    pub service: String,
    pub target: String,
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
    /// first IPv4 VIP.
    pub fn plan(mesh: &LocalMesh) -> Self {
        let model = &mesh.file().model;
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
            for port in svc
                .ports
                .iter()
                .filter(|p| p.app_protocol == AppProtocol::Http)
            {
                for client in &clients {
                    let uid = model
                        .workloads()
                        .find(|w| w.pod.name == client.name && w.pod.namespace == client.namespace)
                        .map(|w| w.uid.clone())
                        .unwrap_or_default();
                    flows.push(Flow {
                        client: client.name.clone(),
                        client_uid: uid,
                        client_node: client.node.clone(),
                        service: key.clone(),
                        target: format!("http://{vip}:{}/", port.port),
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

    /// How the mesh carried a flow, in words.
    fn how(&self, flow: &Flow, dumps: &[ConfigDump]) -> String {
        let carried = self.carried(flow, dumps);
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
            let servers: Vec<String> = flow
                .answered_by
                .keys()
                .map(|s| {
                    let node = self.pod_nodes.get(s).map(String::as_str).unwrap_or("?");
                    format!("{s}@{node}")
                })
                .collect();
            format!(
                "HBONE (mTLS) from {} to {}",
                flow.client_node,
                servers.join(", ")
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
    pub fn render(&self, dumps: &[ConfigDump], window: Option<f64>) -> String {
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
                    "{:<16} {:<16} {:>8} {:>7} {:>8} {:>8} {:>8} {:>10}  HOW",
                    "CLIENT", "SERVICE", "REQ/S", "OK %", "P50 ms", "P99 ms", "TOTAL", "TOTAL OK %"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<16} {:<16} {:>8} {:>7} {:>8} {:>8}  HOW",
                    "CLIENT", "SERVICE", "REQUESTS", "OK %", "P50 ms", "P99 ms"
                );
            }
        }
        for flow in &self.flows {
            let total = flow.ok + flow.failed;
            let how = self.how(flow, dumps);
            match window {
                Some(secs) => {
                    let in_window = flow.window_ok + flow.window_failed;
                    let _ = writeln!(
                        out,
                        "{:<16} {:<16} {:>8.1} {:>7} {:>8.2} {:>8.2} {:>8} {:>10}  {}",
                        flow.client,
                        flow.service,
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
                        "{:<16} {:<16} {:>8} {:>7} {:>8.2} {:>8.2}  {}",
                        flow.client,
                        flow.service,
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

    /// The checks of the final summary: each line says what was seen, or what was not.
    pub fn checks(&self, dumps: &[ConfigDump]) -> Vec<(bool, String)> {
        let mut checks = Vec::new();
        let cross = self.flows.iter().find_map(|f| {
            let carried = self.carried(f, dumps);
            if carried.hbone == 0 {
                return None;
            }
            f.answered_by.keys().find_map(|server| {
                let node = self.pod_nodes.get(server)?;
                (node != &f.client_node)
                    .then(|| format!("{} ({}) -> {server} ({node})", f.client, f.client_node))
            })
        });
        checks.push(match cross {
            Some(how) => (true, format!("traffic crossed nodes over HBONE: {how}")),
            None => (false, "no traffic crossed nodes over HBONE".into()),
        });
        if !self.unmeshed_services.is_empty() {
            let pass = self.flows.iter().find(|f| {
                self.unmeshed_services.contains(&f.service)
                    && f.ok > 0
                    && self.carried(f, dumps).tcp > 0
            });
            checks.push(match pass {
                Some(f) => (
                    true,
                    format!(
                        "passthrough reached {}: {} -> {} over plain TCP",
                        f.service, f.client, f.service
                    ),
                ),
                None => (
                    false,
                    "no passthrough reached a service outside the mesh".into(),
                ),
            });
        }
        let refused: Vec<String> = self
            .flows
            .iter()
            .filter(|f| f.ok == 0 && f.failed > 0)
            .filter_map(|f| {
                let carried = self.carried(f, dumps);
                (!carried.refusals.is_empty()).then(|| {
                    format!(
                        "{} -> {} ({} requests, policy {})",
                        f.client,
                        f.service,
                        f.failed,
                        carried.refusals.into_iter().collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect();
        if !refused.is_empty() {
            checks.push((true, format!("refused by policy: {}", refused.join("; "))));
        }
        checks
    }
}

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
