//! The redirect rules inside a pod's namespace (iptables, nat table, IPv4 and IPv6), in the
//! manner of Istio's in-pod mode:
//! - outbound TCP from the pod goes to ztunnel's 15001, except ztunnel's own (marked) traffic
//!   and loopback;
//! - inbound TCP to the pod goes to 15006 (plaintext from outside the mesh), except HBONE on
//!   15008, which ztunnel's listener there takes as it is.
//!
//! Rules go in our own chains, installed and removed with one `iptables-restore` each, so a
//! pod is never left half-configured and removal leaves nothing of ours behind.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use super::{CaptureError, PodNetns};

/// SO_MARK on every socket ztunnel opens in a pod, so the rules let them through (Istio's
/// value, so both can share tooling).
pub const MARK: u32 = 0x539;
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = ambit_proto::hbone::HBONE_PORT;

const CHAINS: [(&str, &str); 2] = [
    ("PREROUTING", "AMBIT_PREROUTING"),
    ("OUTPUT", "AMBIT_OUTPUT"),
];

fn install_script(exclude_ports: &[u16]) -> String {
    let mut s = String::from(
        "*nat\n\
         :AMBIT_PREROUTING - [0:0]\n\
         :AMBIT_OUTPUT - [0:0]\n\
         -A PREROUTING -j AMBIT_PREROUTING\n\
         -A OUTPUT -j AMBIT_OUTPUT\n\
         -A AMBIT_PREROUTING -i lo -j RETURN\n",
    );
    // Excluded ports bypass ztunnel both ways, as Istio's excludeInboundPorts and
    // excludeOutboundPorts annotations do.
    for port in exclude_ports {
        s.push_str(&format!(
            "-A AMBIT_PREROUTING -p tcp --dport {port} -j RETURN\n"
        ));
    }
    s.push_str(&format!(
        "-A AMBIT_PREROUTING -p tcp --dport {HBONE_PORT} -j RETURN\n\
         -A AMBIT_PREROUTING -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}\n\
         -A AMBIT_OUTPUT -m mark --mark {MARK:#x}/0xfff -j RETURN\n\
         -A AMBIT_OUTPUT -o lo -j RETURN\n"
    ));
    for port in exclude_ports {
        s.push_str(&format!(
            "-A AMBIT_OUTPUT -p tcp --dport {port} -j RETURN\n"
        ));
    }
    s.push_str(&format!(
        "-A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}\n\
         COMMIT\n"
    ));
    s
}

fn remove_script() -> String {
    let mut s = String::from("*nat\n");
    for (parent, chain) in CHAINS {
        s.push_str(&format!("-D {parent} -j {chain}\n"));
    }
    for (_, chain) in CHAINS {
        s.push_str(&format!("-F {chain}\n-X {chain}\n"));
    }
    s.push_str("COMMIT\n");
    s
}

/// Installs the redirect rules in the pod's namespace, replacing any left by an earlier run.
/// Connections to `exclude_ports` (either way) are left alone.
pub fn install(netns: &PodNetns, exclude_ports: &[u16]) -> Result<(), CaptureError> {
    for tool in ["iptables-restore", "ip6tables-restore"] {
        if has_our_chains(netns, tool)? {
            restore(netns, tool, &remove_script())?;
        }
        restore(netns, tool, &install_script(exclude_ports))?;
    }
    Ok(())
}

/// Removes our rules from the pod's namespace; a namespace without them is left as it is.
pub fn remove(netns: &PodNetns) -> Result<(), CaptureError> {
    for tool in ["iptables-restore", "ip6tables-restore"] {
        if has_our_chains(netns, tool)? {
            restore(netns, tool, &remove_script())?;
        }
    }
    Ok(())
}

/// Whether the pod's nat table holds any chain of ours.
pub fn has_our_chains(netns: &PodNetns, restore_tool: &str) -> Result<bool, CaptureError> {
    let save_tool = restore_tool.replace("-restore", "-save");
    let out = run_in(netns, &save_tool, &["-t", "nat"], None)?;
    Ok(out.contains("AMBIT_"))
}

