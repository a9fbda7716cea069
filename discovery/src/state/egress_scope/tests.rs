use std::net::IpAddr;

use ambit_proto::api::discovery::{self as api, Resource, resource::Kind};
use ambit_proto::api::workload as wl;

use super::*;
use crate::testing::{response, service, workload};

/// `resource` (a workload or service of the test builders) moved to namespace `ns`.
fn moved(mut resource: Resource, ns: &str) -> Resource {
    match &mut resource.kind {
        Some(Kind::Workload(w)) => {
            w.namespace = ns.into();
            w.uid = format!("local//Pod/{ns}/{}", w.name);
            resource.name = w.uid.clone();
        }
        Some(Kind::Service(s)) => {
            s.namespace = ns.into();
            for e in &mut s.endpoints {
                e.workload_uid = e.workload_uid.replace("/demo/", &format!("/{ns}/"));
            }
            resource.name = format!("{ns}/{}", s.name);
        }
        _ => panic!("only workloads and services move"),
    }
    resource
}

fn scope(ns: &str, hosts: &[(&str, &str)], invalid: &str) -> Resource {
    let declared: Vec<String> = hosts.iter().map(|(n, s)| format!("{n}/{s}")).collect();
    Resource {
        name: ns.into(),
        version: "1".into(),
        kind: Some(Kind::EgressScope(wl::EgressScope {
            namespace: ns.into(),
            declared: declared.join(", "),
            hosts: hosts
                .iter()
                .map(|(n, s)| wl::EgressHost {
                    namespace: n.to_string(),
                    service: if *s == "*" {
                        String::new()
                    } else {
                        s.to_string()
                    },
                })
                .collect(),
            invalid: invalid.into(),
        })),
    }
}

/// A client in `shop`, a cart service in `shop`, payments' api (one pod) and ledger (another
/// pod) services, and `scope` for `shop`, if any.
fn state(shop_scope: Option<Resource>) -> ProxyState {
    let mut resources = vec![
        moved(
            workload("client", &["10.0.0.1"], wl::Protocol::Hbone),
            "shop",
        ),
        moved(
            workload("cart-1", &["10.0.0.2"], wl::Protocol::Hbone),
            "shop",
        ),
        moved(service("cart", &["10.96.0.2"], &["cart-1"]), "shop"),
        moved(
            workload("api-1", &["10.0.1.1"], wl::Protocol::Hbone),
            "payments",
        ),
        moved(service("api", &["10.96.1.1"], &["api-1"]), "payments"),
        moved(
            workload("ledger-1", &["10.0.1.2"], wl::Protocol::Hbone),
            "payments",
        ),
        moved(service("ledger", &["10.96.1.2"], &["ledger-1"]), "payments"),
    ];
    resources.extend(shop_scope);
    let mut s = ProxyState::default();
    s.apply(&response(true, resources)).unwrap();
    s
}

fn check(s: &ProxyState, to: &str) -> Result<(), OutsideEgressScope> {
    let client = s.workload("local//Pod/shop/client").unwrap().clone();
    s.check_egress(&client, to.parse::<IpAddr>().unwrap())
}

#[test]
fn without_a_scope_every_destination_is_allowed() {
    let s = state(None);
    for to in ["10.96.0.2", "10.96.1.1", "10.0.1.2", "192.0.2.1"] {
        assert_eq!(check(&s, to), Ok(()), "{to}");
    }
}

#[test]
fn a_whole_namespace_lets_its_services_and_pods_through() {
    let s = state(Some(scope("shop", &[("shop", "*")], "")));
    assert_eq!(check(&s, "10.96.0.2"), Ok(()));
    assert_eq!(check(&s, "10.0.0.2"), Ok(()));
    let refused = check(&s, "10.96.1.1").unwrap_err();
    assert_eq!(
        refused.to_string(),
        "service payments/api is outside the egress scope namespace shop declares (\"shop/*\"); add it there to allow this connection"
    );
    let refused = check(&s, "10.0.1.2").unwrap_err().to_string();
    assert!(
        refused.starts_with("workload payments/ledger-1 (10.0.1.2) is outside"),
        "{refused}"
    );
}

#[test]
fn a_named_service_lets_its_vip_and_its_endpoints_through_and_nothing_else_there() {
    let s = state(Some(scope("shop", &[("payments", "api")], "")));
    assert_eq!(check(&s, "10.96.1.1"), Ok(()));
    assert_eq!(check(&s, "10.0.1.1"), Ok(()), "api's endpoint");
    assert!(check(&s, "10.96.1.2").is_err(), "ledger's VIP");
    assert!(check(&s, "10.0.1.2").is_err(), "ledger's pod");
    // Not declared, so not even its own namespace; itself is no egress.
    assert!(check(&s, "10.96.0.2").is_err());
    assert_eq!(check(&s, "10.0.0.1"), Ok(()));
}

#[test]
fn addresses_outside_the_mesh_are_not_the_scopes_to_refuse() {
    let s = state(Some(scope("shop", &[("shop", "*")], "")));
    assert_eq!(check(&s, "192.0.2.1"), Ok(()));
}

#[test]
fn an_unreadable_scope_refuses_every_mesh_destination_saying_why() {
    let s = state(Some(scope(
        "shop",
        &[],
        "entry \"payments\" is not <namespace>/<service>",
    )));
    let refused = check(&s, "10.96.0.2").unwrap_err().to_string();
    assert!(refused.contains("cannot be read"), "{refused}");
    assert!(
        refused.contains("is not <namespace>/<service>"),
        "{refused}"
    );
    assert_eq!(check(&s, "192.0.2.1"), Ok(()));
}

#[test]
fn a_removed_scope_stops_refusing() {
    let mut s = state(Some(scope("shop", &[("shop", "*")], "")));
    assert!(check(&s, "10.96.1.1").is_err());
    let mut delta = response(false, vec![]);
    delta.removed.push(api::RemovedResource {
        r#type: api::ResourceType::EgressScope as i32,
        name: "shop".into(),
    });
    s.apply(&delta).unwrap();
    assert_eq!(check(&s, "10.96.1.1"), Ok(()));
    assert!(s.egress_scope("shop").is_none());
    assert_eq!(s.version("egress_scope/shop"), None);
}
