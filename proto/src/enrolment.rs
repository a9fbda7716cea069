//! Which pods are in the mesh, by their labels and their namespace's: the rule the controller
//! builds the mesh with and the CNI plugin captures pods by, kept in one place so the two can
//! never disagree about a pod.

/// Namespace label that puts a namespace's pods in the mesh (value [`DATAPLANE_MODE_AMBIENT`]);
/// on a pod, [`DATAPLANE_MODE_NONE`] takes that one pod out.
pub const DATAPLANE_MODE_LABEL: &str = "ambit.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

/// Whether a pod is in the mesh, from the `ambit.io/dataplane-mode` label of its namespace and
/// its own (`None` where the label is absent).
pub fn enrolled(namespace_mode: Option<&str>, pod_mode: Option<&str>) -> bool {
    namespace_mode == Some(DATAPLANE_MODE_AMBIENT) && pod_mode != Some(DATAPLANE_MODE_NONE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_labelled_namespace_enrols_its_pods_and_a_pod_can_opt_out() {
        let cases = [
            (Some("ambient"), None, true),
            (Some("ambient"), Some("none"), false),
            (Some("ambient"), Some("ambient"), true),
            (None, None, false),
            (None, Some("ambient"), false),
            (Some("none"), None, false),
            (Some("Ambient"), None, false),
        ];
        for (namespace, pod, want) in cases {
            assert_eq!(enrolled(namespace, pod), want, "{namespace:?} {pod:?}");
        }
    }
}
