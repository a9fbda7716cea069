use std::convert::Infallible;
use std::net::SocketAddr;

use ambit_controller::explain::explain;
use ambit_controller::model::MeshModel;
use ambit_controller::source::file::{EMBEDDED_MESH, parse};
use ambit_controller::telemetry::api::{FlowRecord, PartyRecord};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::failures::{describe_failure, flag_sentence};
use super::render::render;
use super::*;

fn demo() -> MeshModel {
    parse(EMBEDDED_MESH, "test").expect("the demo parses").model
}

fn text(m: &MeshModel, from: &str, to: &str) -> String {
    render(&explain(m, from, to).expect("explains"))
}

fn assert_all(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing in:\n{text}");
    }
}

#[test]
fn the_demo_walk_names_each_hop_and_the_split() {
    let t = text(&demo(), "demo/client", "demo/reviews");
    assert_all(
        &t,
        &[
            "demo/client -> demo/reviews:9080 (reviews.demo.svc.cluster.local)",
            "1. Capture: demo/client (10.244.1.2, node node-a) is in the mesh",
            "spiffe://cluster.local/ns/demo/sa/client",
            "2. Waypoint: service demo/reviews has ambit.io/use-waypoint: waypoint",
            "waypoint demo/waypoint (node node-a, 10.244.1.10)",
            "3. Route:",
            "rule 0: requests with header x-canary = 1 go to demo/reviews-v2:8080 (100%)",
            "rule 1: requests with header x-echo-delay-ms = 300 go to demo/reviews-v1:8080 (100%); timeout 100ms",
            "rule 2: every request goes to demo/reviews-v1:8080 (90%), demo/reviews-v2:8080 (10%)",
            "demo/reviews-v2 at 10.244.2.2:8080 on node node-b, healthy, in the mesh (mTLS permissive)",
            "the ztunnel on node node-a / node-b receives the connection from waypoint demo/waypoint",
            "demo/deny-denied-client (DENY) selects",
            "NO",
            "Verdict: ALLOWED.",
        ],
    );
}

#[test]
fn the_denied_client_is_told_which_policy_and_rule_deny_it_where() {
    let t = text(&demo(), "demo/denied-client", "demo/reviews");
    assert_all(
        &t,
        &[
            "rule 0 matches (from principals [spiffe://cluster.local/ns/demo/sa/denied-client]: yes; to ports [8080]: yes)",
            "it denies this caller (rule 0)",
            "Verdict: DENIED by authorization policy demo/deny-denied-client, at waypoint demo/waypoint (L7)",
            "403 with x-ambit-flags: RBAC",
        ],
    );
    // Without the waypoint, the pod's ztunnel refuses the connection.
    let t = text(&demo(), "demo/denied-client", "demo/reviews-v1");
    assert_all(
        &t,
        &[
            "at the ztunnel on node node-a (L4)",
            "the connection is refused",
        ],
    );
}

#[test]
fn unmeshed_strict_and_observer_cases_read_as_such() {
    let t = text(&demo(), "legacy/legacy", "demo/reviews");
    assert_all(
        &t,
        &[
            "Capture: not captured",
            "the mesh sees nothing of it",
            "is not on this path",
            "receives plain text",
        ],
    );
    let strict = EMBEDDED_MESH.replacen(
        "      ambit.io/dataplane-mode: ambient\n",
        "      ambit.io/dataplane-mode: ambient\n      ambit.io/mtls-mode: strict\n",
        1,
    );
    let m = parse(&strict, "strict").expect("parses").model;
    assert_all(
        &text(&m, "legacy/legacy", "demo/reviews"),
        &["REFUSED: namespace demo requires mutual TLS"],
    );
    let m = parse(&format!("policyMode: audit\n{EMBEDDED_MESH}"), "audit")
        .expect("parses")
        .model;
    assert_all(
        &text(&m, "demo/denied-client", "demo/reviews"),
        &[
            "observer mode: reported, never enforced",
            "it would have denied this caller (rule 0)",
            "WOULD DENY",
        ],
    );
}

