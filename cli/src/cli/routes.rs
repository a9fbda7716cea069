//! What the mesh file's L7 routes say should happen to the live summary's traffic: for a
//! service a route governs, the share of requests each server pod should answer, for plain
//! requests and for each header a rule pins (`x-canary: 1` to reviews-v2). `ambit up` drives a
//! flow per pinned header too, and its final checks compare what the pods answered with this.

use std::collections::BTreeMap;

use ambit_proto::api::route as rpb;

use ambit_controller::model::MeshModel;

/// One kind of request to one service, and who should answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// `<namespace>/<name>`.
    pub service: String,
    /// Request headers that select the rule (none: a plain request).
    pub headers: Vec<(String, String)>,
    /// Server pod name -> share of the answers (summing to 1).
    pub shares: BTreeMap<String, f64>,
    /// `<namespace>/<name>` of the route.
    pub route: String,
    /// The rule's `timeouts.request` in ms; 0: none.
    pub request_timeout_ms: u64,
}

/// Each service's expectations: for plain requests (the first rule that takes a `GET /`
/// without headers) and for every rule that asks for exact header values and nothing else.
pub fn expectations(model: &MeshModel) -> Vec<Expectation> {
    let mut out: Vec<Expectation> = Vec::new();
    for route in model.routes() {
        let key = format!("{}/{}", route.namespace, route.name);
        for parent in &route.parents {
            let Some(service) = model.service_by_hostname(&parent.service) else {
                continue;
            };
            let service = format!("{}/{}", service.service.namespace, service.service.name);
            for rule in &route.rules {
                let Some(shares) = shares(model, rule) else {
                    continue;
                };
                let mut wanted = |headers: Vec<(String, String)>| {
                    if !out
                        .iter()
                        .any(|e| e.service == service && e.headers == headers)
                    {
                        out.push(Expectation {
                            service: service.clone(),
                            headers,
                            shares: shares.clone(),
                            route: key.clone(),
                            request_timeout_ms: rule.request_timeout_ms,
                        });
                    }
                };
                if rule.matches.is_empty() {
                    wanted(Vec::new());
                }
                for m in &rule.matches {
                    if !any_path(m.path.as_ref())
                        || !m.method.is_empty()
                        || !m.query_params.is_empty()
                    {
                        continue;
                    }
                    let exact: Option<Vec<(String, String)>> = m
                        .headers
                        .iter()
                        .map(|h| match h.value.as_ref().and_then(|v| v.kind.as_ref()) {
                            Some(rpb::value_match::Kind::Exact(v)) => {
                                Some((h.name.clone(), v.clone()))
                            }
                            _ => None,
                        })
                        .collect();
                    if let Some(headers) = exact {
                        wanted(headers);
                    }
                }
            }
        }
    }
    out
}

/// Whether a path match takes every path (unset, or the prefix "/").
fn any_path(path: Option<&rpb::PathMatch>) -> bool {
    match path.and_then(|p| p.kind.as_ref()) {
        None => true,
        Some(rpb::path_match::Kind::Prefix(p)) => p == "/" || p.is_empty(),
        Some(_) => false,
    }
}

/// The share of a rule's requests each pod should answer: a backend's weight over the rule's,
/// split evenly over the backend service's endpoints. `None` when nothing would answer.
fn shares(model: &MeshModel, rule: &rpb::RouteRule) -> Option<BTreeMap<String, f64>> {
    let total: f64 = rule.backends.iter().map(|b| f64::from(b.weight)).sum();
    if total <= 0.0 {
        return None;
    }
    let mut shares = BTreeMap::new();
    for backend in &rule.backends {
        let entry = model.service_by_hostname(&backend.service)?;
        let pods: Vec<String> = entry
            .endpoints
            .iter()
            .filter_map(|k| model.workload(k))
            .map(|w| w.pod.name.clone())
            .collect();
        if pods.is_empty() {
            continue;
        }
        for pod in &pods {
            *shares.entry(pod.clone()).or_insert(0.0) +=
                f64::from(backend.weight) / total / pods.len() as f64;
        }
    }
    (!shares.is_empty()).then_some(shares)
}

/// Whether `seen` answers out of `n` are close enough to `share`: within four standard
/// deviations of a fair draw, and never tighter than 3 points (so a short run still passes and
/// a wrong split, e.g. 50/50 for 90/10, fails once a few hundred requests are in).
pub fn close_enough(seen: u64, n: u64, share: f64) -> bool {
    if n == 0 {
        return false;
    }
    let observed = seen as f64 / n as f64;
    let sigma = (share * (1.0 - share) / n as f64).sqrt();
    (observed - share).abs() <= (4.0 * sigma).max(0.03)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_controller::source::file;

    #[test]
    fn the_default_mesh_splits_reviews_and_pins_the_canary() {
        let mesh = file::parse(file::EMBEDDED_MESH, file::EMBEDDED_ORIGIN).expect("it parses");
        let all = expectations(&mesh.model);
        let plain = all
            .iter()
            .find(|e| e.service == "demo/reviews" && e.headers.is_empty())
            .expect("a plain expectation for reviews");
        assert!((plain.shares["reviews-v1"] - 0.9).abs() < 1e-9, "{plain:?}");
        assert!((plain.shares["reviews-v2"] - 0.1).abs() < 1e-9, "{plain:?}");
        let canary = all
            .iter()
            .find(|e| e.service == "demo/reviews" && e.headers.iter().any(|h| h.0 == "x-canary"))
            .expect("a header-pinned expectation for reviews");
        assert_eq!(canary.headers, [("x-canary".to_string(), "1".to_string())]);
        assert_eq!(canary.shares.keys().collect::<Vec<_>>(), ["reviews-v2"]);
        assert_eq!(canary.request_timeout_ms, 0);
        let slow = all
            .iter()
            .find(|e| e.headers == [("x-echo-delay-ms".to_string(), "300".to_string())])
            .expect("the demo's slow request");
        assert_eq!(slow.request_timeout_ms, 100);
        assert_eq!(slow.shares.keys().collect::<Vec<_>>(), ["reviews-v1"]);
    }

    #[test]
    fn closeness_scales_with_the_sample() {
        assert!(close_enough(31, 300, 0.1));
        assert!(!close_enough(150, 300, 0.1));
        assert!(close_enough(200, 200, 1.0));
        assert!(!close_enough(190, 200, 1.0));
        assert!(!close_enough(0, 0, 0.1));
    }
}
