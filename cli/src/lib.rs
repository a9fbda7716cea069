//! The `ambit` CLI ([`cli`]) and the local mesh runner ([`local`]: a whole mesh in network
//! namespaces on one host, shared by `ambit up`, the e2e suite and the benches). A crate of its
//! own so that the control plane depends on neither proxy nor on the testbed.

pub mod cli;
pub mod local;
