//! The network-namespace testbed behind Ambit's local e2e suite, its benchmarks and `ambit up`:
//! a whole mesh's worth of nodes and pods on one Linux host, each in its own network namespace.
//!
//! ```text
//!            fabric ns: bridge ambit-br (the underlay)
//!           /                                        \
//!   node ns 10.10.0.1, fd00:10:10::1          node ns 10.10.0.2, fd00:10:10::2
//!   (routes 10.244.2.0/24 -> 10.10.0.2)       (routes 10.244.1.0/24 -> 10.10.0.1)
//!     |            |                             |            |
//!   pod ns       pod ns                        pod ns       pod ns
//!   10.244.1.1   10.244.1.2                    10.244.2.1   10.244.2.2
//! ```
//!
//! ```no_run
//! # fn main() -> ambit_testbed::Result<()> {
//! use ambit_testbed::Testbed;
//!
//! Testbed::preflight()?;
//! let mut tb = Testbed::new()?;
//! let (v4, v6) = tb.add_node("node-a")?.pod_addrs(1)?;
//! let pod = tb.add_pod("node-a", "client", v4, v6)?;
//! let listener = pod.netns().run(|| std::net::TcpListener::bind((v4, 8080)))?;
//! # drop(listener);
//! # Ok(())
//! # }
//! ```
//!
//! Dropping the [`Testbed`] kills what runs in its namespaces and deletes them;
//! [`cleanup_leftovers`] does the same for runs whose process died. See README.md for the
//! address plan.

mod addressing;
mod cleanup;
mod error;
mod ip;
mod names;
mod netns;
mod preflight;
mod process;
mod topology;
mod wiring;

pub use addressing::{Ipv4Cidr, Ipv6Cidr, MAX_NODES, POD_GATEWAY_V4, POD_GATEWAY_V6};
pub use cleanup::{CleanupReport, Leftover, Owner, RUN_DIR, cleanup_leftovers, leftovers};
pub use error::{Error, Result};
pub use names::PREFIX;
pub use netns::{NETNS_DIR, Netns, NetnsThread};
pub use process::NetnsChild;
pub use topology::{Node, Pod, Testbed};
