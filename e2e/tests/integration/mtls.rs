//! Issue 12's strict mTLS: a namespace labelled `ambit.io/mtls-mode: strict` refuses plaintext
//! from pods outside the mesh, a permissive one (the default, as in Istio) accepts it, and
//! HBONE from a meshed client works in both; the mesh file's `mtlsMode: strict` makes the
//! whole mesh strict, taking effect on a running mesh.

use std::time::Duration;

use ambit_e2e::{L4_MESH, can_run, curl, eventually, failures, start};

/// The default mesh's L4 form plus a strict namespace `vault` with one server on node-b, and a second
/// pod outside the mesh on node-a, so plaintext arrives both from the same node and across.
fn mesh_with_a_strict_namespace() -> String {
    let with_ns = L4_MESH.replacen(
        "\npods:\n",
        "  - name: vault\n    labels:\n      ambit.io/dataplane-mode: ambient\n      \
         ambit.io/mtls-mode: strict\n\npods:\n  \
         - name: vault\n    namespace: vault\n    node: node-b\n    serviceAccount: vault\n    \
         labels: {app: vault}\n    ipv4: 10.244.2.10\n    ipv6: fd00:10:244:2::a\n    \
         ports: [8080]\n    app: http-echo\n  \
         - name: outsider\n    namespace: legacy\n    node: node-a\n    \
         serviceAccount: outsider\n    labels: {app: outsider}\n    ipv4: 10.244.1.10\n    \
         ipv6: fd00:10:244:1::a\n",
        1,
    );
    assert_ne!(
        with_ns, L4_MESH,
        "meshes/l4.yaml changed shape; update this test"
    );
    with_ns
}

const VAULT: &str = "http://10.244.2.10:8080/";
const REVIEWS_V1: &str = "http://10.244.1.4:8080/";
const REVIEWS_V2: &str = "http://10.244.2.2:8080/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_namespaces_refuse_plaintext_and_permissive_ones_accept_it() -> anyhow::Result<()> {
    if !can_run("strict_namespaces_refuse_plaintext") {
        return Ok(());
    }
    let mesh = start("mtls", Some(&mesh_with_a_strict_namespace())).await?;
    let node_b = mesh.node_state("node-b")?.metrics;
    let refused_before = failures(node_b, "strict_mtls").await?;

    // Strict: plaintext from outside the mesh is refused, from the same node and across.
    for (ns, pod) in [("legacy", "legacy"), ("legacy", "outsider")] {
        let r = curl(&mesh, ns, pod, VAULT)?;
        assert!(
            !r.ok() && !r.stdout.contains("hello from"),
            "{ns}/{pod} reached the strict vault in plaintext: {r:?}"
        );
    }
    assert!(
        failures(node_b, "strict_mtls").await? >= refused_before + 2,
        "node-b's ztunnel did not count its strict mTLS refusals"
    );
    // Permissive (the default): plaintext from outside the mesh is accepted.
    for (pod, url, who) in [
        ("legacy", REVIEWS_V1, "reviews-v1"),
        ("outsider", REVIEWS_V2, "reviews-v2"),
    ] {
        let r = curl(&mesh, "legacy", pod, url)?;
        assert_eq!(r.stdout.trim(), format!("hello from {who}"), "{pod}: {r:?}");
    }
    // HBONE from a meshed client works in both.
    for (url, who) in [(VAULT, "vault"), (REVIEWS_V2, "reviews-v2")] {
        let r = curl(&mesh, "demo", "client", url)?;
        assert_eq!(r.stdout.trim(), format!("hello from {who}"), "{url}: {r:?}");
    }

    // The whole mesh strict, on the running mesh: the permissive namespace now refuses
    // plaintext too, within the time a mesh file change takes to reach the ztunnels.
    let text = std::fs::read_to_string(mesh.mesh_path())?;
    std::fs::write(mesh.mesh_path(), format!("mtlsMode: strict\n{text}"))?;
    let refused = eventually(Duration::from_secs(10), async || {
        let r = curl(&mesh, "legacy", "outsider", REVIEWS_V2).ok()?;
        (!r.ok()).then_some(r)
    })
    .await;
    assert!(
        refused.is_some(),
        "plaintext to demo/reviews-v2 still accepted 10s after `mtlsMode: strict`"
    );
    for (url, who) in [(VAULT, "vault"), (REVIEWS_V2, "reviews-v2")] {
        let r = curl(&mesh, "demo", "client", url)?;
        assert_eq!(r.stdout.trim(), format!("hello from {who}"), "{url}: {r:?}");
    }
    // Plaintext to pods outside the mesh is none of the mesh's business.
    let r = curl(&mesh, "legacy", "outsider", "http://10.244.2.3:8080/")?;
    assert_eq!(r.stdout.trim(), "hello from legacy", "{r:?}");
    mesh.down()?;
    Ok(())
}
