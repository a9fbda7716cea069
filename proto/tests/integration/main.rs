//! The shared wire code's integration tests (HBONE, identity, the control channel), in one binary
//! so the dependencies are linked once.

mod support;

mod control_tls;
mod hbone_aborts;
mod hbone_abuse;
mod hbone_client_pool;
mod hbone_errors;
mod hbone_identity;
mod hbone_interop_client;
mod hbone_interop_server;
mod hbone_limits;
mod hbone_tunnels;
