//! Reading the Prometheus text exposition the proxies send (format 0.0.4): samples only.
//! Comments (`# HELP`, `# TYPE`) are skipped; a histogram arrives as its `_bucket{le=..}`,
//! `_sum` and `_count` samples, which is all the rates and quantiles need.
//!
//! Hand-written rather than `prometheus-parse`: that crate's line regexes take no `}` or escaped
//! quote inside a label value and refuse an empty label set in braces, all of which a proxy
//! may write (paths, empty `grpc_response_status`), and it pulls in chrono for timestamps we
//! ignore.

pub type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written.
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the metrics text is not a Prometheus sample ({reason}): {text:?}")]
pub struct ExpositionError {
    pub line: usize,
    pub reason: &'static str,
    /// The line, cut to 120 characters.
    pub text: String,
}

/// Every sample of `text`, or the first line that is not one. `max_samples` bounds what one
/// report may make the controller hold.
pub fn parse(text: &str, max_samples: usize) -> Result<Vec<Sample>, ExpositionError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason| ExpositionError {
            line: i + 1,
            reason,
            text: line.chars().take(120).collect(),
        };
        if samples.len() == max_samples {
            return Err(error("more samples than the controller keeps per report"));
        }
        samples.push(parse_line(line).map_err(error)?);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or("the value is not a number")?;
    // An optional timestamp; the report's own time is what counts.
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err("the timestamp is not an integer");
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// The labels after `{`, and what follows the closing `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("a label without =")?;
        let key = s[..eq].trim();
        if !valid_name(key) {
            return Err("bad label name");
        }
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("a label value not in quotes")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("a label value without its closing quote"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("a label value without its closing quote"),
            }
        };
        labels.push((key.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by commas");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Sample, &'static str> {
        parse_line(line)
    }

    #[test]
    fn sample_lines_parse() {
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let cases: Vec<(&str, &str, Labels, f64)> = vec![
            ("up 1", "up", vec![], 1.0),
            ("up{} 2", "up", vec![], 2.0),
            (
                "a_total{x=\"1\"} 3 1700000000000",
                "a_total",
                l(&[("x", "1")]),
                3.0,
            ),
            (
                "b{x=\"\",y=\"two words\",} 0.5",
                "b",
                l(&[("x", ""), ("y", "two words")]),
                0.5,
            ),
            (
                r#"c{p="/a}b",q="say \"hi\"\\",r="l1\nl2"} 7"#,
                "c",
                l(&[("p", "/a}b"), ("q", "say \"hi\"\\"), ("r", "l1\nl2")]),
                7.0,
            ),
            (
                "h_bucket{le=\"+Inf\"} 9",
                "h_bucket",
                l(&[("le", "+Inf")]),
                9.0,
            ),
            ("g -Inf", "g", vec![], f64::NEG_INFINITY),
            ("big 1.5e3", "big", vec![], 1500.0),
        ];
        for (line, name, labels, value) in cases {
            let s = one(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                (s.name.as_str(), s.labels, s.value),
                (name, labels, value),
                "{line}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_with_the_line() {
        for (line, reason) in [
            ("up", "no value"),
            ("up x", "the value is not a number"),
            ("9up 1", "bad metric name"),
            ("up{x=1} 1", "a label value not in quotes"),
            ("up{x=\"1} 1", "a label value without its closing quote"),
            ("up{x=\"1\" y=\"2\"} 1", "labels not separated by commas"),
            ("up 1 soon", "the timestamp is not an integer"),
            ("up 1 2 3", "text after the timestamp"),
        ] {
            assert_eq!(one(line), Err(reason), "{line}");
        }
        let err = parse("# HELP up yes\nup 1\n\n<html>\n", 10).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.to_string().contains("<html>"), "{err}");
        assert_eq!(parse("a 1\nb 2\n", 2).unwrap().len(), 2);
        assert!(parse("a 1\nb 2\nc 3\n", 2).is_err());
    }
}
