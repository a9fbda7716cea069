//! `ambit stat`: per workload or service, what came in over a window (linkerd viz stat's
//! columns), from the controller's `/api/stat`.

use std::time::Duration;

use ambit_controller::telemetry::api::StatRow;

use super::api_client::{ApiArgs, get_json, path_with_query};

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum StatResource {
    #[default]
    Workloads,
    Services,
}

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum TableOrJson {
    #[default]
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// What to show a row for.
    #[arg(value_enum, default_value_t = StatResource::Workloads)]
    pub resource: StatResource,
    /// Only this namespace's [default: all].
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Over how long the rates are taken (10s to 5m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    #[arg(short, long, value_enum, default_value_t = TableOrJson::Table)]
    pub output: TableOrJson,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(args: StatArgs) -> anyhow::Result<()> {
    let rows = rows(args.api.resolve()?, &args).await?;
    match args.output {
        TableOrJson::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        TableOrJson::Table => print!("{}", stat_table(&rows, args.namespace.is_none())),
    }
    Ok(())
}

async fn rows(api: std::net::SocketAddr, args: &StatArgs) -> anyhow::Result<Vec<StatRow>> {
    let resource = match args.resource {
        StatResource::Workloads => "workload",
        StatResource::Services => "service",
    };
    let path = path_with_query(
        "/api/stat",
        &[
            ("resource", resource.into()),
            ("namespace", args.namespace.clone().unwrap_or_default()),
            ("window", format!("{}s", args.window.as_secs().max(1))),
        ],
    );
    get_json(api, &path).await
}

/// `12.50%`, or `-` when there was nothing to judge by.
pub fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0))
}

pub fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

pub fn stat_table(rows: &[StatRow], with_namespace: bool) -> String {
    let mut header = vec![
        "NAME",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ];
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    let cells = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.name.clone(),
                if r.meshed { "yes" } else { "no" }.to_string(),
                percent(r.success_rate),
                format!("{:.1}rps", r.requests_per_second),
                millis(r.p50_ms),
                millis(r.p95_ms),
                millis(r.p99_ms),
                r.tcp_open_connections.to_string(),
            ];
            if with_namespace {
                row.insert(0, r.namespace.clone());
            }
            row
        })
        .collect::<Vec<_>>();
    table(&header, &cells)
}

/// Left-aligned columns two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::api_client::tests::{observation_api, report_twice};

    #[tokio::test]
    async fn rows_come_from_the_controller_over_its_api() {
        let (api, store, _shutdown) = observation_api().await;
        report_twice(&store);
        let args = StatArgs {
            resource: StatResource::Workloads,
            namespace: Some("demo".into()),
            window: Duration::from_secs(30),
            output: TableOrJson::Table,
            api: ApiArgs { api: Some(api) },
        };
        let table = stat_table(&rows(api, &args).await.unwrap(), false);
        let v1 = table
            .lines()
            .find(|l| l.starts_with("reviews-v1 "))
            .unwrap_or_else(|| panic!("{table}"));
        // 40 connections in 2 s, 10 of them denied; 3 open.
        assert_eq!(
            v1.split_whitespace().collect::<Vec<_>>(),
            ["reviews-v1", "yes", "75.00%", "0.0rps", "-", "-", "-", "3"]
        );
        let args = StatArgs {
            window: Duration::from_secs(3600),
            ..args
        };
        let err = rows(api, &args).await.unwrap_err().to_string();
        assert!(err.contains("window") && err.contains("400"), "{err}");
    }

    #[test]
    fn the_table_has_linkerds_columns() {
        let rows = [StatRow {
            resource: "workload".into(),
            namespace: "demo".into(),
            name: "reviews-v1".into(),
            meshed: true,
            requests_per_second: 25.0,
            success_rate: Some(0.8),
            p50_ms: Some(4.3333),
            p95_ms: Some(9.375),
            p99_ms: Some(120.4),
            tcp_open_connections: 3,
            tcp_connections_per_second: 1.0,
            bytes_per_second: 0.0,
        }];
        let t = stat_table(&rows, true);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAMESPACE",
                "NAME",
                "MESHED",
                "SUCCESS",
                "RPS",
                "LATENCY_P50",
                "LATENCY_P95",
                "LATENCY_P99",
                "TCP_CONN"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "demo",
                "reviews-v1",
                "yes",
                "80.00%",
                "25.0rps",
                "4.3ms",
                "9.4ms",
                "120ms",
                "3"
            ]
        );
        assert!(!stat_table(&rows, false).contains("NAMESPACE"));
        assert_eq!(percent(None), "-");
    }
}
