//! Test helpers shared by the controller's integration tests.

pub mod cluster;
pub mod fake_api;
pub mod grpc;
