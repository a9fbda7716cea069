//! The data path's workers: one single-threaded tokio runtime per thread (`ztunnel-data`),
//! `--worker-threads` of them. Each accepted connection is placed on one worker and everything
//! it spawns stays there: a tunnel's copy task and the HTTP/2 connection task carrying its
//! frames run on the same thread, so a frame is never handed across threads (on a shared
//! multi-thread runtime they were, and the wake-ups cost the receiving ztunnel ~14% of its
//! samples in context switches).
//!
//! Connections are placed by the accept loop, not by the kernel: with `SO_REUSEPORT` listeners
//! the kernel hashes each connection to a worker, and with the few HBONE connections a peer
//! ztunnel opens (one per worker) both land on one worker about half the time (measured on
//! loopback, 2 listeners: 2 connections on one 52% of the time; 64 connections 1.09× the even
//! share on the busier one, median, 1.22× p90). Here a connection goes to the worker with the
//! fewest connections open, ties taken in turn, which spreads 2 connections 1/1 and 64 as
//! 32/32.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use ambit_proto::hbone::{Placement, ServeConnection};
use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread runs, on a worker's thread; set once when it starts.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker running on this thread, if this is a data worker's thread.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// Where connections go: the workers' runtimes and how many connections each holds. Shared by
/// every pod; holding it does not keep the threads alive ([`WorkerThreads`] owns them).
pub struct DataWorkers {
    workers: Box<[Arc<Worker>]>,
    /// Where the search for the least loaded worker starts, so ties are taken in turn.
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    /// Connections placed here and not finished yet.
    live: AtomicUsize,
}

/// Owns the workers' threads: [`WorkerThreads::stop`] ends them.
pub struct WorkerThreads {
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Starts `n` workers (at least one).
pub fn start(n: usize) -> io::Result<(Arc<DataWorkers>, WorkerThreads)> {
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for index in 0..n.max(1) {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            // Named so a profiler, `top -H` or the config_apply bench can tell the data path's
            // threads from the control runtime's.
            .name("ztunnel-data".into())
            .spawn(move || {
                CURRENT.with(|c| c.set(Some(index)));
                // Until stopped; dropping the runtime then drops whatever it still runs,
                // which closes those sockets.
                let _ = runtime.block_on(stopped);
            })?;
        workers.push(Arc::new(Worker {
            handle,
            live: AtomicUsize::new(0),
        }));
        threads.push((stop, thread));
    }
    let workers = DataWorkers {
        workers: workers.into(),
        next: AtomicUsize::new(0),
    };
    Ok((Arc::new(workers), WorkerThreads { threads }))
}

impl WorkerThreads {
    /// Ends every worker, dropping what they still run, and waits for their threads.
    pub fn stop(self) {
        for (stop, thread) in self.threads {
            let _ = stop.send(());
            if thread.join().is_err() {
                tracing::error!("a data worker thread panicked");
            }
        }
    }
}

impl DataWorkers {
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Worker `index`'s runtime: a task spawned there, or a socket made in its context, is
    /// driven by that worker alone.
    pub fn handle(&self, index: usize) -> &Handle {
        &self.workers[index % self.workers.len()].handle
    }

    /// Connections open on each worker now.
    pub fn load(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    }

    /// The worker with the fewest connections open, ties taken in turn.
    pub fn least_loaded(&self) -> usize {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| self.workers[i].live.load(Ordering::Relaxed))
            .expect("at least one worker")
    }

    /// Runs `serve(tcp)` on the least loaded worker, counted there until it finishes. The
    /// socket is moved to that worker's reactor: a tokio socket is driven by the runtime it
    /// was registered with, so it is taken out of this one and registered again there.
    pub fn place<F, Fut>(&self, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "connection lost before it could be placed on a worker");
                return;
            }
        };
        let worker = self.workers[self.least_loaded()].clone();
        worker.live.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(worker.clone());
        worker.handle.spawn(async move {
            let _counted = counted;
            match TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => tracing::warn!(error = %e, "could not register a connection with its data worker"),
            }
        });
    }
}

/// Takes a connection off its worker's count when its task ends (or is dropped at shutdown).
struct Counted(Arc<Worker>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Placement for DataWorkers {
    fn place(&self, tcp: TcpStream, serve: Box<dyn FnOnce(TcpStream) -> ServeConnection + Send>) {
        DataWorkers::place(self, tcp, serve)
    }
}

#[cfg(test)]
mod tests;
