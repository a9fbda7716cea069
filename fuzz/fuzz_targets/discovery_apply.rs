//! A proxy applying discovery responses: a waypoint's store holding a small mesh (workloads, a
//! service behind a waypoint, a route) takes a run of responses prost-decoded from the input,
//! each checked, indexed and compiled as in the waypoint (which applies them as ztunnel does,
//! then compiles routes and traffic policies). Besides not panicking:
//! - a refused response changes nothing (all or nothing: the proxy keeps its last good config);
//! - an applied one leaves indexes that agree with the resources.
//!
//! Input: responses, each as a length-delimited `ambit.discovery.v1.SubscribeResponse`.

#![no_main]

use std::sync::Arc;

use ambit_discovery::state::Workload;
use ambit_discovery::testing::{response, route, service, using_waypoint, waypoint, workload};
use ambit_proto::api::discovery::SubscribeResponse;
use ambit_proto::api::workload::Protocol;
use ambit_waypoint::state::Store;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let store = Store::default();
    store.apply(&baseline()).expect("the baseline mesh applies");
    let mut input = data;
    while !input.is_empty() {
        let Ok(next) = SubscribeResponse::decode_length_delimited(&mut input) else {
            return;
        };
        // Compared by address, not held: a held snapshot would outlive the apply on a thread
        // of its own. A refused apply frees nothing, so the address still names the same one.
        let before = Arc::as_ptr(&store.current());
        match store.apply(&next) {
            Err(_) => assert!(
                std::ptr::eq(before, Arc::as_ptr(&store.current())),
                "a refused response changed the state"
            ),
            Ok(()) => check_indexes(&store),
        }
    }
});

fn baseline() -> SubscribeResponse {
    response(
        true,
        vec![
            workload("productpage", &["10.244.1.4"], Protocol::Hbone),
            workload("reviews-v1", &["10.244.1.5", "fd00::5"], Protocol::Hbone),
            workload("reviews-v2", &["10.244.2.6"], Protocol::Hbone),
            workload("legacy", &["10.244.2.9"], Protocol::Tcp),
            waypoint("waypoint", &["10.244.3.2"]),
            using_waypoint(
                service("reviews", &["10.96.0.10"], &["reviews-v1", "reviews-v2"]),
                "waypoint",
            ),
            service("reviews-v2", &["10.96.0.11"], &["reviews-v2"]),
            route(
                "reviews",
                &["reviews.demo.svc.cluster.local"],
                "reviews-v2.demo.svc.cluster.local",
            ),
        ],
    )
}

fn check_indexes(store: &Store) {
    let snapshot = store.current();
    let mesh = &snapshot.mesh;
    for w in mesh.workloads() {
        let found = mesh
            .workload(w.uid())
            .expect("a workload is found by its uid");
        assert!(Workload::ptr_eq(found, w));
        for ip in w.addresses() {
            assert!(
                mesh.workload_by_ip(*ip).is_some(),
                "{} is not found by its address {ip}",
                w.uid()
            );
        }
    }
    for s in mesh.services() {
        assert!(
            mesh.service(&s.key).is_some(),
            "{} is not found by key",
            s.key
        );
        for vip in s.vips.iter() {
            assert!(
                mesh.service_by_vip(*vip).is_some(),
                "{} is not found by its address {vip}",
                s.key
            );
        }
    }
}
