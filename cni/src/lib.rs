//! ambit-cni: a chained CNI plugin (spec 1.0) that, when the container runtime sets up a pod's
//! network, hands a meshed pod's network namespace to the node's ztunnel before the pod's
//! containers start. [`spec`] is the CNI protocol, [`decide`] asks the API server whether the
//! pod is meshed, [`plugin`] runs ADD, DEL, CHECK and VERSION; [`install`] chains the plugin
//! into a node's CNI configuration and takes it out and [`netns`] finds a running pod's network
//! namespace from its IP, both for the node agent ([`agent`], binary `ambit-node-agent`).

pub mod agent;
pub mod decide;
pub mod install;
pub mod netns;
pub mod plugin;
pub mod spec;
