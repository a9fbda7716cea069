//! Issue 17's "must show" for `ambit explain`, as a developer runs it against `ambit up`'s
//! demo: the static walk names the policy that denies demo/denied-client and where it is
//! enforced (the waypoint), and `--last-failure` names it for the requests the waypoint
//! actually refused, from the failures the proxies reported to the controller; and for the
//! demo's slow request, the route's timeout that cut it off.

use std::process::Output;
use std::time::{Duration, Instant};

use ambit_e2e::can_run;
use ambit_e2e::up::{RunningUp, ambit};

const POLICY: &str = "demo/deny-denied-client";

fn explain(args: &[&str]) -> Output {
    ambit()
        .arg("explain")
        .args(args)
        .output()
        .expect("ambit explain runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn explain_names_the_policy_and_the_timeout_behind_the_demos_failures() {
    if !can_run("explain_names_the_policy_and_the_timeout_behind_the_demos_failures") {
        return;
    }
    let up = RunningUp::start();

    let out = explain(&["demo/denied-client", "demo/reviews"]);
    assert!(out.status.success(), "ambit explain: {}", stderr(&out));
    let text = stdout(&out);
    for part in [
        "Waypoint: service demo/reviews has ambit.io/use-waypoint: waypoint",
        "rule 0 matches (from principals [spiffe://cluster.local/ns/demo/sa/denied-client]: yes",
        &format!(
            "Verdict: DENIED by authorization policy {POLICY}, at waypoint demo/waypoint (L7)"
        ),
    ] {
        assert!(text.contains(part), "{part:?} missing in:\n{text}");
    }

    // The allowed client, as the API's JSON.
    let out = explain(&["demo/client", "demo/reviews:9080", "-o", "json"]);
    assert!(
        out.status.success(),
        "ambit explain -o json: {}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(json["verdict"]["kind"], "allowed", "{json:#}");
    assert_eq!(json["waypoint"]["name"], "demo/waypoint", "{json:#}");
    assert_eq!(json["routes"][0]["name"], "demo/reviews", "{json:#}");

    // A name that does not exist: an error that lists what does.
    let out = explain(&["demo/nobody", "demo/reviews"]);
    assert!(
        !out.status.success(),
        "explained a workload that does not exist"
    );
    let err = stderr(&out);
    assert!(
        err.contains("demo/nobody") && err.contains("demo/client"),
        "{err}"
    );

    // The demo's denied-client keeps calling reviews and the waypoint refuses it: once the
    // waypoint has reported those failures, --last-failure names the policy and the hop.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let out = explain(&["--last-failure", "demo/denied-client", "--limit", "30"]);
        assert!(
            out.status.success(),
            "ambit explain --last-failure: {}",
            stderr(&out)
        );
        let text = stdout(&out);
        // denied-client's direct calls to reviews-v1 and -v2 are refused by the same policy
        // at the ztunnels, and those reports can arrive first: wait for the waypoint's.
        if text.contains(&format!("authorization policy {POLICY} denied it"))
            && text.contains("failed at waypoint demo/waypoint")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no failure at the waypoint naming {POLICY} within 60s:\n{text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(text.contains("failed at waypoint demo/waypoint"), "{text}");
    assert!(text.contains("with status 403"), "{text}");

    // The demo's other failure: client's slow request, cut off by its route rule's 100 ms
    // timeout. --last-failure names the timeout, its route and the hop.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let out = explain(&["--last-failure", "demo/client", "--limit", "30"]);
        assert!(
            out.status.success(),
            "ambit explain --last-failure demo/client: {}",
            stderr(&out)
        );
        let text = stdout(&out);
        if text.contains("(the timeout of route demo/reviews)") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no failure naming the route's timeout within 60s:\n{text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(text.contains("with status 504"), "{text}");
    assert!(
        text.contains("within the request timeout of 100ms"),
        "{text}"
    );
    drop(up);
}
