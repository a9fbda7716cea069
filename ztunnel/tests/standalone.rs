//! ztunnel without a controller: config from a local file (reloaded on change, bad edits
//! refused) and certificates signed locally, seen through its admin endpoints over loopback.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ambit_proto::identity::CertificateAuthority;

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

#[test]
fn a_local_config_file_is_served_reloaded_and_guarded() {
    let dir = std::env::temp_dir().join(format!("ztunnel-standalone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("root-key.pem"), ca.root_key_pem()).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let (admin, metrics, ready) = (free_addr(), free_addr(), free_addr());
    let log = std::fs::File::create(dir.join("ztunnel.log")).unwrap();
    let _z = Ztunnel(
        Command::new(env!("CARGO_BIN_EXE_ztunnel"))
            .args(["--node", "node-a"])
            .arg("--root-cert")
            .arg(dir.join("root.pem"))
            .arg("--ca-key")
            .arg(dir.join("root-key.pem"))
            .arg("--config-file")
            .arg(&config)
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
    let log_path = dir.join("ztunnel.log");
    wait_for("the refusal in the log", || {
        std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("refused local config") && l.contains("serviceAcount"))
    });
    assert!(
        dump().contains("reviews-v9"),
        "the last good config was dropped"
    );

    // An invalid one (bad address) too.
    std::fs::write(&config, CONFIG.replace("10.244.1.4", "10.244.1.400")).unwrap();
    wait_for("the second refusal", || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("10.244.1.400"))
    });
    assert!(dump().contains("reviews-v9"));
    let _ = std::fs::remove_dir_all(&dir);
}
