//! Running iproute2's `ip`.
//!
//! The testbed drives `ip` rather than speaking rtnetlink itself: building a topology is a few
//! dozen well-known commands run once per test, `ip` is on every Linux host, and a failing step
//! can be reproduced by pasting the command from the error message. A netlink crate would buy
//! speed nobody needs here at the cost of a large dependency and opaque errors.

use std::io;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Runs `ip [-n <netns>] <args>` and returns its stdout.
pub(crate) fn ip(netns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(netns) = netns {
        full.extend(["-n", netns]);
    }
    full.extend_from_slice(args);
    tracing::debug!(command = %command_line(&full), "running ip");
    let output = Command::new("ip")
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                Error::IpToolMissing { source }
            }
            _ => Error::Ip {
                command: command_line(&full),
                stderr: source.to_string(),
                hint: "",
            },
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = output.status.to_string();
    }
    let hint = hint_for(&stderr);
    Err(Error::Ip {
        command: command_line(&full),
        stderr,
        hint,
    })
}

/// The `ip ...` command line as a user would type it.
pub(crate) fn command_line(args: &[&str]) -> String {
    let mut line = String::from("ip");
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// True when an `ip` failure only says the object is already gone, which teardown treats as
/// success: another cleanup (or the kernel) got there first.
pub(crate) fn is_already_gone(err: &Error) -> bool {
    match err {
        Error::Ip { stderr, .. } => {
            stderr.contains("No such file or directory")
                || stderr.contains("Cannot find device")
                || stderr.contains("does not exist")
        }
        _ => false,
    }
}

fn hint_for(stderr: &str) -> &'static str {
    if stderr.contains("File exists") {
        "; it is probably left over from a crashed run: `ambit down` \
         (ambit_testbed::cleanup_leftovers) removes those"
    } else if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        "; run as root (it needs CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    } else if stderr.contains("Unknown device type") || stderr.contains("not supported") {
        "; the kernel lacks veth or bridge support: `modprobe veth bridge`"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_point_at_the_fix() {
        assert!(hint_for("RTNETLINK answers: File exists").contains("ambit down"));
        assert!(
            hint_for("mount --make-shared /run/netns failed: Operation not permitted")
                .contains("root")
        );
        assert_eq!(hint_for("Error: argument \"x\" is wrong"), "");
    }

    #[test]
    fn already_gone_is_recognised() {
        let gone = Error::Ip {
            command: "ip netns del ambit-x".into(),
            stderr:
                "Cannot remove namespace file \"/var/run/netns/ambit-x\": No such file or directory"
                    .into(),
            hint: "",
        };
        assert!(is_already_gone(&gone));
        let busy = Error::Ip {
            command: "ip link del ambit-x".into(),
            stderr: "RTNETLINK answers: Device or resource busy".into(),
            hint: "",
        };
        assert!(!is_already_gone(&busy));
    }
}
