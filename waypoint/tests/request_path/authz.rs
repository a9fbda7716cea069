//! Authorization at the waypoint: the reviews pods' policies, judged on the client's identity
//! (the pods themselves only ever see the waypoint's) and, for L7 rules, on the request as the
//! pod receives it. Raw requests are written byte for byte onto the tunnel, so that no client
//! library cleans a path up before the waypoint sees it.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_proto::api::security::{self as sec, Action};
use ambit_waypoint::path::EscapedSlashes;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const DENIED: &str = "spiffe://cluster.local/ns/demo/sa/denied-client";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_policy_on_the_client_principal_is_403_rbac_naming_the_policy() {
    let mesh = Mesh::start(Setup {
        policies: vec![policy("deny-denied", Action::Deny, &[DENIED])],
        ..Setup::default()
    })
    .await;

    let mut denied = mesh.client_as("denied-client").http1(REVIEWS).await;
    for _ in 0..5 {
        let reply = denied.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        assert_eq!(reply.flags(), Some("RBAC"), "{reply:?}");
        assert!(
            reply.text().contains("demo/deny-denied"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(mesh.app("reviews-v1").requests(), 0);
    assert_eq!(mesh.app("reviews-v2").requests(), 0);

    let mut allowed = mesh.client().http1(REVIEWS).await;
    for _ in 0..5 {
        let reply = allowed.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    let served = mesh.app("reviews-v1").requests() + mesh.app("reviews-v2").requests();
    assert_eq!(served, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_policy_lets_its_principal_through_and_no_one_else() {
    let mesh = Mesh::start(Setup {
        policies: vec![policy("allow-client", Action::Allow, &[CLIENT])],
        ..Setup::default()
    })
    .await;

    let mut allowed = mesh.client().http1(REVIEWS).await;
    let reply = allowed.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    let mut other = mesh.client_as("other").http1(REVIEWS).await;
    let reply = other.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.flags(), Some("RBAC"), "{reply:?}");
    assert!(
        reply.text().contains("other"),
        "the reply says who was refused: {}",
        reply.text()
    );

    let served = mesh.app("reviews-v1").requests() + mesh.app("reviews-v2").requests();
    assert_eq!(served, 1);
}

/// Any workload with a mesh certificate can reach the waypoint and write `forwarded`: a claim
/// of another client address must not get it past an `ipBlocks` rule, in either direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_blocks_judge_the_peers_own_address_not_a_claimed_one() {
    // The test's clients dial from loopback.
    let mesh = Mesh::start(Setup {
        policies: vec![ip_policy("deny-loopback", Action::Deny, "127.0.0.0/8")],
        ..Setup::default()
    })
    .await;
    let forged: SocketAddr = "10.244.9.9:40000".parse().unwrap();
    let mut claiming_another = mesh.client().claiming(forged).http1(REVIEWS).await;
    let reply = claiming_another.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(
        reply.text().contains("demo/deny-loopback"),
        "{}",
        reply.text()
    );
    let own: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut claiming_its_own = mesh.client().claiming(own).http1(REVIEWS).await;
    let reply = claiming_its_own.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(
        mesh.app("reviews-v1").requests() + mesh.app("reviews-v2").requests(),
        0
    );

    // Allowed only from the pod network: a claim of a pod address does not let loopback in.
    let mesh = Mesh::start(Setup {
        policies: vec![ip_policy("allow-pods", Action::Allow, "10.244.0.0/16")],
        ..Setup::default()
    })
    .await;
    let mut claiming_a_pod = mesh.client().claiming(forged).http1(REVIEWS).await;
    let reply = claiming_a_pod.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.flags(), Some("RBAC"), "{reply:?}");
    assert_eq!(
        mesh.app("reviews-v1").requests() + mesh.app("reviews-v2").requests(),
        0
    );
}

/// Policy `demo/<name>` with one rule whose source is the addresses in `cidr`.
fn ip_policy(name: &str, action: Action, cidr: &str) -> sec::AuthorizationPolicy {
    let mut p = policy(name, action, &[]);
    p.rules[0].from[0].ip_blocks = vec![cidr.into()];
    p
}

/// The bypass table of the issue, over real sockets: (raw request target, status for the
/// denied identity, status for another, what the pod receives when it is let through).
const BYPASSES: &[(&str, u16, u16, Option<&str>)] = &[
    ("/admin", 403, 200, Some("/admin")),
    ("/admin/", 403, 200, Some("/admin/")),
    ("//admin", 403, 200, Some("/admin")),
    ("/./admin", 403, 200, Some("/admin")),
    ("/admin%2F..", 400, 400, None),
    ("/admin%2f..", 400, 400, None),
    ("/public%2F..%2Fadmin", 400, 400, None),
    ("/%61dmin", 403, 200, Some("/admin")),
    ("/%2e%2e/admin", 403, 200, Some("/admin")),
    ("/admin#x", 403, 200, Some("/admin")),
    ("/admin?x", 403, 200, Some("/admin?x")),
    ("/a/../admin", 403, 200, Some("/admin")),
    ("/a/b/../../admin/x", 403, 200, Some("/admin/x")),
    ("/admin%5C", 400, 400, None),
    ("/public\\..\\admin", 400, 400, None),
    ("/ADMIN", 200, 200, Some("/ADMIN")),
    ("/reviews/1", 200, 200, Some("/reviews/1")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l7_deny_on_admin_holds_for_every_spelling_of_the_path() {
    let mesh = Mesh::start(Setup {
        policies: vec![l7(
            "deny-admin",
            Action::Deny,
            Some(DENIED),
            paths(&["/admin*"]),
        )],
        ..Setup::default()
    })
    .await;
    let denied = mesh.client_as("denied-client");
    let other = mesh.client();
    for &(target, for_denied, for_other, received) in BYPASSES {
        let expected = |status: u16| match (status, received) {
            (200, Some(path)) => vec![path.to_string()],
            _ => vec![],
        };
        let (reply, seen) = mesh.send(&denied, &get(target, "reviews")).await;
        assert_eq!(
            reply.status, for_denied,
            "{target} as denied-client: {reply:?}"
        );
        check_local_reply(&reply, target, "demo/deny-admin");
        // The pod reads exactly the path the policy judged, or nothing.
        assert_eq!(seen, expected(for_denied), "{target} as denied-client");
        let (reply, seen) = mesh.send(&other, &get(target, "reviews")).await;
        assert_eq!(reply.status, for_other, "{target} as client: {reply:?}");
        check_local_reply(&reply, target, "demo/deny-admin");
        assert_eq!(seen, expected(for_other), "{target} as client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_escaped_slashes_decoded_the_policy_judges_the_decoded_path() {
    let mesh = Mesh::start(Setup {
        policies: vec![l7(
            "deny-admin",
            Action::Deny,
            Some(DENIED),
            paths(&["/admin*"]),
        )],
        escaped_slashes: Some(EscapedSlashes::Decode),
        ..Setup::default()
    })
    .await;
    let denied = mesh.client_as("denied-client");
    for (target, status, received) in [
        ("/public%2F..%2Fadmin", 403, None),
        ("/public%2f..%2fadmin", 403, None),
        ("/public\\..\\admin", 403, None),
        ("/public%5C..%5Cadmin", 403, None),
        // This one really is a request for /, and the pod gets /.
        ("/admin%2F..", 200, Some("/")),
    ] {
        let (reply, seen) = mesh.send(&denied, &get(target, "reviews")).await;
        assert_eq!(reply.status, status, "{target}: {reply:?}");
        check_local_reply(&reply, target, "demo/deny-admin");
        let expected: Vec<String> = received.into_iter().map(str::to_string).collect();
        assert_eq!(seen, expected, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_on_host_reviews_holds_for_any_case_port_and_uri_form() {
    let mesh = Mesh::start(Setup {
        policies: vec![l7(
            "deny-host",
            Action::Deny,
            None,
            sec::Destination {
                hosts: vec!["reviews".into()],
                ..Default::default()
            },
        )],
        ..Setup::default()
    })
    .await;
    let client = mesh.client();
    for host in [
        "reviews",
        "REVIEWS",
        "reviews:9080",
        "ReViEwS:9080",
        "reviews.",
    ] {
        let reply = raw(&client, &get("/", host)).await;
        assert_eq!(reply.status, 403, "Host: {host}: {reply:?}");
        assert_eq!(reply.flags(), Some("RBAC"), "{reply:?}");
    }
    // The URI's authority (absolute form) and the Host header disagreeing: the DENY holds on
    // either.
    for (target, host) in [
        ("http://ratings/", "reviews"),
        ("http://REVIEWS:9080/", "ratings"),
    ] {
        let reply = raw(&client, &get(target, host)).await;
        assert_eq!(reply.status, 403, "{target} Host: {host}: {reply:?}");
    }
    // HTTP/2's :authority.
    assert_eq!(h2_status(&client, "http://REVIEWS:9080/x").await, 403);
    assert_eq!(mesh.paths_seen(), 0);
    // Other hosts pass.
    let reply = raw(&client, &get("/", "reviews.demo.svc.cluster.local:9080")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        h2_status(&client, "http://reviews.demo.svc.cluster.local:9080/x").await,
        200
    );
    assert_eq!(mesh.paths_seen(), 2);
}

/// On a current-thread runtime every task of the mesh logs on this thread, where the capture
/// is installed.
#[tokio::test(flavor = "current_thread")]
async fn audit_logs_and_counts_a_match_while_the_request_succeeds() {
    let logs = Capture::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let mesh = Mesh::start(Setup {
        policies: vec![
            l7("audit-admin", Action::Audit, None, paths(&["/admin*"])),
            l7(
                "deny-secret",
                Action::Deny,
                Some(DENIED),
                paths(&["/secret"]),
            ),
            l7(
                "allow-all",
                Action::Allow,
                None,
                sec::Destination::default(),
            ),
        ],
        ..Setup::default()
    })
    .await;
    let decisions = "ambit_policy_decisions_total";

    let mut client = mesh.client().http1(REVIEWS).await;
    Capture::listen();
    let reply = client.get("/admin/users").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the audit changes nothing: {reply:?}"
    );
    let audit = mesh
        .metric_line(
            decisions,
            &["policy=\"demo/audit-admin\"", "decision=\"audit\""],
        )
        .await;
    assert!(audit.ends_with(" 1"), "{audit}");
    let line = logs.line_with(&["demo/audit-admin", "sa/client", "/admin/users"]);
    assert!(line.is_some(), "no audit log line in:\n{}", logs.text());

    let reply = client.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let allow = mesh
        .metric_line(
            decisions,
            &["policy=\"demo/allow-all\"", "decision=\"allow\""],
        )
        .await;
    assert!(allow.ends_with(" 2"), "{allow}");

    let mut denied = mesh.client_as("denied-client").http1(REVIEWS).await;
    Capture::listen();
    let reply = denied.get("/secret").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    let deny = mesh
        .metric_line(
            decisions,
            &["policy=\"demo/deny-secret\"", "decision=\"deny\""],
        )
        .await;
    assert!(deny.ends_with(" 1"), "{deny}");
    let line = logs.line_with(&[
        "denied by authorization policy",
        "demo/deny-secret",
        "sa/denied-client",
    ]);
    assert!(line.is_some(), "no deny log line in:\n{}", logs.text());
    // Still one audit: /reviews/1 and /secret do not match it.
    let audit = mesh
        .metric_line(
            decisions,
            &["policy=\"demo/audit-admin\"", "decision=\"audit\""],
        )
        .await;
    assert!(audit.ends_with(" 1"), "{audit}");
    assert_eq!(mesh.paths_seen(), 2);
}

// ---------------------------------------------------------------------------------------------

/// Policy `demo/<name>` with one rule: from `principal` (anyone when `None`) to `to`.
fn l7(
    name: &str,
    action: Action,
    principal: Option<&str>,
    to: sec::Destination,
) -> sec::AuthorizationPolicy {
    sec::AuthorizationPolicy {
        name: name.into(),
        namespace: "demo".into(),
        selector: None,
        action: action as i32,
        dry_run: false,
        rules: vec![sec::Rule {
            from: principal
                .map(|p| {
                    vec![sec::Source {
                        principals: vec![p.into()],
                        ..Default::default()
                    }]
                })
                .unwrap_or_default(),
            to: vec![to],
            ..Default::default()
        }],
    }
}

fn paths(p: &[&str]) -> sec::Destination {
    sec::Destination {
        paths: p.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn get(target: &str, host: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// A local reply carries the flag of its status; a 403 names the policy.
fn check_local_reply(reply: &Raw, target: &str, policy: &str) {
    match reply.status {
        403 => {
            assert_eq!(reply.flags(), Some("RBAC"), "{target}: {reply:?}");
            assert!(reply.body.contains(policy), "{target}: {reply:?}");
        }
        400 => {
            assert_eq!(reply.flags(), Some("DPE"), "{target}: {reply:?}");
            assert!(reply.body.contains("path"), "{target}: {reply:?}");
        }
        _ => assert_eq!(reply.flags(), None, "{target}: {reply:?}"),
    }
}

impl Mesh {
    fn reviews_apps(&self) -> [&Arc<App>; 2] {
        [self.app("reviews-v1"), self.app("reviews-v2")]
    }

    fn path_counts(&self) -> [usize; 2] {
        self.reviews_apps().map(|a| a.paths.lock().len())
    }

    fn paths_seen(&self) -> usize {
        self.path_counts().iter().sum()
    }

    /// What the reviews pods received since `before` ([`Mesh::path_counts`]).
    fn paths_since(&self, before: [usize; 2]) -> Vec<String> {
        self.reviews_apps()
            .iter()
            .zip(before)
            .flat_map(|(a, n)| a.paths.lock()[n..].to_vec())
            .collect()
    }

    /// `request` written raw onto a tunnel to reviews as `client`; the response, and the
    /// request targets the pods received meanwhile.
    async fn send(&self, client: &Client, request: &str) -> (Raw, Vec<String>) {
        let before = self.path_counts();
        let reply = raw(client, request).await;
        (reply, self.paths_since(before))
    }
}

/// A response read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn flags(&self) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-ambit-flags")
                .then(|| value.trim())
        })
    }
}

/// Writes `request` as it is onto a tunnel to reviews and reads the response.
async fn raw(client: &Client, request: &str) -> Raw {
    let mut tunnel = client
        .tunnel(REVIEWS)
        .await
        .expect("the waypoint accepts the tunnel");
    let exchange = async {
        tunnel
            .write_all(request.as_bytes())
            .await
            .expect("the request is written");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(raw) = parse(&buf) {
                return raw;
            }
            let n = tunnel.read(&mut chunk).await.expect("the response is read");
            assert!(
                n > 0,
                "the connection closed before a whole response: {buf:?}"
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the exchange ends in time")
}

/// A whole response (status line, headers, a `content-length` body), if `buf` holds one.
fn parse(buf: &[u8]) -> Option<Raw> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length).then(|| Raw {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// The status of a GET to `uri` over HTTP/2, its `:authority` taken from `uri` as written.
async fn h2_status(client: &Client, uri: &str) -> u16 {
    let tunnel = client
        .tunnel(REVIEWS)
        .await
        .expect("the waypoint accepts the tunnel");
    let exchange = async {
        let (mut send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tunnel))
            .await
            .expect("HTTP/2 handshake over the tunnel");
        tokio::spawn(connection);
        let request = Request::get(uri)
            .version(http::Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(request).await.expect("a response");
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        status
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the exchange ends in time")
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Capture(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish()
    }

    /// Log callsites cache whether anyone listens: one first reached by a test on another
    /// thread (no subscriber there) while this one was being installed may have cached "no".
    /// Asking every callsite again makes the capture see the events that follow.
    fn listen() {
        tracing::callsite::rebuild_interest_cache();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }

    fn line_with(&self, parts: &[&str]) -> Option<String> {
        self.text()
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
    }
}
