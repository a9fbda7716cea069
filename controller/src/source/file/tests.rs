use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::workload as pb;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::ObjectKey;

#[test]
fn the_embedded_mesh_is_the_documented_demo() {
    let file = parse(EMBEDDED_MESH, EMBEDDED_ORIGIN).unwrap();
    let m = &file.model;
    assert_eq!(m.trust_domain(), "cluster.local");
    assert_eq!(file.topology.nodes, ["node-a", "node-b"]);
    let protocol = |ns: &str, name: &str| {
        let w = m.workload(&ObjectKey::new(ns, name)).unwrap();
        pb::Protocol::try_from(m.workload_proto(w).protocol).unwrap()
    };
    assert_eq!(protocol("demo", "client"), pb::Protocol::Hbone);
    assert_eq!(protocol("demo", "denied-client"), pb::Protocol::Hbone);
    assert_eq!(protocol("legacy", "legacy"), pb::Protocol::Tcp);
    let reviews = m.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert_eq!(
        reviews.endpoints,
        [
            ObjectKey::new("demo", "reviews-v1"),
            ObjectKey::new("demo", "reviews-v2")
        ]
    );
    let nodes: Vec<_> = reviews
        .endpoints
        .iter()
        .map(|k| m.workload(k).unwrap().pod.node.as_str())
        .collect();
    assert_eq!(
        nodes,
        ["node-a", "node-b"],
        "reviews pods are on different nodes"
    );
    let proto = m.service_proto(reviews);
    assert_eq!(proto.addresses, ["10.96.0.10", "fd00:10:96::10"]);
    assert_eq!(
        (proto.ports[0].service_port, proto.ports[0].target_port),
        (9080, 8080)
    );
    let policy = m.policies().next().unwrap();
    assert_eq!(policy.action, ambit_proto::api::security::Action::Deny);
    assert_eq!(
        policy.rules[0].from[0].principals,
        ["spiffe://cluster.local/ns/demo/sa/denied-client"]
    );
    let pod = file
        .topology
        .pods
        .iter()
        .find(|p| p.name == "reviews-v2")
        .unwrap();
    assert_eq!(
        pod.addresses,
        [
            "10.244.2.2".parse::<IpAddr>().unwrap(),
            "fd00:10:244:2::2".parse().unwrap()
        ]
    );
    assert_eq!(
        (pod.ports.as_slice(), pod.app),
        ([8080u16].as_slice(), Some(PodApp::HttpEcho))
    );
}

const BASE: &str = "\
nodes:
  - name: node-a
namespaces:
  - name: demo
    labels: {ambit.io/dataplane-mode: ambient}
pods:
  - name: a
    namespace: demo
    node: node-a
    ipv4: 10.244.1.2
";

