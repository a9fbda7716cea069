//! The mesh file's waypoints in a local mesh. Each runs the `waypoint` program in a network
//! namespace of its own on its node, holding the waypoint's addresses: a pod that ztunnel does
//! not capture, since what reaches it on 15008 is HBONE already and what it sends is HBONE to
//! the pods' own 15008. In mesh-file mode it speaks for its node (`--node`, with the node's
//! bootstrap token), which the controller accepts for the waypoints placed on that node.
//!
//! The testbed never links a namespace to the host's, so two relays (see `relay`) join the
//! waypoint to the host: the controller's gRPC port, at 127.0.0.1:15010 inside the waypoint's
//! namespace; and the waypoint's admin, metrics and readiness ports, on a loopback address of
//! its own in the host (see `ports`), as each ztunnel's are.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use ambit_testbed::Testbed;

use super::LocalError;
use super::mesh::Options;
use super::ports::{
    CONTROLLER_GRPC_PORT, Slot, WAYPOINT_ADMIN_PORT, WAYPOINT_METRICS_PORT, WAYPOINT_READINESS_PORT,
};
use super::process::Spec;
use super::relay::Relay;
use super::start::write;
use super::state::WaypointState;
use ambit_controller::model::ObjectKey;
use ambit_controller::source::file::{MeshFile, TopologyWaypoint};

/// A waypoint ready to start: its run state, its command line (kept for restarts) and the
/// relays that join it to the host, which live as long as the mesh.
pub(crate) struct Placed {
    pub state: WaypointState,
    pub spec: Spec,
    pub relays: Vec<Relay>,
}

/// The testbed's name for a waypoint's namespace (as a pod of its node): `wp-<ns>-<name>`.
pub fn testbed_name(namespace: &str, name: &str) -> String {
    format!("wp-{namespace}-{name}")
}

/// The waypoint's IPv4 and IPv6 addresses; a local mesh needs both, as for pods.
pub fn addresses(
    wp: &TopologyWaypoint,
) -> Result<(std::net::Ipv4Addr, std::net::Ipv6Addr), LocalError> {
    let v4 = wp.addresses.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        _ => None,
    });
    let v6 = wp.addresses.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        _ => None,
    });
    match (v4, v6) {
        (Some(v4), Some(v6)) => Ok((v4, v6)),
        _ => Err(LocalError::WaypointAddresses {
            waypoint: format!("{}/{}", wp.namespace, wp.name),
        }),
    }
}

/// Each waypoint's relays and command line; nothing is started but the relays.
pub(crate) fn place(
    options: &Options,
    file: &MeshFile,
    testbed: &Testbed,
    slot: &Slot,
    controller: SocketAddr,
    root_cert: &Path,
) -> Result<Vec<Placed>, LocalError> {
    let mut placed = Vec::new();
    for (j, wp) in file.topology.waypoints.iter().enumerate() {
        let key = format!("{}/{}", wp.namespace, wp.name);
        let pod = testbed.pod(&wp.node, &testbed_name(&wp.namespace, &wp.name))?;
        let netns = pod.netns().clone();
        let file_name = format!("waypoint-{}-{}", wp.namespace, wp.name);
        let token = file
            .model
            .node(&wp.node)
            .and_then(|n| n.bootstrap_token.clone())
            .unwrap_or_default();
        let token_file = options.work_dir.join(format!("{file_name}.token"));
        write(&token_file, &token)?;
        let service_account = file
            .model
            .waypoint(&ObjectKey::new(&wp.namespace, &wp.name))
            .map_or_else(|| wp.name.clone(), |w| w.service_account.clone());

        // The controller, from inside the waypoint's namespace.
        let inside = SocketAddr::from((Ipv4Addr::LOCALHOST, CONTROLLER_GRPC_PORT));
        let listener = netns
            .run(|| std::net::TcpListener::bind(inside))?
            .map_err(|source| LocalError::Io {
                what: format!("listening on {inside} in waypoint {key}'s namespace"),
                source,
            })?;
        let to_controller = Relay::start(
            &format!("the relay from waypoint {key} to the controller"),
            None,
            vec![(listener, controller)],
        )?;

        // Its ports, from the host.
        let ip = slot.waypoint_ip(j);
        let mut routes = Vec::new();
        for port in [
            WAYPOINT_ADMIN_PORT,
            WAYPOINT_METRICS_PORT,
            WAYPOINT_READINESS_PORT,
        ] {
            let outside = SocketAddr::from((ip, port));
            let listener =
                std::net::TcpListener::bind(outside).map_err(|source| LocalError::Io {
                    what: format!("listening on {outside} for waypoint {key}"),
                    source,
                })?;
            routes.push((listener, SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        }
        let from_host = Relay::start(
            &format!("the relay to waypoint {key}'s ports"),
            Some(&netns),
            routes,
        )?;

        let log = options.work_dir.join(format!("{file_name}.log"));
        let mut spec = Spec::new(&format!("waypoint {key}"), &options.binaries.waypoint, &log);
        spec.args(["--name", wp.name.as_str()])
            .args(["--namespace", wp.namespace.as_str()])
            .args(["--controller".to_string(), format!("https://{inside}")])
            .args(["--trust-domain", file.model.trust_domain()])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--root-cert")
            .arg(root_cert)
            .args(["--service-account", service_account.as_str()])
            .args(["--node", wp.node.as_str()])
            .args([
                "--admin-addr".to_string(),
                format!("127.0.0.1:{WAYPOINT_ADMIN_PORT}"),
            ])
            .args(["--drain-timeout", "3s"]);
        spec.netns = Some(netns.clone());
        placed.push(Placed {
            state: WaypointState {
                name: wp.name.clone(),
                namespace: wp.namespace.clone(),
                node: wp.node.clone(),
                netns: netns.name().to_string(),
                ipv4: pod.ipv4(),
                ipv6: pod.ipv6(),
                admin: SocketAddr::from((ip, WAYPOINT_ADMIN_PORT)),
                metrics: SocketAddr::from((ip, WAYPOINT_METRICS_PORT)),
                readiness: SocketAddr::from((ip, WAYPOINT_READINESS_PORT)),
                log,
                pid: None,
            },
            spec,
            relays: vec![to_controller, from_host],
        });
    }
    Ok(placed)
}
