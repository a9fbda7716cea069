//! Issue 8's "must show": the `ambit` command as a newcomer runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_cli::local::CURRENT_RUN;
use ambit_e2e::can_run;

use ambit_e2e::up::RunningUp;
use ambit_e2e::up::ambit;

/// Namespaces, links and run records of testbeds whose owner is gone or unknown.
fn stale_leftovers() -> Vec<String> {
    ambit_testbed::leftovers()
        .expect("listing leftovers")
        .into_iter()
        .filter(|l| !l.in_use())
        .map(|l| l.name().to_string())
        .collect()
}

/// The controller and ztunnels a given `ambit up` started (they run from its work directory,
/// /run/ambit/up-<pid>), still alive.
fn mesh_processes(up_pid: u32) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .expect("ps");
    let work_dir = format!("/run/ambit/up-{up_pid}/");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&work_dir) && !l.contains("ambit up"))
        .map(str::to_string)
        .collect()
}

/// No namespace, link, record or process of the `ambit up` with this pid is left.
pub(crate) fn assert_nothing_left(up_pid: u32) {
    let left = stale_leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    let processes = mesh_processes(up_pid);
    assert!(processes.is_empty(), "processes left: {processes:?}");
    assert!(
        !std::path::Path::new(CURRENT_RUN).exists(),
        "{CURRENT_RUN} left behind"
    );
}

fn check_summary(out: &str) {
    assert!(out.contains("== final summary"), "no final summary:\n{out}");
    assert!(
        out.contains("[ok] traffic crossed nodes over HBONE"),
        "{out}"
    );
    assert!(
        out.contains("[ok] passthrough reached legacy/legacy"),
        "{out}"
    );
    assert!(
        out.contains("[ok] refused by policy: denied-client -> demo/reviews")
            && out.contains("demo/deny-denied-client"),
        "{out}"
    );
    assert!(
        out.contains("spiffe://cluster.local/ns/demo/sa/client"),
        "no client identity seen by a server:\n{out}"
    );
    // reviews is behind the waypoint: 90/10 over the versions, x-canary: 1 pinned to v2, and
    // the reviews pods' ztunnels see the waypoint as the source.
    assert!(out.contains("[ok] waypoint demo/waypoint served"), "{out}");
    assert!(
        out.contains("[ok] client -> demo/reviews split as route demo/reviews says: reviews-v1"),
        "{out}"
    );
    assert!(
        out.contains("[ok] client -> demo/reviews with x-canary: 1 split as route demo/reviews says: reviews-v2 100.0%"),
        "{out}"
    );
    // The demo's slow request: the route's 100 ms timeout cuts off reviews-v1's 300 ms answer.
    assert!(
        out.contains("[ok] client -> demo/reviews with x-echo-delay-ms: 300 timed out as route demo/reviews says (request timeout 100 ms)"),
        "{out}"
    );
    assert!(
        out.contains("spiffe://cluster.local/ns/demo/sa/waypoint"),
        "no server saw the waypoint's identity:\n{out}"
    );
    assert!(!out.contains("[--]"), "a check failed:\n{out}");
}