#[test]
fn route_timeouts_retries_and_breakers_are_spelled_out() {
    let yaml = format!(
        "{}\ntrafficPolicies:\n  - name: reviews-v1\n    namespace: demo\n    targetRef: {{group: \"\", kind: Service, name: reviews-v1}}\n    connectionPool:\n      http: {{http1MaxPendingRequests: 10}}\n    outlierDetection: {{consecutive5xxErrors: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n",
        EMBEDDED_MESH.replacen(
            "      - backendRefs:\n          - {name: reviews-v1, port: 8080, weight: 90}\n",
            "      - timeouts: {request: 2s, backendRequest: 500ms}\n        retry: {attempts: 3, codes: [503], backoff: 100ms}\n        backendRefs:\n          - {name: reviews-v1, port: 8080, weight: 90}\n",
            1
        )
    );
    let m = parse(&yaml, "route").expect("parses").model;
    assert_all(
        &text(&m, "demo/client", "demo/reviews"),
        &[
            "timeout 2s in all, 500ms per try",
            "retried up to 3 more times on 503 and connection failures, 100ms apart",
            "traffic policy demo/reviews-v1: circuit breaker at 10 pending requests",
            "ejected after 5 consecutive 5xx answers for 30s",
        ],
    );
}

fn record(flags: &str) -> FlowRecord {
    FlowRecord {
        reporter_kind: "waypoint".into(),
        reporter: "demo/waypoint".into(),
        start_unix_ms: 1_700_000_000_000,
        duration_ms: 2000.4,
        protocol: "http1".into(),
        source: PartyRecord {
            workload: "client".into(),
            namespace: "demo".into(),
            identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
            ..Default::default()
        },
        destination: PartyRecord {
            workload: "reviews-v1".into(),
            namespace: "demo".into(),
            ..Default::default()
        },
        destination_service: "reviews.demo.svc.cluster.local".into(),
        destination_port: 9080,
        method: "GET".into(),
        path: "/".into(),
        status: 503,
        response_flags: flags.into(),
        route: "demo/reviews".into(),
        backend_service: "reviews-v1.demo.svc.cluster.local".into(),
        attempts: 4,
        failed: true,
        policy: "demo/deny-x".into(),
        ..Default::default()
    }
}

#[test]
fn every_flag_the_proxies_emit_reads_as_a_sentence() {
    let ztunnel = |mut r: FlowRecord| {
        r.reporter_kind = "ztunnel".into();
        r.reporter = "node-b".into();
        r
    };
    let no_policy = |mut r: FlowRecord| {
        r.policy.clear();
        r
    };
    let cases: Vec<(&str, FlowRecord, &[&str])> = vec![
        (
            "RBAC",
            record("RBAC"),
            &["the authorization policy demo/deny-x denied it"],
        ),
        (
            "RBAC",
            FlowRecord {
                would_deny: true,
                ..record("RBAC")
            },
            &["would have denied it", "observer mode"],
        ),
        (
            "RBAC",
            FlowRecord {
                reason: "requires mTLS".into(),
                ..no_policy(ztunnel(record("RBAC")))
            },
            &["requires mutual TLS", "plain text"],
        ),
        (
            "RBAC",
            no_policy(record("RBAC")),
            &["an authorization policy denied it"],
        ),
        (
            "UT",
            record("UT"),
            &["timed out after 2s", "the timeout of route demo/reviews"],
        ),
        (
            "UO",
            record("UO"),
            &["circuit breaker for reviews-v1.demo.svc.cluster.local was open"],
        ),
        ("URX", record("URX"), &["gave up after 4 attempts"]),
        (
            "UF",
            record("UF"),
            &["connecting to reviews-v1.demo.svc.cluster.local failed"],
        ),
        (
            "UH",
            record("UH"),
            &["no healthy endpoint", "down or ejected"],
        ),
        (
            "UH",
            ztunnel(record("UH")),
            &[
                "no healthy upstream",
                "waypoint it must go through is unavailable",
            ],
        ),
        ("NR", record("NR"), &["no route matched the request (404)"]),
        ("NR", ztunnel(record("NR")), &["nowhere to send it"]),
        (
            "NR",
            FlowRecord {
                reason: "service payments/ledger is outside the egress scope namespace shop declares (\"./*\")".into(),
                ..ztunnel(record("NR"))
            },
            &["declares an egress scope", "ambit.io/egress-scope"],
        ),
        ("UC", record("UC"), &["broke after the request was sent"]),
        ("UR", record("UR"), &["reset the request's stream"]),
        ("UPE", record("UPE"), &["not valid HTTP (502)"]),
        ("DC", record("DC"), &["the caller went away"]),
        (
            "NC",
            record("NC"),
            &["a backend that does not exist, or only zero weights"],
        ),
        ("DPE", record("DPE"), &["path cannot be normalised"]),
        ("ZZ", record("ZZ"), &["response flag ZZ"]),
    ];
    // Every letter either proxy can emit (ztunnel: FailureReason::response_flag; the
    // waypoint: local_reply::Flag::letters) is in the table.
    for flag in [
        "RBAC", "UF", "UH", "NR", "UT", "UC", "UR", "UPE", "DC", "URX", "NC", "DPE", "UO",
    ] {
        assert!(cases.iter().any(|(f, ..)| *f == flag), "{flag} untested");
    }
    for (flag, r, parts) in &cases {
        let sentence = flag_sentence(flag, r);
        for part in *parts {
            assert!(
                sentence.contains(part),
                "{flag}: {part:?} missing in {sentence}"
            );
        }
    }
}

