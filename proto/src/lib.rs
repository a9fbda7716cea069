//! Ambit's shared wire code, used by every component: the gRPC APIs between them ([`api`]) and
//! the TLS they travel in ([`control`]), workload identity ([`identity`]), HBONE tunnels
//! ([`hbone`]) and graceful shutdown ([`drain`]).

pub mod api;
pub mod control;
pub mod drain;
pub mod hbone;
pub mod identity;
