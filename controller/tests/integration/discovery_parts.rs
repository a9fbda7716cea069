//! Responses in parts (`SubscribeResponse.more`, `ambit_proto::response_parts`), over the real
//! port: the controller splits a large full state, and ztunnel's own discovery client applies
//! the parts as one update.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::{ControllerLink, Current, ProxyState};
use ambit_proto::control;
use ambit_proto::drain;
use ambit_proto::response_parts::Reassembly;
use ambit_ztunnel::xds::{self, Applier};
use tokio::sync::watch;

use crate::discovery::{big_mesh, keys, node0_scope, start_with_parts, subscribe, ztunnel};

/// Small enough that node-0's ~60 KB full state of `big_mesh` takes a dozen parts.
const PART_BYTES: usize = 4096;

#[tokio::test]
async fn a_large_response_comes_in_parts_that_together_are_the_scope() {
    let mut c = start_with_parts(big_mesh(80), PART_BYTES).await;
    let mut p = subscribe(&c, ztunnel("node-0"), HashMap::new())
        .await
        .unwrap();
    let mut parts = Vec::new();
    loop {
        let part = p.next().await;
        let more = part.more;
        parts.push(part);
        if !more {
            break;
        }
    }
    assert!(parts.len() >= 10, "{} parts", parts.len());
    let nonce = parts[0].nonce.clone();
    for part in &parts {
        assert!(part.full_state && part.nonce == nonce && !part.resources.is_empty());
    }
    let mut reassembly = Reassembly::new(usize::MAX);
    let mut whole = Vec::new();
    for part in parts {
        whole.extend(reassembly.push(part).unwrap());
    }
    let [whole] = &whole[..] else {
        panic!("{} responses from one set of parts", whole.len())
    };
    assert_eq!(keys(whole), node0_scope());
    p.ack(whole).await;

    // A small delta after the ACK is one part.
    c.publish(big_mesh(81)).await;
    let delta = p.next().await;
    assert!(!delta.more && !delta.full_state && delta.nonce != nonce);
    assert_eq!(keys(&delta), ["service/ns-1/svc-5"]);
}

#[tokio::test]
async fn ztunnels_discovery_client_applies_the_parts_as_one_update() {
    let c = start_with_parts(big_mesh(80), PART_BYTES).await;
    let identity = control::default_controller_identity(c.ca.trust_domain()).unwrap();
    let link = ControllerLink::new(
        &c.server.url,
        identity,
        &c.ca.trust_bundle(),
        Some("node-0"),
        None,
    )
    .unwrap();
    let state = Arc::new(Current::<ProxyState>::default());
    let (applied, mut updates) = watch::channel(0);
    let applier = Arc::new(Applier {
        state: state.clone(),
        metrics: Arc::new(ambit_ztunnel::metrics::Metrics::new()),
        applied,
    });
    let client = xds::client(link, "node-0", applier, None);
    let (_stop, drain) = drain::channel();
    tokio::spawn(client.run(drain));
    tokio::time::timeout(Duration::from_secs(10), updates.wait_for(|n| *n > 0))
        .await
        .expect("ztunnel's client applied nothing")
        .unwrap();
    // Were parts applied one by one, each a "full state", the count would be one per part and
    // the state only the last part's.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*updates.borrow(), 1);
    let mut held: Vec<String> = state.load().known_versions().into_keys().collect();
    held.sort();
    assert_eq!(held, node0_scope());
}
