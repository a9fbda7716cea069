//! The controller's configuration: parsed once from the command line (and `RUST_LOG`), then
//! passed down.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ca::NamespacedName;
use crate::ca::root_configmap;
use crate::model::{MtlsMode, PolicyMode};
use crate::waypoints;

/// Where the mesh model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The demo mesh built into the binary (examples/mesh.yaml).
    Embedded,
    /// A mesh file, reloaded when it changes.
    File(PathBuf),
    /// The Kubernetes API (in-cluster service account, else the kubeconfig): namespaces, pods
    /// and services, watched.
    Kubernetes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--source {given:?} is not a source: use file:PATH, kubernetes, or embedded (the default)")]
pub struct SourceSpecError {
    given: String,
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(SourceSpec::Embedded),
            "kubernetes" => Ok(SourceSpec::Kubernetes),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SourceSpec::File(path.into())),
                _ => Err(SourceSpecError { given: s.into() }),
            },
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Embedded => f.write_str("embedded"),
            SourceSpec::File(path) => write!(f, "file:{}", path.display()),
            SourceSpec::Kubernetes => f.write_str("kubernetes"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--mtls-mode {mode} applies to --source kubernetes only; with --source {given} set it in the mesh file instead (top-level 'mtlsMode: {mode}')"
    )]
    MtlsModeWithFile { given: String, mode: MtlsMode },
    #[error(
        "--policy-mode {mode} applies to --source kubernetes only; with --source {given} set it in the mesh file instead (top-level 'policyMode: {mode}'; `ambit up --observe` does that for the local mesh)"
    )]
    PolicyModeWithFile { given: String, mode: PolicyMode },
}

/// `--api-addr`: a loopback address only.
fn loopback_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("{text:?} is not an address like 127.0.0.1:15016 ({e})"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address: the observation API shows every flow of the mesh without authentication, so it listens on 127.0.0.0/8 or ::1 only; reach it from elsewhere with `kubectl port-forward` or an SSH tunnel"
        ))
    }
}

/// How callers of the CA prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaAuth {
    /// Each node's bootstrap token from the mesh file.
    BootstrapTokens,
    /// Kubernetes service-account tokens, checked by the API server (TokenReview).
    TokenReview,
}

