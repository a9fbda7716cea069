//! The controller at scale: for meshes of 1k, 10k and 50k workloads on 100 nodes, the time and
//! heap to build the model and its snapshot, the initial push to 100 ztunnel subscribers over
//! real gRPC on loopback and the bytes each receives against the full set, and then how long a
//! single change takes to reach every ztunnel it affects (and only those), against the design's
//! 1 s target.
//!
//! There is no "direct" path to divide by: times are absolute (from whatever machine runs it),
//! sizes are compared with sending every proxy everything.
//!
//! The port is the controller's own (`grpc::serve`: TLS, the controller's identity, bootstrap
//! tokens checked on every subscription), so the figures include what a real push costs.
//!
//! `cargo bench -p ambit-benches --bench controller [-- --sizes 1000,10000 --json]`

// A bench's root file finds modules beside it, not in a directory named after it.
#[path = "controller/fleet.rs"]
mod fleet;
#[path = "controller/mesh.rs"]
mod mesh;
#[path = "controller/report.rs"]
mod report;
#[path = "controller/run.rs"]
mod run;

use ambit_benches::Args;
use ambit_benches::alloc::Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

struct Options {
    sizes: Vec<usize>,
    json: bool,
}

fn options() -> anyhow::Result<Options> {
    let args = Args::from_env();
    let sizes = args.sizes(&[1_000, 10_000, 50_000])?;
    if let Some(small) = sizes.iter().find(|&&s| s < 500) {
        anyhow::bail!("--sizes: {small} is too small; the mesh needs 500 workloads or more");
    }
    Ok(Options {
        sizes,
        json: args.flag("--json"),
    })
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    let mut results = Vec::new();
    for &size in &options.sizes {
        let figures = run::size(size)?;
        figures.print();
        results.push(figures.json());
    }
    if options.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
