//! Reloads the mesh file when it changes. Polling the modification time once a second is enough
//! for a file a human edits, and unlike inotify it also sees a file replaced by an editor's
//! rename or on a bind mount.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

use super::{FileError, MeshFile, load};
use crate::model::{MeshBuilder, MeshModel};

/// Identifies one version of a file cheaply. Size is included because some filesystems keep
/// mtimes to the second, and two quick edits within one second usually change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Watches one mesh file.
pub struct FileWatcher {
    path: PathBuf,
    interval: Duration,
    seen: Option<Fingerprint>,
    /// What the model in force was built of.
    objects: MeshBuilder,
}

impl FileWatcher {
    /// Loads `path` for the first time. The fingerprint is taken before reading, so an edit made
    /// while the first load runs is picked up by the first poll rather than lost.
    pub fn start(path: PathBuf, interval: Duration) -> Result<(Self, MeshFile), FileError> {
        let seen = fingerprint(&path);
        let file = load(&path)?;
        Ok((
            FileWatcher {
                path,
                interval,
                seen,
                objects: file.objects.clone(),
            },
            file,
        ))
    }

    /// Publishes every good new version of the file into `models` until `shutdown`. A bad edit
    /// is logged with its problems and the last good model stays in force.
    pub async fn run(
        mut self,
        models: channel::Sender<Arc<MeshModel>>,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = fingerprint(&self.path);
            if now == self.seen {
                continue;
            }
            self.seen = now;
            // Cloned first: the borrow holds the channel's read lock, which send_replace needs.
            let current = models.borrow().clone();
            let reloaded = self.reload(&current);
            match reloaded {
                Ok(Some(model)) => {
                    tracing::info!(path = %self.path.display(), "mesh file changed; new model in force");
                    metrics::counter!("ambit_controller_config_reloads_total", "result" => "ok")
                        .increment(1);
                    models.send_replace(Arc::new(model));
                }
                Ok(None) => {
                    tracing::debug!(path = %self.path.display(), "mesh file touched; model unchanged")
                }
                Err(error) => {
                    metrics::counter!("ambit_controller_config_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::error!(%error, "mesh file change refused; the last good model stays in force until the file is fixed");
                }
            }
        }
    }

    /// The new model, `None` when the file's content means the same mesh. The file is checked
    /// whole (its problems are reported by line), and what differs from the objects of the
    /// model in force is then applied to it, so that the model records what changed and the
    /// push re-resolves only that; settings, namespaces or waypoints that differ take the
    /// full build.
    fn reload(&mut self, current: &MeshModel) -> Result<Option<MeshModel>, FileError> {
        let file = load(&self.path)?;
        if file.model.trust_domain() != current.trust_domain() {
            return Err(FileError::TrustDomainChanged {
                origin: self.path.display().to_string(),
                from: current.trust_domain().into(),
                to: file.model.trust_domain().into(),
            });
        }
        let edits = self.objects.edits_to(&file.objects);
        self.objects = file.objects;
        match edits {
            Some(edits) if edits.is_empty() => Ok(None),
            // `apply` makes what the full build made (its tests hold it to that); it may
            // refuse a batch the build takes (two traffic policies swapping targets, say).
            Some(edits) => Ok(Some(current.apply(edits).unwrap_or(file.model))),
            None => Ok((file.model != *current).then_some(file.model)),
        }
    }
}

/// A loaded mesh file and the background task that keeps it current.
pub struct Watching {
    /// The file as first loaded.
    pub file: MeshFile,
    /// The latest good model.
    pub models: channel::Receiver<Arc<MeshModel>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Loads `path`, then watches it in the background until `shutdown`.
pub fn watch(
    path: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<Watching, FileError> {
    let (watcher, file) = FileWatcher::start(path, interval)?;
    let (tx, models) = channel::channel(Arc::new(file.model.clone()));
    let task = tokio::spawn(watcher.run(tx, shutdown));
    Ok(Watching { file, models, task })
}
