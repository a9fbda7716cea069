//! Two Kubernetes nodes on this host: the controller with `--source kubernetes` against the
//! fake API server, on each node a ztunnel fed by it (tokens checked by TokenReview) and the
//! node agent, and pods made as the kubelet makes them: the object first (scheduled, no IP),
//! then the sandbox through CNI (Debian's bridge and host-local, ambit-cni chained), then the
//! IP in the pod's status. The client pod's very first connection is HBONE, seen by the server
//! side with the client's identity; labelling a namespace enrols its running pod, unlabelling
//! releases it, both without touching the pod; DEL takes the rules out.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_cli::local::Binaries;
use ambit_e2e::can_run;
use ambit_e2e::cni::{DEBIAN_CNI_DIR, PodNetns, Runtime, fake_kubeconfig};
use ambit_fake_kube_api::FakeApi;
use ambit_proto::identity::CertificateAuthority;
use ambit_testbed::{Netns, NetnsChild, Testbed};
use http::Method;
use serde_json::{Value, json};

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const CONFIGMAPS: &str = "/api/v1/namespaces/ambit-system/configmaps";
const APP_PORT: u16 = 8080;

fn namespace(name: &str, mode: Option<&str>) -> Value {
    let labels = mode.map_or(json!({}), |m| json!({"ambit.io/dataplane-mode": m}));
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "resourceVersion": "1", "labels": labels}})
}

/// A pod as the API holds it: scheduled on `node`, with its IP once the kubelet reported it.
fn pod(ns: &str, name: &str, node: &str, ip: Option<Ipv4Addr>) -> Value {
    let status = match ip {
        Some(ip) => {
            json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                           "conditions": [{"type": "Ready", "status": "True"}]})
        }
        None => json!({"phase": "Pending"}),
    };
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "resourceVersion": "1"},
           "spec": {"nodeName": node, "serviceAccountName": name,
                    "containers": [{"name": "app", "image": "app"}]},
           "status": status})
}

/// The TokenReview of a ztunnel pod's token on `node`.
fn review(node: &str) -> Value {
    json!({"authenticated": true, "audiences": ["ambit-ca"],
           "user": {"username": "system:serviceaccount:ambit-system:ztunnel", "uid": "1",
                    "groups": ["system:serviceaccounts"],
                    "extra": {"authentication.kubernetes.io/node-name": [node]}}})
}

/// One node: its namespace, its CNI chain, its processes.
struct Node {
    name: &'static str,
    netns: Netns,
    metrics: SocketAddr,
    runtime: Runtime,
    _ztunnel: Option<NetnsChild>,
    _agent: Option<NetnsChild>,
}

/// A GET from inside `netns` (ztunnel's ports are on the node's loopback).
fn get_in(netns: &Netns, addr: SocketAddr, path: &str) -> String {
    let path = path.to_string();
    netns
        .run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .unwrap()
        .unwrap_or_default()
}

fn eventually(what: &str, logs: &Path, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut dump = String::new();
    for log in [
        "controller.log",
        "ztunnel-node-a.log",
        "ztunnel-node-b.log",
        "agent-node-b.log",
    ] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        dump += &format!(
            "--- {log} (last lines, newest first)\n{}\n",
            tail.join("\n")
        );
    }
    panic!("timed out waiting until {what}\n{dump}");
}

