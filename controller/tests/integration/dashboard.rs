//! The dashboard: `dashboard::asset` serves the page and every file it references, and the page,
//! loaded in headless Chromium (Debian's package, which scripts/test installs; see `browser`)
//! from a loopback server with canned API answers (`canned`), draws the graph's edges with their
//! rates, marks denials and would-denies, opens an edge's panel with its failures, streams a
//! tap, and says when there is no traffic or no API. A screenshot is kept in
//! target/test-artifacts/dashboard.png.

mod browser;
mod canned;

use std::path::Path;

use ambit_controller::dashboard::asset;
use ambit_controller::telemetry::api::Graph;
use regex::Regex;

use browser::{Element, artifacts_dir, elements};
use canned::{CLIENT_EDGE, Canned, DENIED_EDGE, demo_graph, serve};

// ---- the page's files ----

fn content_type_for(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/html; charset=utf-8",
    }
}

/// The files `text` (served at `path`) loads: the HTML's src and href, a module's imports
/// (relative to its own path).
fn references(path: &str, text: &str) -> Vec<String> {
    let html = Regex::new(r#"(?:src|href)="([^"]*)""#).unwrap();
    let import = Regex::new(r#"(?m)^\s*(?:import|export)\b[^'"]*from\s+['"]([^'"]+)['"]"#).unwrap();
    let pattern = if path.ends_with(".js") {
        &import
    } else {
        &html
    };
    let dir = &path[..path.rfind('/').unwrap() + 1];
    pattern
        .captures_iter(text)
        .map(|c| c[1].to_string())
        .filter(|r| !r.starts_with("data:"))
        .map(|r| match r.strip_prefix("./") {
            Some(relative) => format!("{dir}{relative}"),
            None => r,
        })
        .collect()
}

#[test]
fn asset_serves_the_page_and_every_file_it_references() {
    let (content_type, _) = asset("/").expect("no page at /");
    assert_eq!(content_type, "text/html; charset=utf-8");
    // From the page, every file it loads and every file those load.
    let mut served = vec![];
    let mut pending = vec!["/".to_string()];
    while let Some(path) = pending.pop() {
        if served.contains(&path) {
            continue;
        }
        // No CDN: everything the page loads is its own.
        assert!(path.starts_with('/') && !path.starts_with("//"), "{path}");
        let (content_type, body) =
            asset(&path).unwrap_or_else(|| panic!("the page loads {path}, which is not served"));
        assert_eq!(content_type, content_type_for(&path), "{path}");
        assert!(!body.is_empty(), "{path} is empty");
        pending.extend(references(&path, std::str::from_utf8(body).unwrap()));
        served.push(path);
    }
    for path in [
        "/assets/app.js",
        "/assets/style.css",
        "/assets/graph.js",
        "/assets/tap.js",
    ] {
        assert!(
            served.iter().any(|s| s == path),
            "{path} not loaded: {served:?}"
        );
    }
    // Every file of the folder is served as it is on disk, and loaded by the page: a file added
    // there and not to `asset`, or one the page no longer loads, fails here.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/dashboard");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let path = match file.as_str() {
            "index.html" => "/".to_string(),
            other => format!("/assets/{other}"),
        };
        let (content_type, body) = asset(&path).unwrap_or_else(|| panic!("{file} not served"));
        assert_eq!(content_type, content_type_for(&file), "{file}");
        assert_eq!(body, std::fs::read(dir.join(&file)).unwrap(), "{file}");
        assert!(
            served.contains(&path),
            "{file} is not loaded by the page: {served:?}"
        );
        files += 1;
    }
    assert_eq!(files, served.len(), "{served:?}");
}

// ---- the page in Chromium ----

/// The page after a few refreshes, as HTML (Chromium blocks: off the runtime's threads).
async fn dump_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || browser::dump_dom(&url))
        .await
        .unwrap()
}

fn one<'a>(found: &'a [Element], what: &str, dom: &str) -> &'a Element {
    assert_eq!(found.len(), 1, "{what}: {found:#?}\n{dom}");
    &found[0]
}

