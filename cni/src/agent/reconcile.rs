//! What the node agent does about its node's pods, decided from the API's view alone (no I/O
//! here, so the rules are table-tested): a running pod that is meshed and not yet handed to
//! ztunnel is handed over, one the agent handed over that is no longer meshed (or is gone) is
//! taken back. A meshed pod without an IP yet is left to the CNI plugin, which captures it at
//! ADD; the agent never takes back a pod it did not hand over, except at start (see
//! [`Plan::not_meshed`]). Every hand-over and take-back names the pod object's uid, so that a
//! pod replaced by one of the same name is never released for the old one's sake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ambit_proto::enrolment::{DATAPLANE_MODE_LABEL, enrolled};
use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The parts of a pod the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    /// The pod object's uid (`metadata.uid`).
    pub pod_uid: Option<String>,
    pub ip: Option<IpAddr>,
    /// Its own `ambit.io/dataplane-mode` label.
    pub mode: Option<String>,
    pub host_network: bool,
    /// Succeeded, Failed, or being deleted (it has a deletion timestamp): its network
    /// namespace is gone or going, and the runtime's DEL takes it out of the mesh. Handing such a
    /// pod over again could undo that DEL, if the two crossed.
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
            pod_uid: pod.metadata.uid.clone(),
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
            finished: pod.metadata.deletion_timestamp.is_some()
                || matches!(
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

/// A pod object's uid, as handed over (None: not known).
pub type PodUid = Option<String>;

/// A meshed running pod to hand over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// Its namespace is found by it.
    pub ip: IpAddr,
    pub pod_uid: PodUid,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Meshed running pods not handed over yet, by workload uid.
    pub add: BTreeMap<String, Handover>,
    /// Pods handed over that are no longer meshed, finished, gone, or replaced by a pod of the
    /// same name: the pod object to release, by workload uid.
    pub remove: BTreeMap<String, PodUid>,
    /// The node's other pods the mesh must not hold: at start the agent asks ztunnel about
    /// each, since a label may have been removed while the agent was down.
    pub not_meshed: BTreeMap<String, PodUid>,
}

/// `handed_over`: the pods the agent has handed to ztunnel and not taken back, by workload uid.
pub fn plan(
    pods: &[PodView],
    namespaces: &HashMap<String, Option<String>>,
    rules: &Rules,
    handed_over: &BTreeMap<String, PodUid>,
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
        let handed = handed_over.get(&uid);
        // Handed over for this very pod object (or one of the two uids is not known).
        let held =
            handed.is_some_and(|h| h.is_none() || pod.pod_uid.is_none() || *h == pod.pod_uid);
        match (meshed, held, pod.ip) {
            (true, false, Some(ip)) => {
                let pod_uid = pod.pod_uid.clone();
                plan.add.insert(uid, Handover { ip, pod_uid });
            }
            (false, true, _) => {
                plan.remove.insert(uid, handed.cloned().flatten());
            }
            // The pod handed over was replaced by this one, which is not meshed.
            (false, false, _) if handed.is_some() => {
                plan.remove.insert(uid, handed.cloned().flatten());
            }
            (false, false, _) => {
                plan.not_meshed.insert(uid, pod.pod_uid.clone());
            }
            (true, true, _) | (true, false, None) => {}
        }
    }
    for (uid, pod_uid) in handed_over {
        if !present.contains(uid) {
            plan.remove.insert(uid.clone(), pod_uid.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: Option<&str>) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            pod_uid: Some(format!("uid-{name}")),
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

    fn object(name: &str) -> PodUid {
        Some(format!("uid-{name}"))
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
            opted_out,
            host,
            done,
            pod("plain", "legacy", Some("10.244.0.4")),
            pod("kube-system", "dns", Some("10.244.0.6")),
            pod("unseen", "early", Some("10.244.0.7")),
            // Deleted and created again under its name: a new object.
            pod("demo", "replaced", Some("10.244.0.8")),
            pod("plain", "moved", Some("10.244.0.9")),
        ];
        let handed_over: BTreeMap<String, PodUid> = [
            (uid("demo", "held"), object("held")),
            (uid("demo", "opted-out"), object("opted-out")),
            (uid("demo", "done"), object("done")),
            (uid("demo", "deleted"), object("deleted")),
            (uid("demo", "replaced"), Some("uid-of-the-old-one".into())),
            (uid("plain", "moved"), Some("uid-of-the-old-one".into())),
        ]
        .into();
        let plan = plan(&pods, &namespaces, &rules(), &handed_over);
        let handover = |ip: &str, name: &str| Handover {
            ip: ip.parse().unwrap(),
            pod_uid: object(name),
        };
        assert_eq!(
            plan.add,
            [
                (uid("demo", "running"), handover("10.244.0.1", "running")),
                (uid("demo", "replaced"), handover("10.244.0.8", "replaced")),
            ]
            .into()
        );
        // Each released as the object that was handed over.
        assert_eq!(
            plan.remove,
            [
                (uid("demo", "opted-out"), object("opted-out")),
                (uid("demo", "done"), object("done")),
                (uid("demo", "deleted"), object("deleted")),
                (uid("plain", "moved"), Some("uid-of-the-old-one".into())),
            ]
            .into()
        );
        // Not host-network pods, excluded namespaces, or namespaces not seen yet.
        assert_eq!(
            plan.not_meshed,
            [(uid("plain", "legacy"), object("legacy"))].into()
        );
    }

    #[test]
    fn pods_and_namespaces_are_read_from_the_api_objects() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "a", "uid": "uid-a",
                         "labels": {DATAPLANE_MODE_LABEL: "none"}},
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
        let mut deleting = pod.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-02T00:00:00Z".parse().unwrap(),
            ));
        assert!(
            PodView::of(&deleting).unwrap().finished,
            "a pod being deleted is finished"
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
