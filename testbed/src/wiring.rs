//! The `ip` commands that wire the fabric, nodes and pods together. Every command names its
//! namespace with `ip -n`, so nothing is ever created in the host's own namespace: veths are
//! created in one run namespace with their peer placed straight into another.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::addressing::{
    Ipv4Cidr, Ipv6Cidr, POD_GATEWAY_V4, POD_GATEWAY_V6, UNDERLAY_V4_LEN, UNDERLAY_V6_LEN,
};
use crate::error::Result;
use crate::names::{BRIDGE, NODE_UPLINK, POD_IFACE, fabric_port, pod_port};
use crate::netns::Netns;

/// The fabric namespace's bridge: the underlay every node's uplink plugs into.
pub(crate) fn wire_fabric(fabric: &Netns) -> Result<()> {
    // No STP, so ports forward the moment they are up. No multicast snooping: there is no
    // querier on this bridge, and IPv6 neighbour discovery must never depend on one.
    fabric.ip(&[
        "link",
        "add",
        BRIDGE,
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    fabric.ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// What wire_node needs to know about the node being added.
pub(crate) struct NodePlan<'a> {
    pub netns: &'a Netns,
    /// Names the fabric end of the uplink; never reused within a run.
    pub port_index: usize,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// Plugs a node into the fabric bridge, addresses its uplink and turns it into a router.
pub(crate) fn wire_node(fabric: &Netns, node: &NodePlan<'_>) -> Result<()> {
    node.netns.set_sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ])?;
    let port = fabric_port(node.port_index);
    node.netns.ip(&[
        "link",
        "add",
        NODE_UPLINK,
        "type",
        "veth",
        "peer",
        "name",
        &port,
        "netns",
        fabric.name(),
    ])?;
    fabric.ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
    let v4 = format!("{}/{UNDERLAY_V4_LEN}", node.ipv4);
    let v6 = format!("{}/{UNDERLAY_V6_LEN}", node.ipv6);
    node.netns.ip(&["addr", "add", &v4, "dev", NODE_UPLINK])?;
    node.netns
        .ip(&["-6", "addr", "add", &v6, "dev", NODE_UPLINK, "nodad"])?;
    node.netns.ip(&["link", "set", NODE_UPLINK, "up"])?;
    Ok(())
}

/// Routes `node`'s traffic for another node's pod CIDRs to that node's underlay addresses.
/// `replace`, not `add`: a node whose setup failed half-way may have left these routes in its
/// peers, and adding the node again must not trip over them.
pub(crate) fn route_to_peer(
    node: &Netns,
    peer_cidrs: (Ipv4Cidr, Ipv6Cidr),
    peer_addrs: (Ipv4Addr, Ipv6Addr),
) -> Result<()> {
    let (cidr4, cidr6) = (peer_cidrs.0.to_string(), peer_cidrs.1.to_string());
    let (via4, via6) = (peer_addrs.0.to_string(), peer_addrs.1.to_string());
    node.ip(&["route", "replace", &cidr4, "via", &via4, "dev", NODE_UPLINK])?;
    node.ip(&[
        "-6",
        "route",
        "replace",
        &cidr6,
        "via",
        &via6,
        "dev",
        NODE_UPLINK,
    ])?;
    Ok(())
}

/// What wire_pod needs to know about the pod being added.
pub(crate) struct PodPlan<'a> {
    pub netns: &'a Netns,
    /// Names the node end of the veth; never reused within a node.
    pub port_index: usize,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// Connects a pod to its node with a veth pair and routes between them. Returns the name of the
/// node end of the veth.
///
/// The pod's addresses are /32 and /128 with default routes to link-local gateways that every
/// node-side veth carries, so all pod traffic, same-node included, is routed by the node.
pub(crate) fn wire_pod(
    node: &Netns,
    node_addrs: (Ipv4Addr, Ipv6Addr),
    pod: &PodPlan<'_>,
) -> Result<String> {
    let port = pod_port(pod.port_index);
    node.ip(&[
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        POD_IFACE,
        "netns",
        pod.netns.name(),
    ])?;

    // Node side. The gateway address is the same on every pod veth of the node; scope link
    // keeps the kernel from picking it as the source of anything the node itself sends.
    let gw4 = format!("{POD_GATEWAY_V4}/32");
    let gw6 = format!("{POD_GATEWAY_V6}/64");
    node.ip(&["addr", "add", &gw4, "dev", &port, "scope", "link"])?;
    node.ip(&["-6", "addr", "add", &gw6, "dev", &port, "nodad"])?;
    node.ip(&["link", "set", &port, "up"])?;
    let (pod4, pod6) = (format!("{}/32", pod.ipv4), format!("{}/128", pod.ipv6));
    let (src4, src6) = (node_addrs.0.to_string(), node_addrs.1.to_string());
    node.ip(&["route", "add", &pod4, "dev", &port, "src", &src4])?;
    node.ip(&["-6", "route", "add", &pod6, "dev", &port, "src", &src6])?;

    // Pod side.
    let ns = pod.netns;
    ns.ip(&["addr", "add", &pod4, "dev", POD_IFACE])?;
    ns.ip(&["-6", "addr", "add", &pod6, "dev", POD_IFACE, "nodad"])?;
    ns.ip(&["link", "set", POD_IFACE, "up"])?;
    let gw4 = POD_GATEWAY_V4.to_string();
    let gw6 = POD_GATEWAY_V6.to_string();
    ns.ip(&["route", "add", &gw4, "dev", POD_IFACE, "scope", "link"])?;
    ns.ip(&["route", "add", "default", "via", &gw4, "dev", POD_IFACE])?;
    ns.ip(&[
        "-6", "route", "add", "default", "via", &gw6, "dev", POD_IFACE,
    ])?;
    Ok(port)
}
