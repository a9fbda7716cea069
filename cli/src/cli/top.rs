//! `ambit top`: the busiest paths right now, from a tap, as a table redrawn every second.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use ambit_controller::telemetry::api::FlowRecord;

use super::api_client::{ApiArgs, Lines};
use super::stat::{percent, table};
use super::tap::{TapFilter, destination, tap_path, target, who};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// `workload/NAME` or `service/NAME` (either side of the flow); every flow when absent.
    pub target: Option<String>,
    #[command(flatten)]
    pub filter: TapFilter,
    /// Rows shown, busiest first.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Stop after this long (e.g. 30s); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// One path's tally since `top` started.
#[derive(Debug, Clone, PartialEq)]
pub struct PathStats {
    pub source: String,
    pub destination: String,
    pub method: String,
    pub path: String,
    pub count: u64,
    pub succeeded: u64,
    pub best_ms: f64,
    pub worst_ms: f64,
    pub last_ms: f64,
}

#[derive(Default)]
pub struct Tally(HashMap<(String, String, String, String), PathStats>);

impl Tally {
    pub fn add(&mut self, r: &FlowRecord) {
        let key = (
            who(&r.source),
            destination(r),
            r.method.clone(),
            r.path.clone(),
        );
        let s = self.0.entry(key.clone()).or_insert_with(|| PathStats {
            source: key.0,
            destination: key.1,
            method: key.2,
            path: key.3,
            count: 0,
            succeeded: 0,
            best_ms: f64::INFINITY,
            worst_ms: 0.0,
            last_ms: 0.0,
        });
        s.count += 1;
        s.succeeded += u64::from(!r.failed);
        s.best_ms = s.best_ms.min(r.duration_ms);
        s.worst_ms = s.worst_ms.max(r.duration_ms);
        s.last_ms = r.duration_ms;
    }

    /// The busiest `rows` paths, as a table.
    pub fn render(&self, rows: usize) -> String {
        let mut all: Vec<&PathStats> = self.0.values().collect();
        all.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.source, &a.destination, &a.path).cmp(&(&b.source, &b.destination, &b.path))
            })
        });
        let ms = |v: f64| format!("{v:.1}ms");
        let cells: Vec<Vec<String>> = all
            .into_iter()
            .take(rows)
            .map(|s| {
                vec![
                    s.source.clone(),
                    s.destination.clone(),
                    if s.method.is_empty() {
                        "-".into()
                    } else {
                        s.method.clone()
                    },
                    if s.path.is_empty() {
                        "-".into()
                    } else {
                        s.path.clone()
                    },
                    s.count.to_string(),
                    percent(Some(s.succeeded as f64 / s.count as f64)),
                    ms(s.best_ms),
                    ms(s.worst_ms),
                    ms(s.last_ms),
                ]
            })
            .collect();
        table(
            &[
                "SOURCE",
                "DESTINATION",
                "METHOD",
                "PATH",
                "COUNT",
                "SUCCESS",
                "BEST",
                "WORST",
                "LAST",
            ],
            &cells,
        )
    }
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let api = args.api.resolve()?;
    let (workload, service) = target(args.target.as_deref())?;
    let mut lines = Lines::open(api, &tap_path(&args.filter, workload, service)).await?;
    let terminal = std::io::stdout().is_terminal();
    let mut tally = Tally::default();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            record = lines.next::<FlowRecord>() => match record? {
                Some(record) => tally.add(&record),
                None => break,
            },
            _ = redraw.tick() => show(&tally, args.rows, terminal),
            () = &mut stop => break,
        }
    }
    show(&tally, args.rows, terminal);
    Ok(())
}

fn show(tally: &Tally, rows: usize, terminal: bool) {
    if terminal {
        // Clear the screen and go home: a live table without a TUI library.
        print!("\x1b[2J\x1b[H");
    } else {
        println!();
    }
    print!("{}", tally.render(rows));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_controller::telemetry::api::PartyRecord;

    fn request(path: &str, ms: f64, failed: bool) -> FlowRecord {
        FlowRecord {
            protocol: "http1".into(),
            source: PartyRecord {
                workload: "client".into(),
                namespace: "demo".into(),
                ..Default::default()
            },
            destination_service: "reviews.demo.svc.cluster.local".into(),
            method: "GET".into(),
            path: path.into(),
            duration_ms: ms,
            failed,
            ..Default::default()
        }
    }

    #[test]
    fn the_busiest_paths_come_first_with_their_latencies() {
        let mut t = Tally::default();
        t.add(&request("/a", 3.0, false));
        t.add(&request("/b", 1.0, false));
        t.add(&request("/b", 9.0, true));
        t.add(&request("/b", 4.0, false));
        let out = t.render(10);
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][0], "SOURCE");
        assert_eq!(
            lines[1],
            [
                "demo/client",
                "reviews.demo.svc.cluster.local",
                "GET",
                "/b",
                "3",
                "66.67%",
                "1.0ms",
                "9.0ms",
                "4.0ms"
            ]
        );
        assert_eq!(lines[2][3], "/a");
        assert_eq!(t.render(1).lines().count(), 2);
    }
}
