//! ztunnel's configuration: parsed once from flags (or their environment variables), then
//! passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::Lookups;
use ambit_proto::hbone::{self, ClientSettings, ConnectionLimits, LimitSettings, ServerSettings};
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
    /// How long open connections get to finish after SIGTERM, and a removed pod's connections
    /// after its removal; connections still open then are closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// HBONE connections still in their TLS or HTTP/2 handshake, node-wide; more are closed at
    /// once (counted and logged).
    #[arg(long, default_value_t = hbone::DEFAULT_MAX_HANDSHAKES)]
    pub hbone_max_handshakes: usize,
    /// Inbound HBONE connections, handshaking or established, node-wide; more are closed at
    /// once. Keep it well below the process's fd limit: each tunnel needs an fd of its own too.
    #[arg(long, default_value_t = hbone::DEFAULT_MAX_CONNECTIONS)]
    pub hbone_max_connections: usize,
    /// Inbound HBONE connections from one source identity, node-wide; more are refused with
    /// GOAWAY ENHANCE_YOUR_CALM.
    #[arg(long, default_value_t = hbone::DEFAULT_MAX_CONNECTIONS_PER_IDENTITY)]
    pub hbone_max_connections_per_identity: usize,
    /// An inbound HBONE connection that has not finished TLS and the HTTP/2 preface by then is
    /// closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub hbone_handshake_timeout: Duration,
    /// An inbound HBONE connection with no tunnel open for this long is closed with GOAWAY.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub hbone_idle_timeout: Duration,
    /// An outbound pooled HBONE connection with no tunnel open for this long is closed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub hbone_pool_idle_timeout: Duration,
    /// Worker threads of the data path.
    #[arg(long, default_value_t = 2)]
    pub worker_threads: usize,
    /// What the controller sends of destinations off this node. `on-demand`: only those this
    /// node's pods connect to, each asked for at its first connection (which waits for the
    /// answer); `all`: every service and meshed workload of the mesh, up front. Either way the
    /// node's own workloads and their policies come up front. Standalone (--config-file) the
    /// file holds everything and this has no effect.
    #[arg(long, value_enum, default_value = "on-demand")]
    pub destinations: Destinations,
    /// An on-demand destination no connection used for this long is released (and asked for
    /// again at the next connection).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub destination_idle_timeout: Duration,
    /// How long a connection to a destination ztunnel does not hold waits for the controller's
    /// answer; past it the connection is refused.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lookup_timeout: Duration,
}

/// See [`Config::destinations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Destinations {
    OnDemand,
    All,
}

impl Config {
    pub fn node_agent_socket(&self) -> PathBuf {
        self.node_agent_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/ambit/{}/ztunnel.sock", self.node)))
    }

    /// The node-wide bounds on inbound HBONE connections.
    pub fn hbone_limits(&self) -> LimitSettings {
        LimitSettings {
            max_handshakes: self.hbone_max_handshakes,
            max_connections: self.hbone_max_connections,
            max_connections_per_identity: self.hbone_max_connections_per_identity,
        }
    }

    /// Settings for every pod's HBONE server, all sharing `limits` so the bounds are per node.
    pub fn hbone_server(&self, limits: Arc<ConnectionLimits>) -> ServerSettings {
        ServerSettings {
            limits,
            handshake_timeout: self.hbone_handshake_timeout,
            idle_timeout: self.hbone_idle_timeout,
            drain_grace: self.drain_timeout,
            ..ServerSettings::default()
        }
    }

    /// The on-demand lookups, when ztunnel learns destinations from the controller by asking.
    pub fn lookups(&self) -> Option<Arc<Lookups>> {
        (self.config_file.is_none() && self.destinations == Destinations::OnDemand).then(|| {
            Arc::new(Lookups::new(
                self.destination_idle_timeout,
                self.lookup_timeout,
            ))
        })
    }

    /// Settings for every pod's HBONE client.
    pub fn hbone_client(&self) -> ClientSettings {
        ClientSettings {
            idle_timeout: self.hbone_pool_idle_timeout,
            ..ClientSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn hbone_defaults_are_the_documented_ones() {
        let config = Config::try_parse_from([
            "ztunnel",
            "--node",
            "n1",
            "--root-cert",
            "/dev/null",
            "--config-file",
            "/dev/null",
        ])
        .unwrap();
        assert_eq!(config.hbone_limits(), LimitSettings::default());
        let server = config.hbone_server(Arc::new(ConnectionLimits::default()));
        assert_eq!(server.handshake_timeout, hbone::DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(server.idle_timeout, hbone::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(server.drain_grace, config.drain_timeout);
        assert_eq!(
            config.hbone_client().idle_timeout,
            hbone::DEFAULT_POOL_IDLE_TIMEOUT
        );
    }
}
