//! The testbed: a fabric namespace with a bridge, nodes plugged into it, pods on the nodes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::addressing::{self, Ipv4Cidr, Ipv6Cidr, MAX_NODES};
use crate::cleanup;
use crate::error::{Error, Result};
use crate::names::{self, NODE_UPLINK, POD_IFACE};
use crate::netns::Netns;
use crate::preflight;
use crate::process;
use crate::wiring::{self, NodePlan, PodPlan};

/// A set of namespaces built for one run. Dropping it kills every process inside its
/// namespaces and deletes them, panicking test or not.
#[derive(Debug)]
pub struct Testbed {
    run: String,
    record: PathBuf,
    fabric: Netns,
    nodes: Vec<Node>,
    /// Every namespace that exists, in creation order, so teardown never depends on a node or
    /// pod having been set up completely.
    namespaces: Vec<Netns>,
    /// Fabric ports ever made. Port names are never reused: a deleted namespace's veths
    /// disappear asynchronously, so an old name can still be taken for a moment.
    fabric_ports_made: usize,
    torn_down: bool,
}

/// A node: a namespace standing for a host's network, plugged into the fabric, routing for its
/// pods. The node proxy runs here.
#[derive(Debug)]
pub struct Node {
    name: String,
    index: usize,
    netns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    pod_cidr_v4: Ipv4Cidr,
    pod_cidr_v6: Ipv6Cidr,
    pods: Vec<Pod>,
    pod_ports_made: usize,
}

/// A pod: a namespace with one veth to its node.
#[derive(Debug)]
pub struct Pod {
    name: String,
    node: String,
    netns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    node_interface: String,
}

impl Testbed {
    /// Reserves a run prefix and creates the fabric namespace with its bridge.
    pub fn new() -> Result<Self> {
        preflight::check_privileges()?;
        let (run, record) = cleanup::reserve_run()?;
        let fabric = Netns::at(&format!("{run}-fabric"));
        let mut testbed = Self {
            run,
            record,
            fabric: fabric.clone(),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            fabric_ports_made: 0,
            torn_down: false,
        };
        // On failure `testbed` is dropped here, which removes the record again.
        create_netns(&mut testbed.namespaces, fabric.name(), wiring::wire_fabric)?;
        tracing::info!(run = testbed.run, "testbed created");
        Ok(testbed)
    }

    /// Adds a node with the next node index's addresses (see README.md), routed to and
    /// from every node added before it.
    pub fn add_node(&mut self, name: &str) -> Result<&Node> {
        names::validate("node", name)?;
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(Error::DuplicateNode {
                node: name.to_owned(),
            });
        }
        let index = self.nodes.len();
        if index >= MAX_NODES {
            return Err(Error::TooManyNodes { max: MAX_NODES });
        }
        let (ipv4, ipv6) = (
            addressing::underlay_v4(index),
            addressing::underlay_v6(index),
        );
        let cidrs = (
            addressing::pod_cidr_v4(index),
            addressing::pod_cidr_v6(index),
        );
        let port_index = self.fabric_ports_made;
        self.fabric_ports_made += 1;
        let netns_name = format!("{}-{name}", self.run);
        let (fabric, peers) = (&self.fabric, &self.nodes);
        let netns = create_netns(&mut self.namespaces, &netns_name, |netns| {
            let plan = NodePlan {
                netns,
                port_index,
                ipv4,
                ipv6,
            };
            wiring::wire_node(fabric, &plan)?;
            for peer in peers {
                wiring::route_to_peer(netns, peer.pod_cidrs(), (peer.ipv4, peer.ipv6))?;
                wiring::route_to_peer(&peer.netns, cidrs, (ipv4, ipv6))?;
            }
            Ok(())
        })?;
        self.nodes.push(Node {
            name: name.to_owned(),
            index,
            netns,
            ipv4,
            ipv6,
            pod_cidr_v4: cidrs.0,
            pod_cidr_v6: cidrs.1,
            pods: Vec::new(),
            pod_ports_made: 0,
        });
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// Adds a pod on `node` with the given addresses, which must lie in the node's pod CIDRs
    /// ([`Node::pod_addrs`] picks valid ones).
    pub fn add_pod(
        &mut self,
        node: &str,
        name: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
    ) -> Result<&Pod> {
        names::validate("pod", name)?;
        self.check_pod_addrs(node, name, ipv4, ipv6)?;
        let node_pos = self.node_position(node)?;
        let host = &mut self.nodes[node_pos];
        if host.pods.iter().any(|p| p.name == name) {
            return Err(Error::DuplicatePod {
                node: node.to_owned(),
                pod: name.to_owned(),
            });
        }
        let port_index = host.pod_ports_made;
        host.pod_ports_made += 1;
        let netns_name = format!("{}-{node}-{name}", self.run);
        let mut node_interface = String::new();
        let netns = create_netns(&mut self.namespaces, &netns_name, |netns| {
            let plan = PodPlan {
                netns,
                port_index,
                ipv4,
                ipv6,
            };
            node_interface = wiring::wire_pod(&host.netns, (host.ipv4, host.ipv6), &plan)?;
            Ok(())
        })?;
        host.pods.push(Pod {
            name: name.to_owned(),
            node: node.to_owned(),
            netns,
            ipv4,
            ipv6,
            node_interface,
        });
        Ok(host.pods.last().expect("just pushed"))
    }

