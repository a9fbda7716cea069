//! The final summary's checks: each line says what was seen, or what was not.

use std::collections::BTreeSet;

use ambit_discovery::dump::ztunnel::ConfigDump;

use super::{Summary, percent, routes};
use crate::cli::waypoints::WaypointView;

impl Summary {
    /// The checks of the final summary: each line says what was seen, or what was not.
    pub fn checks(&self, dumps: &[ConfigDump], waypoints: &[WaypointView]) -> Vec<(bool, String)> {
        let mut checks = Vec::new();
        let cross = self.flows.iter().find_map(|f| {
            let carried = self.carried(f, dumps);
            if carried.hbone == 0 {
                return None;
            }
            f.answered_by.keys().find_map(|server| {
                let node = self.pod_nodes.get(server)?;
                (node != &f.client_node)
                    .then(|| format!("{} ({}) -> {server} ({node})", f.client, f.client_node))
            })
        });
        checks.push(match cross {
            Some(how) => (true, format!("traffic crossed nodes over HBONE: {how}")),
            None => (false, "no traffic crossed nodes over HBONE".into()),
        });
        if !self.unmeshed_services.is_empty() {
            let pass = self.flows.iter().find(|f| {
                self.unmeshed_services.contains(&f.service)
                    && f.ok > 0
                    && self.carried(f, dumps).tcp > 0
            });
            checks.push(match pass {
                Some(f) => (
                    true,
                    format!(
                        "passthrough reached {}: {} -> {} over plain TCP",
                        f.service, f.client, f.service
                    ),
                ),
                None => (
                    false,
                    "no passthrough reached a service outside the mesh".into(),
                ),
            });
        }
        for w in waypoints {
            checks.push(if w.up && w.total() > 0 {
                (
                    true,
                    format!("waypoint {} served {} requests", w.key, w.total()),
                )
            } else if w.up {
                (false, format!("waypoint {} served no request", w.key))
            } else {
                (
                    false,
                    format!("waypoint {}'s metrics did not answer", w.key),
                )
            });
        }
        checks.extend(self.split_checks(dumps, waypoints));
        let mut refused = Vec::new();
        for f in self.flows.iter().filter(|f| f.ok == 0 && f.failed > 0) {
            if let Some((what, policy)) = self.waypoint_refusal(f, dumps, waypoints) {
                match policy {
                    Some(p) => refused.push(format!(
                        "{} -> {} ({} requests, policy {p}, at {what})",
                        f.client, f.service, f.failed
                    )),
                    None => checks.push((
                        false,
                        format!(
                            "{} -> {} refused at {what}, but no policy named for it",
                            f.client, f.service
                        ),
                    )),
                }
                continue;
            }
            let carried = self.carried(f, dumps);
            if !carried.refusals.is_empty() {
                refused.push(format!(
                    "{} -> {} ({} requests, policy {})",
                    f.client,
                    f.service,
                    f.failed,
                    carried.refusals.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if !refused.is_empty() {
            checks.push((true, format!("refused by policy: {}", refused.join("; "))));
        }
        checks
    }

    /// For each flow a route governs and that was answered: did its pods answer in the
    /// shares the route says (90/10, a header pinned to one version)?
    fn split_checks(
        &self,
        dumps: &[ConfigDump],
        waypoints: &[WaypointView],
    ) -> Vec<(bool, String)> {
        let mut checks = Vec::new();
        for f in &self.flows {
            let (Some(expected), Some(_)) = (&f.expected, &f.waypoint) else {
                continue;
            };
            if self.waypoint_refusal(f, dumps, waypoints).is_some() {
                continue;
            }
            let answered: u64 = f.answered_by.values().sum();
            let what = if f.headers.is_empty() {
                format!("{} -> {}", f.client, f.service)
            } else {
                let headers: Vec<String> =
                    f.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{} -> {} with {}", f.client, f.service, headers.join(", "))
            };
            let timed_out = f.last_error.as_deref().is_some_and(|e| e.contains("[UT]"));
            if answered == 0 && expected.request_timeout_ms > 0 && timed_out {
                checks.push((
                    true,
                    format!(
                        "{what} timed out as route {} says (request timeout {} ms): {} requests cut off at the waypoint (504 UT)",
                        expected.route, expected.request_timeout_ms, f.failed
                    ),
                ));
                continue;
            }
            if answered == 0 {
                checks.push((
                    false,
                    format!("{what}: no answers to check route {} by", expected.route),
                ));
                continue;
            }
            let mut ok = true;
            let mut parts = Vec::new();
            let pods: BTreeSet<&String> =
                expected.shares.keys().chain(f.answered_by.keys()).collect();
            for pod in pods {
                let seen = f.answered_by.get(pod).copied().unwrap_or(0);
                let share = expected.shares.get(pod).copied().unwrap_or(0.0);
                ok &= routes::close_enough(seen, answered, share);
                parts.push(format!(
                    "{pod} {} (route {:.0}%)",
                    percent(seen, answered),
                    share * 100.0
                ));
            }
            let verdict = if ok { "split as" } else { "did NOT split as" };
            checks.push((
                ok,
                format!(
                    "{what} {verdict} route {} says: {} of {answered} answers",
                    expected.route,
                    parts.join(", ")
                ),
            ));
        }
        checks
    }
}
