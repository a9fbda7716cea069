//! Counters that live in the proxies' shared code (the HBONE server's limits) written in the
//! Prometheus text format, so each proxy appends them to its own `/metrics` page the same way
//! and under the same names. Values are read at render time from the atomics that count them:
//! nothing is recorded twice and the hot path only bumps an atomic.

use std::fmt::Write;

use crate::hbone::{Abuse, ConnectionLimits, Limit};

/// A Prometheus text exposition being written.
pub struct Exposition<'a> {
    out: &'a mut String,
}

impl<'a> Exposition<'a> {
    /// Appends to `out`, which may already hold other families (each name appears once).
    pub fn new(out: &'a mut String) -> Self {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        Exposition { out }
    }

    /// A family of one sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.header(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A family of one sample per value of `label`.
    pub fn labelled<'v>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'v str, u64)>,
    ) {
        self.header(name, kind, help);
        for (label_value, value) in samples {
            let _ = writeln!(self.out, "{name}{{{label}=\"{label_value}\"}} {value}");
        }
    }

    fn header(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Writes the HBONE server's gauges and counters (shared by all servers given `limits`).
pub fn hbone_limits(out: &mut String, limits: &ConnectionLimits) {
    let mut e = Exposition::new(out);
    e.single(
        "ambit_hbone_connections",
        Kind::Gauge,
        "HBONE server connections held now, handshaking or established",
        limits.connections() as u64,
    );
    e.single(
        "ambit_hbone_handshakes",
        Kind::Gauge,
        "HBONE server connections in their TLS or HTTP/2 handshake now",
        limits.handshakes() as u64,
    );
    e.labelled(
        "ambit_hbone_connections_refused_total",
        Kind::Counter,
        "HBONE connections closed at once because a limit was reached, by limit",
        "limit",
        Limit::ALL.map(|l| (l.name(), limits.refused(l))),
    );
    e.single(
        "ambit_hbone_handshake_timeouts_total",
        Kind::Counter,
        "HBONE connections that did not finish TLS and the HTTP/2 preface in time",
        limits.handshake_timeouts(),
    );
    e.single(
        "ambit_hbone_handshake_failures_total",
        Kind::Counter,
        "HBONE connections whose TLS or HTTP/2 handshake failed",
        limits.handshake_failures(),
    );
    e.single(
        "ambit_hbone_idle_closed_total",
        Kind::Counter,
        "HBONE connections closed with GOAWAY after carrying no tunnel for the idle timeout",
        limits.idle_closed(),
    );
    e.labelled(
        "ambit_hbone_abuse_closed_total",
        Kind::Counter,
        "Established HBONE connections closed because their client broke an HTTP/2 abuse limit, by limit",
        "abuse",
        Abuse::ALL.map(|a| (a.name(), limits.abuse_closed(a))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_after_what_is_there() {
        let mut out = String::from("other_total 3");
        hbone_limits(&mut out, &ConnectionLimits::default());
        assert!(out.starts_with("other_total 3\n# HELP ambit_hbone_connections "));
        assert!(out.contains("# TYPE ambit_hbone_connections gauge\nambit_hbone_connections 0\n"));
        assert!(out.contains(
            "ambit_hbone_connections_refused_total{limit=\"connections_per_identity\"} 0\n"
        ));
        assert!(out.contains("ambit_hbone_abuse_closed_total{abuse=\"rapid_reset\"} 0\n"));
        assert!(out.contains("# TYPE ambit_hbone_idle_closed_total counter\n"));
    }
}
