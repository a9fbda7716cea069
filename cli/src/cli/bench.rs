//! `ambit bench`: the same keep-alive HTTP load from a meshed client pod to one server pod,
//! directly (a port that bypasses capture) and through the mesh (HBONE between the two
//! ztunnels), interleaved in one run, with the ratios.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::BenchArgs;
use crate::local::apps::LoadResult;
use crate::local::{BENCH_DIRECT_PORT, BENCH_MESH_PORT, Binaries, PodState, RunState, load};

#[derive(Debug, Serialize)]
struct BenchReport {
    client: String,
    server: String,
    connections: usize,
    seconds_per_round: u64,
    rounds: usize,
    direct: LoadResult,
    mesh: LoadResult,
    /// mesh / direct.
    ratio_rps: f64,
    /// Milliseconds the mesh adds at each percentile.
    added_p50_ms: f64,
    added_p90_ms: f64,
    added_p99_ms: f64,
}

fn pick(state: &RunState) -> anyhow::Result<(&PodState, &PodState)> {
    let client = state
        .pods
        .iter()
        .find(|p| p.meshed && !p.server)
        .context("the running mesh has no meshed client pod (a meshed pod without an app)")?;
    // A server on another node, so the mesh path crosses both ztunnels.
    let server = state
        .pods
        .iter()
        .filter(|p| p.meshed && p.server)
        .max_by_key(|p| p.node != client.node)
        .context("the running mesh has no meshed server pod (a meshed pod with an app)")?;
    Ok((client, server))
}

fn netns(pod: &PodState) -> ambit_testbed::Netns {
    ambit_testbed::Netns::existing(&pod.netns)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let state = RunState::load_current()?;
    let binaries = Binaries::locate()?;
    let (client, server) = pick(&state)?;
    let _server_app = netns(server).spawn(
        Command::new(&binaries.ambit)
            .args(["app", "serve", "--kind", "http-echo"])
            .args(["--port", &BENCH_MESH_PORT.to_string()])
            .args(["--port", &BENCH_DIRECT_PORT.to_string()])
            .args(["--name", &server.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client_netns = netns(client);
    let load = |port: u16| -> anyhow::Result<LoadResult> {
        Ok(load::http_load(
            &binaries.ambit,
            &client_netns,
            &format!("http://{}:{port}/", server.ipv4),
            args.connections,
            Duration::from_secs(args.seconds),
            None,
        )?)
    };
    let mut direct = Vec::new();
    let mut mesh = Vec::new();
    for round in 0..args.rounds.max(1) {
        // Alternate the order so drift on a shared machine hits both paths alike.
        for via_mesh in [round % 2 == 1, round % 2 == 0] {
            if via_mesh {
                mesh.push(load(BENCH_MESH_PORT)?);
            } else {
                direct.push(load(BENCH_DIRECT_PORT)?);
            }
        }
    }
    let direct = median(direct);
    let mesh = median(mesh);
    anyhow::ensure!(
        direct.requests > 0 && mesh.requests > 0,
        "no request succeeded (direct {} errors, mesh {} errors)",
        direct.errors,
        mesh.errors
    );
    let report = BenchReport {
        client: format!("{}/{} ({})", client.namespace, client.name, client.node),
        server: format!("{}/{} ({})", server.namespace, server.name, server.node),
        connections: args.connections,
        seconds_per_round: args.seconds,
        rounds: args.rounds,
        ratio_rps: mesh.rps / direct.rps,
        added_p50_ms: mesh.p50_ms - direct.p50_ms,
        added_p90_ms: mesh.p90_ms - direct.p90_ms,
        added_p99_ms: mesh.p99_ms - direct.p99_ms,
        direct,
        mesh,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} -> {}, {} connections, {} rounds of {}s (medians)",
            report.client,
            report.server,
            report.connections,
            report.rounds,
            report.seconds_per_round
        );
        println!(
            "{:<8} {:>10} {:>9} {:>9} {:>9}",
            "PATH", "REQ/S", "P50 ms", "P90 ms", "P99 ms"
        );
        for (name, r) in [("direct", &report.direct), ("mesh", &report.mesh)] {
            println!(
                "{name:<8} {:>10.0} {:>9.3} {:>9.3} {:>9.3}",
                r.rps, r.p50_ms, r.p90_ms, r.p99_ms
            );
        }
        println!(
            "mesh/direct req/s {:.2}; added latency p50 {:+.3} ms, p90 {:+.3} ms, p99 {:+.3} ms",
            report.ratio_rps, report.added_p50_ms, report.added_p90_ms, report.added_p99_ms
        );
    }
    Ok(())
}

/// The round with the median request rate.
fn median(mut rounds: Vec<LoadResult>) -> LoadResult {
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    rounds.swap_remove(rounds.len() / 2)
}
