//! The whole-mesh suite (real binaries, network namespaces, root), in one binary so the
//! dependencies are linked once.

mod ambit_cli;
mod cni_chain;
mod cni_netns;
mod config_apply;
mod dashboard;
mod egress_scope;
mod explain;
mod kubernetes_node;
mod lifecycle;
mod mtls;
mod node_agent;
mod node_failure;
mod observe;
mod observer_mode;
mod on_demand;
mod outsiders;
mod policy_suggest;
mod ports;
mod prometheus;
mod traffic;
mod up_supervision;
mod waypoint;
mod waypoint_abuse;
mod waypoint_demo;
mod waypoint_grpc;
