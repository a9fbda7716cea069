//! The control runtime: config from the controller or a file, the admin endpoints, the node
//! agent and certificates run on a thread of their own, not on the data path's workers. A
//! config update of a 50k-workload mesh is tens of megabytes to decode and index; on a data-path
//! worker that would hold up every connection queued behind it. Its threads also run at a lower
//! CPU priority (nice), so on a busy node the data path gets the cores first and the config
//! arrives a little later instead.

use std::io;

use tokio::runtime::{Builder, Handle, Runtime};

/// How much lower the control threads' priority is than the data path's (a nice increment).
const CONTROL_NICE: i32 = 10;

/// Owns the control runtime; shut down in the background when dropped, since ztunnel stops
/// from inside the data runtime, where blocking on it is not allowed.
pub struct ControlRuntime {
    runtime: Option<Runtime>,
}

impl ControlRuntime {
    pub fn start() -> io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ztunnel-control")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(ControlRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }
}

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority to [`CONTROL_NICE`] below the process's main thread
/// (Linux keeps a nice value per thread; a ztunnel started niced keeps its data path ahead, and
/// a thread spawned by an already lowered one is not lowered twice). A failure only costs the
/// data path's head start, so it is logged and ignored.
fn lower_priority() {
    let tid = nix::unistd::gettid().as_raw();
    let main = nix::unistd::getpid().as_raw();
    // SAFETY: getpriority and setpriority read no memory of ours; they only read the
    // scheduling of the main thread and change that of thread `tid`, this one. errno is
    // cleared first since -1 is a valid nice value.
    let done = unsafe {
        *libc::__errno_location() = 0;
        let base = libc::getpriority(libc::PRIO_PROCESS, main as libc::id_t);
        let lower = (base + CONTROL_NICE).min(19);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, lower)
    };
    if done != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not lower the control thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_threads_run_at_a_lower_priority() {
        let control = ControlRuntime::start().unwrap();
        let expected = (nice_of_this_thread() + CONTROL_NICE).min(19);
        let (worker, blocking) = control.handle().block_on(async {
            let worker = tokio::spawn(async { nice_of_this_thread() }).await.unwrap();
            let blocking = tokio::task::spawn_blocking(nice_of_this_thread)
                .await
                .unwrap();
            (worker, blocking)
        });
        assert_eq!(worker, expected, "the control worker");
        assert_eq!(
            blocking, expected,
            "a blocking thread (where config is built)"
        );
    }

    fn nice_of_this_thread() -> i32 {
        let tid = nix::unistd::gettid().as_raw();
        // SAFETY: as in `lower_priority`; errno is cleared first since -1 is a valid answer.
        unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
        }
    }
}
