//! ztunnel without a controller: config from a local file (reloaded on change, bad edits
//! refused) and certificates signed locally, seen through its admin endpoints over loopback.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ambit_proto::identity::CertificateAuthority;
use ambit_proto::node_agent::{self, Reply};

struct Ztunnel(Child);

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A blocking GET over a plain TCP socket: (status, body).
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

const CONFIG: &str = "\
workloads:
  - {uid: w1, name: reviews-v1, namespace: demo, serviceAccount: reviews, node: node-a,
     addresses: [10.244.1.4], protocol: HBONE}
services:
  - {name: reviews, namespace: demo, addresses: [10.96.0.10],
     ports: [{port: 9080, targetPort: 8080}], endpoints: [w1]}
";

/// A ztunnel on `config`, its files in `dir`; ready when this returns.
struct Running {
    _process: Ztunnel,
    admin: SocketAddr,
    agent_socket: std::path::PathBuf,
    log: std::path::PathBuf,
}

fn start(dir: &std::path::Path, config: &str) -> Running {
    std::fs::create_dir_all(dir).unwrap();
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("root-key.pem"), ca.root_key_pem()).unwrap();
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let (admin, metrics, ready) = (free_addr(), free_addr(), free_addr());
    let log_path = dir.join("ztunnel.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let process = Ztunnel(
        Command::new(env!("CARGO_BIN_EXE_ztunnel"))
            .args(["--node", "node-a"])
            .arg("--root-cert")
            .arg(dir.join("root.pem"))
            .arg("--ca-key")
            .arg(dir.join("root-key.pem"))
            .arg("--config-file")
            .arg(dir.join("config.yaml"))
            .arg("--node-agent-socket")
            .arg(dir.join("agent.sock"))
            .args(["--admin-addr", &admin.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--readiness-addr", &ready.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("readiness", || {
        get(ready, "/healthz/ready").is_some_and(|(s, _)| s == 200)
    });
    Running {
        _process: process,
        admin,
        agent_socket: dir.join("agent.sock"),
        log: log_path,
    }
}

#[test]
fn a_local_config_file_is_served_reloaded_and_guarded() {
    let dir = std::env::temp_dir().join(format!("ztunnel-standalone-{}", std::process::id()));
    let running = start(&dir, CONFIG);
    let config = dir.join("config.yaml");
    let admin = running.admin;
    let dump = || {
        get(admin, "/config_dump")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    assert!(
        dump().contains("reviews-v1") && dump().contains("10.96.0.10"),
        "{}",
        dump()
    );

    // An edit is picked up.
    std::fs::write(&config, CONFIG.replace("reviews-v1", "reviews-v9")).unwrap();
    wait_for("the edit", || dump().contains("reviews-v9"));

    // A broken edit is refused with its line; the last good config stays.
    std::fs::write(&config, CONFIG.replace("serviceAccount", "serviceAcount")).unwrap();
    let log_path = &running.log;
    wait_for("the refusal in the log", || {
        std::fs::read_to_string(log_path)
            .is_ok_and(|l| l.contains("refused local config") && l.contains("serviceAcount"))
    });
    assert!(
        dump().contains("reviews-v9"),
        "the last good config was dropped"
    );

    // An invalid one (bad address) too.
    std::fs::write(&config, CONFIG.replace("10.244.1.4", "10.244.1.400")).unwrap();
    wait_for("the second refusal", || {
        std::fs::read_to_string(log_path).is_ok_and(|l| l.contains("10.244.1.400"))
    });
    assert!(dump().contains("reviews-v9"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pod_handed_over_before_its_config_waits_for_it() {
    // The CNI plugin can hand a pod over before the controller's config holding it arrives:
    // the add waits for the config rather than failing the pod's creation.
    let dir = std::env::temp_dir().join(format!("ztunnel-early-add-{}", std::process::id()));
    let running = start(&dir, CONFIG);
    let add = |uid: &str| {
        let socket = running.agent_socket.clone();
        let command = node_agent::Command::Add {
            uid: uid.into(),
            // Not a namespace: an add that gets past the config fails here, and says so.
            netns: dir.join("no-such-netns"),
            exclude_ports: Vec::new(),
            pod_uid: None,
        };
        std::thread::spawn(move || {
            node_agent::send_blocking(&socket, &command, Duration::from_secs(20)).unwrap()
        })
    };
    let early = add("w2");
    let never = add("w9");
    std::thread::sleep(Duration::from_millis(500));
    let with_w2 = CONFIG.replace(
        "services:\n",
        "  - {uid: w2, name: ratings-v1, namespace: demo, serviceAccount: ratings, node: node-a,\n     addresses: [10.244.1.5], protocol: HBONE}\nservices:\n",
    );
    std::fs::write(dir.join("config.yaml"), with_w2).unwrap();
    let text = |reply: Reply| match reply {
        Reply::Error { error } => error,
        Reply::Ok { ok } => format!("ok: {ok}"),
    };
    let early = text(early.join().unwrap());
    assert!(
        early.contains("capturing pod w2 failed") && early.contains("no-such-netns"),
        "{early}"
    );
    let never = text(never.join().unwrap());
    assert!(
        never.contains("pod w9 is not in ztunnel's config after waiting"),
        "{never}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
