//! The dashboard against a running local mesh (the demo: client to reviews through the
//! waypoint): the controller serves the page on its observation API, and headless Chromium
//! (Debian's package, which scripts/test installs) loads it and shows the demo's edge from
//! client to reviews with a rate above zero. The screenshot is kept in
//! target/test-artifacts/dashboard-e2e.png.

#[path = "../../../controller/tests/integration/dashboard/browser.rs"]
mod browser;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_cli::local::LocalMesh;
use ambit_cli::local::apps::request;
use ambit_controller::telemetry::api::{Edge, Graph};
use ambit_e2e::{can_run, get, in_pod, start};

const REVIEWS: &str = "http://10.96.0.10:9080/";
const CLIENT: &str = "workload:demo/client";

/// The controller's observation API (`--api-addr`) as the run state records it
/// (`RunState::controller_api`), read from the state's JSON.
fn controller_api(mesh: &LocalMesh) -> anyhow::Result<SocketAddr> {
    let state = serde_json::to_value(mesh.state())?;
    let addr = state["controller_api"].as_str().ok_or_else(|| {
        anyhow::anyhow!(
            "the run state has no controller_api (where `ambit up` records the controller's \
             observation API): {state}"
        )
    })?;
    Ok(addr.parse()?)
}

/// The demo's edge the test looks for: from client to reviews (the service through the
/// waypoint, or a reviews workload), with traffic in the window.
fn is_client_to_reviews(source: &str, destination: &str, rate: f64) -> bool {
    source == CLIENT && destination.contains("reviews") && rate > 0.0
}

fn edge_rate(edge: &Edge) -> f64 {
    if edge.protocol == "tcp" {
        edge.connections_per_second
    } else {
        edge.requests_per_second
    }
}

fn some_requests(mesh: &LocalMesh) -> anyhow::Result<()> {
    for _ in 0..5 {
        let r = in_pod(mesh, "demo", "client", || request(REVIEWS, &[]))?
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(r.status == 200, "client to reviews: {r:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_demos_edges_with_their_rates() -> anyhow::Result<()> {
    if !can_run("the_dashboard_shows_the_demos_edges_with_their_rates") {
        return Ok(());
    }
    anyhow::ensure!(
        std::path::Path::new(browser::CHROMIUM).exists(),
        "{} is missing: scripts/test installs Debian's chromium",
        browser::CHROMIUM
    );
    let mesh = start("dashboard", None).await?;
    let shown = the_page_shows_the_demos_edges(&mesh).await;
    mesh.down()?;
    shown
}

async fn the_page_shows_the_demos_edges(mesh: &LocalMesh) -> anyhow::Result<()> {
    let api = controller_api(mesh)?;

    // The controller serves the page itself.
    let (status, page) = get(&format!("http://{api}/")).await?;
    anyhow::ensure!(
        status == 200 && page.contains("/assets/app.js"),
        "GET http://{api}/: {status}\n{page}"
    );

    // Traffic until the proxies' reports put the edge into the controller's graph.
    let deadline = Instant::now() + Duration::from_secs(60);
    let graph = loop {
        some_requests(mesh)?;
        let (status, body) = get(&format!("http://{api}/api/graph?window=30s")).await?;
        anyhow::ensure!(status == 200, "GET /api/graph: {status} {body}");
        let graph: Graph = serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("/api/graph is no Graph ({e}): {body}"))?;
        let seen = graph
            .edges
            .iter()
            .any(|e| is_client_to_reviews(&e.source, &e.destination, edge_rate(e)));
        if seen {
            break graph;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no edge from {CLIENT} to reviews with a rate in the controller's graph after 60 s \
             of traffic: {graph:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The page, after a few of its refreshes.
    some_requests(mesh)?;
    let url = format!("http://{api}/");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browser::dump_dom(&url)
    })
    .await?;
    let status = browser::elements(&dom, "div", "status");
    anyhow::ensure!(
        status.len() == 1 && status[0].get("data-state") == "ok",
        "the page's status is not ok: {status:#?}\n{dom}"
    );
    let edges = browser::elements(&dom, "g", "edge");
    let shown = edges.iter().find(|e| {
        is_client_to_reviews(
            e.get("data-source"),
            e.get("data-destination"),
            e.get("data-rate").parse().unwrap_or(0.0),
        )
    });
    let Some(shown) = shown else {
        anyhow::bail!(
            "the page shows no edge from {CLIENT} to reviews with a rate; it shows {edges:#?}\n\
             the API's graph was {graph:#?}"
        );
    };
    // Its label says the rate, in req/s (L7) or conn/s (L4), and the success.
    let label = shown.words();
    anyhow::ensure!(
        (label.contains("req/s") || label.contains("conn/s")) && label.contains('%'),
        "{shown:#?}"
    );
    let nodes = browser::elements(&dom, "g", "node");
    anyhow::ensure!(
        nodes.iter().any(|n| n.get("data-node") == CLIENT),
        "no {CLIENT} node on the page: {nodes:#?}"
    );

    let screenshot = browser::artifacts_dir().join("dashboard-e2e.png");
    let path = screenshot.clone();
    tokio::task::spawn_blocking(move || browser::screenshot(&url, &path)).await?;
    println!("dashboard screenshot: {}", screenshot.display());
    Ok(())
}
