//! The mTLS mode reaches the ztunnels, and a namespace label change re-pushes its workloads.

use std::collections::HashMap;

use ambit_controller::source::file::EMBEDDED_MESH;
use ambit_proto::api::discovery::SubscribeResponse;
use ambit_proto::api::discovery::resource::Kind;
use ambit_proto::api::workload::MtlsMode;

use crate::discovery::{keys, mesh, start, subscribe, ztunnel};

fn modes(r: &SubscribeResponse) -> Vec<(String, MtlsMode)> {
    let mut modes: Vec<_> = r
        .resources
        .iter()
        .filter_map(|res| match res.kind.as_ref()? {
            Kind::Workload(w) => Some((w.name.clone(), w.mtls_mode())),
            _ => None,
        })
        .collect();
    modes.sort();
    modes
}

#[tokio::test]
async fn the_mtls_mode_reaches_a_subscriber_and_follows_the_namespace_label() {
    let strict_mesh = format!("mtlsMode: strict\n{EMBEDDED_MESH}");
    let mut c = start(mesh(&strict_mesh)).await;
    let mut p = subscribe(&c, ztunnel("node-a"), HashMap::new())
        .await
        .unwrap();
    let first = p.next().await;
    use MtlsMode::{Permissive, Strict};
    let expected = |mode: MtlsMode| {
        vec![
            ("client".to_string(), mode),
            ("denied-client".into(), mode),
            // Not meshed: no ztunnel refuses anything for it.
            ("legacy".into(), Permissive),
            ("reviews-v1".into(), mode),
            ("reviews-v2".into(), mode),
        ]
    };
    assert_eq!(modes(&first), expected(Strict));
    p.ack(&first).await;

    // The namespace overrides the mesh-wide mode: its meshed workloads change, nothing else.
    let relabelled = strict_mesh.replacen(
        "ambit.io/dataplane-mode: ambient",
        "ambit.io/dataplane-mode: ambient\n      ambit.io/mtls-mode: permissive",
        1,
    );
    c.publish(mesh(&relabelled)).await;
    let delta = p.next().await;
    assert_eq!(
        keys(&delta),
        [
            "workload/local//Pod/demo/client",
            "workload/local//Pod/demo/denied-client",
            "workload/local//Pod/demo/reviews-v1",
            "workload/local//Pod/demo/reviews-v2",
        ]
    );
    let mut permissive = expected(Permissive);
    permissive.retain(|(name, _)| name != "legacy");
    assert_eq!(modes(&delta), permissive);
}
