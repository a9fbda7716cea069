//! TCP relays between network namespaces, for a waypoint that runs in a namespace of its own.
//! The testbed never links a namespace to the host's, so the host's loopback (where the
//! controller listens) cannot be reached from a waypoint's namespace, nor its ports from the
//! host. A relay accepts on listeners bound beforehand, wherever they were bound (a socket
//! keeps the namespace it was created in), and connects to its targets from the namespace its
//! thread runs in: the host's, or the one given.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_testbed::{Netns, NetnsThread};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::LocalError;

/// A listener and where each connection it accepts is carried.
pub(crate) type Route = (std::net::TcpListener, SocketAddr);

/// A relay's thread; stopped (its connections closed) and joined when dropped.
pub(crate) struct Relay {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<Thread>,
}

enum Thread {
    Host(std::thread::JoinHandle<()>),
    Netns(NetnsThread<()>),
}

impl Relay {
    /// Starts relaying `routes`, connecting to their targets from `connect_from` (the host's
    /// namespace when `None`). `what` names it in errors.
    pub(crate) fn start(
        what: &str,
        connect_from: Option<&Netns>,
        routes: Vec<Route>,
    ) -> Result<Self, LocalError> {
        for (listener, _) in &routes {
            listener
                .set_nonblocking(true)
                .map_err(|source| LocalError::Io {
                    what: format!("preparing the listeners of {what}"),
                    source,
                })?;
        }
        let (stop, stopped) = oneshot::channel();
        let thread = match connect_from {
            Some(netns) => Thread::Netns(netns.spawn_thread(move || run(routes, stopped))?),
            None => Thread::Host(
                std::thread::Builder::new()
                    .name("mesh-relay".into())
                    .spawn(move || run(routes, stopped))
                    .map_err(|source| LocalError::Io {
                        what: format!("starting the thread of {what}"),
                        source,
                    })?,
            ),
        };
        Ok(Relay {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(Thread::Host(t)) => {
                let _ = t.join();
            }
            Some(Thread::Netns(t)) => {
                let _ = t.join();
            }
            None => {}
        }
    }
}

/// The relay's own small runtime: dropped once stopped, which closes every connection.
fn run(routes: Vec<Route>, stopped: oneshot::Receiver<()>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("relay: could not build a runtime");
        return;
    };
    runtime.block_on(async move {
        for (listener, target) in routes {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(accept(listener, target));
                }
                Err(e) => eprintln!("relay to {target}: {e}"),
            }
        }
        let _ = stopped.await;
    });
}

async fn accept(listener: TcpListener, target: SocketAddr) {
    loop {
        let mut inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or the like: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            // The far side not listening (a waypoint restarting) closes the relayed connection,
            // as a refused connection would.
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
