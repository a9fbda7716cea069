//! `cleanup_leftovers` after a run whose process died without dropping its testbed.
//!
//! One test on purpose: it is the only one calling `cleanup_leftovers`, which acts on every run
//! on the host, so its assertions cannot race with another test's cleanup.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_testbed::{Leftover, Owner};
use anyhow::Context;

/// Set (to anything) in the child process that plays the crashed run.
const CRASH_CHILD: &str = "AMBIT_TESTBED_CRASH_CHILD";
const THIS_TEST: &str = "cleanup_leftovers_removes_a_crashed_run_and_leaves_live_ones_alone";

/// libtest's name for this test (what `--exact` matches): its path below the test crate's root.
fn this_test() -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{THIS_TEST}"),
        None => THIS_TEST.to_string(),
    }
}

#[test]
fn cleanup_leftovers_removes_a_crashed_run_and_leaves_live_ones_alone() -> anyhow::Result<()> {
    if std::env::var_os(CRASH_CHILD).is_some() {
        return crash();
    }
    if !common::privileged() {
        return Ok(());
    }
    let live = common::two_nodes_two_pods()?;

    // The crash happens in a child process: a run whose owner is alive is in use, not left
    // over, even if that owner forgot its testbed.
    let out = Command::new(std::env::current_exe()?)
        .args(["--exact", &this_test(), "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD, "1")
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "crash child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| {
        stdout
            .lines()
            // libtest may print "test <name> ... " on the same line first.
            .find_map(|l| l.split_once(key).map(|(_, value)| value.trim()))
            .map(str::to_owned)
            .with_context(|| format!("no {key} line in the child's output: {stdout}"))
    };
    let crashed = field("RUN=")?;
    let sleeper: u32 = field("SLEEPER=")?.parse()?;

    let left = common::leftovers_of(&crashed)?;
    let namespaces = left
        .iter()
        .filter(|l| matches!(l, Leftover::Netns { .. }))
        .count();
    assert_eq!(namespaces, 1 + 2 + 4, "{left:?}");
    let all_gone = left.iter().all(|l| match l {
        Leftover::Netns { owner, .. } | Leftover::RunRecord { owner, .. } => {
            matches!(owner, Owner::Gone { .. })
        }
        Leftover::RootLink { .. } => false,
    });
    assert!(all_gone, "{left:?}");
    assert!(
        common::is_running(sleeper),
        "the crashed run's process died early"
    );

    let report = ambit_testbed::cleanup_leftovers()?;
    for leftover in &left {
        assert!(
            report.removed.contains(leftover),
            "{leftover:?} not removed: {report:?}"
        );
    }
    assert!(report.killed.contains(&sleeper), "{report:?}");
    assert_eq!(common::leftovers_of(&crashed)?, []);
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::is_running(sleeper) {
        assert!(Instant::now() < deadline, "{sleeper} survived cleanup");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The live run was reported in use, and is untouched and working.
    let run = live.run_prefix();
    assert!(
        report.removed.iter().all(|l| l.run() != Some(run)),
        "{report:?}"
    );
    assert!(
        report.in_use.iter().any(|l| l.run() == Some(run)),
        "{report:?}"
    );
    for netns in live.namespaces() {
        assert!(netns.path().exists(), "{} was removed", netns.name());
    }
    let (a, b) = (live.pod("node-a", "client")?, live.pod("node-b", "server")?);
    common::tcp_exchange(b.netns(), b.ipv4().into(), a.netns(), a.ipv4().into())?;
    Ok(())
}

/// The crashed run: builds a testbed, leaves a process running in a pod, and exits without
/// dropping either.
fn crash() -> anyhow::Result<()> {
    let tb = common::two_nodes_two_pods()?;
    let sleeper = tb.pod("node-b", "server")?.netns().spawn(
        // Not holding our stdout or stderr open, or the parent's output() would wait for it.
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    println!("RUN={}", tb.run_prefix());
    println!("SLEEPER={}", sleeper.id());
    std::mem::forget(sleeper);
    std::mem::forget(tb);
    Ok(())
}