#[test]
fn ambit_up_runs_the_default_mesh_and_leaves_nothing_behind() {
    if !can_run("ambit_up_runs_the_default_mesh") {
        return;
    }
    let child = ambit()
        .args(["up", "--duration", "20s", "--every", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ambit up");
    let pid = child.id();
    let out = child.wait_with_output().expect("ambit up exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ambit up failed:\n{stdout}\n{stderr}");
    check_summary(&stdout);
    assert!(stderr.contains("removed everything it made"), "{stderr}");
    assert_nothing_left(pid);
}

#[test]
fn ambit_up_cleans_up_after_sigint() {
    if !can_run("ambit_up_cleans_up_after_sigint") {
        return;
    }
    let mut child = ambit()
        .args(["up", "--duration", "10m", "--every", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ambit up");
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Half-way: once traffic has flowed for a while.
    let start = Instant::now();
    let mut log = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let flowing = line.contains("traffic flowing");
            log.push(line);
            if flowing {
                break;
            }
        }
    }
    assert!(
        log.iter().any(|l| l.contains("traffic flowing")),
        "never got going: {log:#?}"
    );
    std::thread::sleep(Duration::from_secs(8));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = child.wait_with_output().expect("ambit up exits");
    log.extend(rx.try_iter());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ambit up failed after SIGINT:\n{stdout}\n{log:#?}"
    );
    check_summary(&stdout);
    assert_nothing_left(pid);
}

#[test]
fn ambit_config_and_bench_on_a_running_mesh() {
    if !can_run("ambit_config_and_bench") {
        return;
    }
    let up = RunningUp::start();
    let run = |args: &[&str]| {
        let out = ambit().args(args).output().expect("ambit");
        assert!(
            out.status.success(),
            "ambit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let workloads: serde_json::Value =
        serde_json::from_str(&run(&["config", "workloads", "-o", "json"])).expect("json");
    let mut seen: Vec<(String, String, String, String)> = workloads
        .as_array()
        .expect("a list")
        .iter()
        .map(|w| {
            (
                format!(
                    "{}/{}",
                    w["namespace"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                ),
                w["protocol"].as_str().unwrap().to_string(),
                w["node"].as_str().unwrap().to_string(),
                w["identity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let id = |ns: &str, sa: &str| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    let expected = vec![
        (
            "demo/client".to_string(),
            "HBONE".to_string(),
            "node-a".to_string(),
            id("demo", "client"),
        ),
        (
            "demo/denied-client".into(),
            "HBONE".into(),
            "node-a".into(),
            id("demo", "denied-client"),
        ),
        (
            "demo/reviews-v1".into(),
            "HBONE".into(),
            "node-a".into(),
            id("demo", "reviews"),
        ),
        (
            "demo/reviews-v2".into(),
            "HBONE".into(),
            "node-b".into(),
            id("demo", "reviews"),
        ),
        (
            "legacy/legacy".into(),
            "TCP".into(),
            "node-b".into(),
            id("legacy", "legacy"),
        ),
    ];
    assert_eq!(seen, expected);
    let table = run(&["config", "workloads"]);
    assert!(
        table.contains("PROTOCOL") && table.contains("reviews-v2"),
        "{table}"
    );

    let certs = run(&["config", "certificates"]);
    for sa in ["client", "denied-client", "reviews"] {
        assert!(
            certs.contains(&id("demo", sa)),
            "no certificate for {sa}:\n{certs}"
        );
    }
    assert!(
        certs.contains("EXPIRES") && certs.contains(" (in "),
        "{certs}"
    );

    // A push may be on its way (the waypoint's own readiness changes the ztunnels' config
    // after `ambit up` is ready): in sync once the ztunnels' acknowledgements are in.
    let in_sync = |status: &str| {
        status.contains("controller") && status.matches("in sync with the controller").count() == 2
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut status = run(&["status"]);
    while !in_sync(&status) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        status = run(&["status"]);
    }
    assert!(in_sync(&status), "{status}");

    let bench: serde_json::Value = serde_json::from_str(&run(&[
        "bench",
        "--json",
        "--seconds",
        "2",
        "--rounds",
        "1",
    ]))
    .expect("json");
    for path in ["direct", "mesh"] {
        assert!(bench[path]["rps"].as_f64().unwrap() > 0.0, "{bench}");
        assert!(bench[path]["p99_ms"].as_f64().is_some(), "{bench}");
    }
    assert!(bench["ratio_rps"].as_f64().unwrap() > 0.0, "{bench}");

    assert!(up.stop(), "ambit up did not exit cleanly after SIGINT");
}

#[test]
fn a_broken_mesh_file_is_refused_before_anything_is_created() {
    if !can_run("a_broken_mesh_file_is_refused") {
        return;
    }
    let before = ambit_testbed::leftovers().expect("leftovers").len();
    let dir = std::env::temp_dir().join(format!("ambit-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = ambit_controller::source::file::EMBEDDED_MESH;
    for (name, broken, reason) in [
        (
            "unknown-field",
            good.replacen("serviceAccount: client", "serviceAcount: client", 1),
            "serviceAcount",
        ),
        (
            "duplicate-ip",
            good.replacen("ipv4: 10.244.1.3", "ipv4: 10.244.1.2", 1),
            "10.244.1.2",
        ),
        (
            "unknown-node",
            good.replacen("node: node-b", "node: node-z", 1),
            "node-z",
        ),
    ] {
        assert_ne!(
            broken, good,
            "{name}: the embedded mesh changed shape; update this test"
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, &broken).unwrap();
        let out = ambit()
            .args(["up", "--duration", "5s", "--file"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(
            stderr.contains(reason),
            "{name}: the error does not name the cause:\n{stderr}"
        );
        assert!(
            stderr.contains("line"),
            "{name}: the error gives no line:\n{stderr}"
        );
        assert!(
            !stderr.contains("creating network namespaces"),
            "{name}: started building:\n{stderr}"
        );
    }
    assert_eq!(ambit_testbed::leftovers().expect("leftovers").len(), before);
    let _ = std::fs::remove_dir_all(dir);
}
