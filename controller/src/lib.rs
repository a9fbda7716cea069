//! Ambit controller: the mesh model, scoped config push and the certificate authority.

pub mod admin;
pub mod ca;
pub mod config;
pub mod dashboard;
pub mod grpc;
pub mod model;
pub mod push;
pub mod source;
pub mod telemetry;
pub mod waypoints;
