//! Where the mesh model comes from. Every source publishes whole models into a
//! `tokio::sync::watch` channel; readers take the latest and never see a partial update.

pub mod file;
pub mod kubernetes;
pub mod routes;
pub mod traffic;
