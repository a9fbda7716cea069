//! The HBONE server's own HTTP/2 (the outer connection that carries tunnels) against abusive
//! clients we did not write: `tests/interop/hbone_abuse.py`, a mesh workload over mutual TLS
//! sending HTTP/2 frame by frame. Rapid reset, a CONTINUATION flood, a header block left open
//! and stream stacking each cost the attacker its connection, counted under the limit it
//! broke, while a steady client's tunnels, on a connection of its own, all echo.
//!
//! Needs `python3` with `h2` (`pip install h2`); skipped with a note without it, except under
//! CI, where the test fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::interop::*;
use crate::support::*;
use ambit_proto::hbone::{Abuse, ConnectionLimits, ServerSettings};
use ambit_proto::identity::CertificateAuthority;

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_http2_clients_lose_their_connection_and_tunnels_go_on() {
    require_python_h2!();
    let ca = CertificateAuthority::generate(TD).unwrap();
    let pki = Pki::new();
    let root = pki.root(&ca, "root");
    let (cert, key) = pki.issue(&ca, &id("py", "attacker"), "attacker");
    let certs = manager(ca);
    let limits = Arc::new(ConnectionLimits::default());
    let server = serve_with(
        &certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
        ServerSettings {
            header_timeout: HEADER_TIMEOUT,
            limits: limits.clone(),
            ..ServerSettings::default()
        },
    )
    .await;
    let addr = server.addr;

    // A steady client opening tunnels all through the attacks; every one must echo.
    let steady = client(certs.clone());
    let req = request(&id("demo", "client"), addr, &id("demo", "server"));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let steady_task = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            loop {
                let last = stop.load(Ordering::SeqCst);
                let echoed = match steady.connect(&req).await {
                    Ok(mut t) => echo_once(&mut t, b"steady")
                        .await
                        .is_ok_and(|b| b == b"steady"),
                    Err(_) => false,
                };
                let counter = if echoed { &ok } else { &failed };
                counter.fetch_add(1, Ordering::SeqCst);
                if last {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let authority = format!("{}:8080", addr.ip());
    let base = args(&[
        "--addr",
        &addr.to_string(),
        "--root",
        &root,
        "--cert",
        &cert,
        "--key",
        &key,
        "--authority",
        &authority,
    ]);
    let attacks = [
        ("rapid-reset", "1000", Abuse::RapidReset),
        ("continuation", "20000", Abuse::ContinuationFlood),
        ("slow", "0", Abuse::SlowHeaders),
        // 100 tunnels at once are allowed; the other 300 are refused, more than 256.
        ("stacking", "400", Abuse::StreamErrors),
    ];
    for (scenario, n, abuse) in attacks {
        let seen = run(
            "hbone_abuse.py",
            [base.clone(), args(&[scenario, n])].concat(),
        )
        .await;
        seen.assert_ok();
        assert_eq!(seen.value("closed"), "1", "{scenario}: {seen}");
        if abuse != Abuse::SlowHeaders {
            assert_eq!(
                seen.value("goaway"),
                "ENHANCE_YOUR_CALM",
                "{scenario}: {seen}"
            );
        }
        if abuse == Abuse::StreamErrors {
            assert!(seen.value("refused") != "0", "{seen}");
        }
        assert_eq!(limits.abuse_closed(abuse), 1, "{scenario}: {seen}");
    }
    let counted: u64 = Abuse::ALL.iter().map(|a| limits.abuse_closed(*a)).sum();
    assert_eq!(
        counted, 4,
        "each attack was counted once, under its own limit"
    );

    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), steady_task)
        .await
        .expect("the steady client finishes")
        .unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "a steady tunnel failed");
    assert!(ok.load(Ordering::SeqCst) > 0);
}
