//! Issue 17's "must show" for `ambit policy suggest`: on the demo mesh, after some traffic, the
//! suggested policies, added to the same mesh's file, leave every observed flow succeeding and
//! deny flows that were not observed.
//!
//! client drives GET / and GET /api/v1/items (with the canary header) at reviews through the
//! waypoint; denied-client is refused by demo/deny-denied-client. The suggestion must allow
//! client's two paths, leave denied-client out, and then refuse client's unobserved path, and
//! client going straight to a reviews pod past the waypoint (the L7 rule fails closed at L4).

use std::net::SocketAddr;
use std::time::Duration;

use ambit_cli::local::apps::request;
use ambit_cli::local::{Binaries, LocalMesh, load};
use ambit_controller::suggest::Suggestion;
use ambit_e2e::{can_run, eventually, get, in_pod, start};

const ROOT: &str = "http://10.96.0.10:9080/";
const ITEMS: &str = "http://10.96.0.10:9080/api/v1/items";
const UNOBSERVED_PATH: &str = "http://10.96.0.10:9080/admin/users";
/// reviews-v1's own address: past the waypoint, to the pod's ztunnel.
const REVIEWS_V1_POD: &str = "http://10.244.1.4:8080/";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
/// How long client's traffic runs before the suggestion is asked for (the proxies report their
/// shapes every few seconds).
const TRAFFIC_FOR: Duration = Duration::from_secs(15);

/// The controller's observation API, as the local mesh recorded it (`controller_api` in its
/// state).
fn api(mesh: &LocalMesh) -> anyhow::Result<SocketAddr> {
    let state = serde_json::to_value(mesh.state())?;
    let api = state
        .get("controller_api")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            anyhow::anyhow!("the local mesh records no controller_api (observation API)")
        })?;
    Ok(api.parse()?)
}

async fn suggestion(api: SocketAddr) -> anyhow::Result<Suggestion> {
    let (status, body) = get(&format!("http://{api}/api/policy/suggest?namespace=demo")).await?;
    anyhow::ensure!(status == 200, "GET /api/policy/suggest: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The status of GET `url` from a pod; `None` when there was no HTTP answer (refused, reset).
fn status(mesh: &LocalMesh, pod: &str, url: &str, headers: &[(String, String)]) -> Option<u16> {
    let headers = headers.to_vec();
    in_pod(
        mesh,
        "demo",
        pod,
        || async move { request(url, &headers).await },
    )
    .ok()?
    .ok()
    .map(|r| r.status)
}

/// The items of a suggestion's mesh YAML added to the file's `authorizationPolicies:` list (the
/// demo's items are indented by two spaces, as the suggestion's are).
fn add_to_mesh_file(file: &str, suggestion_yaml: &str) -> anyhow::Result<String> {
    let (_, items) = suggestion_yaml
        .split_once("authorizationPolicies:\n")
        .ok_or_else(|| anyhow::anyhow!("no authorizationPolicies in:\n{suggestion_yaml}"))?;
    anyhow::ensure!(
        file.contains("\nauthorizationPolicies:\n"),
        "the mesh file has no authorizationPolicies list"
    );
    Ok(file.replacen(
        "\nauthorizationPolicies:\n",
        &format!("\nauthorizationPolicies:\n{items}"),
        1,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggested_policies_keep_observed_flows_and_deny_unobserved_ones() -> anyhow::Result<()> {
    if !can_run("suggested_policies_keep_observed_flows_and_deny_unobserved_ones") {
        return Ok(());
    }
    let mesh = start("policy-suggest", None).await?;
    let api = api(&mesh)?;
    let canary = vec![("x-canary".to_string(), "1".to_string())];

    // Traffic: client at two paths, denied-client refused.
    let driver = load::drive(
        &Binaries::locate()?.ambit,
        mesh.pod("demo", "client")?.netns(),
        &[ROOT, &format!("{ITEMS}|x-canary: 1")],
        10,
    )?;
    let started = std::time::Instant::now();
    while started.elapsed() < TRAFFIC_FOR {
        let denied = status(&mesh, "denied-client", ROOT, &[]);
        assert_ne!(
            denied,
            Some(200),
            "denied-client got through before any suggestion"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(driver);

    // The suggestion, once the waypoint's shapes of both paths are in.
    let complete = |s: &Suggestion| {
        s.policies.iter().any(|p| {
            let paths: Vec<&str> = p
                .rules
                .iter()
                .flat_map(|r| &r.to)
                .flat_map(|op| &op.paths)
                .map(String::as_str)
                .collect();
            p.name == "allow-observed-reviews" && paths.contains(&"/") && paths.contains(&"/api/*")
        })
    };
    let mut last = None;
    let s = eventually(Duration::from_secs(30), async || {
        let s = suggestion(api).await.ok()?;
        let done = complete(&s);
        last = Some(s.clone());
        done.then_some(s)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("no complete suggestion within 30 s; the last: {last:#?}"))?;
    assert!(!s.is_faulty(), "{:#?} {:#?}", s.would_deny, s.problems);
    let reviews = s
        .policies
        .iter()
        .find(|p| p.name == "allow-observed-reviews")
        .unwrap();
    assert!(
        reviews.rules.iter().all(|r| r.principals == [CLIENT]),
        "only client is allowed: {:#?}",
        reviews.rules
    );
    assert!(
        reviews
            .evidence
            .iter()
            .all(|f| f.count > 0 && f.last_seen_unix_ms >= f.first_seen_unix_ms),
        "{:#?}",
        reviews.evidence
    );
    assert!(
        s.left_out
            .iter()
            .any(|l| l.flow.source_identity.ends_with("/sa/denied-client")),
        "denied-client's refused requests are named as left out: {:#?}",
        s.left_out
    );

    // Applied: the controller reloads the changed mesh file.
    let original = std::fs::read_to_string(mesh.mesh_path())?;
    let with = add_to_mesh_file(&original, &s.mesh_yaml)?;
    std::fs::write(mesh.mesh_path(), &with)?;
    let enforced = eventually(Duration::from_secs(30), async || {
        (status(&mesh, "client", UNOBSERVED_PATH, &[]) == Some(403)).then_some(())
    })
    .await;
    assert!(
        enforced.is_some(),
        "client's unobserved path is not denied 30 s after the suggestion was applied:\n{with}"
    );

    // Every observed flow still succeeds.
    for _ in 0..5 {
        assert_eq!(status(&mesh, "client", ROOT, &[]), Some(200));
        assert_eq!(status(&mesh, "client", ITEMS, &canary), Some(200));
    }
    // Unobserved flows are denied: another path, and past the waypoint to a pod.
    assert_eq!(status(&mesh, "client", UNOBSERVED_PATH, &[]), Some(403));
    assert_ne!(status(&mesh, "client", REVIEWS_V1_POD, &[]), Some(200));
    // And the DENY still holds.
    assert_ne!(status(&mesh, "denied-client", ROOT, &[]), Some(200));
    mesh.down()?;
    Ok(())
}
