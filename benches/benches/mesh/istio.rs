//! Istio's ztunnel on the same path, in the same run (`--istio <binary>`): the reference every
//! target of DESIGN.md and issue 15 is a multiple of, measured beside Ambit's instead of taken
//! from another day's run (the machine moves the absolute ratios by tens of percent).
//!
//! Its pods are a second client and server on the same nodes, left out of Ambit's mesh, and its
//! runs are interleaved with the other paths' in every round. An Istio ztunnel runs in each pod's
//! network namespace in its dedicated mode (one proxy per workload, as DESIGN.md's reference
//! measured it), with Istio's built-in test CA (`FAKE_CA`, so both trust one root) and its
//! workloads from a local file. The client pod's connections to the bench port are redirected
//! to the proxy's outbound port (15001), which carries them as HBONE to the server pod's 15008.
//! Both meshes' ratios share one baseline: the direct runs between Ambit's pods. Istio's binary needs its `testing` feature for the test
//! CA: `cargo build --release --features testing --bin ztunnel` in Istio's ztunnel repository.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};

use ambit_benches::tools::wait_port;
use ambit_testbed::{Netns, NetnsChild};

/// Istio's HBONE and outbound ports, bound by each proxy inside its pod.
const HBONE_PORT: u16 = 15008;
const OUTBOUND_PORT: u16 = 15001;

/// One side of the path: the pod the proxy serves.
pub struct Pod<'a> {
    pub netns: &'a Netns,
    pub namespace: &'a str,
    pub name: &'a str,
    pub service_account: &'a str,
    pub ip: Ipv4Addr,
    /// The node the bench reports it under (`node_a`, `node_b`), as Ambit's ztunnels.
    pub node: &'a str,
}

/// The running proxies; dropping them kills them.
pub struct IstioZtunnels {
    children: Vec<NetnsChild>,
}

impl IstioZtunnels {
    /// Starts a proxy for `client` and one for `server`, and sends the client's connections to
    /// `server`'s bench port through them.
    pub fn start(
        binary: &Path,
        dir: &Path,
        workers: usize,
        client: &Pod,
        server: &Pod,
    ) -> anyhow::Result<Self> {
        let xds = dir.join("istio-workloads.yaml");
        std::fs::write(&xds, workloads(&[client, server]))?;
        let mut children = Vec::new();
        for pod in [client, server] {
            let log_path = dir.join(format!("istio-ztunnel-{}.log", pod.name));
            let log = File::create(&log_path)?;
            let child = pod.netns.spawn(
                Command::new(binary)
                    .env_clear()
                    .env("FAKE_CA", "true")
                    .env("XDS_ADDRESS", "")
                    .env("LOCAL_XDS_PATH", &xds)
                    .env("PROXY_MODE", "dedicated")
                    .env(
                        "PROXY_WORKLOAD_INFO",
                        format!("{}/{}/{}", pod.namespace, pod.name, pod.service_account),
                    )
                    .env("ZTUNNEL_WORKER_THREADS", workers.to_string())
                    // Otherwise the server's proxy connects to the app from the client's
                    // address, which only Istio's in-pod routing rules bring back to it.
                    .env("ENABLE_ORIG_SRC", "false")
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log),
            )?;
            children.push(child);
            for port in [HBONE_PORT, OUTBOUND_PORT] {
                // The scratch directory goes with the mesh: say what the proxy said.
                wait_port(pod.netns, SocketAddr::from((pod.ip, port))).map_err(|e| {
                    let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let tail: Vec<&str> = said.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    anyhow::anyhow!(
                        "Istio's ztunnel for {} did not come up ({e}); it said:\n{}",
                        pod.name,
                        tail.join("\n")
                    )
                })?;
            }
        }
        super::redirect(client.netns, server.ip, OUTBOUND_PORT)?;
        Ok(IstioZtunnels { children })
    }

    /// Each proxy's node name and pid, client's first.
    pub fn pids(&self, client: &Pod, server: &Pod) -> Vec<(String, u32)> {
        [client, server]
            .iter()
            .zip(&self.children)
            .map(|(pod, child)| (pod.node.to_owned(), child.id()))
            .collect()
    }

    /// Whether either proxy has exited.
    pub fn exited(&mut self) -> bool {
        self.children
            .iter_mut()
            .any(|c| !matches!(c.try_wait(), Ok(None)))
    }
}

/// Istio's local config: the two pods as HBONE workloads, no services, no policies.
fn workloads(pods: &[&Pod]) -> String {
    let mut y = String::from("workloads:\n");
    for p in pods {
        y.push_str(&format!(
            "- uid: bench//v1/Pod/{namespace}/{name}\n  name: {name}\n  namespace: {namespace}\n  \
             serviceAccount: {sa}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n  \
             node: {node}\n  network: \"\"\n  services: {{}}\n",
            name = p.name,
            namespace = p.namespace,
            sa = p.service_account,
            ip = p.ip,
            node = p.node.replace('_', "-"),
        ));
    }
    y
}
