//! Issue 12's first "must show": a pod outside the mesh that connects straight to a meshed
//! pod's IP on ztunnel's own ports (15006 inbound plaintext, 15001 outbound, 15008 HBONE
//! without TLS) is refused, never reaches the app, and costs ztunnel nothing it keeps: open
//! files and memory are back within 10% after 1,000 such attempts, while a meshed client
//! beside them succeeds on every call. (One plain connection to 15006 used to make ztunnel
//! dial its own listener in a loop until it ran out of file descriptors.)

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ambit_e2e::probe::{SteadyClient, fd_count, rss_kib};
use ambit_e2e::{can_run, curl, failures, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// ztunnel's own ports inside each meshed pod.
const PROXY_PORTS: [u16; 3] = [15006, 15001, 15008];
/// reviews-v1, on node-a: the pod attacked, and node-a's ztunnel the process watched.
const TARGET: &str = "10.244.1.4";
const ATTEMPTS: usize = 1000;
/// At once, from the outsider.
const CONCURRENCY: usize = 50;
/// How long an attempt may stay open: a refusal is a reset or a close, not a held connection.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long ztunnel gets to give back what the attempts cost it.
const SETTLE: Duration = Duration::from_secs(15);

/// How each raw attempt ended.
#[derive(Debug, Default)]
struct Outcomes {
    connect_refused: usize,
    reset: usize,
    closed: usize,
    held_open: usize,
    reached_app: usize,
}

/// One connection to `target`: an HTTP request, then read until ztunnel closes or resets.
async fn attempt(target: SocketAddr, out: &mut Outcomes) {
    let run = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, run).await {
        Err(_) => out.held_open += 1,
        Ok(Ok(answer)) if ambit_e2e::capture::contains(&answer, b"hello from") => {
            out.reached_app += 1
        }
        Ok(Ok(_)) => out.closed += 1,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => out.connect_refused += 1,
        Ok(Err(_)) => out.reset += 1,
    }
}

/// `count` attempts spread over the proxy ports, `CONCURRENCY` at a time, from inside `pod`.
fn attempts(pod: &ambit_testbed::Netns, count: usize) -> anyhow::Result<Outcomes> {
    let target: IpAddr = TARGET.parse()?;
    let outcomes = pod.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime in the outsider pod");
        runtime.block_on(async move {
            let mut total = Outcomes::default();
            let mut next = 0;
            while next < count {
                let batch = CONCURRENCY.min(count - next);
                let tasks: Vec<_> = (next..next + batch)
                    .map(|i| {
                        let addr = SocketAddr::new(target, PROXY_PORTS[i % PROXY_PORTS.len()]);
                        tokio::spawn(async move {
                            let mut out = Outcomes::default();
                            attempt(addr, &mut out).await;
                            out
                        })
                    })
                    .collect();
                for t in tasks {
                    let o = t.await.expect("attempt task");
                    total.connect_refused += o.connect_refused;
                    total.reset += o.reset;
                    total.closed += o.closed;
                    total.held_open += o.held_open;
                    total.reached_app += o.reached_app;
                }
                next += batch;
            }
            total
        })
    })?;
    Ok(outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_ztunnel_ports_from_outside_is_refused_at_no_lasting_cost()
-> anyhow::Result<()> {
    if !can_run("plaintext_to_ztunnel_ports_from_outside") {
        return Ok(());
    }
    let mesh = start("outsiders", Some(ambit_e2e::L4_MESH)).await?;
    let outsider = mesh.pod("legacy", "legacy")?.netns().clone();
    let pid = mesh
        .ztunnel_pid("node-a")?
        .ok_or_else(|| anyhow::anyhow!("node-a's ztunnel is not running"))?;

    // An unmodified program first: curl gets no answer from the app on any proxy port, from
    // another node (reviews-v1) or the same one (reviews-v2).
    for ip in [TARGET, "10.244.2.2"] {
        for port in PROXY_PORTS {
            let url = format!("http://{ip}:{port}/");
            let r = curl(&mesh, "legacy", "legacy", &url)?;
            assert!(
                !r.ok() && !r.stdout.contains("hello from"),
                "{url} from legacy/legacy was not refused: {r:?}"
            );
        }
    }

    // A meshed client calls the same pod through the same ztunnel throughout.
    let steady = SteadyClient::start(
        mesh.pod("demo", "client")?.netns(),
        &format!("http://{TARGET}:8080/"),
        Duration::from_millis(20),
    )?;
    let steady_since = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_before, rss_before) = (fd_count(pid)?, rss_kib(pid)?);
    // A ztunnel with a few pods holds tens of files; thousands means a loop already ran.
    assert!(
        fds_before < 500,
        "node-a's ztunnel already holds {fds_before} open files after the curls above"
    );

    let metrics = mesh.node_state("node-a")?.metrics;
    let counted_before = failures(metrics, "proxy_port").await?;
    let started = Instant::now();
    let outcomes = attempts(&outsider, ATTEMPTS)?;
    eprintln!(
        "{ATTEMPTS} attempts in {:?}: {outcomes:?}",
        started.elapsed()
    );
    assert_eq!(outcomes.reached_app, 0, "{outcomes:?}");
    assert_eq!(
        outcomes.held_open, 0,
        "connections were held open instead of refused: {outcomes:?}"
    );
    // Those aimed at 15006 and 15001 (redirected to 15006) are counted as what they are.
    let counted = failures(metrics, "proxy_port").await? - counted_before;
    assert!(
        counted >= (ATTEMPTS * 2 / 3) as u64,
        "node-a's ztunnel counted {counted} proxy_port refusals for {ATTEMPTS} attempts"
    );

    // Within SETTLE, open files and memory are back within 10% of before.
    let (fd_limit, rss_limit) = (fds_before + fds_before / 10, rss_before + rss_before / 10);
    let deadline = Instant::now() + SETTLE;
    let (mut fds, mut rss) = (fd_count(pid)?, rss_kib(pid)?);
    while (fds > fd_limit || rss > rss_limit) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (fds, rss) = (fd_count(pid)?, rss_kib(pid)?);
    }
    // Long enough for the tally below to mean something however quickly the rest went.
    let steady_for = Duration::from_secs(3);
    tokio::time::sleep(steady_for.saturating_sub(steady_since.elapsed())).await;
    let tally = steady.stop();
    assert!(
        fds <= fd_limit,
        "node-a's ztunnel holds {fds} open files {SETTLE:?} after the attempts, {fds_before} before"
    );
    assert!(
        rss <= rss_limit,
        "node-a's ztunnel uses {rss} KiB {SETTLE:?} after the attempts, {rss_before} KiB before"
    );
    assert_eq!(
        mesh.ztunnel_pid("node-a")?,
        Some(pid),
        "node-a's ztunnel was restarted meanwhile: {:?}",
        mesh.events()
    );
    assert!(
        tally.failed == 0 && tally.ok > 50,
        "the meshed client beside the attempts was harmed: {tally:?}"
    );
    mesh.down()?;
    Ok(())
}
