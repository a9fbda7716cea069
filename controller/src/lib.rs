//! Ambit controller: the mesh model, scoped config push, the certificate authority and the CLI.

pub mod admin;
pub mod ca;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod local;
pub mod model;
pub mod push;
pub mod source;
pub mod waypoints;
