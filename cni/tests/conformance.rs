//! ambit-cni run as a container runtime runs it (CNI_COMMAND, CNI_NETNS, CNI_ARGS in the
//! environment, the network configuration on stdin), against an API server and a ztunnel node
//! agent socket on real sockets: the API answers the pod's and its namespace's GETs, the socket
//! records what ztunnel was asked and answers as a test says.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ambit_proto::node_agent::{Command as AgentCommand, Reply};
use parking_lot::Mutex;
use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_ambit-cni");
const NETNS: &str = "/var/run/netns/cni-test-1";

/// A scratch directory, removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ambit-cni-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An API server answering GETs of namespaces and pods from what the test put in it (404 for
/// anything else), over plain HTTP on loopback.
struct FakeApi {
    url: String,
}

impl FakeApi {
    /// `namespaces`: (name, dataplane-mode label); `pods`: (namespace, name, label).
    fn start(namespaces: &[(&str, Option<&str>)], pods: &[(&str, &str, Option<&str>)]) -> Self {
        let mut objects: BTreeMap<String, Value> = BTreeMap::new();
        let labels = |mode: &Option<&str>| match mode {
            Some(m) => json!({ "ambit.io/dataplane-mode": m }),
            None => json!({}),
        };
        for (name, mode) in namespaces {
            objects.insert(
                format!("/api/v1/namespaces/{name}"),
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": name, "labels": labels(mode)}}),
            );
        }
        for (namespace, name, mode) in pods {
            objects.insert(
                format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": namespace, "labels": labels(mode)}}),
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut head = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                while reader.read_line(&mut head).map(|n| n > 2).unwrap_or(false) {}
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let (status, body) = match objects.get(&path) {
                    Some(object) => ("200 OK", object.clone()),
                    None => (
                        "404 Not Found",
                        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                               "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
                    ),
                };
                let body = body.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeApi { url }
    }
}

/// ztunnel's node agent socket: records each command, answers with `answer`.
struct FakeZtunnel {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<AgentCommand>>>,
}

impl FakeZtunnel {
    fn start(dir: &Path, answer: fn(&AgentCommand) -> Reply) -> Self {
        let socket = dir.join("node-agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                let command: AgentCommand = serde_json::from_str(&line).unwrap();
                let reply = answer(&command);
                record.lock().push(command);
                let mut out = serde_json::to_vec(&reply).unwrap();
                out.push(b'\n');
                let _ = (&stream).write_all(&out);
            }
        });
        FakeZtunnel { socket, seen }
    }

    fn seen(&self) -> Vec<AgentCommand> {
        self.seen.lock().clone()
    }
}

fn ok(_: &AgentCommand) -> Reply {
    Reply::Ok { ok: true }
}

fn holds_nothing(c: &AgentCommand) -> Reply {
    match c {
        AgentCommand::Add { .. } => Reply::Ok { ok: true },
        AgentCommand::Check { .. } => Reply::Ok { ok: false },
        AgentCommand::Remove { uid, .. } => Reply::Error {
            error: format!("pod {uid} is not captured"),
        },
    }
}

/// The previous plugin's result (bridge + host-local, trimmed).
fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": NETNS}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn conf(dir: &Path, api: Option<&FakeApi>, socket: &Path, prev: Option<Value>) -> Value {
    let kubeconfig = dir.join("kubeconfig");
    let server = api.map_or("http://127.0.0.1:9".to_string(), |a| a.url.clone());
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "kubeconfig": kubeconfig,
        "ztunnelSocket": socket,
        "excludeNamespaces": ["kube-system"],
    });
    if let Some(prev) = prev {
        conf["prevResult"] = prev;
    }
    conf
}

/// Runs the plugin; returns its exit status and stdout as JSON (`Null` when empty).
fn cni(command: &str, pod: Option<(&str, &str)>, stdin: &[u8]) -> (i32, Value) {
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "abc123")
        .env("CNI_NETNS", NETNS)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin");
    if let Some((namespace, name)) = pod {
        cmd.env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"),
        );
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap().code().unwrap_or(-1);
    let value = if out.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out}"))
    };
    (status, value)
}

