//! Ambit's shared wire code, used by every component: the gRPC APIs between them ([`api`]), the
//! TLS they travel in ([`control`]) and how a large discovery response is split and put back
//! together ([`response_parts`]), workload identity ([`identity`]), HBONE tunnels ([`hbone`])
//! and graceful shutdown ([`drain`]).

pub mod api;
pub mod control;
pub mod drain;
pub mod hbone;
pub mod identity;
pub mod response_parts;
