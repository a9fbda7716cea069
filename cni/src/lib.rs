//! ambit-cni: a chained CNI plugin (spec 1.0) that, when the container runtime sets up a pod's
//! network, hands a meshed pod's network namespace to the node's ztunnel before the pod's
//! containers start. [`spec`] is the CNI protocol, [`decide`] asks the API server whether the
//! pod is meshed, [`plugin`] runs ADD, DEL, CHECK and VERSION.

pub mod decide;
pub mod plugin;
pub mod spec;
