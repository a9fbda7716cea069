//! `ambit up` and `ambit down`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_discovery::dump::ztunnel::ConfigDump;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::UpArgs;
use super::summary::{self, Summary};
use super::waypoints::views;
use crate::local::apps::{DriveReport, fetch};
use crate::local::{Binaries, Event, LocalMesh, Options, RunState};

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // A broken mesh file is refused before anything is created.
    LocalMesh::check(args.file.as_deref())?;
    let started = Instant::now();
    // Progress must never abort a run that is tearing down (a closed terminal or pipe).
    let progress = |step: &str| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "[{:>5.1}s] {step}",
            started.elapsed().as_secs_f64()
        );
    };
    let binaries = Binaries::locate()?;
    let work_dir = PathBuf::from(format!("/run/ambit/up-{}", std::process::id()));
    let mut mesh = LocalMesh::up(
        Options {
            mesh_file: args.file.clone(),
            work_dir: work_dir.clone(),
            binaries: binaries.clone(),
            start_apps: true,
            record_current: true,
            ztunnel_workers: None,
            ztunnel_flags: Vec::new(),
            observe: args.observe,
            remove_work_dir: false,
        },
        &progress,
    )
    .await?;
    let run = mesh.state().testbed_run.clone();
    let events = mesh.take_events().expect("nobody took the events before");
    let outcome = drive(&mesh, events, &binaries, &args, &progress).await;
    progress(
        "stopping: draining waypoints and ztunnels, removing namespaces, links, rules and processes",
    );
    mesh.down()?;
    let left: Vec<String> = ambit_testbed::leftovers()?
        .into_iter()
        .filter(|l| l.run() == Some(run.as_str()))
        .map(|l| l.name().to_string())
        .collect();
    if !left.is_empty() {
        anyhow::bail!(
            "these were left behind: {}; `ambit down` removes them",
            left.join(", ")
        );
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    progress("removed everything it made");
    outcome
}

async fn drive(
    mesh: &LocalMesh,
    mut events: mpsc::UnboundedReceiver<Event>,
    binaries: &Binaries,
    args: &UpArgs,
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let mut summary = Summary::plan(mesh);
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, DriveReport)>();
    let run_for = args
        .duration
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut drivers = Vec::new();
    let clients: Vec<_> = summary::clients(mesh).cloned().collect();
    for client in clients {
        let targets = summary.targets(&client.name);
        if targets.is_empty() {
            continue;
        }
        let mut cmd = Command::new(&binaries.ambit);
        cmd.args(["app", "drive", "--rate", &args.rate.to_string()])
            .args(["--duration", &format!("{}s", run_for.as_secs())])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for t in &targets {
            cmd.args(["--target", t]);
        }
        let mut child = mesh
            .pod(&client.namespace, &client.name)?
            .netns()
            .spawn(&mut cmd)?;
        let stdout = child.take_stdout().expect("piped");
        let tx = tx.clone();
        let name = client.name.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(report) = serde_json::from_str::<DriveReport>(&line)
                    && tx.send((name.clone(), report)).is_err()
                {
                    break;
                }
            }
        });
        drivers.push(child);
    }
    drop(tx);
    progress(&format!(
        "traffic flowing: {} clients -> {} service ports; summary every {:?}{}",
        drivers.len(),
        summary.flows.len(),
        args.every,
        match args.duration {
            Some(d) => format!(", stopping after {d:?}"),
            None => ", Ctrl-C to stop".into(),
        }
    ));
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let end = tokio::time::sleep(run_for);
    tokio::pin!(end);
    let mut ticker = tokio::time::interval(args.every);
    ticker.tick().await;
    let mut window_start = Instant::now();
    loop {
        tokio::select! {
            Some((client, report)) = rx.recv() => summary.record(&client, &report),
            // The supervisor's news (a crashed process, its restart) goes with the progress.
            Some(event) = events.recv() => progress(&event.text),
            _ = ticker.tick() => {
                let state = mesh.state();
                let dumps = config_dumps(&state).await;
                let waypoints = views(&state.waypoints).await;
                let window = window_start.elapsed().as_secs_f64();
                println!("\n{}", summary.render(&dumps, &waypoints, Some(window)));
                summary.next_window();
                window_start = Instant::now();
            }
            _ = &mut end => break,
            _ = interrupt.recv() => { progress("interrupted"); break }
            _ = terminate.recv() => { progress("terminated"); break }
        }
    }
    while let Ok((client, report)) = rx.try_recv() {
        summary.record(&client, &report);
    }
    drop(drivers);
    while let Ok(event) = events.try_recv() {
        progress(&event.text);
    }
    let state = mesh.state();
    let dumps = config_dumps(&state).await;
    let waypoints = views(&state.waypoints).await;
    println!(
        "\n== final summary\n{}",
        summary.render(&dumps, &waypoints, None)
    );
    println!("checks:");
    for (ok, line) in summary.checks(&dumps, &waypoints) {
        println!("  [{}] {line}", if ok { "ok" } else { "--" });
    }
    Ok(())
}

/// Every node's config dump; a node that does not answer is left out.
pub async fn config_dumps(state: &RunState) -> Vec<ConfigDump> {
    let mut dumps = Vec::new();
    for node in &state.nodes {
        if let Ok((200, body)) = fetch(&format!("http://{}/config_dump", node.admin)).await
            && let Ok(dump) = serde_json::from_str(&body)
        {
            dumps.push(dump);
        }
    }
    dumps
}

/// `ambit down`: removes what crashed runs left, and any mesh processes they started.
pub fn down() -> anyhow::Result<()> {
    if let Ok(state) = RunState::load_current() {
        for pid in &state.pids {
            let pid = nix::unistd::Pid::from_raw(*pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&state.work_dir);
        let _ = std::fs::remove_file(crate::local::CURRENT_RUN);
    }
    let report = ambit_testbed::cleanup_leftovers()?;
    for leftover in &report.removed {
        println!("removed {}", leftover.name());
    }
    for pid in &report.killed {
        println!("killed process {pid}");
    }
    for leftover in &report.in_use {
        println!("left {} alone: its owner is still running", leftover.name());
    }
    if report.removed.is_empty() && report.killed.is_empty() {
        println!("nothing to remove");
    }
    Ok(())
}
