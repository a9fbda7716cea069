//! `ambit tap`: a live line per flow (request or connection) of a workload or service, from
//! the controller's `/api/tap`, which asks every proxy for them while it runs.

use std::time::Duration;

use ambit_controller::telemetry::api::{FlowRecord, PartyRecord};
use anyhow::bail;

use super::api_client::{ApiArgs, Lines, path_with_query};

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum TextOrJson {
    #[default]
    Text,
    Json,
}

/// Which flows, as the controller's tap takes them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TapFilter {
    /// Only flows with a side in this namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Only this method (HTTP and gRPC).
    #[arg(long)]
    pub method: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only flows that failed.
    #[arg(long)]
    pub failed: bool,
    /// At most this many flows per second from each proxy [default: the proxies', 100].
    #[arg(long)]
    pub max_rps: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// `workload/NAME` or `service/NAME` (either side of the flow); every flow when absent.
    pub target: Option<String>,
    #[command(flatten)]
    pub filter: TapFilter,
    /// Stop after this long (e.g. 10s); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[arg(short, long, value_enum, default_value_t = TextOrJson::Text)]
    pub output: TextOrJson,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `workload/NAME` or `service/NAME`: (workload, service).
pub fn target(target: Option<&str>) -> anyhow::Result<(String, String)> {
    let Some(target) = target else {
        return Ok(Default::default());
    };
    match target.split_once('/') {
        Some(("workload" | "workloads" | "wl", name)) if !name.is_empty() => {
            Ok((name.into(), String::new()))
        }
        Some(("service" | "services" | "svc", name)) if !name.is_empty() => {
            Ok((String::new(), name.into()))
        }
        _ => bail!("{target:?} is not workload/NAME or service/NAME"),
    }
}

/// The `/api/tap` path for these filters.
pub fn tap_path(filter: &TapFilter, workload: String, service: String) -> String {
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    path_with_query(
        "/api/tap",
        &[
            ("namespace", opt(&filter.namespace)),
            ("workload", workload),
            ("service", service),
            ("method", opt(&filter.method)),
            ("path_prefix", opt(&filter.path)),
            (
                "failed_only",
                if filter.failed { "true" } else { "" }.into(),
            ),
            (
                "max_per_second",
                filter.max_rps.map(|n| n.to_string()).unwrap_or_default(),
            ),
        ],
    )
}