    /// The run prefix, `ambit-<id>`, that every namespace of this testbed starts with.
    pub fn run_prefix(&self) -> &str {
        &self.run
    }

    /// The fabric namespace, holding the bridge that joins the nodes.
    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.node_position(name).map(|i| &self.nodes[i])
    }

    pub fn pod(&self, node: &str, pod: &str) -> Result<&Pod> {
        self.node(node)?.pod(pod)
    }

    /// Every pod, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// Every namespace of this run, in creation order (fabric first).
    pub fn namespaces(&self) -> &[Netns] {
        &self.namespaces
    }

    /// Tears down now and reports failures, which `Drop` can only log.
    pub fn destroy(mut self) -> Result<()> {
        self.torn_down = true;
        cleanup::teardown(&self.namespaces, &self.record)
    }

    fn node_position(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| Error::UnknownNode {
                node: name.to_owned(),
                known: list(self.nodes.iter().map(|n| n.name.as_str())),
            })
    }

    fn check_pod_addrs(&self, node: &str, pod: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<()> {
        let host = self.node(node)?;
        let bad = |addr: IpAddr, reason: String| Error::BadPodAddress {
            node: node.to_owned(),
            pod: pod.to_owned(),
            addr,
            reason,
        };
        if let Some(reason) = addressing::check_pod_v4(host.pod_cidr_v4, ipv4) {
            return Err(bad(ipv4.into(), reason));
        }
        if let Some(reason) = addressing::check_pod_v6(host.pod_cidr_v6, ipv6) {
            return Err(bad(ipv6.into(), reason));
        }
        for other in self.pods() {
            for (mine, theirs) in [
                (IpAddr::from(ipv4), IpAddr::from(other.ipv4)),
                (ipv6.into(), other.ipv6.into()),
            ] {
                if mine == theirs {
                    return Err(Error::PodAddressInUse {
                        node: node.to_owned(),
                        pod: pod.to_owned(),
                        addr: mine,
                        owner: format!("{}/{}", other.node, other.name),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if let Err(err) = cleanup::teardown(&self.namespaces, &self.record) {
            tracing::error!(run = self.run, %err, "testbed teardown left things behind; `ambit down` removes them");
        }
    }
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Position in the order nodes were added; picks the node's addresses.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Underlay (fabric) IPv4 address, `10.10.0.<index+1>`.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// Underlay (fabric) IPv6 address, `fd00:10:10::<index+1>`.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// The node's uplink to the fabric bridge, inside the node's namespace.
    pub fn uplink(&self) -> &'static str {
        NODE_UPLINK
    }

    /// `10.244.<index+1>.0/24`.
    pub fn pod_cidr_v4(&self) -> Ipv4Cidr {
        self.pod_cidr_v4
    }

    /// `fd00:10:244:<index+1>::/64`.
    pub fn pod_cidr_v6(&self) -> Ipv6Cidr {
        self.pod_cidr_v6
    }

    /// The `n`th pod address pair (n in 1..=254): `10.244.<index+1>.<n>` and
    /// `fd00:10:244:<index+1>::<n>`.
    pub fn pod_addrs(&self, n: u16) -> Result<(Ipv4Addr, Ipv6Addr)> {
        match u8::try_from(n) {
            Ok(n @ 1..=254) => Ok(addressing::nth_pod_addrs(
                self.pod_cidr_v4,
                self.pod_cidr_v6,
                n,
            )),
            _ => Err(Error::PodIndexOutOfRange {
                node: self.name.clone(),
                n,
            }),
        }
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::UnknownPod {
                node: self.name.clone(),
                pod: name.to_owned(),
                known: list(self.pods.iter().map(|p| p.name.as_str())),
            })
    }

    fn pod_cidrs(&self) -> (Ipv4Cidr, Ipv6Cidr) {
        (self.pod_cidr_v4, self.pod_cidr_v6)
    }
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Name of the node the pod runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// The pod's interface, inside the pod's namespace.
    pub fn interface(&self) -> &'static str {
        POD_IFACE
    }

    /// The node end of the pod's veth, inside the node's namespace.
    pub fn node_interface(&self) -> &str {
        &self.node_interface
    }
}

/// Creates, prepares and wires a namespace, recording it in `namespaces` the moment it exists;
/// if preparing or wiring fails, the half-built namespace is removed again.
fn create_netns(
    namespaces: &mut Vec<Netns>,
    name: &str,
    wire: impl FnOnce(&Netns) -> Result<()>,
) -> Result<Netns> {
    if namespaces.iter().any(|n| n.name() == name) {
        return Err(Error::NameClash {
            netns: name.to_owned(),
        });
    }
    let netns = Netns::add(name)?;
    namespaces.push(netns.clone());
    let built = netns.prepare().and_then(|()| wire(&netns));
    if let Err(err) = built {
        let removed = process::kill_all_in(&netns).and_then(|_| netns.delete());
        match removed {
            // Only forget it once it is really gone; otherwise teardown retries.
            Ok(()) => {
                namespaces.pop();
            }
            Err(cleanup_err) => {
                tracing::warn!(netns = name, %cleanup_err, "could not remove a half-built namespace");
            }
        }
        return Err(err);
    }
    Ok(netns)
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
