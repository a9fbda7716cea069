//! ztunnel's configuration: parsed once from flags (or their environment variables), then
//! passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_proto::identity::SpiffeId;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ztunnel", version, about = "Ambit's per-node L4 proxy")]
pub struct Config {
    /// Name of the node this ztunnel serves; the controller sends it this node's scope.
    #[arg(long, env = "AMBIT_NODE")]
    pub node: String,
    /// The controller's discovery (and CA) gRPC address; always TLS.
    #[arg(
        long,
        env = "AMBIT_CONTROLLER",
        default_value = "https://127.0.0.1:15010"
    )]
    pub controller: String,
    /// The SPIFFE identity the controller must present [default:
    /// spiffe://<trust domain>/ns/ambit-system/sa/ambit-controller].
    #[arg(long)]
    pub controller_identity: Option<SpiffeId>,
    /// PEM file with the mesh root certificate(s) every peer must chain to.
    #[arg(long, env = "AMBIT_ROOT_CERT")]
    pub root_cert: PathBuf,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// File holding the token that proves which node this is to the controller: the node's
    /// bootstrap token (mesh file), or a projected service-account token (Kubernetes). Re-read
    /// on every call, so a rotated token is picked up.
    #[arg(
        long,
        env = "AMBIT_TOKEN_FILE",
        required_unless_present = "config_file"
    )]
    pub token_file: Option<PathBuf>,
    /// Standalone: take the mesh config from this YAML file (reloaded on change) instead of
    /// the controller.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Standalone: sign workload certificates here with this root key (the root certificate
    /// is --root-cert) instead of asking the controller's CA.
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    /// Unix socket on which the node agent (CNI, `ambit up`) adds and removes pods.
    #[arg(long)]
    pub node_agent_socket: Option<PathBuf>,
    /// Config dump (admin) address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics address.
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness address (/healthz/ready).
    #[arg(long, default_value = "127.0.0.1:15021")]
    pub readiness_addr: SocketAddr,
    /// How long open connections get to finish after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Worker threads of the data path.
    #[arg(long, default_value_t = 2)]
    pub worker_threads: usize,
}

impl Config {
    pub fn node_agent_socket(&self) -> PathBuf {
        self.node_agent_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/ambit/{}/ztunnel.sock", self.node)))
    }
}
