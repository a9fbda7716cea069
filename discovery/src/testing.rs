//! Builders of resources and responses as the controller sends them, for tests of the state
//! and of the proxies that hold it (feature `test-util`). Everything is in namespace `demo`,
//! trust domain `cluster.local`; workload uids are `local//Pod/demo/<name>`.

use ambit_proto::api::discovery::{Resource, SubscribeResponse, resource::Kind};
use ambit_proto::api::route as rt;
use ambit_proto::api::workload as wl;
use ambit_proto::identity::SpiffeId;

use crate::state::Workload;

/// The uid [`workload`] gives a workload named `name`.
pub fn uid(name: &str) -> String {
    format!("local//Pod/demo/{name}")
}

/// The identity of service account `sa` in `demo`.
pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "demo", sa).expect("a valid test identity")
}

/// Workload `name` on node-a with these addresses, running as service account `name`.
pub fn workload(name: &str, ips: &[&str], protocol: wl::Protocol) -> Resource {
    let uid = uid(name);
    Resource {
        name: uid.clone(),
        version: "1".into(),
        kind: Some(Kind::Workload(wl::Workload {
            uid,
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            node: "node-a".into(),
            addresses: ips.iter().map(|s| s.to_string()).collect(),
            protocol: protocol as i32,
            trust_domain: "cluster.local".into(),
            ..Default::default()
        })),
    }
}

/// A checked meshed workload, for tests of a data path that takes one directly.
pub fn meshed_workload(name: &str, ips: &[&str]) -> Workload {
    match workload(name, ips, wl::Protocol::Hbone).kind {
        Some(Kind::Workload(w)) => Workload::from_api(&w).expect("a valid test workload"),
        _ => unreachable!("workload() builds a workload"),
    }
}

/// Service `name` (host `<name>.demo.svc.cluster.local`) on `vips`, port 9080 to 8080,
/// with the workloads named `endpoints` behind it.
pub fn service(name: &str, vips: &[&str], endpoints: &[&str]) -> Resource {
    Resource {
        name: format!("demo/{name}"),
        version: "1".into(),
        kind: Some(Kind::Service(wl::Service {
            name: name.into(),
            namespace: "demo".into(),
            hostname: format!("{name}.demo.svc.cluster.local"),
            addresses: vips.iter().map(|a| a.to_string()).collect(),
            ports: vec![wl::Port {
                service_port: 9080,
                target_port: 8080,
                ..Default::default()
            }],
            endpoints: endpoints
                .iter()
                .map(|e| wl::Endpoint {
                    workload_uid: uid(e),
                })
                .collect(),
            waypoint: None,
        })),
    }
}

/// Waypoint `demo/<name>` on `addresses`, running as service account `name`.
pub fn waypoint(name: &str, addresses: &[&str]) -> Resource {
    Resource {
        name: format!("demo/{name}"),
        version: "1".into(),
        kind: Some(Kind::Waypoint(wl::Waypoint {
            name: name.into(),
            namespace: "demo".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            service_account: name.into(),
            trust_domain: "cluster.local".into(),
        })),
    }
}

/// A workload or service resource made to use waypoint `demo/<name>`.
pub fn using_waypoint(mut resource: Resource, name: &str) -> Resource {
    let uses = Some(wl::WaypointRef {
        namespace: "demo".into(),
        name: name.into(),
    });
    match &mut resource.kind {
        Some(Kind::Workload(w)) => w.waypoint = uses,
        Some(Kind::Service(s)) => s.waypoint = uses,
        _ => panic!("only workloads and services use waypoints"),
    }
    resource
}

/// Route `demo/<name>` attached to the services named `parents` (host names), its one rule
/// sending everything to `backend` (a host name).
pub fn route(name: &str, parents: &[&str], backend: &str) -> Resource {
    Resource {
        name: format!("demo/{name}"),
        version: "1".into(),
        kind: Some(Kind::Route(rt::Route {
            name: name.into(),
            namespace: "demo".into(),
            parents: parents
                .iter()
                .map(|p| rt::ParentRef {
                    service: p.to_string(),
                    port: 0,
                })
                .collect(),
            rules: vec![rt::RouteRule {
                backends: vec![rt::BackendRef {
                    service: backend.into(),
                    port: 9080,
                    weight: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

/// A response of these resources, the whole state or a delta.
pub fn response(full: bool, resources: Vec<Resource>) -> SubscribeResponse {
    SubscribeResponse {
        system_version: "v".into(),
        nonce: "n".into(),
        resources,
        full_state: full,
        ..Default::default()
    }
}
