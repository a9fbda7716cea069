//! Ambit's shared wire code, used by every component: the gRPC APIs between them ([`api`]), the
//! TLS they travel in ([`control`]) and how discovery responses go out (resources encoded once,
//! large responses in parts) and are put back together ([`response_parts`]), workload identity
//! ([`identity`]), HBONE tunnels ([`hbone`]), graceful shutdown ([`drain`]) and rate limits for
//! log lines a peer can trigger ([`log_limit`]).

pub mod api;
pub mod control;
pub mod drain;
pub mod hbone;
pub mod identity;
pub mod log_limit;
pub mod response_parts;
