//! `ambit policy suggest`: least-privilege ALLOW policies from the traffic the proxies observed,
//! asked of the controller's observation API (`GET /api/policy/suggest`) and printed as YAML to
//! apply, the evidence as comments. A suggestion that would deny observed traffic (or could not
//! be checked) is printed too, with the reasons on stderr, and the command fails.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_controller::suggest::Suggestion;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

/// How long the controller gets to answer (it evaluates every observed flow twice).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Suggest least-privilege ALLOW policies (by source principal and port; by method and path
    /// where a waypoint saw the requests) from the traffic observed so far, as YAML to apply.
    Suggest(SuggestArgs),
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// Only policies for destinations in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// `mesh`: items for a mesh file's `authorizationPolicies:` list; `kubernetes`: Ambit
    /// AuthorizationPolicy objects (ambit.io/v1alpha1) for kubectl apply.
    #[arg(long, value_enum, default_value_t = Format::Kubernetes)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Mesh,
    Kubernetes,
}

pub async fn run(api: SocketAddr, args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Suggest(args) => {
            let suggestion = fetch_suggestion(api, args.namespace.as_deref()).await?;
            print!("{}", yaml(&suggestion, args.format));
            if let Some(faults) = faults(&suggestion) {
                eprint!("{faults}");
                anyhow::bail!(
                    "the suggested policies would deny observed traffic or could not be checked (above): do not apply them as they are"
                );
            }
            Ok(())
        }
    }
}

/// The suggestion's YAML in `format`.
pub fn yaml(suggestion: &Suggestion, format: Format) -> &str {
    match format {
        Format::Mesh => &suggestion.mesh_yaml,
        Format::Kubernetes => &suggestion.kubernetes_yaml,
    }
}

/// What is wrong with the suggestion, for stderr; `None` when nothing is.
pub fn faults(s: &Suggestion) -> Option<String> {
    if !s.is_faulty() {
        return None;
    }
    let mut out = String::from("ERROR: the suggested policies are faulty:\n");
    for w in &s.would_deny {
        out.push_str(&format!(
            "  would deny observed traffic: {} -> {} port {} ({} {}{}): {} [{}]\n",
            display_source(&w.flow.source_identity),
            w.workload,
            w.port,
            w.flow.reporter_kind,
            w.flow.method,
            w.flow.path_prefix,
            w.reason,
            w.policy
        ));
    }
    for p in &s.problems {
        out.push_str(&format!("  {p}\n"));
    }
    Some(out)
}

fn display_source(identity: &str) -> &str {
    if identity.is_empty() {
        "plaintext client"
    } else {
        identity
    }
}

/// `GET /api/policy/suggest[?namespace=N]` of the controller's API at `api`.
pub async fn fetch_suggestion(
    api: SocketAddr,
    namespace: Option<&str>,
) -> anyhow::Result<Suggestion> {
    let query = match namespace {
        Some(ns) => {
            anyhow::ensure!(
                is_namespace_name(ns),
                "--namespace {ns:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
            );
            format!("?namespace={ns}")
        }
        None => String::new(),
    };
    let url = format!("http://{api}/api/policy/suggest{query}");
    let (status, body) = tokio::time::timeout(ANSWER_WITHIN, crate::local::apps::fetch(&url))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the controller's API at {api} did not answer GET {url} within {ANSWER_WITHIN:?}"
            )
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "could not reach the controller's API at {api} ({e}): is the mesh running (ambit up), and is that its --api-addr?"
            )
        })?;
    anyhow::ensure!(status == 200, "GET {url}: HTTP {status}: {}", body.trim());
    serde_json::from_str(&body)
        .with_context(|| format!("GET {url} answered something that is not a suggestion"))
}

/// A Kubernetes namespace name (an RFC 1123 label): also safe in a query string as it is.
fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use ambit_controller::source::file::{EMBEDDED_MESH, parse};
    use ambit_controller::suggest::{WAYPOINT, suggest};
    use ambit_controller::telemetry::api::ObservedFlow;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Serves one HTTP/1.1 answer per connection on a real socket, recording each request line.
    async fn serve(status: u16, body: String) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                record
                    .lock()
                    .push(head.lines().next().unwrap_or_default().to_string());
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (addr, seen)
    }

    fn demo_suggestion() -> Suggestion {
        let model = parse(EMBEDDED_MESH, "demo").unwrap().model;
        let flow = ObservedFlow {
            reporter_kind: WAYPOINT.into(),
            source_identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
            destination_namespace: "demo".into(),
            destination_service: "reviews.demo.svc.cluster.local".into(),
            destination_port: 9080,
            method: "GET".into(),
            path_prefix: "/".into(),
            count: 10,
            first_seen_unix_ms: 1,
            last_seen_unix_ms: 2,
            ..Default::default()
        };
        suggest(&model, &[flow], Some("demo"), 3)
    }

    #[tokio::test]
    async fn fetches_the_suggestion_with_its_namespace_and_picks_the_format() {
        let s = demo_suggestion();
        let (api, seen) = serve(200, serde_json::to_string(&s).unwrap()).await;
        let got = fetch_suggestion(api, Some("demo")).await.unwrap();
        assert_eq!(got, s);
        assert_eq!(
            seen.lock().as_slice(),
            ["GET /api/policy/suggest?namespace=demo HTTP/1.1"]
        );
        assert!(yaml(&got, Format::Mesh).contains("authorizationPolicies:"));
        assert!(yaml(&got, Format::Kubernetes).contains("kind: AuthorizationPolicy"));
        assert_eq!(faults(&got), None);
    }

    #[tokio::test]
    async fn errors_name_the_cause() {
        let (api, _) = serve(500, "model not ready".into()).await;
        let e = fetch_suggestion(api, None).await.unwrap_err().to_string();
        assert!(
            e.contains("HTTP 500") && e.contains("model not ready"),
            "{e}"
        );
        let e = fetch_suggestion(api, Some("Demo&x=1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a namespace name"), "{e}");
        // Nothing listens on a port just released.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = fetch_suggestion(free, None).await.unwrap_err().to_string();
        assert!(e.contains("could not reach the controller's API"), "{e}");
    }

    #[test]
    fn the_flags_parse_and_kubernetes_is_the_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Ambit {
            #[command(flatten)]
            policy: PolicyArgs,
        }
        let a = Ambit::try_parse_from([
            "ambit",
            "suggest",
            "--namespace",
            "demo",
            "--format",
            "mesh",
        ])
        .unwrap();
        let PolicyCommand::Suggest(args) = a.policy.command;
        assert_eq!(
            (args.namespace.as_deref(), args.format),
            (Some("demo"), Format::Mesh)
        );
        let PolicyCommand::Suggest(args) = Ambit::try_parse_from(["ambit", "suggest"])
            .unwrap()
            .policy
            .command;
        assert_eq!(args.format, Format::Kubernetes);
        assert!(Ambit::try_parse_from(["ambit", "suggest", "--format", "json"]).is_err());
    }

    #[test]
    fn a_faulty_suggestion_is_reported() {
        let mut s = demo_suggestion();
        s.problems.push("the mesh does not build".into());
        let text = faults(&s).unwrap();
        assert!(text.contains("ERROR") && text.contains("the mesh does not build"));
    }
}
