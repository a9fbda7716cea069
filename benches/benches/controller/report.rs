//! The figures of one mesh size, printed as a table or as JSON.

use std::time::Duration;

use serde_json::{Value, json};

/// The design's target for one change reaching every affected ztunnel: 0.1 s up to 50k
/// workloads, 1 s at 1M (issue 18).
pub fn target(workloads: usize) -> Duration {
    if workloads <= 50_000 {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    }
}
/// tonic's default decoding limit, which ztunnel's discovery client and the controller's
/// discovery server both keep.
/// What the discovery server accepts in one request (`DiscoveryService::into_server`).
pub const SERVER_DECODE_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub struct Figures {
    pub workloads: usize,
    pub namespaces: usize,
    pub services: usize,
    pub policies: usize,
    pub waypoints: usize,
    pub nodes: usize,
    pub model_build: Duration,
    pub snapshot_build: Duration,
    /// `desired_for` of every ztunnel, all together.
    pub scopes: Duration,
    pub initial_push: Duration,
    pub initial_push_p50: Duration,
    /// CPU seconds the controller's threads spent on the initial push.
    pub initial_push_cpu: f64,
    pub bytes_mean: f64,
    pub bytes_max: usize,
    /// The smallest initial config: a node without meshed pods.
    pub bytes_min: usize,
    pub full_set_bytes: usize,
    /// Whether a subscriber with ztunnel's client limits could read its first response.
    pub default_client: Option<Result<usize, String>>,
    /// `known_versions` of the largest scope, as a reconnecting ztunnel sends it.
    pub resume_request_bytes: usize,
    pub model_heap: isize,
    pub snapshot_heap: isize,
    /// Controller heap added by 100 subscriptions once their initial push is done.
    pub sessions_heap: isize,
    /// Highest controller heap during the initial push, above what it held before.
    pub push_peak_heap: isize,
    pub vm_hwm: u64,
    pub changes: Vec<ChangeFigures>,
}

pub struct ChangeFigures {
    pub name: &'static str,
    pub describe: &'static str,
    /// The changed object applied to the model in place ([`MeshModel::apply`]), as the
    /// Kubernetes source does for one object's event.
    ///
    /// [`MeshModel::apply`]: ambit_controller::model::MeshModel::apply
    pub rebuild: Duration,
    /// The new snapshot, as the publisher builds it.
    pub snapshot: Duration,
    pub affected: usize,
    /// Publish of the model to the last affected ztunnel holding its delta.
    pub propagation: Duration,
    /// CPU seconds the controller's threads spent from the publish to the last affected delta.
    pub push_cpu: f64,
    pub delta_bytes_mean: f64,
    pub delta_bytes_max: usize,
    /// Affected ztunnels whose delta was not exactly what their scope changed by.
    pub wrong: Vec<String>,
    /// Ztunnels outside the change that were sent something anyway.
    pub unaffected_pushed: usize,
}

impl ChangeFigures {
    /// What a source would see from a change to every affected proxy holding it: the model
    /// update plus the push (the Kubernetes source's 100 ms debounce comes on top).
    pub fn end_to_end(&self) -> Duration {
        self.rebuild + self.propagation
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn kib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", bytes / 1024.0 / 1024.0)
    } else if bytes >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

impl Figures {
    fn per_workload(&self, bytes: isize) -> f64 {
        bytes as f64 / self.workloads as f64
    }

