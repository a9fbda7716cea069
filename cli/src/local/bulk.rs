//! A large config for a running local mesh: pods added to its mesh file that exist only in the
//! config (no network namespace is made for them, nothing runs in them), so a test or a bench
//! can make the controller push tens of thousands of workloads to a ztunnel while real traffic
//! flows.

use std::fmt::Write;

/// The most bulk pods one namespace can hold: each has its own address in 10.250.0.0/16.
pub const MAX_BULK_PODS: usize = 250 * 255;

/// `mesh` (a mesh file's text, with `namespaces:` and `pods:` lists) with a new meshed
/// namespace `namespace` holding `count` pods scheduled on `node`: the pods a node's ztunnel
/// is always sent. Fails if the file has no such lists or `count` exceeds [`MAX_BULK_PODS`].
pub fn with_bulk_pods(
    mesh: &str,
    namespace: &str,
    node: &str,
    count: usize,
) -> Result<String, String> {
    if count > MAX_BULK_PODS {
        return Err(format!(
            "at most {MAX_BULK_PODS} bulk pods fit their address range"
        ));
    }
    let mut pods = String::new();
    for i in 0..count {
        let _ = writeln!(
            pods,
            "  - {{name: bulk-{i}, namespace: {namespace}, node: {node}, serviceAccount: bulk, ipv4: 10.250.{}.{}}}",
            i / 250,
            i % 250 + 1
        );
    }
    let namespace_entry =
        format!("  - name: {namespace}\n    labels: {{ambit.io/dataplane-mode: ambient}}\n");
    let text = insert_after_line(mesh, "namespaces:", &namespace_entry)?;
    insert_after_line(&text, "pods:", &pods)
}

/// `text` with `insert` right after the first line that is exactly `line`.
fn insert_after_line(text: &str, line: &str, insert: &str) -> Result<String, String> {
    let mut at = 0;
    for l in text.split_inclusive('\n') {
        at += l.len();
        if l.trim_end() == line {
            let mut out = String::with_capacity(text.len() + insert.len());
            out.push_str(&text[..at]);
            if !l.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(insert);
            out.push_str(&text[at..]);
            return Ok(out);
        }
    }
    Err(format!("the mesh file has no top-level '{line}' list"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mesh_takes_50k_bulk_pods_and_still_parses() {
        let mesh = include_str!("../../../examples/mesh.yaml");
        let before = ambit_controller::source::file::parse(mesh, "mesh.yaml").unwrap();
        let text = with_bulk_pods(mesh, "bulk", "node-a", 50_000).unwrap();
        let after = ambit_controller::source::file::parse(&text, "mesh.yaml").unwrap();
        assert_eq!(
            after.topology.pods.len(),
            before.topology.pods.len() + 50_000
        );
        let last = after
            .topology
            .pods
            .iter()
            .find(|p| p.name == "bulk-49999")
            .unwrap();
        assert_eq!(last.node, "node-a");
        assert_eq!(
            last.addresses,
            ["10.250.199.250".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(with_bulk_pods("trustDomain: x\n", "bulk", "node-a", 1).is_err());
        assert!(with_bulk_pods(mesh, "bulk", "node-a", MAX_BULK_PODS + 1).is_err());
    }
}
