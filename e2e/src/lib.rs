//! Support for the local e2e suite (tests/): starting a mesh from a mesh file, running
//! ordinary programs (curl) in its pods, and looking at what crosses its links.
//! Every test needs root; without it a test says why and passes, except under CI (`CI` set),
//! where a skipped e2e suite would hide everything it is there to catch.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ambit_cli::local::apps::AccessLine;
use ambit_cli::local::{Binaries, LocalMesh, Options};

pub mod capture;
pub mod cni;
pub mod probe;
pub mod up;

/// The default mesh as it was before its reviews service went behind a waypoint: plain L4
/// everywhere, for the tests of ztunnel's own behaviour.
pub const L4_MESH: &str = include_str!("../meshes/l4.yaml");
/// The waypoint suite's mesh: a service per L7 behaviour, each through a waypoint.
pub const WAYPOINT_MESH: &str = include_str!("../meshes/waypoint.yaml");

/// A mesh file of this crate's `meshes/`, by path (for `ambit up --file`).
pub fn mesh_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("meshes")
        .join(name)
}

/// Whether the suite can run here; panics under CI when it cannot.
pub fn can_run(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: the e2e suite needs root (network namespaces), and CI must run it: run CI as root"
    );
    eprintln!(
        "{test}: skipped, not root (network namespaces need root: run ./scripts/test, which \
         asks for it)"
    );
    false
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts a mesh from `mesh_yaml` (`None`: the embedded default) with its sample apps.
pub async fn start(test: &str, mesh_yaml: Option<&str>) -> anyhow::Result<LocalMesh> {
    start_with(test, mesh_yaml, false).await
}

/// [`start`], in observer mode when `observe` (as `ambit up --observe`).
pub async fn start_with(
    test: &str,
    mesh_yaml: Option<&str>,
    observe: bool,
) -> anyhow::Result<LocalMesh> {
    start_with_flags(test, mesh_yaml, observe, Vec::new()).await
}

/// [`start_with`], every ztunnel started with `ztunnel_flags` too.
pub async fn start_with_flags(
    test: &str,
    mesh_yaml: Option<&str>,
    observe: bool,
    ztunnel_flags: Vec<String>,
) -> anyhow::Result<LocalMesh> {
    let work_dir = std::env::temp_dir().join(format!("ambit-e2e-{test}-{}", std::process::id()));
    let up = async {
        let mesh_file = match mesh_yaml {
            Some(text) => {
                std::fs::create_dir_all(&work_dir)?;
                let path = work_dir.join("input-mesh.yaml");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let options = Options {
            mesh_file,
            work_dir: work_dir.clone(),
            binaries: Binaries::locate()?,
            start_apps: true,
            record_current: false,
            ztunnel_workers: None,
            ztunnel_flags,
            observe,
            remove_work_dir: true,
        };
        anyhow::Ok(LocalMesh::up(options, &|step| eprintln!("{test}: {step}")).await?)
    };
    let mesh = match up.await {
        Ok(mesh) => mesh,
        Err(e) => {
            // A mesh that never came up has no `down` to remove its directory; the error
            // already carries the failing process's log tail.
            let _ = std::fs::remove_dir_all(&work_dir);
            return Err(e);
        }
    };
    // The sample servers need a moment to bind.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(mesh)
}

/// The result of running curl in a pod: its exit code and what it printed.
#[derive(Debug)]
pub struct Curl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Curl {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// GET `url` from the host (the mesh's own ports listen on loopback there): status and body.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    ambit_cli::local::apps::fetch(url)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))
}

/// How many connections a ztunnel refused or failed for `reason`, from its metrics
/// (`ambit_connection_failures_total{reason=...}`, summed over the other labels).
pub async fn failures(metrics: std::net::SocketAddr, reason: &str) -> anyhow::Result<u64> {
    let (_, text) = get(&format!("http://{metrics}/metrics")).await?;
    let label = format!("reason=\"{reason}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("ambit_connection_failures_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `within`; `None` then.
pub async fn eventually<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `curl URL` inside a pod of the mesh, as an unmodified application would.
pub fn curl(mesh: &LocalMesh, namespace: &str, pod: &str, url: &str) -> anyhow::Result<Curl> {
    let out = mesh.pod(namespace, pod)?.netns().output(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "-g"])
            .arg(url),
    )?;
    Ok(Curl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `f`'s future to its end on a runtime of its own inside a pod's namespace: every socket
/// it opens is the pod's, so its traffic is captured as an application's would be.
pub fn in_pod<F, Fut, T>(mesh: &LocalMesh, namespace: &str, pod: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    let netns = mesh.pod(namespace, pod)?.netns().clone();
    let value = netns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(f()))
    })??;
    Ok(value)
}

/// Every request a pod's sample server logged (see `apps::AccessLine`): what reached it.
pub fn access_log(mesh: &LocalMesh, namespace: &str, pod: &str) -> Vec<AccessLine> {
    ambit_cli::local::apps::read_access_log(&mesh.app_log(namespace, pod))
}

/// Runs a command in a pod's namespace and returns its stdout.
pub fn run_in(
    mesh: &LocalMesh,
    namespace: &str,
    pod: &str,
    program: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = mesh
        .pod(namespace, pod)?
        .netns()
        .output(Command::new(program).args(args))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?} failed in {namespace}/{pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the pod's nat table holds any chain of ztunnel's (v4 or v6).
pub fn has_capture_rules(mesh: &LocalMesh, namespace: &str, pod: &str) -> anyhow::Result<bool> {
    let v4 = run_in(mesh, namespace, pod, "iptables-save", &["-t", "nat"])?;
    let v6 = run_in(mesh, namespace, pod, "ip6tables-save", &["-t", "nat"])?;
    Ok(v4.contains("AMBIT_") || v6.contains("AMBIT_"))
}

/// TCP ports listening inside the pod's namespace.
pub fn listening_ports(mesh: &LocalMesh, namespace: &str, pod: &str) -> anyhow::Result<Vec<u16>> {
    let out = run_in(mesh, namespace, pod, "ss", &["-Hltn"])?;
    let mut ports: Vec<u16> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit(':').next()?.parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// The uid the controller gives a pod's workload.
pub fn uid(mesh: &LocalMesh, namespace: &str, pod: &str) -> String {
    mesh.file()
        .model
        .workloads()
        .find(|w| w.pod.namespace == namespace && w.pod.name == pod)
        .map(|w| w.uid.clone())
        .unwrap_or_else(|| panic!("no workload {namespace}/{pod} in the mesh file"))
}

/// The mesh's work directory (logs, mesh file, state).
pub fn work_dir(mesh: &LocalMesh) -> PathBuf {
    mesh.state().work_dir.clone()
}