/// The configuration a runtime passes after the pod network's plugin ran: with its result.
fn chained(dir: &Path, api: Option<&FakeApi>, socket: &Path) -> Vec<u8> {
    bytes(&conf(dir, api, socket, Some(prev_result())))
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn add_meshed_uid() -> AgentCommand {
    AgentCommand::Add {
        uid: "Kubernetes//Pod/demo/client-0".into(),
        netns: NETNS.into(),
        exclude_ports: vec![],
        // K8S_POD_UID: the object, so that a late DEL cannot release its replacement.
        pod_uid: Some("u-1".into()),
    }
}

#[test]
fn version_lists_the_supported_versions() {
    let (status, out) = cni("VERSION", None, br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(status, 0);
    assert_eq!(out["cniVersion"], "1.0.0");
    let versions: Vec<&str> = out["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        versions.contains(&"1.0.0") && versions.contains(&"0.4.0"),
        "{out}"
    );
}

#[test]
fn add_hands_a_meshed_pod_to_ztunnel_and_passes_the_previous_result_on() {
    let dir = Scratch::new();
    let api = FakeApi::start(&[("demo", Some("ambient"))], &[("demo", "client-0", None)]);
    let ztunnel = FakeZtunnel::start(&dir.0, ok);
    let stdin = chained(&dir.0, Some(&api), &ztunnel.socket);
    let (status, out) = cni("ADD", Some(("demo", "client-0")), &stdin);
    assert_eq!(status, 0, "{out}");
    assert_eq!(
        out,
        prev_result(),
        "the previous plugin's result, unchanged"
    );
    assert_eq!(ztunnel.seen(), vec![add_meshed_uid()]);
}

#[test]
fn add_never_touches_a_pod_outside_the_mesh() {
    let dir = Scratch::new();
    let api = FakeApi::start(
        &[("plain", None), ("demo", Some("ambient"))],
        &[
            ("plain", "web-0", None),
            ("demo", "opted-out", Some("none")),
        ],
    );
    let ztunnel = FakeZtunnel::start(&dir.0, ok);
    let stdin = chained(&dir.0, Some(&api), &ztunnel.socket);
    // Unlabelled namespace, opted out, excluded namespace, gone from the API.
    for pod in [
        ("plain", "web-0"),
        ("demo", "opted-out"),
        ("kube-system", "coredns-0"),
        ("demo", "deleted-0"),
    ] {
        let (status, out) = cni("ADD", Some(pod), &stdin);
        assert_eq!((status, &out), (0, &prev_result()), "{pod:?}");
    }
    // Not a Kubernetes pod at all (no K8S_POD_* in CNI_ARGS): nothing is looked up.
    let (status, out) = cni("ADD", None, &stdin);
    assert_eq!((status, out), (0, prev_result()));
    assert!(ztunnel.seen().is_empty(), "{:?}", ztunnel.seen());
}

#[test]
fn add_of_a_meshed_pod_fails_retryably_when_ztunnel_cannot_capture_it() {
    let dir = Scratch::new();
    let api = FakeApi::start(&[("demo", Some("ambient"))], &[("demo", "client-0", None)]);
    // No ztunnel listening.
    let absent = dir.0.join("absent.sock");
    let stdin = chained(&dir.0, Some(&api), &absent);
    let (status, out) = cni("ADD", Some(("demo", "client-0")), &stdin);
    assert_eq!(status, 1, "{out}");
    assert_eq!(out["code"], 11, "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");
    let text = format!("{} {}", out["msg"], out["details"]);
    assert!(
        text.contains("demo/client-0") && text.contains("absent.sock"),
        "{text}"
    );

    // ztunnel refuses (its rules could not be installed).
    let refusing = FakeZtunnel::start(&dir.0, |_| Reply::Error {
        error: "could not run iptables-restore".into(),
    });
    let stdin = chained(&dir.0, Some(&api), &refusing.socket);
    let (status, out) = cni("ADD", Some(("demo", "client-0")), &stdin);
    assert_eq!((status, &out["code"]), (1, &json!(11)), "{out}");
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains("iptables-restore"),
        "{out}"
    );
}

#[test]
fn add_fails_retryably_when_the_api_cannot_say_whether_the_pod_is_meshed() {
    let dir = Scratch::new();
    let ztunnel = FakeZtunnel::start(&dir.0, ok);
    // The kubeconfig points at a port nothing listens on.
    let stdin = chained(&dir.0, None, &ztunnel.socket);
    let (status, out) = cni("ADD", Some(("demo", "client-0")), &stdin);
    assert_eq!((status, &out["code"]), (1, &json!(11)), "{out}");
    assert!(ztunnel.seen().is_empty());
}

#[test]
fn del_releases_the_pod_and_succeeds_however_often_it_is_repeated() {
    let dir = Scratch::new();
    let ztunnel = FakeZtunnel::start(&dir.0, holds_nothing);
    // DEL needs no API and may come without prevResult.
    let stdin = bytes(&conf(&dir.0, None, &ztunnel.socket, None));
    for _ in 0..2 {
        let (status, out) = cni("DEL", Some(("demo", "client-0")), &stdin);
        assert_eq!((status, out), (0, Value::Null));
    }
    let remove = AgentCommand::Remove {
        uid: "Kubernetes//Pod/demo/client-0".into(),
        pod_uid: Some("u-1".into()),
    };
    assert_eq!(ztunnel.seen(), vec![remove.clone(), remove]);
    // With no ztunnel at all.
    let stdin = bytes(&conf(&dir.0, None, &dir.0.join("absent.sock"), None));
    let (status, out) = cni("DEL", Some(("demo", "client-0")), &stdin);
    assert_eq!((status, out), (0, Value::Null));
}

#[test]
fn check_wants_a_meshed_pod_held_by_ztunnel() {
    let dir = Scratch::new();
    let api = FakeApi::start(
        &[("demo", Some("ambient")), ("plain", None)],
        &[("demo", "client-0", None), ("plain", "web-0", None)],
    );
    let holding = FakeZtunnel::start(&dir.0, ok);
    let stdin = chained(&dir.0, Some(&api), &holding.socket);
    assert_eq!(
        cni("CHECK", Some(("demo", "client-0")), &stdin),
        (0, Value::Null)
    );
    assert_eq!(
        cni("CHECK", Some(("plain", "web-0")), &stdin),
        (0, Value::Null)
    );

    let other = Scratch::new();
    let empty = FakeZtunnel::start(&other.0, holds_nothing);
    let stdin = chained(&other.0, Some(&api), &empty.socket);
    let (status, out) = cni("CHECK", Some(("demo", "client-0")), &stdin);
    assert_eq!((status, &out["code"]), (1, &json!(100)), "{out}");

    let stdin = bytes(&conf(&other.0, Some(&api), &empty.socket, None));
    let (status, out) = cni("CHECK", Some(("demo", "client-0")), &stdin);
    assert_eq!((status, &out["code"]), (1, &json!(7)), "{out}");
}

#[test]
fn bad_input_gets_the_specs_error_json() {
    let dir = Scratch::new();
    let socket = dir.0.join("absent.sock");
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("ADD", b"{not json".to_vec(), 6),
        ("ADD", bytes(&conf(&dir.0, None, &socket, None)), 7),
        (
            "ADD",
            bytes(&json!({"cniVersion": "1.0.0", "name": "n", "type": "ambit-cni"})),
            7,
        ),
        ("GC", chained(&dir.0, None, &socket), 4),
    ];
    for (command, stdin, code) in cases {
        let (status, out) = cni(command, Some(("demo", "client-0")), &stdin);
        assert_eq!(status, 1, "{command}: {out}");
        assert_eq!(out["code"], code, "{command}: {out}");
        assert_eq!(out["cniVersion"], "1.0.0", "{out}");
        assert!(
            !out["msg"].as_str().unwrap().is_empty()
                && !out["details"].as_str().unwrap().is_empty(),
            "{out}"
        );
    }
    let mut old = conf(&dir.0, None, &socket, Some(prev_result()));
    old["cniVersion"] = json!("0.2.0");
    let (status, out) = cni("ADD", None, &bytes(&old));
    assert_eq!((status, &out["code"]), (1, &json!(1)), "{out}");
}
