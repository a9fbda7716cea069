//! The address plan (see README.md). Node `i` (0-based, in the order nodes are added) is node
//! number `i+1` everywhere, as in the mesh files (node-a's pods are 10.244.1.x), and gets:
//!
//! | what                 | IPv4                 | IPv6                     |
//! |----------------------|----------------------|--------------------------|
//! | underlay (fabric)    | `10.10.0.<i+1>/24`   | `fd00:10:10::<i+1>/64`   |
//! | pod CIDR             | `10.244.<i+1>.0/24`  | `fd00:10:244:<i+1>::/64` |
//! | gateway seen by pods | `169.254.1.1`        | `fe80::1`                |
//!
//! Pods get caller-chosen addresses inside their node's pod CIDRs, configured as /32 and /128:
//! every pod-to-pod packet is routed by the node, the way Calico-style CNIs do it, so same-node
//! and cross-node traffic both pass through the node namespace where the node proxy runs.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Most nodes one testbed holds; node i's underlay address is `10.10.0.<i+1>` and its pod CIDR
/// `10.244.<i+1>.0/24`, so the last node's number still fits in a byte.
pub const MAX_NODES: usize = 250;

/// The pods' default gateway. Link-local, so it never collides with a pod address; every
/// node-side pod veth carries it.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 default gateway, on every node-side pod veth.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

pub(crate) const UNDERLAY_V4_LEN: u8 = 24;
pub(crate) const UNDERLAY_V6_LEN: u8 = 64;

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

/// An IPv6 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub len: u8,
}

impl Ipv4Cidr {
    fn mask(self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) ^ u32::from(self.addr)) & self.mask() == 0
    }
}

impl Ipv6Cidr {
    fn mask(self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.len))
            .unwrap_or(0)
    }

    pub fn contains(self, ip: Ipv6Addr) -> bool {
        (u128::from(ip) ^ u128::from(self.addr)) & self.mask() == 0
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn low_byte(index: usize) -> u8 {
    u8::try_from(index).expect("node index checked against MAX_NODES")
}

pub(crate) fn underlay_v4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, low_byte(index + 1))
}

pub(crate) fn underlay_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x10,
        0x10,
        0,
        0,
        0,
        0,
        u16::from(low_byte(index + 1)),
    )
}

pub(crate) fn pod_cidr_v4(index: usize) -> Ipv4Cidr {
    Ipv4Cidr {
        addr: Ipv4Addr::new(10, 244, low_byte(index + 1), 0),
        len: 24,
    }
}

pub(crate) fn pod_cidr_v6(index: usize) -> Ipv6Cidr {
    Ipv6Cidr {
        addr: Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            u16::from(low_byte(index + 1)),
            0,
            0,
            0,
            0,
        ),
        len: 64,
    }
}

/// The `n`th pod address pair of a node's CIDRs (`n` in 1..=254): 10.244.<i+1>.<n> and
/// fd00:10:244:<i+1>::<n>.
pub(crate) fn nth_pod_addrs(v4: Ipv4Cidr, v6: Ipv6Cidr, n: u8) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::from(u32::from(v4.addr) | u32::from(n));
    let v6 = Ipv6Addr::from(u128::from(v6.addr) | u128::from(n));
    (v4, v6)
}

/// Why `ip` cannot be a pod address in `cidr`, if it cannot.
pub(crate) fn check_pod_v4(cidr: Ipv4Cidr, ip: Ipv4Addr) -> Option<String> {
    if !cidr.contains(ip) {
        return Some(format!(
            "it is outside the node's pod CIDR {cidr}, so other nodes would not route it here"
        ));
    }
    let host = u32::from(ip) & !cidr.mask();
    if host == 0 || host == !cidr.mask() {
        return Some(format!("it is the network or broadcast address of {cidr}"));
    }
    None
}

/// Why `ip` cannot be a pod address in `cidr`, if it cannot.
pub(crate) fn check_pod_v6(cidr: Ipv6Cidr, ip: Ipv6Addr) -> Option<String> {
    if !cidr.contains(ip) {
        return Some(format!(
            "it is outside the node's pod CIDR {cidr}, so other nodes would not route it here"
        ));
    }
    if ip == cidr.addr {
        return Some(format!("it is the subnet-router anycast address of {cidr}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_for_the_second_node() {
        assert_eq!(underlay_v4(1), Ipv4Addr::new(10, 10, 0, 2));
        assert_eq!(underlay_v6(1).to_string(), "fd00:10:10::2");
        assert_eq!(pod_cidr_v4(1).to_string(), "10.244.2.0/24");
        assert_eq!(pod_cidr_v6(1).to_string(), "fd00:10:244:2::/64");
        let (v4, v6) = nth_pod_addrs(pod_cidr_v4(1), pod_cidr_v6(1), 7);
        assert_eq!(v4, Ipv4Addr::new(10, 244, 2, 7));
        assert_eq!(v6.to_string(), "fd00:10:244:2::7");
    }

    #[test]
    fn node_zero_is_node_number_one() {
        assert_eq!(underlay_v4(0), Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(pod_cidr_v4(0).to_string(), "10.244.1.0/24");
        assert_eq!(pod_cidr_v6(0).to_string(), "fd00:10:244:1::/64");
    }

    #[test]
    fn last_node_fits() {
        let last = MAX_NODES - 1;
        assert_eq!(underlay_v4(last), Ipv4Addr::new(10, 10, 0, 250));
        assert_eq!(pod_cidr_v4(last).to_string(), "10.244.250.0/24");
        assert_eq!(pod_cidr_v6(last).to_string(), "fd00:10:244:fa::/64");
    }

    #[test]
    fn pod_addresses_are_checked() {
        let (c4, c6) = (pod_cidr_v4(0), pod_cidr_v6(0));
        assert!(check_pod_v4(c4, Ipv4Addr::new(10, 244, 1, 5)).is_none());
        assert!(check_pod_v4(c4, Ipv4Addr::new(10, 244, 0, 5)).is_some());
        assert!(check_pod_v4(c4, Ipv4Addr::new(10, 244, 2, 5)).is_some());
        assert!(check_pod_v4(c4, Ipv4Addr::new(10, 244, 1, 0)).is_some());
        assert!(check_pod_v4(c4, Ipv4Addr::new(10, 244, 1, 255)).is_some());
        assert!(check_pod_v6(c6, "fd00:10:244:1::5".parse().unwrap()).is_none());
        assert!(check_pod_v6(c6, "fd00:10:244::5".parse().unwrap()).is_some());
        assert!(check_pod_v6(c6, "fd00:10:244:2::5".parse().unwrap()).is_some());
        assert!(check_pod_v6(c6, "fd00:10:244:1::".parse().unwrap()).is_some());
    }

    #[test]
    fn zero_length_prefixes_contain_everything() {
        let all4 = Ipv4Cidr {
            addr: Ipv4Addr::UNSPECIFIED,
            len: 0,
        };
        let all6 = Ipv6Cidr {
            addr: Ipv6Addr::UNSPECIFIED,
            len: 0,
        };
        assert!(all4.contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(all6.contains(Ipv6Addr::LOCALHOST));
    }
}
