//! Test helpers shared by the controller's integration tests.

pub mod cluster;
/// The fake API server is shared with the CNI node agent's tests.
pub use ambit_fake_kube_api as fake_api;
pub mod grpc;
