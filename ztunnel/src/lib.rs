//! Ambit ztunnel: the per-node L4 proxy. It captures each meshed pod's traffic inside the pod's
//! own network namespace ([`capture`]), carries it over HBONE ([`proxy`]), enforces L4
//! authorization against what the controller sent ([`state`], [`xds`]), and reports TCP
//! metrics ([`metrics`]) and its config ([`admin`]).

pub mod capture;
pub mod connections;
pub mod metrics;
pub mod state;
