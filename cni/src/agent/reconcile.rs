//! What the node agent does about its node's pods, decided from the API's view alone (no I/O
//! here, so the rules are table-tested): a running pod that is meshed and not yet handed to
//! ztunnel is handed over, one the agent handed over that is no longer meshed (or is gone) is
//! taken back. A meshed pod without an IP yet is left to the CNI plugin, which captures it at
//! ADD; the agent never takes back a pod it did not hand over, except at start (see
//! [`Plan::not_meshed`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ambit_proto::enrolment::{DATAPLANE_MODE_LABEL, enrolled};
use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The parts of a pod the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub ip: Option<IpAddr>,
    /// Its own `ambit.io/dataplane-mode` label.
    pub mode: Option<String>,
    pub host_network: bool,
    /// Succeeded or Failed: its network namespace is gone or going.
    pub finished: bool,
}

impl PodView {
    pub fn of(pod: &Pod) -> Option<PodView> {
        let namespace = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let status = pod.status.as_ref();
        Some(PodView {
            namespace,
            name,
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            mode: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
                .cloned(),
            host_network: pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            finished: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
        })
    }
}

/// A namespace's `ambit.io/dataplane-mode` label, by namespace name.
pub fn namespace_modes<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
) -> HashMap<String, Option<String>> {
    namespaces
        .into_iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            let mode = ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
                .cloned();
            Some((name, mode))
        })
        .collect()
}

/// What the agent is configured with that bears on the decision.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Workload uids start with it, as the controller names them.
    pub cluster_id: String,
    /// Never touched (kube-system by default, as the plugin's `excludeNamespaces`).
    pub excluded_namespaces: Vec<String>,
}

impl Rules {
    pub fn uid(&self, namespace: &str, name: &str) -> String {
        format!("{}//Pod/{namespace}/{name}", self.cluster_id)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Meshed running pods not handed over yet: uid and the IP their namespace is found by.
    pub add: BTreeMap<String, IpAddr>,
    /// Pods handed over that are no longer meshed, finished, or gone.
    pub remove: BTreeSet<String>,
    /// The node's other pods the mesh must not hold: at start the agent asks ztunnel about
    /// each, since a label may have been removed while the agent was down.
    pub not_meshed: BTreeSet<String>,
}

/// `handed_over`: the uids the agent has handed to ztunnel and not taken back.
pub fn plan(
    pods: &[PodView],
    namespaces: &HashMap<String, Option<String>>,
    rules: &Rules,
    handed_over: &BTreeSet<String>,
) -> Plan {
    let mut plan = Plan::default();
    let mut present = BTreeSet::new();
    for pod in pods {
        if pod.host_network || rules.excluded_namespaces.contains(&pod.namespace) {
            continue;
        }
        let uid = rules.uid(&pod.namespace, &pod.name);
        present.insert(uid.clone());
        // A namespace not (yet) seen is not known to opt in: leave the pod as it is.
        let Some(ns_mode) = namespaces.get(&pod.namespace) else {
            continue;
        };
        let meshed = !pod.finished && enrolled(ns_mode.as_deref(), pod.mode.as_deref());
        let held = handed_over.contains(&uid);
        match (meshed, held, pod.ip) {
            (true, false, Some(ip)) => {
                plan.add.insert(uid, ip);
            }
            (false, true, _) => {
                plan.remove.insert(uid);
            }
            (false, false, _) => {
                plan.not_meshed.insert(uid);
            }
            (true, true, _) | (true, false, None) => {}
        }
    }
    plan.remove
        .extend(handed_over.difference(&present).cloned());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: Option<&str>) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            ip: ip.map(|i| i.parse().unwrap()),
            mode: None,
            host_network: false,
            finished: false,
        }
    }

    fn rules() -> Rules {
        Rules {
            cluster_id: "Kubernetes".into(),
            excluded_namespaces: vec!["kube-system".into()],
        }
    }

    fn uid(ns: &str, name: &str) -> String {
        rules().uid(ns, name)
    }

    #[test]
    fn each_pod_is_handed_over_taken_back_or_left_by_the_label_rule() {
        let namespaces: HashMap<String, Option<String>> = [
            ("demo", Some("ambient")),
            ("plain", None),
            ("kube-system", Some("ambient")),
        ]
        .into_iter()
        .map(|(n, m)| (n.to_string(), m.map(String::from)))
        .collect();
        let opted_out = PodView {
            mode: Some("none".into()),
            ..pod("demo", "opted-out", Some("10.244.0.3"))
        };
        let host = PodView {
            host_network: true,
            ..pod("demo", "host", Some("172.18.0.2"))
        };
        let done = PodView {
            finished: true,
            ..pod("demo", "done", Some("10.244.0.5"))
        };
        let pods = vec![
            pod("demo", "running", Some("10.244.0.1")),
            pod("demo", "starting", None),
            pod("demo", "held", Some("10.244.0.2")),
            opted_out.clone(),
            host,
            done,
            pod("plain", "legacy", Some("10.244.0.4")),
            pod("kube-system", "dns", Some("10.244.0.6")),
            pod("unseen", "early", Some("10.244.0.7")),
        ];
        let handed_over: BTreeSet<String> = [
            uid("demo", "held"),
            uid("demo", "opted-out"),
            uid("demo", "done"),
            uid("demo", "deleted"),
        ]
        .into();
        let plan = plan(&pods, &namespaces, &rules(), &handed_over);
        assert_eq!(
            plan.add,
            [(uid("demo", "running"), "10.244.0.1".parse().unwrap())].into()
        );
        assert_eq!(
            plan.remove,
            [
                uid("demo", "opted-out"),
                uid("demo", "done"),
                uid("demo", "deleted")
            ]
            .into()
        );
        // Not host-network pods, excluded namespaces, or namespaces not seen yet.
        assert_eq!(plan.not_meshed, [uid("plain", "legacy")].into());
    }

    #[test]
    fn pods_and_namespaces_are_read_from_the_api_objects() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "a", "labels": {DATAPLANE_MODE_LABEL: "none"}},
            "spec": {"hostNetwork": false, "containers": []},
            "status": {"podIP": "fd00::5", "phase": "Running"},
        }))
        .unwrap();
        assert_eq!(
            PodView::of(&pod),
            Some(PodView {
                mode: Some("none".into()),
                ..super::tests::pod("demo", "a", Some("fd00::5"))
            })
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo", "labels": {DATAPLANE_MODE_LABEL: "ambient"}},
        }))
        .unwrap();
        assert_eq!(
            namespace_modes([&ns]),
            [("demo".to_string(), Some("ambient".to_string()))].into()
        );
    }
}
