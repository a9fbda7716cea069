//! A real Prometheus (Debian's) scrapes a local mesh's ztunnels and waypoint, and
//! `rate(istio_tcp_connections_opened_total[1m])` over its HTTP API returns the demo's edges:
//! the metric names and labels are Istio's, so Istio's dashboards and queries work on them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambit_cli::local::apps::request;
use ambit_e2e::{can_run, get, in_pod, start};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const REVIEWS: &str = "http://10.96.0.10:9080/";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The query's series, as (labels, value).
async fn query(api: &str, promql: &str) -> anyhow::Result<Vec<(Value, f64)>> {
    let url = format!("{api}/api/v1/query?query={}", encode(promql));
    let (status, body) = get(&url).await?;
    anyhow::ensure!(status == 200, "{url}: {status} {body}");
    let answer: Value = serde_json::from_str(&body)?;
    Ok(answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let value = s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            (s["metric"].clone(), value)
        })
        .collect())
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_mesh_and_sees_the_demos_edges() -> anyhow::Result<()> {
    if !can_run("prometheus_scrapes_the_mesh_and_sees_the_demos_edges") {
        return Ok(());
    }
    anyhow::ensure!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: scripts/test installs Debian's prometheus"
    );
    let mesh = start("prometheus", None).await?;
    let dir = ambit_e2e::work_dir(&mesh).join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let target = |addr: std::net::SocketAddr| format!("'{addr}'");
    let ztunnels = ["node-a", "node-b"]
        .iter()
        .map(|n| Ok(target(mesh.node_state(n)?.metrics)))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join(", ");
    let waypoint = target(mesh.waypoint("demo", "waypoint")?.metrics);
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - {{job_name: ztunnel, static_configs: [{{targets: [{ztunnels}]}}]}}\n\
             - {{job_name: waypoint, static_configs: [{{targets: [{waypoint}]}}]}}\n"
        ),
    )?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let prometheus = Process(
        Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let api = format!("http://127.0.0.1:{port}");

    // Traffic while Prometheus scrapes: the client through the waypoint to reviews.
    let rate = "sum by (reporter, source_workload, destination_workload, destination_service, connection_security_policy) (rate(istio_tcp_connections_opened_total[1m]))";
    let deadline = Instant::now() + Duration::from_secs(60);
    let edges = loop {
        for _ in 0..5 {
            let r = in_pod(&mesh, "demo", "client", || request(REVIEWS, &[]))?
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(r.status == 200, "{r:?}");
        }
        let edges = query(&api, rate).await.unwrap_or_default();
        let from_client = edges
            .iter()
            .any(|(m, v)| m["source_workload"] == "client" && *v > 0.0);
        if from_client || Instant::now() > deadline {
            break edges;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    // The client's ztunnel reports its edge to the waypoint, mutual TLS, at a rate above zero.
    assert!(
        edges.iter().any(|(m, v)| m["reporter"] == "source"
            && m["source_workload"] == "client"
            && m["connection_security_policy"] == "mutual_tls"
            && *v > 0.0),
        "no edge from client with a rate: {edges:#?}\nprometheus log:\n{log}"
    );
    // Every target was scraped.
    let up = query(&api, "up").await?;
    assert_eq!(up.len(), 3, "{up:#?}");
    assert!(
        up.iter().all(|(_, v)| *v == 1.0),
        "a target is down: {up:#?}"
    );
    drop(prometheus);
    mesh.down()?;
    Ok(())
}