fn status_line(dom: &str) -> Element {
    let mut found = elements(dom, "div", "status");
    one(&found, "the status line", dom);
    found.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_the_graphs_edges_with_rates_and_marks_denials() {
    let canned = Canned::new(Some(demo_graph()));
    let addr = serve(canned.clone()).await;
    let dom = dump_dom(format!("http://{addr}/")).await;

    let status = status_line(&dom);
    assert_eq!(status.get("data-state"), "ok", "{status:?}");
    let nodes = elements(&dom, "g", "node");
    assert_eq!(nodes.len(), 3, "{nodes:#?}\n{dom}");
    let edges = elements(&dom, "g", "edge");
    assert_eq!(edges.len(), 2, "{edges:#?}\n{dom}");

    let client = edges.iter().find(|e| e.get("data-edge") == CLIENT_EDGE);
    let client = client.unwrap_or_else(|| panic!("no edge {CLIENT_EDGE}: {edges:#?}"));
    assert_eq!(client.get("data-rps"), "12.5");
    assert_eq!(client.get("data-rate"), "12.5");
    assert!(client.text.contains("12.5 req/s · 96.0%"), "{client:?}");
    // 96% is degraded (amber), and the observer-mode policy would deny some of it.
    assert!(client.get("class").contains("health-warn"), "{client:?}");
    assert!(client.get("class").contains("would-deny"), "{client:?}");
    assert!(!client.get("class").contains(" denied"), "{client:?}");
    assert!(
        client.text.contains("would deny: demo/observe-reviews"),
        "{client:?}"
    );

    let denied = edges.iter().find(|e| e.get("data-edge") == DENIED_EDGE);
    let denied = denied.unwrap_or_else(|| panic!("no edge {DENIED_EDGE}: {edges:#?}"));
    assert_eq!(denied.get("data-denied"), "17");
    assert_eq!(denied.get("data-rate"), "4.25");
    assert!(denied.get("class").contains("denied"), "{denied:?}");
    assert!(denied.text.contains("4.25 conn/s · 0%"), "{denied:?}");
    assert!(
        denied.text.contains("denied: demo/deny-denied-client"),
        "{denied:?}"
    );
    // It polled: the first load and at least one refresh 2 s (virtual) later.
    let polls = canned
        .requested()
        .iter()
        .filter(|r| *r == "/api/graph?window=30s")
        .count();
    assert!(polls >= 2, "{:?}", canned.requested());

    let screenshot = artifacts_dir().join("dashboard.png");
    let (url, path) = (format!("http://{addr}/"), screenshot.clone());
    tokio::task::spawn_blocking(move || browser::screenshot(&url, &path))
        .await
        .unwrap();
    println!("dashboard screenshot: {}", screenshot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edges_panel_shows_its_figures_and_only_its_failures() {
    let canned = Canned::new(Some(demo_graph()));
    let addr = serve(canned.clone()).await;
    let dom = dump_dom(format!(
        "http://{addr}/#edge={}",
        CLIENT_EDGE.replace('>', "%3E")
    ))
    .await;

    let panel = elements(&dom, "aside", "edge-panel");
    let panel = one(&panel, "the edge panel", &dom);
    assert!(panel.get("hidden").is_empty() && !panel.attributes.iter().any(|(n, _)| n == "hidden"));
    let figures = elements(&dom, "dl", "edge-figures");
    let figures = &one(&figures, "the figures", &dom).text;
    for expected in [
        "requests/s 12.5",
        "success 96.0%",
        "p50 3.25 ms",
        "p99 41 ms",
        "connections/s 0.50",
        "bytes/s 2.0 kB/s",
        "mTLS yes",
        "would deny 2",
        "policies demo/observe-reviews",
    ] {
        let squeezed = figures.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            squeezed.contains(expected),
            "{expected:?} not in {squeezed:?}"
        );
    }
    // The source workload's failures, of which one is this edge's.
    assert!(
        canned
            .requested()
            .contains(&"/api/failures?workload=demo%2Fclient".to_string()),
        "{:?}",
        canned.requested()
    );
    let failures = elements(&dom, "tr", "failure-row");
    let failure = one(&failures, "the edge's failures", &dom);
    assert!(
        failure.text.contains("504") && failure.text.contains("GET /reviews/1"),
        "{failure:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_view_streams_flows_as_text() {
    let canned = Canned::new(Some(demo_graph()));
    let addr = serve(canned.clone()).await;
    let dom = dump_dom(format!(
        "http://{addr}/#tap?namespace=demo&failed_only=true"
    ))
    .await;

    assert!(
        canned
            .requested()
            .contains(&"/api/tap?namespace=demo&failed_only=true".to_string()),
        "{:?}",
        canned.requested()
    );
    let rows = elements(&dom, "tr", "tap-row");
    assert_eq!(rows.len(), 3, "{rows:#?}\n{dom}");
    // Newest first; the failed one marked.
    assert!(
        rows[0].text.contains("/<img src=x onerror=alert(1)>"),
        "{rows:#?}"
    );
    assert!(rows[1].get("class").contains("failed") && rows[1].text.contains("504"));
    assert!(rows[2].text.contains("demo/client") && rows[2].text.contains("reviews.demo.svc"));
    assert!(
        !dom.contains("<img"),
        "markup from the API became an element:\n{dom}"
    );
    let tap = elements(&dom, "div", "tap-status");
    let tap = one(&tap, "the tap status", &dom);
    assert_eq!(tap.get("data-state"), "ended", "{tap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_there_is_no_traffic_or_no_api() {
    let quiet = Graph {
        window_seconds: 30.0,
        ..Graph::default()
    };
    let addr = serve(Canned::new(Some(quiet))).await;
    let dom = dump_dom(format!("http://{addr}/")).await;
    let status = status_line(&dom);
    assert_eq!(status.get("data-state"), "empty", "{status:?}");
    let message = elements(&dom, "div", "graph-message");
    let message = one(&message, "the graph's message", &dom);
    assert_eq!(message.text, "no traffic in the last 30 s");

    let addr = serve(Canned::new(None)).await;
    let dom = dump_dom(format!("http://{addr}/")).await;
    let status = status_line(&dom);
    assert_eq!(status.get("data-state"), "unreachable", "{status:?}");
    assert!(
        status.text.contains("the controller's API is unreachable"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_to_a_node_the_graph_does_not_list_is_drawn_all_the_same() {
    let mut graph = demo_graph();
    graph.nodes.retain(|n| n.id != canned::REVIEWS);
    let addr = serve(Canned::new(Some(graph))).await;
    let dom = dump_dom(format!("http://{addr}/")).await;
    let edges = elements(&dom, "g", "edge");
    assert_eq!(edges.len(), 2, "{edges:#?}\n{dom}");
    let nodes = elements(&dom, "g", "node");
    let reviews = nodes.iter().find(|n| n.get("data-node") == canned::REVIEWS);
    let reviews = reviews.unwrap_or_else(|| panic!("no node {}: {nodes:#?}", canned::REVIEWS));
    assert!(reviews.get("class").contains("kind-service"), "{reviews:?}");
    // Its name, the host, is longer than a box: its end is shown, the whole id is its tooltip.
    assert!(
        reviews
            .words()
            .starts_with("…emo.svc.cluster.local service")
            && reviews.words().ends_with(canned::REVIEWS),
        "{reviews:?}"
    );
}
