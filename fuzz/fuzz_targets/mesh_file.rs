//! The mesh file, from text to the proxies: any text is parsed and checked as the controller
//! checks it (an error, never a panic), and whatever the controller accepts must be config
//! every proxy accepts: each node's ztunnel applies its scope, each waypoint applies and
//! compiles its scope. A file the controller takes and a proxy refuses would leave that proxy
//! on stale config with no one to tell the author.
//!
//! Seeds: `examples/` (see README.md).

#![no_main]

use std::sync::Arc;

use ambit_controller::push::{Snapshot, desired_for};
use ambit_controller::source::file::parse;
use ambit_discovery::client::subscriber;
use ambit_discovery::state::ProxyState;
use ambit_proto::api::discovery::{ProxyKind, SubscribeResponse, Subscriber};
use ambit_waypoint::state::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = parse(text, "fuzz.yaml") else {
        return;
    };
    let model = file.model;
    let nodes: Vec<String> = model.nodes().map(|n| n.name.clone()).collect();
    let waypoints: Vec<(String, String)> = model
        .waypoints()
        .map(|w| (w.name.clone(), w.namespace.clone()))
        .collect();
    let snapshot = Snapshot::build(Arc::new(model), None);
    for node in &nodes {
        let response = full_state(&snapshot, &subscriber(ProxyKind::Ztunnel, node, ""));
        if let Err(e) = ProxyState::default().apply(&response) {
            panic!("ztunnel on {node} refuses what the controller accepted: {e}");
        }
    }
    for (name, namespace) in &waypoints {
        let response = full_state(&snapshot, &subscriber(ProxyKind::Waypoint, name, namespace));
        if let Err(e) = Store::default().apply(&response) {
            panic!("waypoint {namespace}/{name} refuses what the controller accepted: {e}");
        }
    }
});

fn full_state(snapshot: &Snapshot, who: &Subscriber) -> SubscribeResponse {
    SubscribeResponse {
        system_version: "fuzz".into(),
        nonce: "1".into(),
        resources: desired_for(snapshot, who)
            .iter()
            .map(|(_, r)| r.decode())
            .collect(),
        removed: Vec::new(),
        full_state: true,
        ..Default::default()
    }
}
