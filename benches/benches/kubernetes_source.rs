//! The Kubernetes source's share of a change (issue 18, part 3): the controller bench's mesh
//! as the API server would hold it (Namespaces, Pods, Services with their EndpointSlices,
//! AuthorizationPolicies, waypoint Gateways and pods), and the controller bench's four
//! changes made to it as the cluster would make them (a pod's change comes with its
//! service's slice written again). For each, the time from the watches' note of what changed
//! to the next model, two ways in one run:
//!
//! - **in place**: the source converts the objects the change names and applies what differs
//!   to the model in force (`Updater::next` with the change), each change `--repeat` times;
//! - **whole**: then, the same source told that everything changed, as after a watch's
//!   relist: it converts the whole cluster again and compares it with what it holds (before
//!   in-place updates, every change took this path, plus the edits it found). It must find
//!   nothing left to change: the check that the models made in place are the cluster's (the
//!   unit tests check each change against a full build). Timed after all the changes: its
//!   freeing of a whole conversion leaves glibc's allocator a backlog the next changes would
//!   pay for (a policy edit at 1M pods took 0.1 s just after one, 0.3–0.6 ms otherwise).
//!
//! One thread; wall time, so run it on a quiet machine and read the ratio.
//!
//! `cargo bench -p ambit-benches --bench kubernetes_source [-- --sizes 50000,1000000 --cluster-nodes 1000 --repeat 5 --json]`

#[path = "kubernetes_source/cluster.rs"]
mod cluster;
#[path = "controller/mesh.rs"]
#[allow(dead_code)]
mod mesh;

use std::time::{Duration, Instant};

use ambit_benches::{Args, median};
use ambit_controller::source::kubernetes::{Changed, Options, Updater};
use anyhow::Context;
use serde_json::json;

use cluster::Cluster;
use mesh::{Change, Spec};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn run(size: usize, cluster_nodes: usize, repeat: usize) -> anyhow::Result<serde_json::Value> {
    let mut spec = Spec::generate_on(size, cluster_nodes);
    let mut cluster = Cluster::of(&spec);
    let options = Options::default();
    let mut updater = Updater::new(&options);
    let (model, first) = timed(|| updater.first(&cluster));
    let mut model = model?;
    println!(
        "kubernetes_source {size} pods on {cluster_nodes} nodes: first model (all converted, built) {:.0} ms; {} workloads",
        ms(first),
        model.counts().workloads
    );
    let mut in_place = Vec::new();
    for change in Change::ALL {
        let mut times = Vec::new();
        // Each round makes the change again (a pod moves again, the policy gains another
        // principal), so every round is a real change.
        for _ in 0..repeat {
            let edit = spec.apply(change);
            let changed = cluster.change(&edit);
            let (applied, t) = timed(|| updater.next(&changed, &cluster, &model));
            let applied = applied?.context("the change made no new model")?;
            anyhow::ensure!(
                applied.changes_since(&model).is_some(),
                "{}: not made in place",
                change.name()
            );
            model = applied;
            times.push(ms(t));
        }
        in_place.push((change, median(times)));
    }
    let mut wholes = Vec::new();
    for _ in 0..repeat {
        let everything = Changed::everything();
        let (rebuilt, t) = timed(|| updater.next(&everything, &cluster, &model));
        anyhow::ensure!(
            rebuilt?.is_none(),
            "converted whole, the cluster makes another model than the one made in place"
        );
        wholes.push(ms(t));
    }
    let whole = median(wholes);
    let mut changes = Vec::new();
    for (change, fast) in in_place {
        println!(
            "  {:<28} in place {fast:>8.3} ms   whole {whole:>8.1} ms   in place / whole {:.5}",
            change.describe(),
            fast / whole
        );
        changes.push(json!({"change": change.name(), "in_place_ms": fast}));
    }
    Ok(json!({
        "pods": size,
        "nodes": cluster_nodes,
        "first_model_ms": ms(first),
        "whole_ms": whole,
        "changes": changes,
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let sizes = args.sizes(&[50_000])?;
    let cluster_nodes: usize = args.value("--cluster-nodes", 1000).max(10);
    let repeat: usize = args.value("--repeat", 5).max(1);
    let mut results = Vec::new();
    for size in sizes {
        results.push(run(size, cluster_nodes, repeat)?);
    }
    if args.flag("--json") {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
