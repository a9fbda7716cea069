//! The waypoint (L7) in a whole mesh, over real sockets: each service of meshes/waypoint.yaml
//! goes through namespace l7's waypoint, whose routes split, pin, time out and retry; a
//! waypoint that is down refuses its services' traffic rather than let it around; HTTP/1.1,
//! HTTP/2 and opaque TCP all pass, from curl as well as from our own client. gRPC is in
//! `waypoint_grpc`, the default demo's policy in `waypoint_demo`.
//!
//! What reached a server is read on the server's side: each sample server logs every request
//! it served (`apps::AccessLine`), and its ztunnel records the identity it verified for each
//! tunnel (the waypoint's, when the waypoint is in the path).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ambit_cli::local::LocalMesh;
use ambit_cli::local::apps::{h2_requests, request};
use ambit_cli::local::metrics;
use ambit_e2e::{WAYPOINT_MESH, access_log, can_run, curl, eventually, failures, in_pod, start};
use ambit_ztunnel::admin::ConfigDump;
use ambit_ztunnel::connections::Direction;

const ECHO: &str = "http://10.96.1.10/";
const H2: &str = "http://10.96.1.13/";
const SLOW: &str = "http://10.96.1.20/";
const FLAKY: &str = "http://10.96.1.21/";
const TCP_ECHO: &str = "10.96.1.23:7000";
const ORPHAN: &str = "http://10.96.1.30/";
pub(crate) const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/l7/sa/waypoint";