/// Host `n` of the node's pod CIDR.
fn pod_address(node: &ambit_testbed::Node, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = node.pod_cidr_v4().addr.octets();
    Ipv4Addr::new(a, b, c, n)
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

#[test]
fn pods_made_through_cni_are_meshed_from_their_first_packet_and_enrolled_by_label()
-> anyhow::Result<()> {
    if !can_run("pods_made_through_cni_are_meshed_from_their_first_packet_and_enrolled_by_label") {
        return Ok(());
    }
    Testbed::preflight()?;
    let mut tb = Testbed::new()?;
    tb.add_node("node-a")?;
    tb.add_node("node-b")?;
    let dir = std::env::temp_dir().join(format!("ambit-e2e-k8s-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bins = Binaries::locate()?;
    let cni_path = format!(
        "{DEBIAN_CNI_DIR}:{}",
        bins.ztunnel.parent().unwrap().display()
    );

    // The control plane lives on node-a: the API server and the controller listen on its
    // underlay address, which both nodes reach.
    let a_netns = tb.node("node-a")?.netns().clone();
    let a_underlay = tb.node("node-a")?.ipv4();
    let listener = a_netns.run(move || TcpListener::bind((a_underlay, 0)))??;
    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let api = {
        let _entered = api_runtime.enter();
        FakeApi::serve_std(listener)
    };
    let server = format!("http://{}", api.addr);
    // Watched by the controller and both agents, and read by the plugin.
    api.shared_collection(
        NAMESPACES,
        "NamespaceList",
        vec![
            namespace("demo", Some("ambient")),
            namespace("later", None),
            namespace("ambit-system", None),
        ],
    );
    api.shared_collection(PODS, "PodList", vec![]);
    api.collection("/api/v1/services", "ServiceList", vec![]);
    api.collection(
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSliceList",
        vec![],
    );
    api.collection(CONFIGMAPS, "ConfigMapList", vec![]);
    api.on_prefix(Method::PATCH, CONFIGMAPS, |req| (200, req.body.clone()));
    api.on(Method::POST, TOKEN_REVIEWS, |req| {
        let token = req.body["spec"]["token"].as_str().unwrap_or_default();
        let status = match token.strip_prefix("ztunnel-token-") {
            Some(node) => review(node),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        (
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                     "metadata": {}, "spec": req.body["spec"], "status": status}),
        )
    });
    std::fs::write(dir.join("kubeconfig"), fake_kubeconfig(&server))?;

    let ca = CertificateAuthority::generate("cluster.local")?;
    std::fs::write(dir.join("root.pem"), ca.root_pem())?;
    std::fs::write(dir.join("root-key.pem"), ca.root_key_pem())?;
    let controller_port = a_netns.run(|| {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).map(|l| l.local_addr().unwrap().port())
    })??;
    let _controller = a_netns.spawn(
        Command::new(&bins.controller)
            .args(["--source", "kubernetes", "--waypoints", "false"])
            .args([
                "--listen",
                &format!("0.0.0.0:{controller_port}"),
                "--metrics",
                "127.0.0.1:0",
            ])
            .arg("--ca-cert")
            .arg(dir.join("root.pem"))
            .arg("--ca-key")
            .arg(dir.join("root-key.pem"))
            .env("KUBECONFIG", dir.join("kubeconfig"))
            .stdout(log_file(&dir, "controller.log"))
            .stderr(log_file(&dir, "controller.log")),
    )?;

    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        let node = tb.node(name)?;
        let netns = node.netns().clone();
        std::fs::write(
            dir.join(format!("token-{name}")),
            format!("ztunnel-token-{name}"),
        )?;
        let socket = dir.join(format!("ztunnel-{name}.sock"));
        let metrics: SocketAddr = "127.0.0.1:15020".parse()?;
        let ztunnel = netns.spawn(
            Command::new(&bins.ztunnel)
                .args(["--node", name])
                .args([
                    "--controller",
                    &format!("https://{a_underlay}:{controller_port}"),
                ])
                .arg("--root-cert")
                .arg(dir.join("root.pem"))
                .arg("--token-file")
                .arg(dir.join(format!("token-{name}")))
                .arg("--node-agent-socket")
                .arg(&socket)
                .stdout(log_file(&dir, &format!("ztunnel-{name}.log")))
                .stderr(log_file(&dir, &format!("ztunnel-{name}.log"))),
        )?;
        let agent = netns.spawn(
            Command::new(bins.ztunnel.with_file_name("ambit-node-agent"))
                .args(["--node", name, "--resync", "1s"])
                .arg("--kubeconfig")
                .arg(dir.join("kubeconfig"))
                .arg("--ztunnel-socket")
                .arg(&socket)
                .stdout(log_file(&dir, &format!("agent-{name}.log")))
                .stderr(log_file(&dir, &format!("agent-{name}.log"))),
        )?;
        let runtime = Runtime {
            node_netns: netns.name().to_string(),
            cni_path: cni_path.clone(),
            conflist: json!({
                "cniVersion": "1.0.0",
                "name": "podnet",
                "plugins": [
                    // The node's pod CIDR, which the other node routes here; from .100 on,
                    // clear of the testbed's own pod addresses.
                    {"type": "bridge", "bridge": "cni0", "isGateway": true,
                     "ipam": {"type": "host-local", "dataDir": dir.join(format!("ipam-{name}")),
                              "ranges": [[{"subnet": node.pod_cidr_v4().to_string(),
                                           "rangeStart": pod_address(node, 100).to_string()}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "ambit-cni", "kubeconfig": dir.join("kubeconfig"), "ztunnelSocket": socket},
                ],
            }),
        };
        nodes.push(Node {
            name,
            netns,
            metrics,
            runtime,
            _ztunnel: Some(ztunnel),
            _agent: Some(agent),
        });
    }
    let ready = |node: &Node| {
        get_in(
            &node.netns,
            "127.0.0.1:15021".parse().unwrap(),
            "/healthz/ready",
        )
        .starts_with("HTTP/1.1 200")
    };
    eventually("both ztunnels have their config", &dir, || {
        nodes.iter().all(ready)
    });

    // The kubelet's order: the pod object (scheduled, no IP), the sandbox through CNI, the IP.
    let make_pod = |node: &Node, ns: &str, name: &str| -> (PodNetns, Ipv4Addr) {
        api.send(PODS, "ADDED", pod(ns, name, node.name, None));
        let netns = PodNetns::add(format!("{}-{name}", tb.run_prefix()));
        let result = node
            .runtime
            .add(&netns, ns, name)
            .unwrap_or_else(|e| panic!("CNI ADD of {ns}/{name} failed: {e}"));
        let address = result["ips"][0]["address"].as_str().unwrap();
        let ip: Ipv4Addr = address.split('/').next().unwrap().parse().unwrap();
        api.send(PODS, "MODIFIED", pod(ns, name, node.name, Some(ip)));
        (netns, ip)
    };
    let (server, server_ip) = make_pod(&nodes[1], "demo", "server");
    assert!(
        server.nat_rules().contains("AMBIT_"),
        "the meshed server was not captured at ADD"
    );
    let server_app = Netns::existing(server.name()).spawn_thread(move || {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, APP_PORT)).unwrap();
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).unwrap();
            stream.write_all(&buf).unwrap();
        }
    })?;
    let (client, client_ip) = make_pod(&nodes[0], "demo", "client");
    assert!(
        client.nat_rules().contains("AMBIT_"),
        "the meshed client was not captured at ADD"
    );

    // The client's first connection, once the server's IP reached the controller (its own
    // node's ztunnel holds it; the client's asks for it at the connection).
    let metrics_b = || get_in(&nodes[1].netns, nodes[1].metrics, "/metrics");
    eventually("the server's address reached the controller", &dir, || {
        get_in(
            &nodes[1].netns,
            "127.0.0.1:15000".parse().unwrap(),
            "/config_dump",
        )
        .contains(&server_ip.to_string())
    });
    let echoed = Netns::existing(client.name()).run(move || -> std::io::Result<[u8; 5]> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((server_ip, APP_PORT)),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"hello")?;
        let mut back = [0u8; 5];
        s.read_exact(&mut back)?;
        Ok(back)
    })??;
    assert_eq!(&echoed, b"hello");
    server_app.join().unwrap();
    // The server's ztunnel saw it arrive over mutual TLS from the client's identity.
    eventually(
        "the server side counted the client's HBONE connection",
        &dir,
        || {
            metrics_b().lines().any(|l| {
                l.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
            })
        },
    );

    // A pod of a namespace outside the mesh is left alone, until its namespace opts in.
    let (late, _) = make_pod(&nodes[1], "later", "worker");
    assert!(
        !late.nat_rules().contains("AMBIT_"),
        "a pod outside the mesh was captured"
    );
    api.send(NAMESPACES, "MODIFIED", namespace("later", Some("ambient")));
    eventually(
        "the labelled namespace's running pod is enrolled",
        &dir,
        || late.nat_rules().contains("AMBIT_"),
    );
    api.send(NAMESPACES, "MODIFIED", namespace("later", None));
    eventually("the unlabelled namespace's pod is released", &dir, || {
        !late.nat_rules().contains("AMBIT_")
    });

    // As when a pod is deleted: the API marks it (so its node's agent hands it over no more),
    // then the runtime's DEL takes the rules out, and nothing puts them back. Without the mark
    // the agent, reconciling its node's running pods, could hand the pod over again just after
    // the DEL (CI saw that once).
    let mut deleting = pod("demo", "client", nodes[0].name, Some(client_ip));
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
    api.send(PODS, "MODIFIED", deleting);
    nodes[0].runtime.del(&client, "demo", "client");
    assert!(
        !client.nat_rules().contains("AMBIT_"),
        "DEL left the client's rules"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !client.nat_rules().contains("AMBIT_"),
        "the client's rules came back after its DEL"
    );
    nodes[1].runtime.del(&server, "demo", "server");
    nodes[1].runtime.del(&late, "later", "worker");

    drop(nodes);
    drop((client, server, late));
    tb.destroy()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