fn problems(text: &str) -> Vec<(Option<u64>, String)> {
    match parse(text, "test.yaml") {
        Err(FileError::Invalid { problems, .. }) => problems
            .into_iter()
            .map(|p| (p.line, p.error.to_string()))
            .collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

fn syntax(text: &str) -> (Option<u64>, String) {
    match parse(text, "test.yaml") {
        Err(e @ FileError::Syntax { .. }) => {
            let FileError::Syntax { line, .. } = &e else {
                unreachable!()
            };
            (*line, e.to_string())
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn the_base_file_is_valid() {
    parse(BASE, "test.yaml").unwrap();
}

#[test]
fn an_unknown_field_is_refused_at_its_line() {
    let (line, text) = syntax(&format!("{BASE}    serviceAcount: a\n"));
    assert_eq!(line, Some(11), "{text}");
    assert!(text.contains("serviceAcount"), "{text}");
    assert!(text.starts_with("test.yaml: "), "{text}");
    assert!(text.contains("line 11 column 5"), "{text}");
}

#[test]
fn a_malformed_address_is_refused_at_its_line() {
    let (line, text) = syntax(&BASE.replace("10.244.1.2", "10.244.1.300"));
    assert_eq!(line, Some(10), "{text}");
    let (line, text) = syntax(&format!("{BASE}    ipv6: 10.244.1.9\n"));
    assert_eq!(line, Some(11), "an IPv4 address in ipv6: {text}");
}

#[test]
fn a_duplicate_address_is_reported_at_the_second_use() {
    let text =
        format!("{BASE}  - name: b\n    namespace: demo\n    node: node-a\n    ipv4: 10.244.1.2\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Some(14));
    assert!(
        found[0]
            .1
            .contains("pod demo/b uses address 10.244.1.2, which pod demo/a already has"),
        "{}",
        found[0].1
    );
}

#[test]
fn a_pod_on_an_unknown_node_or_namespace_is_reported_at_that_field() {
    let found = problems(&BASE.replace("node: node-a", "node: node-z"));
    assert_eq!(found[0].0, Some(9), "{found:?}");
    assert!(found[0].1.contains("\"node-z\""));
    let found = problems(&BASE.replace("namespace: demo", "namespace: prod"));
    assert_eq!(found[0].0, Some(8), "{found:?}");
    assert!(found[0].1.contains("\"prod\""));
}

#[test]
fn a_duplicate_name_is_reported_at_the_second_declaration() {
    let text =
        format!("{BASE}  - name: a\n    namespace: demo\n    node: node-a\n    ipv4: 10.244.1.3\n");
    let found = problems(&text);
    assert_eq!(
        found,
        [(
            Some(11),
            "pod demo/a is declared twice: names are unique per kind (and per namespace)"
                .to_string()
        )]
    );
    let found = problems(&BASE.replace(
        "nodes:\n  - name: node-a\n",
        "nodes:\n  - name: node-a\n  - name: node-a\n",
    ));
    assert_eq!(found[0].0, Some(3), "{found:?}");
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let text =
        format!("{BASE}  - name: b\n    namespace: nope\n    node: node-q\n    ipv4: 10.244.1.2\n");
    let found = problems(&text);
    let lines: Vec<_> = found.iter().map(|p| p.0).collect();
    assert_eq!(lines, [Some(12), Some(13), Some(14)], "{found:?}");
}

#[test]
fn the_mtls_mode_is_mesh_wide_unless_a_namespace_label_says_otherwise() {
    use crate::model::MtlsMode;
    let mode = |text: &str, ns: &str, name: &str| {
        let m = parse(text, "test.yaml").unwrap().model;
        let w = m.workload(&ObjectKey::new(ns, name)).unwrap();
        (w.mtls_mode, m.workload_proto(w).mtls_mode())
    };
    let strict = (MtlsMode::Strict, pb::MtlsMode::Strict);
    let permissive = (MtlsMode::Permissive, pb::MtlsMode::Permissive);
    assert_eq!(mode(BASE, "demo", "a"), permissive, "Istio's default");
    let mesh_strict = format!("mtlsMode: strict\n{BASE}");
    assert_eq!(mode(&mesh_strict, "demo", "a"), strict);
    let ns_permissive = mesh_strict.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/mtls-mode: permissive}",
    );
    assert_eq!(mode(&ns_permissive, "demo", "a"), permissive);
    let ns_strict = BASE.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/mtls-mode: strict}",
    );
    assert_eq!(mode(&ns_strict, "demo", "a"), strict);
    // Outside the mesh no ztunnel serves the pod, so it carries no mode.
    let unmeshed = mesh_strict.replace("{ambit.io/dataplane-mode: ambient}", "{}");
    assert_eq!(mode(&unmeshed, "demo", "a"), permissive);
}

#[test]
fn a_bad_mtls_mode_is_refused_at_its_line() {
    let found = problems(&BASE.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/mtls-mode: STRICT}",
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Some(4), "{found:?}");
    assert!(
        found[0].1.contains("ambit.io/mtls-mode=\"STRICT\"") && found[0].1.contains("\"strict\""),
        "{}",
        found[0].1
    );
    let (line, text) = syntax(&format!("{BASE}mtlsMode: enforce\n"));
    assert_eq!(line, Some(11), "{text}");
    assert!(text.contains("enforce"), "{text}");
}

fn write(path: &std::path::Path, text: &str) {
    // Write-then-rename, as editors do, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn next_model(rx: &mut tokio::sync::watch::Receiver<Arc<MeshModel>>) -> Arc<MeshModel> {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the watcher published no new model")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn the_watcher_reloads_good_edits_and_keeps_the_model_on_bad_ones() {
    let dir = std::env::temp_dir().join(format!("ambit-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mesh.yaml");
    write(&path, BASE);
    let shutdown = CancellationToken::new();
    let Watching {
        file,
        models: mut rx,
        task,
    } = watch(path.clone(), Duration::from_millis(20), shutdown.clone()).unwrap();
    assert_eq!(file.model.workloads().count(), 1);

    let two =
        format!("{BASE}  - name: b\n    namespace: demo\n    node: node-a\n    ipv4: 10.244.1.3\n");
    write(&path, &two);
    assert_eq!(next_model(&mut rx).await.workloads().count(), 2);

    // A bad edit (duplicate address), then a good one: only the good one is published.
    write(&path, &two.replace("10.244.1.3", "10.244.1.2"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "a bad edit must not replace the model"
    );
    assert_eq!(rx.borrow().workloads().count(), 2);
    write(&path, &two.replace("10.244.1.3", "10.244.1.4"));
    let m = next_model(&mut rx).await;
    let b = m.workload(&ObjectKey::new("demo", "b")).unwrap();
    assert_eq!(b.pod.addresses, ["10.244.1.4".parse::<IpAddr>().unwrap()]);

    // Changing the trust domain under a running CA is refused.
    write(&path, &format!("trustDomain: other.local\n{two}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!rx.has_changed().unwrap());

    shutdown.cancel();
    task.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_readme_example_is_a_valid_mesh() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```yaml\n").expect("README has a yaml example") + 8;
    let end = start + readme[start..].find("```").unwrap();
    let file = parse(&readme[start..end], "README.md").unwrap();
    let m = &file.model;
    let reviews = m.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert_eq!(reviews.endpoints, [ObjectKey::new("demo", "reviews-v1")]);
    assert_eq!(
        reviews.waypoint, None,
        "the service opts out of its namespace's waypoint"
    );
    assert_eq!(m.routes().count(), 1);
    assert_eq!(m.waypoints().count(), 1);
}
