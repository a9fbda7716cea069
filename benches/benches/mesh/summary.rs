//! The mesh bench's one-screen summaries: each proxied path's figures against direct, and
//! Ambit's beside Istio's when both ran.

use ambit_benches::record::Record;
use ambit_benches::report;
use ambit_cli::local::BENCH_DIRECT_PORT;
use serde_json::Value;

use super::{Opts, PACED_CONNECTIONS, RATIOS};

/// One path's figures against direct; with `targets`, the target of each beside it (DESIGN.md's
/// targets are Ambit's; Istio's figures are the reference they are set against).
pub fn print(r: &Record, o: &Opts, proxies: &str, targets: bool) {
    let target = |t: &str| {
        if targets {
            format!("  (target {t})")
        } else {
            String::new()
        }
    };
    println!(
        "mesh bench: client@node-a -> server@node-b (nginx 1 worker, small 200; iperf3) through \
         {proxies} ({} worker threads each) vs direct (port {BENCH_DIRECT_PORT}, not captured); {} pods; \
         {} rounds interleaved, wrk {} s, iperf3 {} s; medians",
        o.workers, o.pods, o.rounds, o.wrk_seconds, o.iperf3_seconds
    );
    let labels = [
        ("wrk max rate, 1 connection (-t1 -c1)", "req/s", ">= 0.65"),
        (
            "wrk max rate, 64 connections (-t2 -c64)",
            "req/s",
            ">= 0.55",
        ),
        (
            "iperf3 one stream up (client -> server)",
            "Gbit/s",
            ">= 0.50",
        ),
        ("iperf3 one stream down (-R)", "Gbit/s", ">= 0.50"),
    ];
    for ((test, figure), (label, unit, target)) in RATIOS.iter().zip(labels) {
        let median = |path: &str| r.median(&format!("{test}_{figure}_{path}"));
        report(
            label,
            unit,
            median("mesh"),
            median("direct"),
            targets.then_some(target),
        );
    }
    let rate = r.median("wrk_paced_rps_direct");
    for (q, q_target) in [
        ("p50", "<= +0.25 ms"),
        ("p99", "<= 0.7x Istio's +0.65 / +0.96 ms"),
    ] {
        let (m, d) = (
            r.median(&format!("paced_{q}_ms_mesh")),
            r.median(&format!("paced_{q}_ms_direct")),
        );
        println!(
            "{:<44} mesh {m:>12.3} ms       direct {d:>12.3} ms       added {:+.3} ms{}",
            format!("{q} at ~{rate:.0} req/s (paced, {PACED_CONNECTIONS} conns)"),
            m - d,
            target(q_target)
        );
    }
    println!(
        "{:<44} {:.1} us per request per proxy (node-a {:.1}, node-b {:.1}){}",
        "CPU, wrk 64 connections",
        r.median("cpu_us_per_request_per_proxy"),
        r.median("cpu_us_per_request_node_a"),
        r.median("cpu_us_per_request_node_b"),
        target("<= 0.7x Istio's: ~10 / 19.4 us"),
    );
    println!(
        "{:<44} {:.2} core-s per GB, both proxies{}",
        "CPU, iperf3 up and down",
        r.median("cpu_core_s_per_gb"),
        target("<= 0.7x Istio's: ~1.25 / 1.6 core-s"),
    );
    let field = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    for node in ["node_a", "node_b"] {
        println!(
            "{:<44} idle {:.1} MB, after load {:.1} MB, peak {:.1} MB{}",
            format!(
                "ztunnel {} RSS ({} pods in mesh)",
                node.replace('_', "-"),
                o.pods
            ),
            field(&format!("rss_idle_mb_{node}")),
            field(&format!("rss_after_load_mb_{node}")),
            field(&format!("rss_peak_mb_{node}")),
            target("<= 8 / <= 12 / <= 20 MB"),
        );
    }
    let restarted = r.get("ztunnel_restarted") == Some(&Value::Bool(true));
    println!(
        "wrk errors and non-2xx answers: mesh {}, direct {}{}",
        field("errors_mesh"),
        field("errors_direct"),
        if restarted {
            "; A ZTUNNEL RESTARTED DURING THE RUN"
        } else {
            ""
        }
    );
}

/// Each figure of Ambit's run beside Istio's from the same run, and the multiple DESIGN.md and
/// issue 15 set as the target.
pub fn against_istio(ambit: &Record, istio: &Record) {
    let field = |r: &Record, k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let median = |r: &Record, k: &str| r.median(k);
    let rows: [(&str, f64, f64, &str); 10] = [
        (
            "wrk 1 connection, mesh / direct",
            field(ambit, "wrk_c1_ratio"),
            field(istio, "wrk_c1_ratio"),
            ">= 1.3",
        ),
        (
            "wrk 64 connections, mesh / direct",
            field(ambit, "wrk_c64_ratio"),
            field(istio, "wrk_c64_ratio"),
            ">= 1.3",
        ),
        (
            "iperf3 one stream up, mesh / direct",
            field(ambit, "iperf3_up_ratio"),
            field(istio, "iperf3_up_ratio"),
            ">= 1.4",
        ),
        (
            "iperf3 one stream down, mesh / direct",
            field(ambit, "iperf3_down_ratio"),
            field(istio, "iperf3_down_ratio"),
            ">= 1.4",
        ),
        (
            "added p50 at ~1k req/s, ms",
            field(ambit, "paced_p50_added_ms"),
            field(istio, "paced_p50_added_ms"),
            "<= 0.7",
        ),
        (
            "added p99 at ~1k req/s, ms",
            field(ambit, "paced_p99_added_ms"),
            field(istio, "paced_p99_added_ms"),
            "<= 0.7",
        ),
        (
            "CPU us per request per proxy, 64 conns",
            median(ambit, "cpu_us_per_request_per_proxy"),
            median(istio, "cpu_us_per_request_per_proxy"),
            "<= 0.7",
        ),
        (
            "CPU core-s per GB, both proxies",
            median(ambit, "cpu_core_s_per_gb"),
            median(istio, "cpu_core_s_per_gb"),
            "<= 0.7",
        ),
        (
            "RSS idle, node-a, MB",
            field(ambit, "rss_idle_mb_node_a"),
            field(istio, "rss_idle_mb_node_a"),
            "",
        ),
        (
            "RSS peak, node-a, MB",
            field(ambit, "rss_peak_mb_node_a"),
            field(istio, "rss_peak_mb_node_a"),
            "",
        ),
    ];
    println!("same run, Ambit against Istio's ztunnel:");
    for (label, a, i, target) in rows {
        let target = if target.is_empty() {
            String::new()
        } else {
            format!("  (target {target})")
        };
        println!(
            "{label:<44} Ambit {a:>9.2}   Istio {i:>9.2}   Ambit / Istio {:.2}{target}",
            a / i
        );
    }
}
