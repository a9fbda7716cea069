//! What the proxies report (`ambit.telemetry.v1`) and what the controller makes of it: the
//! service graph, per-workload and per-service stats, taps and recent failures, served as JSON
//! on the observation API ([`api`]).

pub mod api;
