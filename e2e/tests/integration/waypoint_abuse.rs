//! HTTP abuse against the real waypoint binary in a whole mesh: raw clients in pod l7/client
//! (waypoint/tests/abuse/abuse.py: HTTP/2 frame by frame, HTTP/1.1 on a bare socket) dial the
//! echo service's VIP as any application would, and ztunnel carries each of their connections
//! in an HBONE tunnel to the waypoint. Rapid reset, CONTINUATION floods and request smuggling
//! (three shapes), many connections of each at once, each lose only their own connection,
//! while a steady client in the same pod, whose tunnels share ztunnel's HBONE connections to
//! the waypoint with the attackers', gets a 200 for every request; nothing smuggled reaches a
//! server; and the waypoint's resident memory, read from /proc while the attacks run, stays
//! under [`RSS_BOUND_MIB`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ambit_e2e::{WAYPOINT_MESH, access_log, can_run, start};
use ambit_testbed::Netns;

use ambit_cli::local::metrics;

use crate::waypoint::{calls, waypoint_metrics};

const ECHO_VIP: &str = "10.96.1.10:80";
const ECHO: &str = "http://10.96.1.10/";
const AUTHORITY: &str = "echo.l7.svc.cluster.local";
/// Attacking connections of each kind at once.
const PARALLEL: usize = 6;
/// The bound on the waypoint's resident memory while it is attacked: what a debug build
/// holds at rest (about 15 MiB) plus, for each of the 16 attacking connections open at once,
/// at most its HTTP/2 connection window (1 MiB) and its largest header block (64 KiB), with
/// room to spare for the allocator. An unbounded buffer (a CONTINUATION flood stored whole,
/// reset streams piling up) would blow through it.
const RSS_BOUND_MIB: u64 = 64;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../waypoint/tests/abuse/abuse.py")
}

/// Whether `python3` with `h2` is here (CI must have it: `.ci/run` installs it).
fn python_ready(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import h2, hpack, hyperframe"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: python3 with the h2 package is missing, and CI must run this test"
        );
        eprintln!("{test}: skipped: python3 with h2 is not available (`pip install h2`)");
    }
    found
}