/// Ambit control plane: serves each ztunnel and waypoint its scope of the mesh config, and
/// workload certificates.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "controller", version)]
pub struct Config {
    /// Where the mesh comes from: file:PATH (watched for changes), kubernetes (the cluster's API), or
    /// embedded (the demo mesh of examples/mesh.yaml).
    #[arg(long, default_value = "embedded")]
    pub source: SourceSpec,
    /// gRPC address for discovery and the CA, both over TLS; callers authenticate with tokens
    /// (--ca-auth), for subscriptions as for certificates.
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub listen: SocketAddr,
    /// The controller's own identity, NAMESPACE/SERVICE-ACCOUNT in the mesh's trust domain: the
    /// certificate it presents on --listen, which proxies pin (their --controller-identity).
    #[arg(long, default_value = "ambit-system/ambit-controller")]
    pub identity: NamespacedName,
    /// HTTP address for /metrics (Prometheus) and /healthz/ready.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub metrics: SocketAddr,
    /// HTTP address of the observation API (service graph, stat, tap, failures: what `ambit
    /// stat/top/tap` and the dashboard read). Loopback only, as it shows every flow of the mesh
    /// unauthenticated: from outside the host or pod, reach it with `kubectl port-forward`
    /// (or an SSH tunnel).
    #[arg(long, default_value = "127.0.0.1:15016", value_parser = loopback_addr)]
    pub api_addr: SocketAddr,
    /// CA root certificate (PEM); generated with the key on first start if neither exists.
    /// Ignored with --ca-secret.
    #[arg(long, default_value = "/var/lib/ambit/ca/root-cert.pem")]
    pub ca_cert: PathBuf,
    /// CA root private key (PEM, written with mode 0600 when generated).
    #[arg(long, default_value = "/var/lib/ambit/ca/root-key.pem")]
    pub ca_key: PathBuf,
    /// Kubernetes Secret NAMESPACE/NAME holding the CA root (keys ca-cert.pem and ca-key.pem),
    /// instead of --ca-cert/--ca-key; created with a new root if it does not exist.
    #[arg(long, conflicts_with_all = ["ca_cert", "ca_key"])]
    pub ca_secret: Option<NamespacedName>,
    /// How CA callers authenticate [default: token-review with --source kubernetes, else
    /// bootstrap-tokens].
    #[arg(long, value_enum)]
    pub ca_auth: Option<CaAuth>,
    /// Audience the CA requires of service-account tokens (token-review): the audience of the
    /// projected token volume of ztunnels and waypoints.
    #[arg(long, default_value = "ambit-ca")]
    pub ca_token_audience: String,
    /// The ztunnel's service account, NAMESPACE/NAME (token-review): its pod-bound tokens speak for
    /// their pod's node; any other service account may obtain only its own (waypoint) identity.
    #[arg(long, default_value = "ambit-system/ztunnel")]
    pub ztunnel_service_account: NamespacedName,
    /// Namespace of the ConfigMap ambit-ca-root-cert (key root-cert.pem) in which the controller
    /// publishes the mesh root certificate for ztunnel, with --source kubernetes [default: the
    /// namespace of --ca-secret, else ambit-system].
    #[arg(long)]
    pub root_cert_namespace: Option<String>,
    /// Deploy waypoints: each Gateway of class ambit-waypoint gets a ServiceAccount, Deployment,
    /// Service and root certificate ConfigMap (only with --source kubernetes; --waypoints=false
    /// to leave waypoints to someone else).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub waypoints: bool,
    /// Container image of the waypoints the controller deploys.
    #[arg(long, default_value_t = waypoints::default_image())]
    pub waypoint_image: String,
    /// The controller's address as waypoint pods dial it (discovery and CA, over TLS).
    #[arg(
        long,
        default_value = "https://ambit-controller.ambit-system.svc:15010"
    )]
    pub waypoint_controller_address: String,
    /// mTLS mode of meshed pods whose namespace has no ambit.io/mtls-mode label, with --source
    /// kubernetes (a mesh file says it in its own mtlsMode field) [default: permissive, as
    /// Istio's; strict is a mesh-wide PeerAuthentication with mode STRICT].
    #[arg(long, value_enum)]
    pub mtls_mode: Option<MtlsMode>,
    /// Observer mode of the policies of namespaces without an ambit.io/policy-mode label, with
    /// --source kubernetes (a mesh file says it in its own policyMode field): audit evaluates
    /// them and logs and counts what they would deny, blocking nothing [default: enforce].
    #[arg(long, value_enum)]
    pub policy_mode: Option<PolicyMode>,
    /// How long a node's ztunnel may be without a config subscription, after having had one,
    /// before the node's meshed pods are marked unhealthy for the rest of the mesh (until it
    /// subscribes again); 0s never marks them.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub node_down_after: Duration,
    /// Lifetime of issued workload certificates (a caller may ask for less).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// How often a mesh file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
    /// After SIGTERM/SIGINT, how long open streams and requests get to finish.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The CA's authentication: as given, else what the source provides (bootstrap tokens come
    /// only from mesh files; a cluster has service-account tokens).
    pub fn ca_auth(&self) -> CaAuth {
        self.ca_auth.unwrap_or(match self.source {
            SourceSpec::Kubernetes => CaAuth::TokenReview,
            SourceSpec::Embedded | SourceSpec::File(_) => CaAuth::BootstrapTokens,
        })
    }

    /// `--mtls-mode` where it applies: only a cluster takes the mesh-wide mode from a flag, so
    /// that a mesh file is never overridden behind its back.
    pub fn kubernetes_mtls_mode(&self) -> Result<MtlsMode, ConfigError> {
        match (&self.source, self.mtls_mode) {
            (SourceSpec::Kubernetes, mode) => Ok(mode.unwrap_or_default()),
            (_, None) => Ok(MtlsMode::default()),
            (source, Some(mode)) => Err(ConfigError::MtlsModeWithFile {
                given: source.to_string(),
                mode,
            }),
        }
    }

    /// `--policy-mode` where it applies, as `--mtls-mode`.
    pub fn kubernetes_policy_mode(&self) -> Result<PolicyMode, ConfigError> {
        match (&self.source, self.policy_mode) {
            (SourceSpec::Kubernetes, mode) => Ok(mode.unwrap_or_default()),
            (_, None) => Ok(PolicyMode::default()),
            (source, Some(mode)) => Err(ConfigError::PolicyModeWithFile {
                given: source.to_string(),
                mode,
            }),
        }
    }

    /// Where the root certificate ConfigMap is published: as given, else beside the CA Secret
    /// (the controller's namespace), else the default.
    pub fn root_cert_namespace(&self) -> &str {
        match (&self.root_cert_namespace, &self.ca_secret) {
            (Some(namespace), _) => namespace,
            (None, Some(secret)) => &secret.namespace,
            (None, None) => root_configmap::DEFAULT_NAMESPACE,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn sources_parse_and_print_back() {
        for (text, spec) in [
            ("embedded", SourceSpec::Embedded),
            ("kubernetes", SourceSpec::Kubernetes),
            (
                "file:/etc/ambit/mesh.yaml",
                SourceSpec::File("/etc/ambit/mesh.yaml".into()),
            ),
        ] {
            assert_eq!(text.parse::<SourceSpec>().unwrap(), spec);
            assert_eq!(spec.to_string(), text);
        }
        for bad in ["file:", "k8s", "/etc/mesh.yaml"] {
            let err = bad.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(err.contains("file:PATH"), "{err}");
        }
    }

    #[test]
    fn defaults_are_the_documented_ports_and_ttl() {
        let c = Config::try_parse_from(["controller", "--log", "info"]).unwrap();
        assert_eq!(c.source, SourceSpec::Embedded);
        assert_eq!(c.listen.port(), 15010);
        assert_eq!(c.metrics.port(), 15014);
        assert_eq!(c.api_addr, "127.0.0.1:15016".parse().unwrap());
        assert_eq!(c.cert_ttl, Duration::from_secs(24 * 3600));
        let c =
            Config::try_parse_from(["controller", "--log", "info", "--cert-ttl", "90m"]).unwrap();
        assert_eq!(c.cert_ttl, Duration::from_secs(90 * 60));
        assert!(Config::try_parse_from(["controller", "--source", "nope"]).is_err());
    }

    #[test]
    fn the_observation_api_listens_on_loopback_only() {
        let parse = |addr: &str| Config::try_parse_from(["controller", "--api-addr", addr]);
        assert_eq!(
            parse("127.0.3.254:15016").unwrap().api_addr,
            "127.0.3.254:15016".parse().unwrap()
        );
        assert!(parse("[::1]:15016").is_ok());
        for remote in ["0.0.0.0:15016", "10.0.0.1:15016", "[::]:15016"] {
            let err = parse(remote).unwrap_err().to_string();
            assert!(err.contains("kubectl port-forward"), "{err}");
        }
    }

    #[test]
    fn the_ca_authenticates_as_the_source_allows_unless_told() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(["controller", "--log", "info"].iter().chain(args)).unwrap()
        };
        let c = parse(&[]);
        assert_eq!(c.ca_auth(), CaAuth::BootstrapTokens);
        let c = parse(&["--source", "kubernetes"]);
        assert_eq!(c.ca_auth(), CaAuth::TokenReview);
        assert_eq!(c.ca_token_audience, "ambit-ca");
        assert_eq!(
            c.ztunnel_service_account,
            NamespacedName::new("ambit-system", "ztunnel")
        );
        assert_eq!(c.ca_secret, None);
        let c = parse(&["--source", "kubernetes", "--ca-auth", "bootstrap-tokens"]);
        assert_eq!(c.ca_auth(), CaAuth::BootstrapTokens);
        let c = parse(&["--ca-auth", "token-review"]);
        assert_eq!(c.ca_auth(), CaAuth::TokenReview);
    }

    #[test]
    fn waypoints_and_the_root_certificate_configmap_have_cluster_defaults() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(["controller", "--log", "info"].iter().chain(args)).unwrap()
        };
        let c = parse(&[]);
        assert!(c.waypoints);
        assert_eq!(c.waypoint_image, waypoints::default_image());
        assert_eq!(
            c.waypoint_controller_address,
            "https://ambit-controller.ambit-system.svc:15010"
        );
        assert_eq!(c.root_cert_namespace(), "ambit-system");
        let c = parse(&["--ca-secret", "mesh/ambit-ca"]);
        assert_eq!(c.root_cert_namespace(), "mesh");
        let c = parse(&[
            "--ca-secret",
            "mesh/ambit-ca",
            "--root-cert-namespace",
            "other",
        ]);
        assert_eq!(c.root_cert_namespace(), "other");
        let c = parse(&[
            "--waypoints=false",
            "--waypoint-image",
            "registry.test/waypoint:dev",
        ]);
        assert!(!c.waypoints);
        assert_eq!(c.waypoint_image, "registry.test/waypoint:dev");
        assert!(Config::try_parse_from(["controller", "--waypoints=maybe"]).is_err());
    }

    #[test]
    fn the_mtls_mode_flag_is_for_clusters_and_liveness_has_a_grace() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(["controller", "--log", "info"].iter().chain(args)).unwrap()
        };
        let c = parse(&[]);
        assert_eq!(c.kubernetes_mtls_mode(), Ok(MtlsMode::Permissive));
        assert_eq!(c.node_down_after, Duration::from_secs(15));
        let c = parse(&["--source", "kubernetes", "--mtls-mode", "strict"]);
        assert_eq!(c.kubernetes_mtls_mode(), Ok(MtlsMode::Strict));
        let c = parse(&["--mtls-mode", "strict", "--node-down-after", "0s"]);
        let err = c.kubernetes_mtls_mode().unwrap_err().to_string();
        assert!(err.contains("mtlsMode: strict"), "{err}");
        assert_eq!(c.node_down_after, Duration::ZERO);
        assert!(Config::try_parse_from(["controller", "--mtls-mode", "STRICT"]).is_err());
    }

    #[test]
    fn the_root_comes_from_a_secret_or_from_files_not_both() {
        let c = Config::try_parse_from([
            "controller",
            "--log",
            "info",
            "--ca-secret",
            "ambit-system/ambit-ca",
        ])
        .unwrap();
        assert_eq!(
            c.ca_secret,
            Some(NamespacedName::new("ambit-system", "ambit-ca"))
        );
        assert!(
            Config::try_parse_from([
                "controller",
                "--ca-secret",
                "ambit-system/ambit-ca",
                "--ca-key",
                "/k.pem"
            ])
            .is_err()
        );
        let err = Config::try_parse_from(["controller", "--ca-secret", "ambit-ca"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAMESPACE/NAME"), "{err}");
    }
}
