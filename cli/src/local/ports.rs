//! Where a local mesh's own processes listen: on the ports they use on a cluster. Each ztunnel
//! serves its admin (config dump) on 15000, metrics on 15020 and readiness on 15021; the
//! controller its discovery and CA gRPC on 15010, its metrics on 15014 and its observation API on
//! 15016. Locally every one of
//! them shares the host's network, so each gets its own loopback address (all of 127/8 is
//! loopback on Linux, with no set-up): in mesh slot `s`, node `i` (0-based, in mesh-file order)
//! is `127.0.s.<i+1>` and the controller `127.0.s.254`. Waypoints run in namespaces of their
//! own; the mesh relays their admin (15000), metrics (15020) and readiness (15021) ports to
//! the host, waypoint `j` (0-based, in mesh-file order) on `127.1.s.<j+1>`.
//!
//! The first mesh on a host takes slot 1, so node-a's metrics are at 127.0.1.1:15020. A second
//! mesh at the same time (a test run beside `ambit up`) takes the next free slot. A slot is
//! held by an abstract Unix socket named after it, which the kernel frees when its holder
//! exits however it exits, and is only taken if every one of its addresses is free (a crashed
//! run's ztunnels may still hold them until `ambit down`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};

use super::LocalError;

pub const ZTUNNEL_ADMIN_PORT: u16 = 15000;
pub const ZTUNNEL_METRICS_PORT: u16 = 15020;
pub const ZTUNNEL_READINESS_PORT: u16 = 15021;
pub const CONTROLLER_GRPC_PORT: u16 = 15010;
pub const CONTROLLER_METRICS_PORT: u16 = 15014;
/// The controller's observation API (`ambit stat/top/tap`, the dashboard).
pub const CONTROLLER_API_PORT: u16 = 15016;
pub const WAYPOINT_ADMIN_PORT: u16 = 15000;
pub const WAYPOINT_METRICS_PORT: u16 = 15020;
pub const WAYPOINT_READINESS_PORT: u16 = 15021;

/// The last octet of the controller's address in a slot; nodes use 1..=250.
const CONTROLLER_HOST: u8 = 254;
const SLOTS: std::ops::RangeInclusive<u8> = 1..=254;

/// A mesh's share of loopback, held for as long as this value lives.
#[derive(Debug)]
pub struct Slot {
    index: u8,
    _held: UnixListener,
}

impl Slot {
    /// The first slot no other mesh holds whose addresses are all free, for `nodes` nodes and
    /// `waypoints` waypoints.
    pub fn acquire(nodes: usize, waypoints: usize) -> Result<Slot, LocalError> {
        let mut last_busy = None;
        for index in SLOTS {
            let name = format!("ambit-local-mesh-slot-{index}");
            let addr =
                UnixAddr::from_abstract_name(name.as_bytes()).map_err(|source| LocalError::Io {
                    what: format!("naming the abstract socket {name}"),
                    source,
                })?;
            // Taken by another mesh on this host (bind fails with EADDRINUSE): try the next.
            let Ok(held) = UnixListener::bind_addr(&addr) else {
                continue;
            };
            let slot = Slot { index, _held: held };
            match slot.first_busy(nodes, waypoints) {
                None => return Ok(slot),
                Some(busy) => last_busy = Some(busy),
            }
        }
        Err(LocalError::NoLoopbackSlot {
            last_busy: last_busy.unwrap_or_else(|| "every slot is held by another mesh".into()),
        })
    }

    /// Node `i`'s loopback address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        let host = u8::try_from(i + 1).expect("a testbed has at most 250 nodes");
        Ipv4Addr::new(127, 0, self.index, host)
    }

    pub fn controller_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.index, CONTROLLER_HOST)
    }

    /// Where the controller serves its observation API.
    pub fn controller_api(&self) -> SocketAddr {
        SocketAddr::from((self.controller_ip(), CONTROLLER_API_PORT))
    }

    /// Waypoint `j`'s loopback address, where its ports are relayed.
    pub fn waypoint_ip(&self, j: usize) -> Ipv4Addr {
        let host = u8::try_from(j + 1)
            .ok()
            .filter(|h| *h < 255)
            .expect("a local mesh has at most 254 waypoints");
        Ipv4Addr::new(127, 1, self.index, host)
    }

    /// Every address this slot's processes will listen on.
    fn addresses(&self, nodes: usize, waypoints: usize) -> Vec<SocketAddr> {
        let mut all = vec![
            SocketAddr::from((self.controller_ip(), CONTROLLER_GRPC_PORT)),
            SocketAddr::from((self.controller_ip(), CONTROLLER_METRICS_PORT)),
            self.controller_api(),
        ];
        for i in 0..nodes {
            for port in [
                ZTUNNEL_ADMIN_PORT,
                ZTUNNEL_METRICS_PORT,
                ZTUNNEL_READINESS_PORT,
            ] {
                all.push(SocketAddr::from((self.node_ip(i), port)));
            }
        }
        for j in 0..waypoints {
            for port in [
                WAYPOINT_ADMIN_PORT,
                WAYPOINT_METRICS_PORT,
                WAYPOINT_READINESS_PORT,
            ] {
                all.push(SocketAddr::from((self.waypoint_ip(j), port)));
            }
        }
        all
    }

    /// The first address someone else listens on (a leftover ztunnel, a real Istio proxy
    /// bound to 0.0.0.0), said as a sentence.
    fn first_busy(&self, nodes: usize, waypoints: usize) -> Option<String> {
        self.addresses(nodes, waypoints)
            .into_iter()
            .find_map(|addr| {
                TcpListener::bind(addr)
                    .err()
                    .map(|e| format!("{addr} is taken ({e})"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_puts_node_i_on_its_own_address() {
        let a = Slot::acquire(3, 2).expect("a free slot on a test host");
        let s = a.index;
        assert_eq!(a.node_ip(0), Ipv4Addr::new(127, 0, s, 1));
        assert_eq!(a.node_ip(2), Ipv4Addr::new(127, 0, s, 3));
        assert_eq!(a.controller_ip(), Ipv4Addr::new(127, 0, s, 254));
        assert_eq!(
            a.controller_api(),
            SocketAddr::from(([127, 0, s, 254], CONTROLLER_API_PORT))
        );
        assert!(a.addresses(3, 2).contains(&a.controller_api()));
        assert_eq!(a.waypoint_ip(1), Ipv4Addr::new(127, 1, s, 2));
        // A second mesh at the same time never gets the same addresses.
        let b = Slot::acquire(3, 2).expect("a second free slot");
        assert_ne!(a.index, b.index);
        assert_ne!(a.node_ip(0), b.node_ip(0));
    }
}
