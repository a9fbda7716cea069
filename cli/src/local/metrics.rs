//! Reading the Prometheus text the mesh's proxies serve on /metrics: the samples of one metric
//! with their labels, for the live summary and the tests.

use std::collections::BTreeMap;

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of metric `name` in a Prometheus text exposition.
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let end = inner.rfind('}')?;
                    (parse_labels(&inner[..end])?, &inner[end + 1..])
                }
                None if rest.starts_with(' ') => (BTreeMap::new(), rest),
                None => return None,
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some(Sample { labels, value })
        })
        .collect()
}

/// The sum of metric `name`'s samples whose labels hold every pair of `with`.
pub fn sum(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim_start_matches([',', ' ']);
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches([',', ' ']);
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# HELP istio_requests_total x\n\
            istio_requests_total{reporter=\"waypoint\",destination_service=\"a.b\",response_code=\"503\",response_flags=\"URX\"} 7\n\
            istio_requests_total_other{reporter=\"waypoint\"} 1\n\
            istio_requests_total{reporter=\"waypoint\",grpc_response_status=\"14\",x=\"q\\\"uote\"} 2.0\n";
        let s = samples(text, "istio_requests_total");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["response_flags"], "URX");
        assert_eq!(s[0].value, 7.0);
        assert_eq!(s[1].labels["grpc_response_status"], "14");
        assert_eq!(s[1].labels["x"], "q\"uote");
        assert_eq!(
            sum(text, "istio_requests_total", &[("reporter", "waypoint")]),
            9.0
        );
        assert_eq!(
            sum(text, "istio_requests_total", &[("response_code", "503")]),
            7.0
        );
    }
}