#[test]
fn a_failure_paragraph_says_when_who_where_and_why() {
    let mut r = record("UT");
    r.reason = "no answer within the route's 2s timeout".into();
    r.status = 504;
    r.attempts = 1;
    let p = describe_failure(&r);
    assert_all(
        &p,
        &[
            "2023-11-14T22:13:20.000Z: demo/client -> reviews.demo.svc.cluster.local:9080 (GET /) failed at waypoint demo/waypoint with status 504.",
            "It timed out after 2s",
            "Route demo/reviews, backend reviews-v1.demo.svc.cluster.local.",
            "Waypoint demo/waypoint said: \"no answer within the route's 2s timeout\".",
        ],
    );
    // Two flags, each explained; no flag and a 5xx is the application's.
    let p = describe_failure(&record("URX,UO"));
    assert_all(&p, &["gave up after 4 attempts", "circuit breaker"]);
    let p = describe_failure(&record("-"));
    assert_all(&p, &["the application failed, not the mesh", "4 attempts."]);
    // A TCP connection refused by ztunnel.
    let mut r = record("RBAC");
    r.reporter_kind = "ztunnel".into();
    r.reporter = "node-a".into();
    r.method.clear();
    r.status = 0;
    r.route.clear();
    let p = describe_failure(&r);
    assert_all(
        &p,
        &[
            "(a TCP connection) failed at the ztunnel on node node-a.",
            "The authorization policy demo/deny-x denied it.",
        ],
    );
    assert!(failures::render("demo/client", &[]).contains("No failed request"));
}

#[derive(Debug, clap::Parser)]
struct Cmd {
    #[command(flatten)]
    args: ExplainArgs,
}

