//! The waypoint's request path over real sockets, in one process: a client's HBONE tunnel to
//! the waypoint (`:authority` = a service VIP), HTTP/1.1 or HTTP/2 over it, the waypoint's
//! routing, timeouts, retries, balancing and authorization, and HBONE tunnels on to fake pods
//! on loopback addresses (see `support`).

#[path = "../support/mod.rs"]
mod support;

mod abuse;
mod authz;
mod breaker;
mod flows;
mod metrics;
mod outlier;
mod pool;
mod resilience;
mod routing;
mod tcp;
