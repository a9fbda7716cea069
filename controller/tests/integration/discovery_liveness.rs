//! Node liveness and sync status over real gRPC: a node whose ztunnel stays away past the grace
//! has its meshed pods pushed as unhealthy to everyone else, and `/debug/syncz` follows a
//! proxy's live subscription across reconnects.

use std::collections::HashMap;
use std::time::Duration;

use ambit_controller::source::file::EMBEDDED_MESH;
use ambit_proto::api::discovery::SubscribeResponse;
use ambit_proto::api::discovery::resource::Kind;
use ambit_proto::api::workload::WorkloadStatus;

use crate::discovery::{Proxy, keys, mesh, start, start_with_liveness, subscribe, ztunnel};

const GRACE: Duration = Duration::from_millis(500);

/// The workloads of a response with their status.
fn statuses(r: &SubscribeResponse) -> Vec<(String, WorkloadStatus)> {
    r.resources
        .iter()
        .filter_map(|res| match res.kind.as_ref()? {
            Kind::Workload(w) => Some((w.name.clone(), w.status())),
            _ => None,
        })
        .collect()
}

async fn subscribed(c: &crate::discovery::Controller, node: &str) -> (Proxy, SubscribeResponse) {
    let mut p = subscribe(c, ztunnel(node), HashMap::new()).await.unwrap();
    let first = p.next().await;
    p.ack(&first).await;
    (p, first)
}

#[tokio::test]
async fn a_node_whose_ztunnel_stays_away_has_its_meshed_pods_pushed_unhealthy_until_it_returns() {
    let c = start_with_liveness(mesh(EMBEDDED_MESH), GRACE).await;
    let (b, _) = subscribed(&c, "node-b").await;
    let (mut a, first) = subscribed(&c, "node-a").await;
    let reviews_v2 = |r: &SubscribeResponse| {
        statuses(r)
            .into_iter()
            .find(|(name, _)| name == "reviews-v2")
            .map(|(_, s)| s)
    };
    assert_eq!(reviews_v2(&first), Some(WorkloadStatus::Healthy));

    drop(b);
    let down = a.next().await;
    // node-b's only meshed pod; its unmeshed one (legacy) is not ztunnel's to serve.
    assert_eq!(keys(&down), ["workload/local//Pod/demo/reviews-v2"]);
    assert_eq!(reviews_v2(&down), Some(WorkloadStatus::Unhealthy));
    a.ack(&down).await;

    let (mut b, b_first) = subscribed(&c, "node-b").await;
    assert_eq!(
        reviews_v2(&b_first),
        Some(WorkloadStatus::Healthy),
        "its own ztunnel sees it up"
    );
    let up = a.next().await;
    assert_eq!(keys(&up), ["workload/local//Pod/demo/reviews-v2"]);
    assert_eq!(reviews_v2(&up), Some(WorkloadStatus::Healthy));
    assert_eq!(
        up.system_version, first.system_version,
        "back to the very same config"
    );
    a.ack(&up).await;
    b.quiet_for(Duration::from_millis(100)).await;

    // A reconnect within the grace changes nothing for anyone.
    drop(b);
    let _b = subscribed(&c, "node-b").await;
    a.quiet_for(GRACE * 3).await;
}

#[tokio::test]
async fn a_node_that_never_subscribed_stays_as_the_source_says() {
    let c = start_with_liveness(mesh(EMBEDDED_MESH), GRACE).await;
    let (mut a, first) = subscribed(&c, "node-a").await;
    assert!(
        statuses(&first)
            .iter()
            .all(|(_, s)| *s == WorkloadStatus::Healthy)
    );
    a.quiet_for(GRACE * 3).await;
}

#[tokio::test]
async fn a_resubscribed_proxy_is_in_sync_once_the_old_subscription_ends() {
    let mut c = start(mesh(EMBEDDED_MESH)).await;
    let (old, first) = subscribed(&c, "node-a").await;
    // The proxy reconnects before the controller has seen its old stream end.
    let mut new = subscribe(&c, ztunnel("node-a"), old.held.clone())
        .await
        .unwrap();
    let resumed = new.next().await;
    assert!(resumed.resources.is_empty() && !resumed.full_state);
    let sync = c.sync.clone();
    let row = move || {
        let rows = sync.snapshot();
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows[0].clone()
    };
    // It already held the desired versions: in sync before its ACK arrives.
    assert!(row().in_sync(), "{:?}", row());
    assert_eq!(row().desired_version, first.system_version);
    new.ack(&resumed).await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The same model again wakes every subscription without anything to send.
    c.publish(mesh(EMBEDDED_MESH)).await;
    new.quiet_for(Duration::from_millis(300)).await;
    assert!(row().in_sync(), "{:?}", row());
    assert_eq!(
        row().acked_version.as_deref(),
        Some(first.system_version.as_str())
    );
}
