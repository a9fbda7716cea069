//! Issue 12 on `ambit up`: a node's ztunnel killed under it is noticed, reaped and started
//! again, the live output says so, a ztunnel that keeps dying is started again after a
//! growing pause (with the end of its log), and the live summary's window shows the outage
//! (success near 0%) while the total since the start only dips; then traffic returns.
//!
//! A single crash is repaired in about a second, less than one summary window. So the test
//! kills each new ztunnel again as soon as it appears, three times: that is the crash loop the
//! backoff is for, and its pauses (1 + 2 + 4 s) hold the outage over whole windows.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ambit_cli::local::{CURRENT_RUN, RunState};
use ambit_e2e::can_run;
use ambit_e2e::probe::zombies_of;

use crate::ambit_cli::assert_nothing_left;
use ambit_e2e::up::{RunningUp, ambit};

/// A line of `ambit up`'s output and when it arrived.
type Line = (Instant, String);

/// Collects a stream's lines as they come.
fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines into `seen` until one satisfies `wanted` or `within` passes.
fn wait_for(
    rx: &mpsc::Receiver<Line>,
    seen: &mut Vec<Line>,
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Option<Line> {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        seen.push(line.clone());
        if wanted(&line.1) {
            return Some(line);
        }
    }
    None
}

/// client -> demo/reviews in a live table: (window OK %, total OK %), `None` for "-".
fn client_row(line: &str) -> Option<(Option<f64>, Option<f64>)> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.len() < 8 || cols[0] != "client" || cols[1] != "demo/reviews" {
        return None;
    }
    let pct = |s: &str| s.strip_suffix('%')?.parse::<f64>().ok();
    Some((pct(cols[3]), pct(cols[7])))
}

/// node-a's ztunnel's pid as `ambit up` records it (rewritten on each restart).
fn node_a_pid() -> Option<u32> {
    let text = std::fs::read_to_string(CURRENT_RUN).ok()?;
    let state: RunState = serde_json::from_str(&text).ok()?;
    state.nodes.iter().find(|n| n.name == "node-a")?.pid
}

/// Waits for node-a's ztunnel to have a pid other than `old`.
fn next_pid(old: u32, within: Duration) -> Option<u32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(pid) = node_a_pid().filter(|p| *p != old) {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn ambit_up_restarts_a_killed_ztunnel_and_its_window_shows_the_outage() {
    if !can_run("ambit_up_restarts_a_killed_ztunnel") {
        return;
    }
    let mut child = ambit()
        .args(["up", "--duration", "3m", "--every", "1s", "--file"])
        // Plain L4: the outage is ztunnel's alone, whatever a waypoint would add.
        .arg(ambit_e2e::mesh_file("l4.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ambit up");
    let up = child.id();
    let out = lines(child.stdout.take().expect("piped"));
    let err = lines(child.stderr.take().expect("piped"));
    let mut child = RunningUp::adopt(child);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let healthy = |l: &str| client_row(l).is_some_and(|(window, _)| window == Some(100.0));

    let Some((flowing, _)) = wait_for(&err, &mut stderr, Duration::from_secs(60), |l| {
        l.contains("traffic flowing")
    }) else {
        panic!("ambit up never got going: {stderr:#?}");
    };
    // A steady state first: the ztunnel has run long enough that its death is a crash, not
    // a crash loop (which would be started again only after a pause).
    let steady = |l: &str| healthy(l) && flowing.elapsed() > Duration::from_secs(6);
    assert!(
        wait_for(&out, &mut stdout, Duration::from_secs(30), steady).is_some(),
        "client -> demo/reviews never had a whole window at 100%: {stdout:#?}"
    );

    // The crash, then three more as soon as each new ztunnel appears.
    let mut pid = node_a_pid().expect("node-a's ztunnel in the run state");
    kill9(pid);
    for kill in 1..=3 {
        pid = next_pid(pid, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no ztunnel on node-a after kill {kill}: {stderr:#?}"));
        kill9(pid);
    }
    let last = next_pid(pid, Duration::from_secs(15)).expect("restarted after the crash loop");
    // A window after the crash near 0%, while the total since the start stayed well above
    // it. (The first table after the kill may still count the second before it: read on.)
    let near_zero = |l: &str| client_row(l).is_some_and(|(w, _)| w.is_some_and(|w| w <= 5.0));
    let Some((_, outage)) = wait_for(&out, &mut stdout, Duration::from_secs(20), near_zero) else {
        panic!("no window near 0% after the kill: {stdout:#?}");
    };
    let total = client_row(&outage).and_then(|(_, total)| total);
    assert!(
        total.is_some_and(|t| t >= 50.0),
        "the total since the start fell to {total:?} in the outage window: {outage}"
    );
    let ready = wait_for(&err, &mut stderr, Duration::from_secs(30), |l| {
        l.contains("ztunnel on node-a is ready again")
    });
    assert!(ready.is_some(), "{stderr:#?}");
    // Traffic returns: a whole window at 100% again.
    let back = wait_for(&out, &mut stdout, Duration::from_secs(20), healthy);
    assert!(back.is_some(), "traffic did not return: {stdout:#?}");
    assert_eq!(node_a_pid(), Some(last), "restarted again without a crash");
    let zombies = zombies_of(up);
    assert!(zombies.is_empty(), "ambit up left zombies: {zombies:?}");

    // The live output said what happened, with the log's tail once it was a loop.
    let said: Vec<&str> = stderr.iter().map(|(_, l)| l.as_str()).collect();
    let text = said.join("\n");
    assert!(
        said.iter()
            .any(|l| l.ends_with("ztunnel on node-a exited (signal 9); restarted")),
        "{text}"
    );
    for pause in [1, 2, 4] {
        assert!(
            said.iter()
                .any(|l| l.contains("ztunnel on node-a exited (signal 9) ")
                    && l.contains(&format!("starting it again in {pause}s; last lines of"))
                    && l.contains("ztunnel-node-a.log")),
            "no {pause}s backoff said: {text}"
        );
    }

    let status = child.interrupt().expect("ambit up exits");
    stderr.extend(err.try_iter());
    assert!(status.success(), "ambit up failed: {stderr:#?}");
    assert_nothing_left(up);
}
