//! The local mesh file: one YAML file that describes both the mesh (for the controller) and the
//! local topology (for `ambit up`, which builds network-namespace nodes and pods from it). A file
//! is checked completely before anything uses it; every problem is reported with its line.

mod convert;
mod schema;
mod watch;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use convert::DEFAULT_TRUST_DOMAIN;
pub use schema::PodApp;
pub use watch::{FileWatcher, Watching, watch};

use crate::model::{Kind, MeshBuilder, MeshModel, ModelError, ResourceRef};

/// The mesh `controller` serves when no `--source` is given, and the default topology of
/// `ambit up`.
pub const EMBEDDED_MESH: &str = include_str!("../../../../examples/mesh.yaml");
pub const EMBEDDED_ORIGIN: &str = "embedded examples/mesh.yaml";

/// What `ambit up` builds: nodes, and the pods and waypoints placed on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalTopology {
    pub nodes: Vec<String>,
    pub pods: Vec<TopologyPod>,
    pub waypoints: Vec<TopologyWaypoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyPod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub addresses: Vec<IpAddr>,
    /// Ports the pod's app listens on.
    pub ports: Vec<u16>,
    pub app: Option<PodApp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyWaypoint {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub addresses: Vec<IpAddr>,
}

/// A mesh file that passed every check.
#[derive(Debug, Clone)]
pub struct MeshFile {
    pub model: MeshModel,
    pub topology: LocalTopology,
    /// The objects the model was built of, for the next version of the file to be applied to
    /// it as edits.
    pub objects: MeshBuilder,
}

/// One problem in a mesh file, at a line when the problem is about something written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<u64>,
    pub error: ModelError,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("could not read mesh file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not YAML, or not the mesh file's shape (unknown field, wrong type, malformed address).
    /// `message` is the parser's, which already shows the line and the offending text.
    #[error("{origin}: {message}")]
    Syntax {
        origin: String,
        line: Option<u64>,
        message: String,
    },
    #[error("{origin} does not describe a valid mesh:{}", list(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
    /// Certificates already issued chain to the running CA's trust domain, so it cannot change
    /// under them.
    #[error(
        "{origin} changes the trust domain from {from:?} to {to:?}: restart the controller to change trust domain"
    )]
    TrustDomainChanged {
        origin: String,
        from: String,
        to: String,
    },
}

/// The YAML parser's bounds, raised from its defaults for the size a mesh file may have: a
/// 50k-pod mesh is ~600k YAML nodes, over the default of 250k; these take ~300k pods. The bounds against expansion
/// attacks (aliases, nesting) stay as they are.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 4_000_000;
    budget.max_events = 8_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// A parse error as the file's reader should see it: a breached bound says what it means.
fn syntax_error(origin: &str, e: &serde_saphyr::Error) -> FileError {
    FileError::Syntax {
        origin: origin.into(),
        line: e.location().map(|l| l.line()),
        message: match e.without_snippet() {
            serde_saphyr::Error::Budget { breach, .. } => format!(
                "the file is larger than a mesh file may be ({breach:?}; about 300,000 pods at most): use the Kubernetes source for a mesh this size"
            ),
            _ => e.to_string(),
        },
    }
}

/// Parses and checks a mesh file's text. `origin` names the file in errors.
pub fn parse(text: &str, origin: &str) -> Result<MeshFile, FileError> {
    let file: schema::MeshFile = serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| syntax_error(origin, &e))?;
    let (builder, topology, lines, mut located) = convert::convert(file);
    let mut problems: Vec<Problem> = located
        .drain(..)
        .map(|(error, line)| Problem {
            line: Some(line),
            error,
        })
        .collect();
    // A policy whose L7 fields no waypoint can check where it applies is an error here (a human
    // fixes a file); Kubernetes keeps it, failed closed by ztunnel, and reports it.
    let unenforced = |model: &MeshModel| -> Vec<Problem> {
        let error = |u: crate::model::UnenforcedL7| ModelError::InvalidPolicy {
            subject: ResourceRef::new(Kind::AuthorizationPolicy, u.policy.to_string()),
            reason: u.reason(),
        };
        let problems = model.unenforced_l7_policies().into_iter().map(error);
        problems
            .map(|error| Problem {
                line: lines.line_of(&error),
                error,
            })
            .collect()
    };
    let objects = builder.clone();
    match builder.build() {
        Ok(model) => {
            problems.extend(unenforced(&model));
            if problems.is_empty() {
                return Ok(MeshFile {
                    model,
                    topology,
                    objects,
                });
            }
            problems.sort_by_key(|p| p.line);
            Err(FileError::Invalid {
                origin: origin.into(),
                problems,
            })
        }
        Err(errors) => {
            problems.extend(errors.into_iter().map(|error| Problem {
                line: lines.line_of(&error),
                error,
            }));
            problems.sort_by_key(|p| p.line);
            Err(FileError::Invalid {
                origin: origin.into(),
                problems,
            })
        }
    }
}

/// Reads and checks the mesh file at `path`.
pub fn load(path: &Path) -> Result<MeshFile, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests;
