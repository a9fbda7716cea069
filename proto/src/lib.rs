//! Ambit's shared wire code, used by every component: the gRPC APIs between them ([`api`]),
//! workload identity ([`identity`]), HBONE tunnels ([`hbone`]) and graceful shutdown
//! ([`drain`]).

pub mod api;
pub mod drain;
pub mod hbone;
pub mod identity;
