//! What outlives what: the data plane outlives its config source; a bad config change is
//! refused and the last good one stays; a pod's rules and sockets go with the pod, and every
//! pod's go with ztunnel.

use std::time::Duration;

use ambit_e2e::{can_run, curl, has_capture_rules, listening_ports, start, uid, work_dir};

const CAPTURE_PORTS: [u16; 3] = [15001, 15006, 15008];

fn captured_ports(ports: &[u16]) -> Vec<u16> {
    ports
        .iter()
        .copied()
        .filter(|p| CAPTURE_PORTS.contains(p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_outlives_the_config_source_and_bad_config_is_refused() -> anyhow::Result<()> {
    if !can_run("traffic_outlives_the_config_source") {
        return Ok(());
    }
    let mesh = start("outage", Some(ambit_e2e::L4_MESH)).await?;
    let url = "http://10.96.0.10:9080/";
    assert!(curl(&mesh, "demo", "client", url)?.ok());

    // A malformed change to the mesh file: the controller refuses it, keeps serving the last
    // good config, and traffic goes on.
    let good = std::fs::read_to_string(mesh.mesh_path())?;
    let bad = good.replacen("ipv4: 10.244.2.3", "ipv4: 10.244.2.2", 1);
    assert_ne!(good, bad, "the mesh file changed shape; update this test");
    std::fs::write(mesh.mesh_path(), bad)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = std::fs::read_to_string(work_dir(&mesh).join("controller.log"))?;
    assert!(
        log.contains("10.244.2.2"),
        "the controller did not report the duplicate address:\n{log}"
    );
    for _ in 0..4 {
        let r = curl(&mesh, "demo", "client", url)?;
        assert!(r.ok(), "traffic stopped after a bad config change: {r:?}");
    }

    // The controller dies: the ztunnels keep the last good config and their certificates, and
    // every destination they learnt (each is asked of the controller at its first connection).
    let known = [url, "http://10.244.2.2:8080/"];
    for target in known {
        assert!(curl(&mesh, "demo", "client", target)?.ok(), "{target}");
    }
    mesh.kill_controller();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for target in known {
        let r = curl(&mesh, "demo", "client", target)?;
        assert!(r.ok(), "{target} failed with the controller gone: {r:?}");
    }
    // One node-a never held cannot be learnt now: refused, never guessed to be outside the
    // mesh, and the log says why.
    let unlearnt = curl(&mesh, "demo", "client", "http://10.96.0.20:8080/")?;
    assert!(
        !unlearnt.ok(),
        "a destination was carried without the controller's word: {unlearnt:?}"
    );
    let log = std::fs::read_to_string(work_dir(&mesh).join("ztunnel-node-a.log"))?;
    assert!(
        log.contains("no config stream to the controller, so it cannot learn what 10.96.0.20 is"),
        "ztunnel did not say why it refused:\n{log}"
    );
    assert!(
        !curl(&mesh, "demo", "denied-client", url)?.ok(),
        "policy lost with the controller"
    );
    mesh.down()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_sockets_go_with_the_pod_and_with_ztunnel() -> anyhow::Result<()> {
    if !can_run("rules_and_sockets_go_with_the_pod") {
        return Ok(());
    }
    let mesh = start("capture", Some(ambit_e2e::L4_MESH)).await?;
    for pod in ["client", "denied-client", "reviews-v1"] {
        assert!(has_capture_rules(&mesh, "demo", pod)?, "{pod} not captured");
        assert_eq!(
            captured_ports(&listening_ports(&mesh, "demo", pod)?),
            CAPTURE_PORTS,
            "{pod}"
        );
    }
    assert!(captured_ports(&listening_ports(&mesh, "legacy", "legacy")?).is_empty());

    // Pod removal (as on pod deletion): its rules and ztunnel's sockets in it are gone, and
    // the pod's own app still listens.
    let reviews_v1 = uid(&mesh, "demo", "reviews-v1");
    assert!(mesh.ztunnel_holds(&reviews_v1, "node-a").await?);
    mesh.remove_pod(&reviews_v1, "node-a").await?;
    assert!(!mesh.ztunnel_holds(&reviews_v1, "node-a").await?);
    assert!(!has_capture_rules(&mesh, "demo", "reviews-v1")?);
    let ports = listening_ports(&mesh, "demo", "reviews-v1")?;
    assert!(
        captured_ports(&ports).is_empty(),
        "ztunnel sockets left: {ports:?}"
    );
    assert!(
        ports.contains(&8080),
        "the app's own socket went too: {ports:?}"
    );
    // Others on the node are still captured and still work.
    assert!(curl(&mesh, "demo", "client", "http://10.244.2.2:8080/")?.ok());

    // ztunnel exits (SIGTERM): every pod it captured is released.
    assert!(
        mesh.stop_ztunnel("node-a")?,
        "ztunnel did not exit within its drain time"
    );
    for pod in ["client", "denied-client"] {
        assert!(
            !has_capture_rules(&mesh, "demo", pod)?,
            "{pod} kept rules after ztunnel exited"
        );
        assert!(
            captured_ports(&listening_ports(&mesh, "demo", pod)?).is_empty(),
            "{pod}"
        );
    }
    mesh.down()?;
    Ok(())
}
