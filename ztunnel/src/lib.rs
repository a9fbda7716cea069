//! Ambit ztunnel: the per-node L4 proxy. It captures each meshed pod's traffic inside the pod's
//! own network namespace ([`capture`]), carries it over HBONE ([`proxy`]), enforces L4
//! authorization against what the controller sent ([`state`], [`xds`]), and reports TCP
//! metrics ([`metrics`]) and its config ([`admin`]).

pub mod admin;
pub mod app;
pub mod ca_client;
pub mod capture;
pub mod config;
pub mod connections;
pub mod controller_link;
pub mod local_config;
pub mod metrics;
pub mod node_agent;
pub mod pods;
pub mod proxy;
pub mod state;
pub mod xds;
