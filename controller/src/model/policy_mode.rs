//! Observer mode: whether a namespace's authorization policies are enforced or only evaluated,
//! their would-be denials logged and counted by the proxies (`dry_run` on the wire). The
//! namespace label [`POLICY_MODE_LABEL`] where set, else the mesh-wide mode (enforce unless the
//! mesh file or the controller's `--policy-mode` says audit). A policy follows the label of the
//! namespace it lives in.

use std::fmt;
use std::str::FromStr;

use super::Labels;

/// Namespace label setting the mode of the namespace's authorization policies.
pub const POLICY_MODE_LABEL: &str = "ambit.io/policy-mode";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum PolicyMode {
    /// Policies decide.
    #[default]
    Enforce,
    /// Policies are evaluated and what they would deny is logged and counted; nothing is
    /// blocked by them.
    Audit,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
        }
    }

    /// The mode a namespace's labels give, or `default` when they do not set one. `Err` with the
    /// value when the label holds something else than `enforce` or `audit`.
    pub fn of_namespace(labels: &Labels, default: PolicyMode) -> Result<PolicyMode, String> {
        match labels.get(POLICY_MODE_LABEL) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| value.clone()),
        }
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a policy mode: use \"enforce\" or \"audit\"")]
pub struct PolicyModeError(String);

impl FromStr for PolicyMode {
    type Err = PolicyModeError;

    /// Exact, lowercase spellings only: a label that is almost `audit` must not quietly stop
    /// enforcing anything.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(PolicyMode::Enforce),
            "audit" => Ok(PolicyMode::Audit),
            _ => Err(PolicyModeError(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Option<&str>) -> Labels {
        value
            .map(|v| (POLICY_MODE_LABEL.to_string(), v.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn the_label_overrides_the_mesh_wide_mode_both_ways() {
        use PolicyMode::*;
        for default in [Enforce, Audit] {
            assert_eq!(
                PolicyMode::of_namespace(&labels(None), default),
                Ok(default)
            );
            assert_eq!(
                PolicyMode::of_namespace(&labels(Some("audit")), default),
                Ok(Audit)
            );
            assert_eq!(
                PolicyMode::of_namespace(&labels(Some("enforce")), default),
                Ok(Enforce)
            );
        }
        for bad in ["AUDIT", "Audit", "", "dry-run", "audit "] {
            assert_eq!(
                PolicyMode::of_namespace(&labels(Some(bad)), Enforce),
                Err(bad.to_string())
            );
        }
    }
}
