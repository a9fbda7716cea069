//! Ambit ztunnel: the per-node L4 proxy. It captures each meshed pod's traffic inside the pod's
//! own network namespace ([`capture`]), carries it over HBONE ([`proxy`]), enforces L4
//! authorization against what the controller sent ([`xds`], the state and discovery client of
//! `ambit_discovery`), and reports TCP metrics ([`metrics`]) and its config ([`admin`]). Config, admin and the node
//! agent run on a runtime of their own ([`control`]), apart from the data path's workers
//! ([`workers`]: a single-threaded runtime per thread, each connection on one of them).

pub mod admin;
pub mod app;
pub mod capture;
pub mod config;
pub mod connections;
pub mod control;
pub mod local_config;
pub mod metrics;
pub mod node_agent;
pub mod pods;
pub mod proxy;
pub mod workers;
pub mod xds;