/// Runs one scenario in pod l7/client; what it printed (`key=value`). The script ends itself
/// within a minute whatever the waypoint does.
fn attack(pod: &Netns, scenario: &str, arg: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let out = pod.output(
        Command::new("python3")
            .args(["-u", "-B"])
            .arg(script())
            .args([scenario, ECHO_VIP, AUTHORITY, arg]),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let seen: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    anyhow::ensure!(
        out.status.success() && seen.get("result").map(String::as_str) == Some("done"),
        "abuse.py {scenario} {arg} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(seen)
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Steady calls from pod l7/client (each on a new connection, 4 at a time) in rounds until
/// `done`, then one more round; how they were answered.
fn steady(pod: &Netns, done: &AtomicBool) -> anyhow::Result<BTreeMap<String, u64>> {
    let answers = pod.run(|| -> anyhow::Result<BTreeMap<String, u64>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut all = BTreeMap::new();
        loop {
            let last = done.load(Ordering::SeqCst);
            let round =
                runtime.block_on(tokio::task::LocalSet::new().run_until(calls(ECHO, &[], 40, 4)));
            for (answer, n) in round {
                *all.entry(answer).or_default() += n;
            }
            if last {
                return Ok(all);
            }
        }
    })??;
    Ok(answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_http_clients_lose_only_their_own_connections() -> anyhow::Result<()> {
    if !can_run("abusive_http_clients_lose_only_their_own_connections")
        || !python_ready("abusive_http_clients_lose_only_their_own_connections")
    {
        return Ok(());
    }
    let mesh = start("waypoint-abuse", Some(WAYPOINT_MESH)).await?;
    let pid = mesh
        .waypoint_pid("l7", "waypoint")?
        .ok_or_else(|| anyhow::anyhow!("the waypoint is not running"))?;
    let at_rest = rss_kib(pid)?;
    let pod = mesh.pod("l7", "client")?.netns().clone();

    let scenarios: Vec<(&str, &str)> = [("rapid-reset", "1000"), ("continuation", "20000")]
        .into_iter()
        .flat_map(|s| std::iter::repeat_n(s, PARALLEL))
        .chain(
            ["cl-te", "te-cl", "cl-cl", "bad-te"]
                .into_iter()
                .map(|shape| ("smuggle", shape)),
        )
        .collect();
    let done = AtomicBool::new(false);
    let peak = std::sync::atomic::AtomicU64::new(at_rest);
    let (results, answers) = std::thread::scope(|scope| {
        let pod = &pod;
        let (done, peak) = (&done, &peak);
        let sampler = scope.spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let steady = scope.spawn(move || steady(pod, done));
        let attacks: Vec<_> = scenarios
            .iter()
            .map(|&(scenario, arg)| {
                let handle = scope.spawn(move || attack(pod, scenario, arg));
                (scenario, arg, handle)
            })
            .collect();
        let results: Vec<_> = attacks
            .into_iter()
            .map(|(scenario, arg, h)| (scenario, arg, h.join().expect("an attack thread panicked")))
            .collect();
        done.store(true, Ordering::SeqCst);
        sampler.join().expect("the RSS sampler panicked");
        (results, steady.join().expect("the steady client panicked"))
    });

    for (scenario, arg, result) in results {
        let seen = result?;
        let get = |k: &str| seen.get(k).map(String::as_str).unwrap_or("(missing)");
        match scenario {
            "smuggle" => {
                assert_eq!(get("statuses"), "400", "{arg}: {seen:?}");
                assert_eq!(get("closed"), "1", "{arg}: {seen:?}");
            }
            _ => {
                // The waypoint's GOAWAY crosses both ztunnels; a client still writing its
                // flood can see the close as a reset that drops the GOAWAY bytes not yet read
                // (seen in CI). So: closed, and if a GOAWAY arrived, the right one; that the
                // waypoint refused for this limit is checked in its log below, and the GOAWAY
                // code itself in the in-process test (waypoint/tests/request_path/abuse.rs).
                assert!(
                    matches!(get("goaway"), "ENHANCE_YOUR_CALM" | "None"),
                    "{scenario}: {seen:?}"
                );
                assert_eq!(get("closed"), "1", "{scenario}: {seen:?}");
            }
        }
    }
    let answers = answers?;
    let failed: BTreeMap<_, _> = answers
        .iter()
        .filter(|(answer, _)| !answer.starts_with("hello from echo-v"))
        .collect();
    let total: u64 = answers.values().sum();
    assert!(
        failed.is_empty() && total > 0,
        "the steady client beside the attacks must get a 200 for every request: {answers:?}"
    );

    // Nothing smuggled, and no smuggling attempt, reached a server.
    for pod in ["echo-v1", "echo-v2"] {
        let leaked: Vec<_> = access_log(&mesh, "l7", pod)
            .into_iter()
            .filter(|l| l.uri.starts_with("/s"))
            .collect();
        assert!(
            leaked.is_empty(),
            "{pod} served smuggled requests: {leaked:?}"
        );
    }

    // The waypoint named each limit in its log (values are never colored, keys may be).
    let log = std::fs::read_to_string(&mesh.waypoint("l7", "waypoint")?.log)?;
    for limit in [
        "rapid_reset",
        "continuation_flood",
        "ambiguous_length",
        "malformed_request",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("over a limit") && l.contains(limit)),
            "the waypoint's log names no refusal for {limit}"
        );
    }

    // ... and counted each on its metrics page, beside what its HBONE server saw.
    let text = waypoint_metrics(&mesh, "waypoint").await?;
    for limit in [
        "rapid_reset",
        "continuation_flood",
        "ambiguous_length",
        "malformed_request",
    ] {
        let counted = metrics::sum(&text, "ambit_http_refusals_total", &[("limit", limit)]);
        assert!(
            counted >= 1.0,
            "the waypoint's metrics count no refusal for {limit}:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE ambit_hbone_abuse_closed_total counter"),
        "the waypoint's metrics lack its HBONE server's counters:\n{text}"
    );

    let peak_mib = peak.load(Ordering::SeqCst) / 1024;
    eprintln!(
        "waypoint RSS: {} MiB at rest, {peak_mib} MiB at the peak of the attacks (bound {RSS_BOUND_MIB} MiB)",
        at_rest / 1024
    );
    assert!(
        peak_mib < RSS_BOUND_MIB,
        "the waypoint's RSS reached {peak_mib} MiB under attack, over the bound of {RSS_BOUND_MIB} MiB"
    );
    // Still serving after it all.
    let after = steady(&pod, &AtomicBool::new(true))?;
    assert!(
        after.keys().all(|a| a.starts_with("hello from echo-v")),
        "after the attacks: {after:?}"
    );
    mesh.down()?;
    Ok(())
}
