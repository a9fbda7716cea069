//! The controller's integration tests, in one binary: each file once linked kube, rustls and
//! tonic into a test binary of its own, which cost CI minutes of linking and gigabytes of disk.

mod support;

mod binary;
mod ca;
mod ca_kubernetes;
mod dashboard;
mod discovery;
mod discovery_access;
mod discovery_liveness;
mod discovery_mtls;
mod discovery_parts;
mod kubernetes;
mod kubernetes_crds;
mod kubernetes_traffic;
mod kubernetes_waypoints;
mod manifests;
mod root_configmap;
mod telemetry;
mod telemetry_support;
mod waypoints;
