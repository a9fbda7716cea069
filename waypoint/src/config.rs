//! The waypoint's configuration: parsed once from flags (or their environment variables), then
//! passed down. The Kubernetes reconciler passes the first six flags (controller, name,
//! namespace, trust domain, token file, root cert); `ambit up` adds `--node`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_proto::hbone::{self, ClientSettings, ConnectionLimits, LimitSettings, ServerSettings};
use ambit_proto::identity::{SpiffeId, SpiffeIdError};
use std::sync::Arc;

use crate::http_limits::HttpLimits;
use crate::upstream::UpstreamSettings;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "waypoint",
    version,
    about = "Ambit's L7 proxy for a namespace's services"
)]
pub struct Config {
    /// The waypoint's name; the controller sends it the scope of the waypoint by this name.
    #[arg(long, env = "AMBIT_WAYPOINT_NAME")]
    pub name: String,
    /// The namespace the waypoint belongs to (and serves).
    #[arg(long, env = "AMBIT_WAYPOINT_NAMESPACE")]
    pub namespace: String,
    /// The service account the waypoint runs as [default: its name, as Istio names it]; its
    /// identity is spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
    #[arg(long)]
    pub service_account: Option<String>,
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
    /// File holding the token that proves who the waypoint is to the controller: its
    /// service account's projected token (Kubernetes), or its node's bootstrap token (a mesh
    /// file, with --node). Re-read on every call, so a rotated token is picked up.
    #[arg(long, env = "AMBIT_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Mesh-file mode: the node the waypoint runs on; it speaks with that node's token.
    #[arg(long, env = "AMBIT_NODE")]
    pub node: Option<String>,
    /// Where HBONE tunnels from ztunnels are accepted.
    #[arg(long, default_value = "[::]:15008")]
    pub hbone_addr: SocketAddr,
    /// Config dump (admin) address; loopback only.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics address.
    #[arg(long, default_value = "[::]:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness address (/healthz/ready).
    #[arg(long, default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,
    /// How long open requests and tunnels get to finish after SIGTERM; then they are closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Inbound HBONE connections, handshaking or established; more are closed at once.
    #[arg(long, default_value_t = hbone::DEFAULT_MAX_CONNECTIONS)]
    pub hbone_max_connections: usize,
    /// Inbound HBONE connections from one source identity; more are refused.
    #[arg(long, default_value_t = hbone::DEFAULT_MAX_CONNECTIONS_PER_IDENTITY)]
    pub hbone_max_connections_per_identity: usize,
    /// Upstream: a connection (TCP and HBONE handshake) to an endpoint that takes longer fails
    /// as UF (and is retried on another endpoint).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long a request may wait for its response's headers, retries included, when its
    /// route sets no `timeouts.request` (or it matches no route): Envoy's default. The body
    /// then streams for as long as it lasts.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Per-connection limits of the HTTP/1.1 and HTTP/2 server (slow headers, header size,
    /// HTTP/2 streams and resets): the `--http*` flags.
    #[command(flatten)]
    pub http_limits: HttpLimits,
    /// Worker threads of the data path.
    #[arg(long, default_value_t = 2)]
    pub worker_threads: usize,
    /// What an escaped slash or backslash (`%2F`, `%5C`) or a literal backslash in a request's
    /// path does: `reject` answers 400, `decode` makes it a `/` before the path is normalised
    /// (Istio's pathNormalization choice; see README "Paths").
    #[arg(long, value_enum, default_value_t = crate::path::EscapedSlashes::Reject)]
    pub path_escaped_slashes: crate::path::EscapedSlashes,
}

impl Config {
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(&self.name)
    }

    /// The identity the waypoint presents, upstream and downstream.
    pub fn identity(&self) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(&self.trust_domain, &self.namespace, self.service_account())
    }

    /// "<namespace>/<name>": how services and workloads name this waypoint.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The HBONE server's settings: tunnels to any address (the waypoint serves service VIPs).
    pub fn hbone_server(&self) -> ServerSettings {
        ServerSettings {
            authority_check: hbone::AuthorityCheck::Any,
            drain_grace: self.drain_timeout,
            limits: Arc::new(ConnectionLimits::new(LimitSettings {
                max_connections: self.hbone_max_connections,
                max_connections_per_identity: self.hbone_max_connections_per_identity,
                ..LimitSettings::default()
            })),
            ..ServerSettings::default()
        }
    }

    pub fn upstream(&self) -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout: self.connect_timeout,
            ..UpstreamSettings::default()
        }
    }

    pub fn hbone_client(&self) -> ClientSettings {
        ClientSettings {
            connect_timeout: self.connect_timeout,
            ..ClientSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_reconcilers_flags_parse_and_name_the_identity() {
        let config = Config::try_parse_from([
            "waypoint",
            "--controller=https://ambit-controller.ambit-system:15010",
            "--name=waypoint",
            "--namespace=demo",
            "--trust-domain=cluster.local",
            "--token-file=/var/run/secrets/tokens/ambit",
            "--root-cert=/etc/ambit/root-cert.pem",
        ])
        .unwrap();
        assert_eq!(
            config.identity().unwrap().as_str(),
            "spiffe://cluster.local/ns/demo/sa/waypoint"
        );
        assert_eq!(config.key(), "demo/waypoint");
        assert_eq!(config.hbone_addr.port(), 15008);
        assert!(config.admin_addr.ip().is_loopback());
        assert_eq!(config.http_limits, HttpLimits::default());
        assert_eq!(
            config.path_escaped_slashes,
            crate::path::EscapedSlashes::Reject,
            "escaped slashes are refused unless asked otherwise"
        );
    }
}
