//! Test helpers shared by the controller's integration tests.
#![allow(dead_code)]

pub mod cluster;
pub mod fake_api;
pub mod grpc;