fn restore(netns: &PodNetns, tool: &str, script: &str) -> Result<(), CaptureError> {
    run_in(netns, tool, &["--noflush"], Some(script)).map(|_| ())
}

/// Runs an iptables tool inside the pod's namespace (the child enters it before exec).
fn run_in(
    netns: &PodNetns,
    tool: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CaptureError> {
    let fd = netns
        .file()
        .try_clone()
        .map_err(|source| CaptureError::OpenNetns {
            path: netns.path().into(),
            source,
        })?;
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|source| CaptureError::RunTool {
        tool: tool.into(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| CaptureError::RunTool {
                tool: tool.into(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::RunTool {
            tool: tool.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(CaptureError::ToolFailed {
            tool: tool.into(),
            netns: netns.path().into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of one chain, in order.
    fn chain<'a>(script: &'a str, name: &str) -> Vec<&'a str> {
        let prefix = format!("-A {name} ");
        script
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    #[test]
    fn install_rules() {
        // (excluded ports, expected AMBIT_PREROUTING, expected AMBIT_OUTPUT)
        let table: [(&[u16], &[&str], &[&str]); 2] = [
            (
                &[],
                &[
                    "-i lo -j RETURN",
                    "-p tcp --dport 15008 -j RETURN",
                    "-p tcp -j REDIRECT --to-ports 15006",
                ],
                &[
                    "-m mark --mark 0x539/0xfff -j RETURN",
                    "-o lo -j RETURN",
                    "-p tcp -j REDIRECT --to-ports 15001",
                ],
            ),
            (
                &[15099, 22],
                &[
                    "-i lo -j RETURN",
                    "-p tcp --dport 15099 -j RETURN",
                    "-p tcp --dport 22 -j RETURN",
                    "-p tcp --dport 15008 -j RETURN",
                    "-p tcp -j REDIRECT --to-ports 15006",
                ],
                &[
                    "-m mark --mark 0x539/0xfff -j RETURN",
                    "-o lo -j RETURN",
                    "-p tcp --dport 15099 -j RETURN",
                    "-p tcp --dport 22 -j RETURN",
                    "-p tcp -j REDIRECT --to-ports 15001",
                ],
            ),
        ];
        for (exclude, prerouting, output) in table {
            let script = install_script(exclude);
            assert_eq!(
                chain(&script, "AMBIT_PREROUTING"),
                prerouting,
                "{exclude:?}"
            );
            assert_eq!(chain(&script, "AMBIT_OUTPUT"), output, "{exclude:?}");
            // Hooked into the built-in chains once each, and committed as one transaction.
            assert_eq!(chain(&script, "PREROUTING"), ["-j AMBIT_PREROUTING"]);
            assert_eq!(chain(&script, "OUTPUT"), ["-j AMBIT_OUTPUT"]);
            assert!(script.starts_with("*nat\n") && script.ends_with("COMMIT\n"));
        }
    }

    #[test]
    fn removal_unhooks_flushes_and_deletes_both_chains() {
        let script = remove_script();
        for line in [
            "-D PREROUTING -j AMBIT_PREROUTING",
            "-D OUTPUT -j AMBIT_OUTPUT",
            "-F AMBIT_PREROUTING",
            "-X AMBIT_PREROUTING",
            "-F AMBIT_OUTPUT",
            "-X AMBIT_OUTPUT",
        ] {
            assert!(
                script.lines().any(|l| l == line),
                "missing {line}:\n{script}"
            );
        }
        // Unhooked before deleted: iptables refuses to delete a chain still referenced.
        let unhook = script.find("-D OUTPUT").unwrap();
        let delete = script.find("-X AMBIT_OUTPUT").unwrap();
        assert!(unhook < delete);
    }
}
