//! `ambit explain <source> <destination[:port]>`: how a request travels through the mesh and
//! what decides it, from the controller's `GET /api/explain`; and `ambit explain
//! --last-failure <workload>`: the workload's most recent failed requests or connections, the
//! hop that failed and why, from `GET /api/failures`. Both in sentences an application
//! developer reads without knowing the mesh's internals, or as the API's JSON (`-o json`).

mod failures;
mod render;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_controller::explain::Explanation;
use ambit_controller::telemetry::api::FlowRecord;
use anyhow::Context;
use clap::ValueEnum;

use crate::local::apps::fetch;

/// How long the controller gets to answer: it answers from memory, so this is generous.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures shown by `--last-failure` without `--limit`.
pub const DEFAULT_LIMIT: u32 = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Sentences, a numbered walk of the hops.
    #[default]
    Text,
    /// The controller's JSON, as served.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The calling workload, <namespace>/<name> (e.g. demo/client).
    #[arg(
        required_unless_present = "last_failure",
        conflicts_with = "last_failure"
    )]
    pub source: Option<String>,
    /// Where it sends: a service (<namespace>/<name>, host name or VIP) or a workload
    /// (<namespace>/<name> or pod address), with :port when it has several
    /// (e.g. demo/reviews:9080).
    #[arg(
        required_unless_present = "last_failure",
        conflicts_with = "last_failure"
    )]
    pub destination: Option<String>,
    /// Instead: the most recent failed requests or connections of this workload
    /// (<namespace>/<name>), as caller or callee, each with the hop that failed and why.
    #[arg(long, value_name = "WORKLOAD")]
    pub last_failure: Option<String>,
    /// With --last-failure: how many failures to show, newest first [default: 5].
    #[arg(long, conflicts_with_all = ["source", "destination"], value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

pub async fn run(api: SocketAddr, args: ExplainArgs) -> anyhow::Result<()> {
    let text = output(api, &args).await?;
    print!("{text}");
    Ok(())
}

/// What `run` prints.
async fn output(api: SocketAddr, args: &ExplainArgs) -> anyhow::Result<String> {
    if let Some(workload) = &args.last_failure {
        check_workload(workload)?;
        let body = get(
            api,
            &format!(
                "/api/failures?workload={}&limit={}",
                encode(workload),
                args.limit.unwrap_or(DEFAULT_LIMIT)
            ),
        )
        .await?;
        if args.output == Format::Json {
            return Ok(with_newline(body));
        }
        let records: Vec<FlowRecord> = serde_json::from_str(&body)
            .with_context(|| format!("reading the failures the controller at {api} sent"))?;
        return Ok(failures::render(workload, &records));
    }
    let (Some(from), Some(to)) = (&args.source, &args.destination) else {
        anyhow::bail!(
            "give a source and a destination (ambit explain demo/client demo/reviews), or --last-failure <namespace>/<workload>"
        );
    };
    check_workload(from)?;
    let body = get(
        api,
        &format!("/api/explain?from={}&to={}", encode(from), encode(to)),
    )
    .await?;
    if args.output == Format::Json {
        return Ok(with_newline(body));
    }
    let explanation: Explanation = serde_json::from_str(&body)
        .with_context(|| format!("reading the explanation the controller at {api} sent"))?;
    Ok(render::render(&explanation))
}

fn with_newline(mut body: String) -> String {
    if !body.ends_with('\n') {
        body.push('\n');
    }
    body
}

fn check_workload(name: &str) -> anyhow::Result<()> {
    match name.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Ok(()),
        _ => anyhow::bail!("{name:?} is not <namespace>/<workload>: name a pod, e.g. demo/client"),
    }
}

/// GET `path` from the controller's API: the body of a 200, else an error with the
/// controller's own explanation (its body).
async fn get(api: SocketAddr, path: &str) -> anyhow::Result<String> {
    let url = format!("http://{api}{path}");
    let (status, body) = tokio::time::timeout(API_TIMEOUT, fetch(&url))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the controller's API at {api} did not answer within {API_TIMEOUT:?}")
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the controller's API at {api}: {e} (is the mesh running, e.g. `ambit up`, and is this its API address?)"
            )
        })?;
    if status != 200 {
        let said = body.trim_end();
        anyhow::bail!(
            "the controller at {api} answered {status}{}{said}",
            if said.is_empty() { "" } else { ": " }
        );
    }
    Ok(body)
}

/// A query value, percent-encoded: everything but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
