//! Shared pieces of Ambit's benchmarks: timing samples, medians and percentiles, and the
//! ratio report every scenario prints (mesh against direct, measured in the same run).

use std::time::Duration;

pub mod alloc;
pub mod cpu;
pub mod iperf3;
pub mod local;
pub mod procfs;
pub mod record;
pub mod sched;
pub mod tools;

/// A bench's command line: `--name value` options and `--flag` switches after `cargo bench
/// -- `. A value that is missing or does not parse leaves the default.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Args(std::env::args().collect())
    }

    /// The text after `--name`, if given.
    pub fn text(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).map(String::as_str)
    }

    pub fn value<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.text(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// `--sizes 1000,10000`: mesh sizes, `default` when not given; a list that does not
    /// parse is an error, not the default.
    pub fn sizes(&self, default: &[usize]) -> anyhow::Result<Vec<usize>> {
        if !self.flag("--sizes") {
            return Ok(default.to_vec());
        }
        let list = self
            .text("--sizes")
            .ok_or_else(|| anyhow::anyhow!("--sizes needs a list, e.g. --sizes 1000,10000"))?;
        list.split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--sizes {list}: {e}"))
    }
}

/// Latency samples of one run.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u64>,
}

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The `q` quantile (0.0..=1.0) in microseconds, nearest-rank.
    pub fn quantile(&mut self, q: f64) -> u64 {
        if self.micros.is_empty() {
            return 0;
        }
        self.micros.sort_unstable();
        let rank = ((q * self.micros.len() as f64).ceil() as usize).clamp(1, self.micros.len());
        self.micros[rank - 1]
    }
}

/// Median of a handful of per-round figures.
pub fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "median of no rounds");
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// One line of a report: a figure for the mesh path and for direct, and their ratio.
pub fn report(scenario: &str, unit: &str, mesh: f64, direct: f64, target: Option<&str>) {
    let ratio = if direct == 0.0 {
        f64::NAN
    } else {
        mesh / direct
    };
    let target = target
        .map(|t| format!("  (target {t})"))
        .unwrap_or_default();
    println!(
        "{scenario:<44} mesh {mesh:>12.1} {unit:<8} direct {direct:>12.1} {unit:<8} ratio {ratio:.2}{target}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_medians() {
        let mut s = Samples::default();
        for us in 1..=100 {
            s.record(Duration::from_micros(us));
        }
        assert_eq!(s.quantile(0.5), 50);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.quantile(1.0), 100);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn options_and_flags() {
        let args = Args(
            ["bench", "--rounds", "7", "--json", "--seconds", "x"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(args.value("--rounds", 3usize), 7);
        assert_eq!(args.value("--seconds", 5u64), 5);
        assert_eq!(args.value("--pods", 100usize), 100);
        assert!(args.flag("--json") && !args.flag("--nginx-access-log"));
        assert_eq!(args.text("--json"), Some("--seconds"));
    }
}
