//! The plugin binary the container runtime executes, one command per run: reads the
//! environment and stdin, prints a result or the spec's error JSON, and exits non-zero on error.

use std::io::{Read, Write};

use ambit_cni::plugin;
use ambit_cni::spec::{CniError, Code, Env, version_of};

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = version_of(&stdin);
    let outcome = read
        .map_err(|e| {
            CniError::new(
                Code::Io,
                "could not read the network configuration from stdin",
                e.to_string(),
            )
        })
        .and_then(|_| Env::read(|k| std::env::var(k).ok()))
        .and_then(|env| plugin::run(&env, &stdin));
    let (output, status) = match outcome {
        Ok(Some(result)) => (Some(result), 0),
        Ok(None) => (None, 0),
        Err(e) => (Some(e.to_json(&version)), 1),
    };
    if let Some(output) = output {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &output);
        let _ = out.write_all(b"\n");
    }
    std::process::exit(status);
}
