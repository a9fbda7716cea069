//! Ambit waypoint: the per-namespace L7 proxy (routing, splits, retries, timeouts, L7
//! authorization). Being built: the modules here are its parts, not yet a binary; ztunnel
//! refuses traffic to services that use a waypoint until one runs.

pub mod detect;
pub mod filters;
pub mod route;
