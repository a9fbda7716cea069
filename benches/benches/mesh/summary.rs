//! The mesh bench's one-screen summaries: each proxied path's figures against direct, and
//! Ambit's beside Istio's and the relays' when they ran.

use ambit_benches::record::Record;
use ambit_benches::report;
use ambit_cli::local::BENCH_DIRECT_PORT;
use serde_json::Value;

use super::{Opts, PACED_CONNECTIONS, RATIOS};

/// What carried a path's traffic.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proxies {
    Ambit,
    Istio,
    Relay,
}

impl Proxies {
    fn describe(self) -> &'static str {
        match self {
            Proxies::Ambit => "Ambit's ztunnels",
            Proxies::Istio => {
                "Istio's ztunnels (dedicated mode, one per pod, told of the two bench pods only)"
            }
            Proxies::Relay => {
                "two plain TCP relays (bench-relay: read and write, 256 KiB, no TLS or HTTP/2)"
            }
        }
    }

    /// What one of them is called in the figures.
    fn proxy(self) -> &'static str {
        match self {
            Proxies::Ambit | Proxies::Istio => "ztunnel",
            Proxies::Relay => "relay",
        }
    }

    /// What the proxies know of the mesh, which their RSS follows.
    fn known(self, o: &Opts) -> String {
        match self {
            Proxies::Ambit => format!("{} pods in mesh", o.pods),
            Proxies::Istio => "told of the 2 bench pods".to_string(),
            Proxies::Relay => "no mesh state".to_string(),
        }
    }
}

/// One path's figures against direct; for Ambit's, the target of each beside it (DESIGN.md's
/// targets are Ambit's; Istio's figures are the reference they are set against).
pub fn print(r: &Record, o: &Opts, proxies: Proxies) {
    let targets = proxies == Proxies::Ambit;
    let target = |t: &str| {
        if targets {
            format!("  (target {t})")
        } else {
            String::new()
        }
    };
    println!(
        "mesh bench: client@node-a -> server@node-b (nginx 1 worker, small 200; iperf3) through \
         {} ({} worker threads each) vs direct (port {BENCH_DIRECT_PORT}, not captured); {} pods; \
         {} rounds interleaved, wrk {} s, iperf3 {} s; medians",
        proxies.describe(),
        o.workers,
        o.pods,
        o.rounds,
        o.wrk_seconds,
        o.iperf3_seconds
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
    let known = proxies.known(o);
    for node in ["node_a", "node_b"] {
        println!(
            "{:<44} idle {:.1} MB, after load {:.1} MB, peak {:.1} MB{}",
            format!(
                "{} {} RSS ({known})",
                proxies.proxy(),
                node.replace('_', "-")
            ),
            field(&format!("rss_idle_mb_{node}")),
            field(&format!("rss_after_load_mb_{node}")),
            field(&format!("rss_peak_mb_{node}")),
            target("<= 8 / <= 12 / <= 20 MB"),
        );
    }
    let restarted = r.get("ztunnel_restarted") == Some(&Value::Bool(true));
    let restarted = if restarted {
        format!(
            "; A {} RESTARTED DURING THE RUN",
            proxies.proxy().to_uppercase()
        )
    } else {
        String::new()
    };
    println!(
        "wrk errors and non-2xx answers: mesh {}, direct {}{restarted}",
        field("errors_mesh"),
        field("errors_direct"),
    );
}

/// A figure every path's record holds: a field set once, or the median of its samples.
enum Figure {
    Field(&'static str),
    Median(&'static str),
}

impl Figure {
    fn of(&self, r: &Record) -> f64 {
        match self {
            Figure::Field(k) => r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN),
            Figure::Median(k) => r.median(k),
        }
    }
}

/// Each figure of Ambit's run beside Istio's and the relays' from the same run, as they ran.
/// With Istio's: Ambit / Istio against the multiple DESIGN.md and issue 15 set as the target,
/// and relay / Istio, the best any user-space proxy could have reached. Without: Ambit / relay,
/// how far Ambit is above that floor.
pub fn compare(ambit: &Record, istio: Option<&Record>, relay: Option<&Record>) {
    use Figure::{Field, Median};
    if istio.is_none() && relay.is_none() {
        return;
    }
    let rows: [(&str, Figure, &str); 10] = [
        (
            "wrk 1 connection, mesh / direct",
            Field("wrk_c1_ratio"),
            ">= 1.3",
        ),
        (
            "wrk 64 connections, mesh / direct",
            Field("wrk_c64_ratio"),
            ">= 1.3",
        ),
        (
            "iperf3 one stream up, mesh / direct",
            Field("iperf3_up_ratio"),
            ">= 1.4",
        ),
        (
            "iperf3 one stream down, mesh / direct",
            Field("iperf3_down_ratio"),
            ">= 1.4",
        ),
        (
            "added p50 at ~1k req/s, ms",
            Field("paced_p50_added_ms"),
            "<= 0.7",
        ),
        (
            "added p99 at ~1k req/s, ms",
            Field("paced_p99_added_ms"),
            "<= 0.7",
        ),
        (
            "CPU us per request per proxy, 64 conns",
            Median("cpu_us_per_request_per_proxy"),
            "<= 0.7",
        ),
        (
            "CPU core-s per GB, both proxies",
            Median("cpu_core_s_per_gb"),
            "<= 0.7",
        ),
        ("RSS idle, node-a, MB", Field("rss_idle_mb_node_a"), ""),
        ("RSS peak, node-a, MB", Field("rss_peak_mb_node_a"), ""),
    ];
    println!("same run, side by side:");
    for (label, figure, target) in rows {
        let a = figure.of(ambit);
        let mut line = format!("{label:<44} Ambit {a:>9.2}");
        let i = istio.map(|r| figure.of(r));
        let r = relay.map(|r| figure.of(r));
        if let Some(i) = i {
            line.push_str(&format!("   Istio {i:>9.2}"));
        }
        if let Some(r) = r {
            line.push_str(&format!("   relay {r:>9.2}"));
        }
        match (i, r) {
            (Some(i), r) => {
                line.push_str(&format!("   Ambit / Istio {:.2}", a / i));
                if let Some(r) = r {
                    line.push_str(&format!("   relay / Istio {:.2}", r / i));
                }
                if !target.is_empty() {
                    line.push_str(&format!("  (target {target})"));
                }
            }
            (None, Some(r)) => line.push_str(&format!("   Ambit / relay {:.2}", a / r)),
            (None, None) => {}
        }
        println!("{line}");
    }
}