/// Runs until `duration` passes (if given) or the controller ends the stream; Ctrl-C ends the
/// process, which closes the connection and so stops the tap.
pub async fn run(args: TapArgs) -> anyhow::Result<()> {
    let api = args.api.resolve()?;
    let (workload, service) = target(args.target.as_deref())?;
    let mut lines = Lines::open(api, &tap_path(&args.filter, workload, service)).await?;
    let stream = async {
        while let Some(record) = lines.next::<FlowRecord>().await? {
            match args.output {
                TextOrJson::Json => println!("{}", serde_json::to_string(&record)?),
                TextOrJson::Text => println!("{}", line(&record)),
            }
        }
        anyhow::Ok(())
    };
    match args.duration {
        Some(d) => match tokio::time::timeout(d, stream).await {
            Ok(ended) => ended,
            Err(_) => Ok(()),
        },
        None => stream.await,
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub fn clock(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A side as the line names it: its identity, else workload, else address.
pub fn who(p: &PartyRecord) -> String {
    if !p.identity.is_empty() {
        p.identity
            .strip_prefix("spiffe://")
            .unwrap_or(&p.identity)
            .to_string()
    } else if !p.workload.is_empty() {
        format!("{}/{}", p.namespace, p.workload)
    } else if !p.address.is_empty() {
        p.address.clone()
    } else {
        "unknown".into()
    }
}

/// The destination: the service addressed, else the workload, else the address.
pub fn destination(r: &FlowRecord) -> String {
    let d = &r.destination;
    let base = if !r.destination_service.is_empty() {
        r.destination_service.clone()
    } else if !d.workload.is_empty() {
        format!("{}/{}", d.namespace, d.workload)
    } else if !d.address.is_empty() {
        return d.address.clone();
    } else {
        "unknown".into()
    };
    if r.destination_port > 0 {
        format!("{base}:{}", r.destination_port)
    } else {
        base
    }
}

pub fn line(r: &FlowRecord) -> String {
    let request = if r.method.is_empty() {
        String::new()
    } else {
        format!(" {} {}", r.method, r.path)
    };
    let status = if r.protocol == "tcp" {
        if r.failed { "failed" } else { "ok" }.to_string()
    } else {
        match r.grpc_status {
            Some(g) => format!(":status={} grpc-status={g}", r.status),
            None => format!(":status={}", r.status),
        }
    };
    let mut line = format!(
        "{} {}/{} {} -> {} {}{request} {status} flags={} latency={:.1}ms mtls={}",
        clock(r.start_unix_ms),
        r.reporter_kind,
        r.reporter,
        who(&r.source),
        destination(r),
        r.protocol,
        if r.response_flags.is_empty() {
            "-"
        } else {
            &r.response_flags
        },
        r.duration_ms,
        r.mutual_tls,
    );
    if r.would_deny {
        line.push_str(&format!(" would-deny={}", r.policy));
    } else if !r.policy.is_empty() {
        line.push_str(&format!(" denied-by={}", r.policy));
    }
    if r.failed && !r.reason.is_empty() {
        line.push_str(&format!(" reason={:?}", r.reason));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::api_client::tests::observation_api;

    #[tokio::test]
    async fn a_tap_streams_the_records_its_proxies_send() {
        let (api, store, _shutdown) = observation_api().await;
        let filter = TapFilter {
            failed: true,
            ..Default::default()
        };
        let mut lines = Lines::open(api, &tap_path(&filter, "client".into(), String::new()))
            .await
            .unwrap();
        let running = store.taps.watch().borrow().clone();
        let (id, tap) = running.iter().next().expect("the tap runs");
        assert_eq!((tap.workload.as_str(), tap.failed_only), ("client", true));
        let record = FlowRecord {
            protocol: "tcp".into(),
            failed: true,
            ..Default::default()
        };
        store.taps.deliver(*id, &record);
        store.taps.deliver(*id, &record);
        for _ in 0..2 {
            let got: FlowRecord = lines.next().await.unwrap().unwrap();
            assert_eq!(got, record);
        }
        drop(lines);
        let mut watching = store.taps.watch();
        tokio::time::timeout(Duration::from_secs(10), watching.wait_for(|t| t.is_empty()))
            .await
            .expect("the tap stopped when its client went")
            .unwrap();
    }

    #[test]
    fn targets_and_paths() {
        assert_eq!(
            target(Some("workload/client")).unwrap(),
            ("client".into(), String::new())
        );
        assert_eq!(
            target(Some("svc/reviews")).unwrap(),
            (String::new(), "reviews".into())
        );
        assert_eq!(target(None).unwrap(), Default::default());
        for bad in ["client", "pod/client", "workload/"] {
            assert!(
                target(Some(bad))
                    .unwrap_err()
                    .to_string()
                    .contains("workload/NAME")
            );
        }
        let filter = TapFilter {
            namespace: Some("demo".into()),
            failed: true,
            max_rps: Some(5),
            ..Default::default()
        };
        assert_eq!(
            tap_path(&filter, "client".into(), String::new()),
            "/api/tap?namespace=demo&workload=client&failed_only=true&max_per_second=5"
        );
    }

    #[test]
    fn a_line_says_who_what_and_how() {
        let r = FlowRecord {
            reporter_kind: "waypoint".into(),
            reporter: "demo/waypoint".into(),
            start_unix_ms: 1_700_000_000_123,
            duration_ms: 4.25,
            protocol: "http1".into(),
            source: PartyRecord {
                identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
                ..Default::default()
            },
            destination_service: "reviews.demo.svc.cluster.local".into(),
            destination_port: 9080,
            mutual_tls: true,
            method: "GET".into(),
            path: "/reviews/1".into(),
            status: 503,
            response_flags: "UH".into(),
            failed: true,
            reason: "no healthy endpoint".into(),
            ..Default::default()
        };
        assert_eq!(
            line(&r),
            "22:13:20.123 waypoint/demo/waypoint cluster.local/ns/demo/sa/client -> reviews.demo.svc.cluster.local:9080 http1 GET /reviews/1 :status=503 flags=UH latency=4.2ms mtls=true reason=\"no healthy endpoint\""
        );
    }
}
