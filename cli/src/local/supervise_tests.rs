//! The supervisor over plain programs (`sleep`, a shell that exits at once): no root, no mesh.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::local::state::RunState;

#[test]
fn backoff_starts_at_once_then_doubles_to_a_cap() {
    let pauses: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(pauses, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
}

/// A work directory of its own for each test.
fn work_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-supervise-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// One supervised process running `script` under `sh`, with its run state in `dir`.
fn supervised(dir: &Path, script: &str, stable: Duration) -> (Arc<Shared>, Supervisor) {
    let mut spec = Spec::new("worker", Path::new("/bin/sh"), &dir.join("worker.log"));
    spec.args(["-c", script]);
    let process = Process::start(&spec, false).expect("sh starts");
    let state = RunState {
        testbed_run: "none".into(),
        work_dir: dir.into(),
        controller_grpc: "127.0.0.1:9".parse().unwrap(),
        controller_metrics: "127.0.0.1:9".parse().unwrap(),
        controller_api: None,
        nodes: Vec::new(),
        waypoints: Vec::new(),
        pids: process.pid().into_iter().collect(),
        pods: Vec::new(),
    };
    let mut member = Member::new(
        spec,
        // Nothing answers there: the restarted process is never "ready", which these tests
        // do not need.
        Role::Controller {
            ready_url: "http://127.0.0.1:9/healthz/ready".into(),
        },
        process,
    );
    member.stable = stable;
    let (shared, _events) = Shared::new(vec![member], state, vec![dir.join("state.json")]);
    let supervisor = Supervisor::start(shared.clone()).expect("the supervisor's thread");
    (shared, supervisor)
}

fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_killed_process_is_reaped_said_and_started_again_with_the_same_arguments() {
    let dir = work_dir("killed");
    let (shared, supervisor) =
        supervised(&dir, "echo up and running; exec sleep 30", Duration::ZERO);
    let log = dir.join("worker.log");
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("up and running")
            .count()
    };
    wait_for(Duration::from_secs(3), || (runs() == 1).then_some(())).expect("it ran");
    let old = shared.pid(0).expect("running");
    shared.kill(0, false);
    let new = wait_for(Duration::from_secs(3), || {
        shared.pid(0).filter(|p| *p != old)
    })
    .expect("started again within a few ticks");
    // Reaped: a zombie keeps its /proc entry until its parent waits for it.
    assert!(
        !Path::new(&format!("/proc/{old}")).exists(),
        "{old} left a zombie"
    );
    // Said just after the members' lock that made the new pid visible is released, so it
    // can trail the pid by a moment (CI saw that once).
    let texts = wait_for(Duration::from_secs(3), || {
        let texts: Vec<String> = shared.events().into_iter().map(|e| e.text).collect();
        (!texts.is_empty()).then_some(texts)
    });
    assert_eq!(
        texts.as_deref(),
        Some(&["worker exited (signal 9); restarted".to_string()][..])
    );
    // The same command line again, its output added to the same log, and the new pid recorded.
    assert!(
        wait_for(Duration::from_secs(3), || (runs() == 2).then_some(())).is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let state = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(
        state.contains(&new.to_string()) && !state.contains(&old.to_string()),
        "{state}"
    );
    drop(supervisor);
    shared.stop_all(Duration::from_secs(1), Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_process_that_keeps_dying_is_started_again_after_growing_pauses_with_its_log() {
    let dir = work_dir("crash-loop");
    let (shared, supervisor) = supervised(
        &dir,
        "echo cannot bind 127.0.1.1:15000 >&2; exit 3",
        Duration::from_secs(5),
    );
    let started = Instant::now();
    let texts = wait_for(Duration::from_secs(6), || {
        let texts: Vec<String> = shared.events().into_iter().map(|e| e.text).collect();
        (texts.len() >= 4).then_some(texts)
    })
    .expect("two exits and two restarts within 1 + 2 s of pauses");
    drop(supervisor);
    // Not a tight loop: the second restart came after the 1 s and 2 s pauses.
    assert!(started.elapsed() >= Duration::from_secs(3), "{texts:#?}");
    assert!(
        texts[0].starts_with("worker exited (code 3) ")
            && texts[0].contains("1 time(s) in a row; starting it again in 1s; last lines of")
            && texts[0].contains("worker.log:\n    cannot bind 127.0.1.1:15000"),
        "{texts:#?}"
    );
    assert_eq!(
        texts[1],
        "worker exited (code 3) and was left down 1s; restarted"
    );
    assert!(
        texts[2].contains("2 time(s) in a row; starting it again in 2s"),
        "{texts:#?}"
    );
    assert_eq!(
        texts[3],
        "worker exited (code 3) and was left down 2s; restarted"
    );
    shared.stop_all(Duration::from_secs(1), Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_process_held_down_stays_down_until_resumed() {
    let dir = work_dir("held");
    let (shared, supervisor) = supervised(&dir, "exec sleep 30", Duration::ZERO);
    shared.kill(0, true);
    std::thread::sleep(TICK * 3);
    assert_eq!(shared.pid(0), None, "started again though held down");
    shared.resume(0);
    assert!(wait_for(Duration::from_secs(3), || shared.pid(0)).is_some());
    // As above: the event may trail the pid by a moment.
    let texts = wait_for(Duration::from_secs(3), || {
        let texts: Vec<String> = shared.events().into_iter().map(|e| e.text).collect();
        (!texts.is_empty()).then_some(texts)
    });
    assert_eq!(
        texts.as_deref(),
        Some(&["worker had been stopped on purpose; restarted".to_string()][..])
    );
    drop(supervisor);
    shared.stop_all(Duration::from_secs(1), Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(dir);
}
