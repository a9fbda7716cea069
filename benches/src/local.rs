//! The local mesh a bench runs on: network namespaces and processes from a mesh file, with a
//! scratch directory, set up and torn down the same way by every bench that needs one.

use std::path::PathBuf;

use ambit_cli::local::{Binaries, LocalMesh, Options};
use tokio::runtime::Runtime;

/// Whether the bench can run; if not, says so (the local mesh builds network namespaces).
pub fn running_as_root(bench: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("{bench} bench: skipped, it builds network namespaces and needs root");
    }
    root
}

/// A mesh up from a mesh file, its scratch directory, and the runtime that drives it.
pub struct BenchMesh {
    pub mesh: LocalMesh,
    pub binaries: Binaries,
    /// Scratch space of the run (the mesh's own state is in `run/`); removed by [`Self::down`].
    pub dir: PathBuf,
    pub runtime: Runtime,
}

impl BenchMesh {
    /// Brings `mesh_file` up with the release binaries next to the bench, ztunnels with
    /// `ztunnel_workers` worker threads, and the sample apps if `start_apps`.
    pub fn up(
        bench: &str,
        mesh_file: &str,
        start_apps: bool,
        ztunnel_workers: usize,
    ) -> anyhow::Result<Self> {
        let binaries = Binaries::locate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let dir = std::env::temp_dir().join(format!("ambit-{bench}-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("mesh.yaml");
        std::fs::write(&file, mesh_file)?;
        let up = runtime.block_on(LocalMesh::up(
            Options {
                mesh_file: Some(file),
                work_dir: dir.join("run"),
                binaries: binaries.clone(),
                start_apps,
                record_current: false,
                ztunnel_workers: Some(ztunnel_workers),
                ztunnel_flags: Vec::new(),
                // BenchMesh::down removes the whole scratch directory, this one inside it.
                observe: false,
                remove_work_dir: false,
            },
            &|step| eprintln!("{bench} bench: {step}"),
        ));
        match up {
            Ok(mesh) => Ok(BenchMesh {
                mesh,
                binaries,
                dir,
                runtime,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e.into())
            }
        }
    }

    /// Stops the mesh and removes the scratch directory, whether or not stopping went well.
    pub fn down(self) -> anyhow::Result<()> {
        let BenchMesh { mesh, dir, .. } = self;
        let down = mesh.down();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(down?)
    }
}
