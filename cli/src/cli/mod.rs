//! `ambit`, the command line: run a local mesh (`up`, `down`), look inside it (`config`,
//! `status`), watch its traffic (`stat`, `top`, `tap`, from the controller's observation API),
//! ask why (`explain`), derive policies from it (`policy suggest`), measure it (`bench`), and the sample apps its pods run (`app`).

pub mod api_client;
mod app;
mod bench;
mod explain;
mod inspect;
mod policy;
mod routes;
mod stat;
mod summary;
mod tap;
mod top;
mod up;
mod waypoints;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ambit",
    version,
    about = "Ambit service mesh: run a local mesh and see what it does"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a mesh of network namespaces from a mesh file, run it with traffic, print a live
    /// summary, and remove everything at the end (needs root).
    Up(UpArgs),
    /// Remove what a crashed `ambit up` left: namespaces, links, rules, processes.
    Down,
    /// Show what a node's ztunnel holds (like istioctl ztunnel-config).
    Config(ConfigArgs),
    /// Each component of the running local mesh, its version and whether it is in sync.
    Status(OutputArgs),
    /// Per workload or service: success rate, requests per second, latencies and TCP
    /// connections over a window (like linkerd viz stat).
    Stat(stat::StatArgs),
    /// The busiest paths right now, from a live tap, redrawn every second.
    Top(top::TopArgs),
    /// A live line per request or connection of a workload or service: who to whom, status,
    /// flags, latency, mTLS.
    Tap(tap::TapArgs),
    /// How a request from a workload to a service travels and what each policy, route and
    /// timeout does to it; or, with --last-failure, a workload's latest failures and why.
    Explain {
        #[command(flatten)]
        args: explain::ExplainArgs,
        #[command(flatten)]
        api: api_client::ApiArgs,
    },
    /// Authorization policies from the observed traffic (`ambit policy suggest`).
    Policy {
        #[command(flatten)]
        args: policy::PolicyArgs,
        #[command(flatten)]
        api: api_client::ApiArgs,
    },
    /// Load one server pod directly and through the mesh, interleaved, and print the ratios.
    Bench(BenchArgs),
    /// The sample workloads run inside pods.
    #[command(hide = true, subcommand)]
    App(AppCommand),
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Mesh file; the embedded default (examples/mesh.yaml) when absent.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Stop after this long (e.g. 30s, 2m); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second each client sends to each service.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// Seconds between live summaries.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Observer mode: every authorization policy is evaluated and what it would deny is logged
    /// and counted (ambit_policy_decisions_total{mode="audit"}), but nothing is blocked.
    #[arg(long)]
    pub observe: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Section {
    Workloads,
    Services,
    Policies,
    Certificates,
    Connections,
    /// The egress scopes each ztunnel holds for its pods' namespaces.
    EgressScopes,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[arg(value_enum)]
    pub section: Section,
    /// The node whose ztunnel to ask; the first node when absent.
    #[arg(long)]
    pub node: Option<String>,
    /// A ztunnel admin address to ask instead of the local mesh's.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds of load per round and path.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Rounds (each runs direct and mesh, alternating which goes first).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Serve on the given ports until killed.
    Serve {
        #[arg(long, value_enum, default_value_t = AppKind::HttpEcho)]
        kind: AppKind,
        #[arg(long = "port", required = true)]
        ports: Vec<u16>,
        #[arg(long)]
        name: String,
        /// Log each HTTP or gRPC request served as a JSON line on stdout.
        #[arg(long)]
        access_log: bool,
    },
    /// Send requests to targets, printing a JSON report per target per second.
    Drive {
        /// A URL, optionally followed by request headers, each after a `|`:
        /// `http://10.96.0.10:9080/|x-canary: 1`.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long, default_value_t = 10)]
        rate: u32,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Send this many megabytes to a sink on one connection; prints one JSON result.
    Blast {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 512)]
        megabytes: u64,
    },
    /// Keep-alive HTTP load against one target for a while; prints one JSON result.
    Load {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Requests per second in all (paced); as fast as possible when absent.
        #[arg(long)]
        rate: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AppKind {
    HttpEcho,
    TcpEcho,
    Sink,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Down => up::down(),
            Command::Config(args) => inspect::config(args).await,
            Command::Status(args) => inspect::status(args).await,
            Command::Stat(args) => stat::run(args).await,
            Command::Top(args) => top::run(args).await,
            Command::Tap(args) => tap::run(args).await,
            Command::Explain { args, api } => explain::run(api.resolve()?, args).await,
            Command::Policy { args, api } => policy::run(api.resolve()?, args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::App(cmd) => app::run(cmd).await,
        }
    })
}
