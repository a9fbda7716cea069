//! The on-demand bench's figures against issue 18's targets: one screen per size, and JSON.

use std::time::Duration;

use ambit_benches::Samples;
use serde_json::json;

use super::change::ChangeFigures;

const TARGET_SHARE: f64 = 0.05;
const TARGET_LOOKUP: Duration = Duration::from_millis(1);
const TARGET_HEAP_PER_SUBSCRIPTION: f64 = 1024.0 * 1024.0;
const TARGET_CONTROLLER_HEAP_1M: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;

/// One change end-to-end: 0.1 s up to 50k workloads, 1 s at a million (the targets).
fn change_target(workloads: usize) -> Duration {
    if workloads <= 50_000 {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    }
}

#[derive(Default)]
pub struct Figures {
    pub workloads: usize,
    pub nodes: usize,
    /// Entries and encoded bytes of every workload, service, waypoint and policy.
    pub full: (usize, usize),
    pub all_mode: Vec<(usize, usize)>,
    pub up_front: Vec<(usize, usize)>,
    pub after: Vec<(usize, usize)>,
    pub lookups: usize,
    pub cold: Samples,
    pub warm: Samples,
    pub model_build: Duration,
    /// The controller's start, its first snapshot most of it.
    pub snapshot_build: Duration,
    pub model_heap: isize,
    /// Every ztunnel subscribing and playing its traffic, one after another.
    pub subscribe_wall: Duration,
    pub subscribe_cpu: f64,
    /// Controller heap growth over that phase, per subscription.
    pub heap_per_subscription: f64,
    /// Everything the controller holds after the traffic: model, snapshot, sessions.
    pub controller_heap: isize,
    pub controller_peak: isize,
    pub vm_hwm: u64,
    pub changes: Vec<ChangeFigures>,
}

fn mean(v: &[(usize, usize)]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    (
        v.iter().map(|x| x.0 as f64).sum::<f64>() / n,
        v.iter().map(|x| x.1 as f64).sum::<f64>() / n,
    )
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Figures {
    fn share(&self, v: &[(usize, usize)]) -> (f64, f64) {
        let (n, b) = mean(v);
        (n / self.full.0 as f64, b / self.full.1 as f64)
    }

    pub fn print(&mut self) {
        println!(
            "\n== {} workloads on {} nodes, {} on-demand ztunnels ==",
            self.workloads,
            self.nodes,
            self.up_front.len()
        );
        println!(
            "full set: {} entries, {:.1} MiB; model build {:.0} ms, first snapshot {:.0} ms",
            self.full.0,
            mib(self.full.1 as f64),
            ms(self.model_build),
            ms(self.snapshot_build)
        );
        for (what, v) in [
            ("--destinations all", &self.all_mode),
            ("on demand, up front", &self.up_front),
            ("on demand, after traffic", &self.after),
        ] {
            let (n, b) = mean(v);
            let (sn, sb) = self.share(v);
            println!(
                "{what:<28} {n:>9.0} entries ({sn:.4} of the full set), {:>7.3} MiB ({sb:.4})",
                mib(b)
            );
        }
        println!("target after traffic: <= {TARGET_SHARE} of the full set");
        println!(
            "first connection's lookup ({} lookups): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target <= {:?}); later connections: p50 {:.4} ms",
            self.lookups,
            self.cold.quantile(0.5) as f64 / 1e3,
            self.cold.quantile(0.99) as f64 / 1e3,
            self.cold.quantile(1.0) as f64 / 1e3,
            TARGET_LOOKUP,
            self.warm.quantile(0.5) as f64 / 1e3,
        );
        println!(
            "controller heap per subscription: {:.3} MiB (target <= {:.0} MiB)",
            mib(self.heap_per_subscription),
            mib(TARGET_HEAP_PER_SUBSCRIPTION)
        );
        println!(
            "controller heap: {:.0} MiB (model {:.0}); peak {:.0} MiB; process VmHWM {:.0} MiB (target at 1M <= {:.0} MiB)",
            mib(self.controller_heap as f64),
            mib(self.model_heap as f64),
            mib(self.controller_peak as f64),
            mib(self.vm_hwm as f64),
            mib(TARGET_CONTROLLER_HEAP_1M)
        );
        println!(
            "subscribe + traffic: {:.1} s wall, controller CPU {:.1} s",
            self.subscribe_wall.as_secs_f64(),
            self.subscribe_cpu
        );
        let target = change_target(self.workloads);
        println!(
            "{:<20} {:>8} {:>9} {:>9} {:>12} {:>9} {:>11} {:>6}",
            "change",
            "affected",
            "apply ms",
            "snap ms",
            "propagate ms",
            "CPU s",
            "end-to-end",
            "stray"
        );
        for c in &self.changes {
            println!(
                "{:<20} {:>8} {:>9.2} {:>9.1} {:>12.1} {:>9.3} {:>8.1} ms {:>6}",
                c.name,
                c.affected,
                ms(c.apply),
                ms(c.snapshot),
                ms(c.propagation),
                c.cpu,
                ms(c.end_to_end()),
                c.stray_updates
            );
        }
        println!(
            "target end-to-end: <= {target:?}; stray: updates to ztunnels beyond one per affected one"
        );
    }

    pub fn json(&mut self) -> serde_json::Value {
        let changes: Vec<_> = self
            .changes
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "affected": c.affected,
                    "apply_ms": ms(c.apply),
                    "snapshot_ms": ms(c.snapshot),
                    "propagation_ms": ms(c.propagation),
                    "controller_cpu_s": c.cpu,
                    "end_to_end_ms": ms(c.end_to_end()),
                    "stray_updates": c.stray_updates,
                })
            })
            .collect();
        json!({
            "workloads": self.workloads,
            "nodes": self.nodes,
            "on_demand_ztunnels": self.up_front.len(),
            "full_entries": self.full.0,
            "full_bytes": self.full.1,
            "all_mode_share_entries": self.share(&self.all_mode).0,
            "all_mode_share_bytes": self.share(&self.all_mode).1,
            "up_front_share_entries": self.share(&self.up_front).0,
            "up_front_share_bytes": self.share(&self.up_front).1,
            "after_traffic_share_entries": self.share(&self.after).0,
            "after_traffic_share_bytes": self.share(&self.after).1,
            "after_traffic_entries_per_ztunnel": mean(&self.after).0,
            "after_traffic_bytes_per_ztunnel": mean(&self.after).1,
            "lookups": self.lookups,
            "lookup_p50_ms": self.cold.quantile(0.5) as f64 / 1e3,
            "lookup_p99_ms": self.cold.quantile(0.99) as f64 / 1e3,
            "lookup_max_ms": self.cold.quantile(1.0) as f64 / 1e3,
            "later_connection_p50_ms": self.warm.quantile(0.5) as f64 / 1e3,
            "model_build_ms": ms(self.model_build),
            "first_snapshot_ms": ms(self.snapshot_build),
            "model_heap_bytes": self.model_heap,
            "controller_heap_per_subscription_bytes": self.heap_per_subscription,
            "controller_heap_bytes": self.controller_heap,
            "controller_peak_heap_bytes": self.controller_peak,
            "process_vm_hwm_bytes": self.vm_hwm,
            "subscribe_wall_s": self.subscribe_wall.as_secs_f64(),
            "subscribe_controller_cpu_s": self.subscribe_cpu,
            "changes": changes,
        })
    }
}
