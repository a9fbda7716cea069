//! Ambit's shared wire code, used by every component: the gRPC APIs between them ([`api`]),
//! workload identity ([`identity`]) and HBONE tunnels ([`hbone`]).

pub mod api;
pub mod identity;
