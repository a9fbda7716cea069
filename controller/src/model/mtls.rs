//! Whether a meshed workload refuses plaintext (Istio's PeerAuthentication mode): the namespace
//! label [`MTLS_MODE_LABEL`] where set, else the mesh-wide default, which is permissive as in
//! Istio. The label overrides the default both ways, as a namespace PeerAuthentication overrides
//! the mesh one.

use std::fmt;
use std::str::FromStr;

use ambit_proto::api::workload as pb;

use super::Labels;

/// Namespace label setting the mTLS mode of the namespace's meshed workloads.
pub const MTLS_MODE_LABEL: &str = "ambit.io/mtls-mode";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MtlsMode {
    /// Plaintext from outside the mesh is still accepted (identity-based rules cannot match it).
    #[default]
    Permissive,
    /// Only mTLS (HBONE) is accepted.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }

    pub fn to_proto(self) -> pb::MtlsMode {
        match self {
            MtlsMode::Permissive => pb::MtlsMode::Permissive,
            MtlsMode::Strict => pb::MtlsMode::Strict,
        }
    }

    /// The mode a namespace's labels give, or `default` when they do not set one. `Err` with the
    /// value when the label holds something else than `strict` or `permissive`.
    pub fn of_namespace(labels: &Labels, default: MtlsMode) -> Result<MtlsMode, String> {
        match labels.get(MTLS_MODE_LABEL) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| value.clone()),
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an mTLS mode: use \"strict\" or \"permissive\"")]
pub struct MtlsModeError(String);

impl FromStr for MtlsMode {
    type Err = MtlsModeError;

    /// Exact, lowercase spellings only, like the other `ambit.io/` label values: a label that
    /// is almost `strict` must not quietly count as something.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permissive" => Ok(MtlsMode::Permissive),
            "strict" => Ok(MtlsMode::Strict),
            _ => Err(MtlsModeError(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Option<&str>) -> Labels {
        value
            .map(|v| (MTLS_MODE_LABEL.to_string(), v.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn the_label_overrides_the_default_both_ways() {
        use MtlsMode::*;
        for default in [Permissive, Strict] {
            assert_eq!(MtlsMode::of_namespace(&labels(None), default), Ok(default));
            assert_eq!(
                MtlsMode::of_namespace(&labels(Some("strict")), default),
                Ok(Strict)
            );
            assert_eq!(
                MtlsMode::of_namespace(&labels(Some("permissive")), default),
                Ok(Permissive)
            );
        }
        for bad in ["STRICT", "Strict", "", "disable", "strict "] {
            assert_eq!(
                MtlsMode::of_namespace(&labels(Some(bad)), Strict),
                Err(bad.to_string())
            );
        }
        assert_eq!(Strict.to_proto(), pb::MtlsMode::Strict);
        assert_eq!(MtlsMode::default(), Permissive);
    }
}
