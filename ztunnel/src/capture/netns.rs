//! Entering a pod's network namespace just long enough to create a socket there. A socket
//! belongs to the namespace it was created in for its whole life, so the listeners and the
//! upstream connections ztunnel makes for a pod live in the pod's own network stack.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use super::CaptureError;

const OWN_NETNS_PATH: &str = "/proc/thread-self/ns/net";

thread_local! {
    /// The namespace this thread returns to after each [`PodNetns::run`], opened on its first
    /// use (a thread is always in its own namespace between runs): a dial would otherwise open
    /// and close it each time.
    static OWN_NETNS: std::cell::OnceCell<File> = const { std::cell::OnceCell::new() };
}

/// An open handle on a pod's network namespace (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
#[derive(Debug)]
pub struct PodNetns {
    path: PathBuf,
    file: File,
    /// Inode of the namespace, to tell two handles on the same namespace apart from others.
    inode: u64,
}

impl PodNetns {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        use std::os::unix::fs::MetadataExt;
        let file = File::open(path).map_err(|source| CaptureError::OpenNetns {
            path: path.into(),
            source,
        })?;
        let inode = file
            .metadata()
            .map_err(|source| CaptureError::OpenNetns {
                path: path.into(),
                source,
            })?
            .ino();
        Ok(PodNetns {
            path: path.into(),
            file,
            inode,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inode(&self) -> u64 {
        self.inode
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on this thread inside the pod's namespace, then returns to the original one.
    /// `f` must be short and must not await: it holds the thread in another namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, CaptureError> {
        OWN_NETNS.with(|own| {
            let own = match own.get() {
                Some(file) => file,
                None => {
                    let file =
                        File::open(OWN_NETNS_PATH).map_err(|source| CaptureError::OpenNetns {
                            path: OWN_NETNS_PATH.into(),
                            source,
                        })?;
                    own.get_or_init(|| file)
                }
            };
            self.run_from(own, f)
        })
    }

    fn run_from<T>(&self, original: &File, f: impl FnOnce() -> T) -> Result<T, CaptureError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
            CaptureError::EnterNetns {
                path: self.path.clone(),
                errno,
            }
        })?;
        // Return even if `f` panics: a worker thread left in a pod's namespace would put
        // unrelated sockets there.
        struct Restore<'a>(&'a File);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Err(errno) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
                    // Continuing would create sockets in the wrong namespace.
                    panic!("could not return to ztunnel's own network namespace: {errno}");
                }
            }
        }
        let _restore = Restore(original);
        Ok(f())
    }
}
