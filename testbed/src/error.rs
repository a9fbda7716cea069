//! Every way building, using or tearing down a testbed can fail. Each message names the
//! namespace, link or file involved and, where there is one, the fix.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "not running as root (euid {euid}): network namespaces need CAP_SYS_ADMIN and \
         CAP_NET_ADMIN; run it from a root shell (`su -`), or through sudo where it is \
         installed (`./scripts/test` and `./scripts/up` do that themselves)"
    )]
    NotRoot { euid: u32 },

    #[error(
        "running as root but {capability} is not in the effective capability set; run in a \
         privileged container (`docker run --privileged`) or grant {capability}"
    )]
    MissingCapability { capability: &'static str },

    #[error(
        "could not run the `ip` tool (iproute2): {source}; install it with `apt-get install -y iproute2`"
    )]
    IpToolMissing { source: io::Error },

    #[error("`{command}` failed: {stderr}{hint}")]
    Ip {
        command: String,
        stderr: String,
        /// Empty, or "; " followed by what probably fixes it.
        hint: &'static str,
    },

    #[error(
        "this host cannot create network namespaces (`{command}` failed: {stderr}); the kernel \
         needs CONFIG_NET_NS and /var/run/netns must be writable and mountable (in a container, \
         run it with --privileged)"
    )]
    NetnsUnavailable { command: String, stderr: String },

    #[error(
        "the kernel has no {feature} support (`{command}` failed: {stderr}); load it with \
         `modprobe {feature}` or use a kernel built with it"
    )]
    KernelFeatureMissing {
        feature: &'static str,
        command: String,
        stderr: String,
    },

    #[error("IPv6 is disabled on this host (no /proc/sys/net/ipv6); boot without `ipv6.disable=1`")]
    Ipv6Disabled,

    #[error("setting sysctl {key}={value} in namespace {netns} failed: {source}")]
    Sysctl {
        netns: String,
        key: String,
        value: String,
        source: io::Error,
    },

    #[error(
        "could not open network namespace {netns} at {path}: {source}; it may have been deleted \
         (by the testbed being dropped, or by `ambit down`)"
    )]
    OpenNetns {
        netns: String,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "setns into network namespace {netns} failed: {source}; entering a namespace needs CAP_SYS_ADMIN"
    )]
    EnterNetns { netns: String, source: Errno },

    #[error("could not start a thread to run inside namespace {netns}: {source}")]
    SpawnThread { netns: String, source: io::Error },

    #[error(
        "could not start `{program}` in namespace {netns}: {source}; is it installed and on PATH?"
    )]
    Spawn {
        netns: String,
        program: String,
        source: io::Error,
    },

    #[error("waiting for `{program}` (pid {pid}) in namespace {netns} failed: {source}")]
    Wait {
        netns: String,
        program: String,
        pid: u32,
        source: io::Error,
    },

    #[error("could not kill process {pid} in namespace {netns}: {source}")]
    Kill {
        netns: String,
        pid: u32,
        source: Errno,
    },

    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },

    #[error("node {node} already exists in this testbed; node names must be unique")]
    DuplicateNode { node: String },

    #[error("pod {pod} already exists on node {node}; pod names must be unique per node")]
    DuplicatePod { node: String, pod: String },

    #[error(
        "namespace name {netns} is already used in this run (names are <run>-<node>[-<pod>]); rename the node or pod"
    )]
    NameClash { netns: String },

    #[error("no node {node} in this testbed (nodes: {known})")]
    UnknownNode { node: String, known: String },

    #[error("no pod {pod} on node {node} (pods there: {known})")]
    UnknownPod {
        node: String,
        pod: String,
        known: String,
    },

    #[error(
        "a testbed holds at most {max} nodes: node i gets underlay address 10.10.0.<i+1> and pod \
         CIDR 10.244.<i+1>.0/24"
    )]
    TooManyNodes { max: usize },

    #[error(
        "pod index {n} on node {node} is out of range: pod addresses are .1 to .254 of the node's pod CIDR"
    )]
    PodIndexOutOfRange { node: String, n: u16 },

    #[error(
        "pod {node}/{pod}: address {addr} is not usable: {reason}; Node::pod_addrs(n) gives valid \
         addresses"
    )]
    BadPodAddress {
        node: String,
        pod: String,
        addr: IpAddr,
        reason: String,
    },

    #[error("pod {node}/{pod}: address {addr} is already used by pod {owner}")]
    PodAddressInUse {
        node: String,
        pod: String,
        addr: IpAddr,
        owner: String,
    },

    #[error("could not {action} run record {path}: {source}; /run must be writable (run as root)")]
    RunRecord {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "could not find a free run id after {attempts} attempts; remove stale runs with `ambit down`"
    )]
    NoFreeRunId { attempts: u32 },

    #[error("could not list {path}: {source}")]
    ListDir { path: PathBuf, source: io::Error },
}