    pub fn print(&self) {
        let w = self.workloads;
        println!(
            "\n== controller: {w} workloads, {} namespaces, {} services, {} policies, {} waypoints, {} nodes (shared 2-core machine) ==",
            self.namespaces, self.services, self.policies, self.waypoints, self.nodes
        );
        let line = |what: &str, value: String| println!("  {what:<52} {value}");
        line(
            "model build (MeshBuilder::build)",
            format!("{:.1} ms", ms(self.model_build)),
        );
        line(
            "snapshot (Snapshot::build, no previous)",
            format!("{:.1} ms", ms(self.snapshot_build)),
        );
        line(
            "per-proxy scopes (desired_for, 100 ztunnels)",
            format!(
                "{:.2} ms total, {:.1} µs each",
                ms(self.scopes),
                ms(self.scopes) * 10.0
            ),
        );
        line(
            "initial push: subscribe -> all 100 hold config",
            format!(
                "{:.0} ms (p50 {:.0} ms), controller CPU {:.2} s",
                ms(self.initial_push),
                ms(self.initial_push_p50),
                self.initial_push_cpu
            ),
        );
        line(
            "initial bytes per ztunnel: mean / max / min",
            format!(
                "{} / {} / {}",
                kib(self.bytes_mean),
                kib(self.bytes_max as f64),
                kib(self.bytes_min as f64)
            ),
        );
        line(
            "full set (every workload, service, waypoint, policy)",
            kib(self.full_set_bytes as f64),
        );
        line(
            "scoped / full set: mean, max",
            format!(
                "{:.3}, {:.3}",
                self.bytes_mean / self.full_set_bytes as f64,
                self.bytes_max as f64 / self.full_set_bytes as f64
            ),
        );
        let probe = match &self.default_client {
            Some(Ok(n)) => format!("received ({})", kib(*n as f64)),
            Some(Err(e)) => format!("REFUSED: {e}"),
            None => "not tried".into(),
        };
        line("ztunnel's client (its message and response limits)", probe);
        let resume = self.resume_request_bytes;
        line(
            "resume request (known_versions, largest scope)",
            format!(
                "{} ({} the server's 64 MiB limit)",
                kib(resume as f64),
                if resume > SERVER_DECODE_LIMIT {
                    "OVER"
                } else {
                    "under"
                }
            ),
        );
        line(
            "heap: model / snapshot / 100 sessions, per workload",
            format!(
                "{:.0} B / {:.0} B / {:.0} B",
                self.per_workload(self.model_heap),
                self.per_workload(self.snapshot_heap),
                self.per_workload(self.sessions_heap)
            ),
        );
        line(
            "heap: model / snapshot / 100 sessions / push peak",
            format!(
                "{} / {} / {} / +{}",
                kib(self.model_heap as f64),
                kib(self.snapshot_heap as f64),
                kib(self.sessions_heap as f64),
                kib(self.push_peak_heap as f64)
            ),
        );
        line(
            "process VmHWM so far (incl. clients)",
            kib(self.vm_hwm as f64),
        );
        println!(
            "  {:<28} {:>8} {:>9} {:>9} {:>11} {:>9} {:>11} {:>19} {:>8}  check",
            "change",
            "affected",
            "apply",
            "snapshot",
            "push",
            "push CPU",
            "end-to-end",
            "delta mean / max",
            "vs target"
        );
        for c in &self.changes {
            let check = if c.wrong.is_empty() && c.unaffected_pushed == 0 {
                "exact deltas, others quiet".to_string()
            } else {
                format!(
                    "{} wrong deltas {:?}, {} unaffected pushed",
                    c.wrong.len(),
                    c.wrong.iter().take(3).collect::<Vec<_>>(),
                    c.unaffected_pushed
                )
            };
            println!(
                "  {:<28} {:>8} {:>7.1}ms {:>7.1}ms {:>9.1}ms {:>8.2}s {:>9.1}ms {:>19} {:>8.2}  {check}",
                c.describe,
                c.affected,
                ms(c.rebuild),
                ms(c.snapshot),
                ms(c.propagation),
                c.push_cpu,
                ms(c.end_to_end()),
                format!(
                    "{} / {}",
                    kib(c.delta_bytes_mean),
                    kib(c.delta_bytes_max as f64)
                ),
                c.end_to_end().as_secs_f64() / target(self.workloads).as_secs_f64(),
            );
        }
    }

    pub fn json(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|c| {
                json!({
                    "change": c.name,
                    "affected_ztunnels": c.affected,
                    "rebuild_ms": ms(c.rebuild),
                    "snapshot_ms": ms(c.snapshot),
                    "propagation_ms": ms(c.propagation),
                    "push_cpu_seconds": c.push_cpu,
                    "end_to_end_ms": ms(c.end_to_end()),
                    "end_to_end_vs_target": c.end_to_end().as_secs_f64() / target(self.workloads).as_secs_f64(),
                    "delta_bytes_mean": c.delta_bytes_mean,
                    "delta_bytes_max": c.delta_bytes_max,
                    "wrong_deltas": c.wrong,
                    "unaffected_pushed": c.unaffected_pushed,
                })
            })
            .collect();
        json!({
            "workloads": self.workloads,
            "namespaces": self.namespaces,
            "services": self.services,
            "policies": self.policies,
            "waypoints": self.waypoints,
            "nodes": self.nodes,
            "model_build_ms": ms(self.model_build),
            "snapshot_build_ms": ms(self.snapshot_build),
            "scopes_ms": ms(self.scopes),
            "initial_push_ms": ms(self.initial_push),
            "initial_push_p50_ms": ms(self.initial_push_p50),
            "initial_push_cpu_seconds": self.initial_push_cpu,
            "bytes_per_ztunnel_mean": self.bytes_mean,
            "bytes_per_ztunnel_max": self.bytes_max,
            "bytes_per_ztunnel_min": self.bytes_min,
            "full_set_bytes": self.full_set_bytes,
            "scoped_vs_full_mean": self.bytes_mean / self.full_set_bytes as f64,
            "scoped_vs_full_max": self.bytes_max as f64 / self.full_set_bytes as f64,
            "default_limit_client": match &self.default_client {
                Some(Ok(n)) => json!({"received_bytes": n}),
                Some(Err(e)) => json!({"refused": e}),
                None => Value::Null,
            },
            "resume_request_bytes": self.resume_request_bytes,
            "heap_model_per_workload": self.per_workload(self.model_heap),
            "heap_snapshot_per_workload": self.per_workload(self.snapshot_heap),
            "heap_sessions_per_workload": self.per_workload(self.sessions_heap),
            "heap_push_peak_bytes": self.push_peak_heap,
            "vm_hwm_bytes": self.vm_hwm,
            "changes": changes,
        })
    }
}
