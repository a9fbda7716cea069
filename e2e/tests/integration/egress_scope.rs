//! Issue 18's declared scope, over two netns nodes: namespace shop declares the mesh
//! destinations its pods talk to (its own namespace and payments/api). Inside it connections
//! work, by VIP and by an endpoint's pod address; outside it (payments/ledger) node-a's ztunnel
//! refuses them, says why naming the declaration, and counts them; a change to the declaration
//! reaches the ztunnel and lets the newly declared destination through.

use std::time::Duration;

use ambit_e2e::{can_run, curl, eventually, failures, start, work_dir};

const MESH: &str = include_str!("../../meshes/egress_scope.yaml");
const CART: &str = "http://10.96.0.10/";
const API: &str = "http://10.96.1.10/";
const API_POD: &str = "http://10.244.2.3:8080/";
const LEDGER: &str = "http://10.96.1.20/";
const LEDGER_POD: &str = "http://10.244.2.4:8080/";
const REASON: &str = "outside_egress_scope";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_reaches_only_what_its_egress_scope_declares() -> anyhow::Result<()> {
    if !can_run("a_namespace_reaches_only_what_its_egress_scope_declares") {
        return Ok(());
    }
    let mesh = start("egress-scope", Some(MESH)).await?;
    let metrics = mesh.node_state("node-a")?.metrics;

    for (url, answer) in [(CART, "cart-1"), (API, "api-1"), (API_POD, "api-1")] {
        let r = curl(&mesh, "shop", "client", url)?;
        assert_eq!(
            r.stdout.trim(),
            format!("hello from {answer}"),
            "{url}: {r:?}"
        );
    }
    assert_eq!(failures(metrics, REASON).await?, 0);

    for url in [LEDGER, LEDGER_POD] {
        let r = curl(&mesh, "shop", "client", url)?;
        assert!(
            !r.ok(),
            "{url} is outside shop's scope but was carried: {r:?}"
        );
    }
    assert_eq!(failures(metrics, REASON).await?, 2);
    let log = std::fs::read_to_string(work_dir(&mesh).join("ztunnel-node-a.log"))?;
    assert!(
        log.contains(
            "service payments/ledger is outside the egress scope namespace shop declares (\"./*, payments/api\")"
        ) && log.contains("workload payments/ledger-1 (10.244.2.4) is outside"),
        "ztunnel did not say why it refused:\n{log}"
    );

    // `ambit config egress-scopes` shows what node-a's ztunnel holds.
    let admin = mesh.node_state("node-a")?.admin.to_string();
    let out = ambit_e2e::up::ambit()
        .args(["config", "egress-scopes", "--admin", &admin])
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        table.lines().any(|l| l.contains("node-a")
            && l.contains("shop")
            && l.contains("./*, payments/api")
            && l.contains("in force")),
        "{table}"
    );

    // The declaration widens to all of payments: the change reaches node-a's ztunnel.
    let text = std::fs::read_to_string(mesh.mesh_path())?;
    let widened = text.replace(
        r#"egressScope: ["./*", "payments/api"]"#,
        r#"egressScope: ["./*", "payments/*"]"#,
    );
    assert_ne!(
        text, widened,
        "the mesh file changed shape; update this test"
    );
    std::fs::write(mesh.mesh_path(), widened)?;
    let reached = eventually(Duration::from_secs(15), async || {
        let r = curl(&mesh, "shop", "client", LEDGER).ok()?;
        r.ok().then_some(r)
    })
    .await;
    let r = reached.expect("ledger still refused after the scope was widened");
    assert_eq!(r.stdout.trim(), "hello from ledger-1", "{r:?}");
    assert!(curl(&mesh, "shop", "client", LEDGER_POD)?.ok());
    mesh.down()?;
    Ok(())
}