#[test]
fn the_arguments_are_one_question_or_the_other() {
    let parse =
        |argv: &[&str]| Cmd::try_parse_from(std::iter::once("explain").chain(argv.iter().copied()));
    let a = parse(&["demo/client", "demo/reviews:9080"])
        .expect("a question")
        .args;
    assert_eq!(a.source.as_deref(), Some("demo/client"));
    assert_eq!(a.destination.as_deref(), Some("demo/reviews:9080"));
    assert_eq!(a.output, Format::Text);
    let a = parse(&[
        "--last-failure",
        "demo/client",
        "--limit",
        "3",
        "-o",
        "json",
    ])
    .expect("last failure")
    .args;
    assert_eq!(
        (a.last_failure.as_deref(), a.limit),
        (Some("demo/client"), Some(3))
    );
    assert_eq!(a.output, Format::Json);
    for bad in [
        &[][..],
        &["demo/client"],
        &["--last-failure", "demo/client", "demo/a", "demo/b"],
        &["--limit", "3", "demo/a", "demo/b"],
        &["--last-failure", "demo/client", "--limit", "0"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} accepted");
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// A stand-in for the controller's API on a real socket: explains over the demo model, and
/// serves two failures for demo/denied-client.
async fn api() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let query: std::collections::HashMap<String, String> = req
                        .uri()
                        .query()
                        .unwrap_or("")
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), decode(v)))
                        .collect();
                    let (status, body) = match req.uri().path() {
                        "/api/explain" => match explain(&demo(), &query["from"], &query["to"]) {
                            Ok(e) => (200, serde_json::to_string(&e).expect("json")),
                            Err(e) => (404, e.to_string()),
                        },
                        "/api/failures" if query["workload"] == "demo/denied-client" => {
                            let limit: usize = query["limit"].parse().expect("limit");
                            let all = [record("RBAC"), record("UT")];
                            (
                                200,
                                serde_json::to_string(&all[..limit.min(2)]).expect("json"),
                            )
                        }
                        "/api/failures" => (200, "[]".to_string()),
                        _ => (404, String::new()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn args(argv: &[&str]) -> ExplainArgs {
    Cmd::try_parse_from(std::iter::once("explain").chain(argv.iter().copied()))
        .expect("parses")
        .args
}

#[tokio::test]
async fn the_command_asks_the_controller_over_http_and_renders_its_answers() {
    let api = api().await;
    let t = output(api, &args(&["demo/denied-client", "demo/reviews:9080"]))
        .await
        .expect("explained");
    assert_all(
        &t,
        &["DENIED by authorization policy demo/deny-denied-client"],
    );
    // An IPv6 VIP with port survives the query string.
    let t = output(api, &args(&["demo/client", "[fd00:10:96::11]:8080"]))
        .await
        .expect("explained");
    assert_all(&t, &["demo/client -> demo/reviews-v1:8080"]);
    let json = output(api, &args(&["-o", "json", "demo/client", "demo/reviews"]))
        .await
        .expect("json");
    let e: Explanation = serde_json::from_str(&json).expect("the API's JSON");
    assert_eq!(e.destination.name, "demo/reviews");
    // The controller's refusal is passed on with its reason.
    let err = output(api, &args(&["demo/nobody", "demo/reviews"]))
        .await
        .expect_err("unknown source");
    assert_all(
        &err.to_string(),
        &["answered 404", "no workload demo/nobody", "demo/client"],
    );
    let t = output(
        api,
        &args(&["--last-failure", "demo/denied-client", "--limit", "1"]),
    )
    .await
    .expect("failures");
    assert_all(
        &t,
        &[
            "The last 1 failure of demo/denied-client",
            "demo/deny-x denied it",
        ],
    );
    assert!(!t.contains("timed out"), "the limit is passed on:\n{t}");
    let t = output(api, &args(&["--last-failure", "demo/client"]))
        .await
        .expect("none");
    assert_all(&t, &["No failed request"]);
    let err = output(api, &args(&["--last-failure", "client"]))
        .await
        .expect_err("bad name");
    assert_all(&err.to_string(), &["<namespace>/<workload>"]);
}

#[tokio::test]
async fn a_controller_that_is_not_there_is_an_error_naming_the_address() {
    // A port nobody listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = output(addr, &args(&["demo/client", "demo/reviews"]))
        .await
        .expect_err("nobody there");
    assert_all(
        &err.to_string(),
        &[
            &format!("cannot reach the controller's API at {addr}"),
            "ambit up",
        ],
    );
}

#[test]
fn a_route_without_a_catch_all_says_what_happens_to_the_rest() {
    assert!(!text(&demo(), "demo/client", "demo/reviews").contains("404"));
    let yaml = EMBEDDED_MESH.replacen(
        "      - backendRefs:\n          - {name: reviews-v1, port: 8080, weight: 90}\n          - {name: reviews-v2, port: 8080, weight: 10}\n",
        "",
        1,
    );
    let m = parse(&yaml, "canary only").expect("parses").model;
    assert_all(
        &text(&m, "demo/client", "demo/reviews"),
        &["A request no rule matches is answered 404 (flag NR)."],
    );
}

#[test]
fn a_destination_outside_the_egress_scope_reads_as_refused_at_the_callers_ztunnel() {
    let yaml = EMBEDDED_MESH.replacen(
        "      ambit.io/dataplane-mode: ambient\n",
        "      ambit.io/dataplane-mode: ambient\n    egressScope: ['./*']\n",
        1,
    );
    let m = parse(&yaml, "test").expect("the scoped demo parses").model;
    let t = text(&m, "demo/client", "legacy/legacy");
    assert_all(
        &t,
        &[
            "REFUSED by the caller's ztunnel: namespace demo declares the egress scope \"./*\" and legacy/legacy is outside it",
            "outside_egress_scope",
        ],
    );
}