/// How `n` calls to `url` with `headers` (each on a new connection, `parallel` at a time)
/// were answered: the first line of each 2xx body, or what failed, with counts.
pub(crate) async fn calls(
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
    parallel: usize,
) -> BTreeMap<String, u64> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..parallel {
        let (url, headers) = (url.to_string(), headers.clone());
        let share = n / parallel + usize::from(worker < n % parallel);
        tasks.spawn_local(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..share {
                let answer = match request(&url, &headers).await {
                    Ok(r) if (200..300).contains(&r.status) => {
                        r.body.lines().next().unwrap_or_default().to_string()
                    }
                    Ok(r) => format!("HTTP {} [{}]", r.status, r.flags.unwrap_or_default()),
                    Err(e) => format!("error: {e}"),
                };
                *seen.entry(answer).or_default() += 1;
            }
            seen
        });
    }
    let mut all = BTreeMap::new();
    while let Some(Ok(seen)) = tasks.join_next().await {
        for (k, v) in seen {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

/// Runs [`calls`] from a pod (a local set, so the calls may share the pod's runtime).
pub(crate) fn calls_from(
    mesh: &LocalMesh,
    pod: &str,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<BTreeMap<String, u64>> {
    in_pod(mesh, "l7", pod, || async {
        tokio::task::LocalSet::new()
            .run_until(calls(url, headers, n, 8))
            .await
    })
}

/// The identities a node's ztunnel verified for the tunnels into `pod` (of namespace l7).
pub(crate) async fn sources_into(
    mesh: &LocalMesh,
    node: &str,
    pod: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let admin = mesh.node_state(node)?.admin;
    let (_, body) = ambit_e2e::get(&format!("http://{admin}/config_dump")).await?;
    let dump: ConfigDump = serde_json::from_str(&body)?;
    let uid = ambit_e2e::uid(mesh, "l7", pod);
    Ok(dump
        .connections
        .into_iter()
        .filter(|c| c.direction == Direction::Inbound)
        .filter(|c| c.pod == uid || c.pod.ends_with(&format!("/{pod}")))
        .filter_map(|c| c.source_identity)
        .collect())
}

/// The waypoint's `/metrics`, through its relayed port.
pub(crate) async fn waypoint_metrics(mesh: &LocalMesh, name: &str) -> anyhow::Result<String> {
    let w = mesh.waypoint("l7", name)?;
    Ok(ambit_e2e::get(&format!("http://{}/metrics", w.metrics))
        .await?
        .1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_splits_90_10_and_a_header_pins_v2() -> anyhow::Result<()> {
    if !can_run("a_route_splits_90_10_and_a_header_pins_v2") {
        return Ok(());
    }
    let mesh = start("waypoint-split", Some(WAYPOINT_MESH)).await?;

    let split = calls_from(&mesh, "client", ECHO, &[], 2000)?;
    let (v1, v2) = (
        split.get("hello from echo-v1").copied().unwrap_or(0),
        split.get("hello from echo-v2").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v2, 2000, "not every call was answered: {split:?}");
    let share = v2 as f64 / 2000.0;
    assert!(
        (0.08..=0.12).contains(&share),
        "echo-v2 answered {:.1}% of 2,000 calls, the route says 10%: {split:?}",
        share * 100.0
    );

    let pinned = calls_from(&mesh, "client", ECHO, &[("x-canary", "1")], 200)?;
    assert_eq!(
        pinned,
        BTreeMap::from([("hello from echo-v2".to_string(), 200)]),
        "x-canary: 1 must pin every call to echo-v2"
    );

    // On the servers' side: each call reached one pod once, through the waypoint.
    let served =
        access_log(&mesh, "l7", "echo-v1").len() + access_log(&mesh, "l7", "echo-v2").len();
    assert_eq!(
        served, 2200,
        "the servers logged {served} requests for 2,200 calls"
    );
    let seen = sources_into(&mesh, "node-b", "echo-v2").await?;
    assert_eq!(
        seen,
        BTreeSet::from([WAYPOINT_ID.to_string()]),
        "echo-v2's ztunnel must see only the waypoint as the source"
    );
    let text = waypoint_metrics(&mesh, "waypoint").await?;
    let counted = metrics::sum(&text, "istio_requests_total", &[("reporter", "waypoint")]);
    assert!(
        counted >= 2200.0,
        "the waypoint counted {counted} requests for 2,200 calls:\n{text}"
    );
    mesh.down()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_waypoint_is_down_is_refused_not_bypassed() -> anyhow::Result<()> {
    if !can_run("a_service_whose_waypoint_is_down_is_refused") {
        return Ok(());
    }
    // A label naming a waypoint that is not declared at all is refused with the file, so
    // nothing can ever be sent around it.
    let undeclared = WAYPOINT_MESH.replacen(
        "ambit.io/use-waypoint: standby",
        "ambit.io/use-waypoint: ghost",
        1,
    );
    assert_ne!(
        undeclared, WAYPOINT_MESH,
        "meshes/waypoint.yaml changed shape"
    );
    let ghost = std::env::temp_dir().join(format!("ambit-ghost-{}.yaml", std::process::id()));
    std::fs::write(&ghost, &undeclared)?;
    let refused = LocalMesh::check(Some(&ghost));
    std::fs::remove_file(&ghost)?;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        why.contains("ghost"),
        "a label naming no waypoint was accepted: {why:?}"
    );

    let mesh = start("waypoint-down", Some(WAYPOINT_MESH)).await?;
    // Through `standby` while it runs.
    let r = curl(&mesh, "l7", "client", ORPHAN)?;
    assert_eq!(r.stdout.trim(), "hello from orphan", "{r:?}");

    assert!(
        mesh.stop_waypoint("l7", "standby")?,
        "standby did not drain and exit"
    );
    let metrics = mesh.node_state("node-a")?.metrics;
    let before_refusals = failures(metrics, "waypoint_unavailable").await?;
    let before = access_log(&mesh, "l7", "orphan").len();
    for _ in 0..20 {
        let r = curl(&mesh, "l7", "client", ORPHAN)?;
        assert!(!r.ok(), "orphan answered with its waypoint down: {r:?}");
    }
    assert_eq!(
        access_log(&mesh, "l7", "orphan").len(),
        before,
        "a request reached orphan around its stopped waypoint"
    );
    let refusals = failures(metrics, "waypoint_unavailable").await? - before_refusals;
    assert!(
        refusals >= 20,
        "node-a's ztunnel counted {refusals} waypoint refusals for 20 calls"
    );

    // Back once it runs again.
    mesh.start_waypoint("l7", "standby")?;
    let back = eventually(Duration::from_secs(30), async || {
        let r = curl(&mesh, "l7", "client", ORPHAN).ok()?;
        (r.stdout.trim() == "hello from orphan").then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "orphan did not answer once standby ran again"
    );
    mesh.down()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_times_out_and_retries_but_never_replays_a_streamed_body() -> anyhow::Result<()> {
    if !can_run("a_route_times_out_and_retries") {
        return Ok(());
    }
    let mesh = start("waypoint-timeouts", Some(WAYPOINT_MESH)).await?;

    // A server taking 2 s behind a 200 ms request timeout: 504, flag UT, in about 200 ms.
    let (reply, took) = in_pod(&mesh, "l7", "client", || async {
        let start = Instant::now();
        let reply = request(&format!("{SLOW}?delay_ms=2000"), &[]).await;
        (reply, start.elapsed())
    })?;
    let reply = reply.map_err(anyhow::Error::msg)?;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(
        reply.flags.as_deref().is_some_and(|f| f.contains("UT")),
        "no UT flag on the timeout: {reply:?}"
    );
    assert!(took < Duration::from_secs(1), "the timeout took {took:?}");
    let quick =
        in_pod(&mesh, "l7", "client", || request(SLOW, &[]))?.map_err(anyhow::Error::msg)?;
    assert_eq!(quick.status, 200, "{quick:?}");

    // A server failing half the requests with 503 (each one's first try, every other one),
    // behind a route retrying 503: the client sees (nearly) every call succeed, the server
    // half of them twice. 25 calls a second keep the retries (half the calls) within the
    // waypoint's retry budget (Linkerd's: 20% of the requests plus 10 a second).
    let seen = in_pod(&mesh, "l7", "client", || async {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..400 {
            let url = format!("{FLAKY}?fail_first=0.5&id={i}");
            let answer = match request(&url, &[]).await {
                Ok(r) if r.status == 200 => r.body.lines().next().unwrap_or_default().to_string(),
                Ok(r) => format!("HTTP {} [{}]", r.status, r.flags.unwrap_or_default()),
                Err(e) => format!("error: {e}"),
            };
            *seen.entry(answer).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        seen
    })?;
    let ok = seen.get("hello from flaky").copied().unwrap_or(0);
    assert!(
        ok > 396,
        "{ok} of 400 calls succeeded through retries: {seen:?}"
    );
    let tries = access_log(&mesh, "l7", "flaky");
    let failed = tries
        .iter()
        .filter(|l| l.uri.contains("fail_first=") && l.status == 503)
        .count();
    let all = tries
        .iter()
        .filter(|l| l.uri.contains("fail_first="))
        .count();
    assert!(
        failed >= 190 && all >= 590,
        "flaky served {all} tries, {failed} of them 503, for 400 calls: nothing was retried?"
    );

    // A 1 MiB body streamed (chunked) to a server that fails it: sent upstream once, never
    // replayed, and the failure reaches the client.
    let body = std::env::temp_dir().join(format!("ambit-mib-{}", std::process::id()));
    std::fs::write(&body, vec![0x61u8; 1 << 20])?;
    let out = ambit_e2e::run_in(
        &mesh,
        "l7",
        "client",
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{FLAKY}upload?fail=1&id=streamed-once"),
        ],
    )?;
    let _ = std::fs::remove_file(&body);
    assert_eq!(out.trim(), "503", "the streamed POST's answer");
    let posts: Vec<_> = access_log(&mesh, "l7", "flaky")
        .into_iter()
        .filter(|l| l.uri.contains("id=streamed-once"))
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "the streamed POST reached the server {} times",
        posts.len()
    );
    assert_eq!(posts[0].method, "POST");
    assert_eq!(posts[0].body_bytes, 1 << 20, "{:?}", posts[0]);
    mesh.down()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_http2_and_tcp_pass_through_the_waypoint() -> anyhow::Result<()> {
    if !can_run("http1_http2_and_tcp_pass_through_the_waypoint") {
        return Ok(());
    }
    let mesh = start("waypoint-protocols", Some(WAYPOINT_MESH)).await?;
    let curl_with = |args: &[&str]| ambit_e2e::run_in(&mesh, "l7", "client", "curl", args);

    // curl (Debian's, a client stack we did not write): HTTP/1.1, then HTTP/2 with prior
    // knowledge (h2c), each answered in the version asked.
    let h1 = curl_with(&[
        "-sS",
        "--max-time",
        "5",
        "--http1.1",
        "-w",
        "%{http_version}",
        ECHO,
    ])?;
    assert!(
        h1.starts_with("hello from echo-v") && h1.ends_with("1.1"),
        "HTTP/1.1 through the waypoint: {h1:?}"
    );
    let before = access_log(&mesh, "l7", "echo-v1").len();
    let h2 = curl_with(&[
        "-sS",
        "--max-time",
        "5",
        "--http2-prior-knowledge",
        "-w",
        "%{http_version}",
        H2,
    ])?;
    assert_eq!(h2, "hello from echo-v1\n2", "HTTP/2 through the waypoint");
    assert_eq!(access_log(&mesh, "l7", "echo-v1").len(), before + 1);
    // Several streams on one HTTP/2 connection (from our client: Debian 12's curl 7.88.1
    // fails to reuse a prior-knowledge connection against any server).
    let streams =
        in_pod(&mesh, "l7", "client", || h2_requests(H2, 3))?.map_err(anyhow::Error::msg)?;
    assert_eq!(
        streams,
        vec![(200, "hello from echo-v1\n".to_string()); 3],
        "three streams on one HTTP/2 connection"
    );

    // Opaque TCP: bytes in, the same bytes back.
    let echoed = in_pod(&mesh, "l7", "client", || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(TCP_ECHO).await?;
        s.write_all(b"opaque bytes through the waypoint\n").await?;
        s.shutdown().await?;
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await??;
        anyhow::Ok(back)
    })??;
    assert_eq!(echoed, b"opaque bytes through the waypoint\n");

    // Each went through the waypoint: the servers' ztunnels saw its identity, never the
    // client's.
    for (node, pod) in [("node-a", "echo-v1"), ("node-b", "tcp-echo")] {
        let seen = sources_into(&mesh, node, pod).await?;
        assert_eq!(
            seen,
            BTreeSet::from([WAYPOINT_ID.to_string()]),
            "{pod}'s ztunnel verified these sources"
        );
    }
    mesh.down()?;
    Ok(())
}

/// The suite's mesh files are valid (no root needed): a broken one would only show as every
/// test that uses it failing to start.
#[test]
fn the_suites_mesh_files_are_valid() {
    for name in ["l4.yaml", "waypoint.yaml"] {
        if let Err(e) = LocalMesh::check(Some(&ambit_e2e::mesh_file(name))) {
            panic!("meshes/{name}: {e}");
        }
    }
}
