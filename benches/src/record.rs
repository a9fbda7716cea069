//! A bench run's raw samples and per-round figures: medians for its summary, and one flat JSON
//! object for `--json`, so runs can be compared by a script.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::median;
use crate::procfs::cpu_seconds;

#[derive(Debug, Default)]
pub struct Record {
    samples: Vec<Value>,
    rounds: BTreeMap<String, Vec<f64>>,
    fields: Map<String, Value>,
}

impl Record {
    /// One raw measurement, as a flat object (its round, path, test and what was measured).
    pub fn sample(&mut self, sample: Value) {
        self.samples.push(sample);
    }

    /// A sample with `cpu_s_<name>` added for each process's CPU seconds from [`cpu_over`].
    pub fn sample_with_cpu(&mut self, mut sample: Value, cpu: &[(String, f64)]) {
        if let Some(map) = sample.as_object_mut() {
            for (name, seconds) in cpu {
                map.insert(format!("cpu_s_{name}"), (*seconds).into());
            }
        }
        self.samples.push(sample);
    }

    /// One round's value of `figure`.
    pub fn add(&mut self, figure: &str, value: f64) {
        self.rounds
            .entry(figure.to_string())
            .or_default()
            .push(value);
    }

    /// The median over the rounds of `figure`; NaN if it has none.
    pub fn median(&self, figure: &str) -> f64 {
        self.rounds
            .get(figure)
            .map_or(f64::NAN, |v| median(v.clone()))
    }

    /// A field of the JSON object beside the medians: a setting, a ratio, a single reading.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_string(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The fields, each figure's median under the figure's name (NaN becomes null), and every
    /// sample in order under `samples`.
    pub fn to_json(&self) -> Value {
        let mut json = self.fields.clone();
        for figure in self.rounds.keys() {
            json.insert(figure.clone(), self.median(figure).into());
        }
        json.insert("samples".into(), Value::Array(self.samples.clone()));
        Value::Object(json)
    }
}

/// Runs `f` and returns its result with the CPU seconds each of `procs` (a name for JSON keys,
/// a pid) spent meanwhile.
pub fn cpu_over<T, E>(
    procs: &[(String, u32)],
    f: impl FnOnce() -> Result<T, E>,
) -> Result<(T, Vec<(String, f64)>), E> {
    let before: Vec<f64> = procs.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let out = f()?;
    let spent = procs
        .iter()
        .zip(before)
        .map(|((name, pid), b)| (name.clone(), cpu_seconds(*pid) - b))
        .collect();
    Ok((out, spent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_fields_and_samples() {
        let mut r = Record::default();
        for v in [3.0, 1.0, 2.0] {
            r.add("rps_mesh", v);
        }
        r.set("rounds", 3);
        r.sample(serde_json::json!({"round": 0, "rps": 3.0}));
        let me = [("me".to_string(), std::process::id())];
        let ((), cpu) = cpu_over(&me, || Ok::<_, ()>(())).unwrap();
        r.sample_with_cpu(serde_json::json!({"round": 1}), &cpu);
        assert_eq!(r.median("rps_mesh"), 2.0);
        assert!(r.median("rps_direct").is_nan());
        let json = r.to_json();
        assert_eq!(json["rps_mesh"], 2.0);
        assert_eq!(json["rounds"], 3);
        assert_eq!(json["samples"][0]["rps"], 3.0);
        assert!(json["samples"][1]["cpu_s_me"].as_f64().unwrap() >= 0.0);
        r.add("empty", f64::NAN);
        assert!(r.to_json()["empty"].is_null());
    }
}
