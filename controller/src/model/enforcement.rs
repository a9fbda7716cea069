//! Where a policy can be enforced as written. L7 conditions (methods, paths, hosts, request
//! headers) are checked only by a waypoint; the ztunnel in front of a workload that no
//! waypoint fronts cannot see them and fails them closed (an ALLOW rule with them allows
//! nothing, a DENY or AUDIT rule with them matches on its other conditions alone). The policy
//! still does something there, but not what it says, so the sources report it.

use std::collections::BTreeSet;

use ambit_proto::api::security;

use super::{MeshModel, ObjectKey, USE_WAYPOINT_LABEL};

/// A policy with L7 conditions selecting meshed workloads that no waypoint fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnenforcedL7 {
    pub policy: ObjectKey,
    /// The L7 fields its rules use (`methods`, `paths`, `hosts`, `headers`).
    pub fields: Vec<&'static str>,
    /// The workloads concerned, sorted.
    pub workloads: Vec<ObjectKey>,
    pub action: security::Action,
}

impl UnenforcedL7 {
    /// What happens and what to do, for a log line or an error.
    pub fn reason(&self) -> String {
        let consequence = match self.action {
            security::Action::Allow => "its rules that use them allow nothing there",
            security::Action::Deny => {
                "its rules that use them deny on their other conditions alone (more than written)"
            }
            security::Action::Audit => {
                "its rules that use them report on their other conditions alone"
            }
        };
        let workloads: Vec<String> = self.workloads.iter().map(ToString::to_string).collect();
        format!(
            "its {} conditions are checked only by a waypoint, and no waypoint fronts {} (ztunnel cannot see them, so {consequence}); put the workload's service behind a waypoint with {USE_WAYPOINT_LABEL} (on the service or its namespace), or drop the L7 fields",
            self.fields.join("/"),
            workloads.join(", "),
        )
    }
}

/// The L7 fields `rules` use, each once, in a fixed order.
pub fn l7_fields(rules: &[security::Rule]) -> Vec<&'static str> {
    let mut fields = BTreeSet::new();
    for rule in rules {
        for d in &rule.to {
            if !d.methods.is_empty() || !d.not_methods.is_empty() {
                fields.insert((0, "methods"));
            }
            if !d.paths.is_empty() || !d.not_paths.is_empty() {
                fields.insert((1, "paths"));
            }
            if !d.hosts.is_empty() || !d.not_hosts.is_empty() {
                fields.insert((2, "hosts"));
            }
            if !d.headers.is_empty() {
                fields.insert((3, "headers"));
            }
        }
        if rule
            .when
            .iter()
            .any(|c| c.key.starts_with("request.headers["))
        {
            fields.insert((3, "headers"));
        }
    }
    fields.into_iter().map(|(_, f)| f).collect()
}

impl MeshModel {
    /// Every policy with L7 conditions that selects meshed workloads no waypoint fronts
    /// (neither their own nor that of a service they are an endpoint of), in key order.
    pub fn unenforced_l7_policies(&self) -> Vec<UnenforcedL7> {
        let mut fronted: BTreeSet<&ObjectKey> = self
            .workloads
            .iter()
            .filter(|(_, w)| w.waypoint.is_some())
            .map(|(k, _)| k)
            .collect();
        for s in self.services.values().filter(|s| s.waypoint.is_some()) {
            fronted.extend(&s.endpoints);
        }
        let mut out = Vec::new();
        for (key, policy) in &self.policies {
            out.extend(self.unenforced(key, policy, |k| fronted.contains(k)));
        }
        out
    }

    /// As [`Self::unenforced_l7_policies`], for the policies of one namespace: what a change
    /// there can have altered, found without looking at the rest of the mesh.
    pub fn unenforced_l7_policies_in(&self, namespace: &str) -> Vec<UnenforcedL7> {
        let fronted = |key: &ObjectKey| {
            self.workload(key).is_some_and(|w| w.waypoint.is_some())
                || self.services_backed_by(key).any(|s| s.waypoint.is_some())
        };
        let policies = self
            .policies
            .range(ObjectKey::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace);
        policies
            .filter_map(|(key, policy)| self.unenforced(key, policy, fronted))
            .collect()
    }

    fn unenforced(
        &self,
        key: &ObjectKey,
        policy: &super::AuthorizationPolicy,
        fronted: impl Fn(&ObjectKey) -> bool,
    ) -> Option<UnenforcedL7> {
        let fields = l7_fields(&policy.rules);
        if fields.is_empty() {
            return None;
        }
        let workloads: Vec<ObjectKey> = self
            .workloads_in(&policy.namespace)
            .filter(|w| w.meshed && MeshModel::policy_selects(policy, w))
            .map(|w| w.key())
            .filter(|k| !fronted(k))
            .collect();
        (!workloads.is_empty()).then(|| UnenforcedL7 {
            policy: key.clone(),
            fields,
            workloads,
            action: policy.action,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(name: &str, addr: &str, app: &str) -> Pod {
        Pod {
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            node: "node-a".into(),
            addresses: vec![addr.parse().unwrap()],
            labels: labels(&[("app", app)]),
            healthy: true,
        }
    }

    fn service(name: &str, vip: &str, app: &str, waypoint: Option<&str>) -> Service {
        Service {
            name: name.into(),
            namespace: "demo".into(),
            vips: vec![vip.parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                target_port: 8080,
                app_protocol: AppProtocol::Http,
            }],
            selector: labels(&[("app", app)]),
            explicit_endpoints: Vec::new(),
            labels: waypoint
                .map(|w| labels(&[(USE_WAYPOINT_LABEL, w)]))
                .unwrap_or_default(),
        }
    }

    fn policy(
        name: &str,
        app: &str,
        action: security::Action,
        to: security::Destination,
    ) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: name.into(),
            namespace: "demo".into(),
            selector: labels(&[("app", app)]),
            action,
            dry_run: false,
            rules: vec![security::Rule {
                to: vec![to],
                ..Default::default()
            }],
        }
    }

    /// reviews behind waypoint `wp`, ratings behind none; a policy with paths on each, and an
    /// L4 one on ratings.
    fn model() -> MeshModel {
        let mut b = MeshBuilder::new("cluster.local", "test");
        b.node(Node {
            name: "node-a".into(),
            bootstrap_token: Some("t".into()),
        })
        .namespace(Namespace {
            name: "demo".into(),
            labels: labels(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)]),
            egress_scope: None,
        })
        .waypoint(Waypoint {
            name: "wp".into(),
            namespace: "demo".into(),
            node: "node-a".into(),
            service_account: "wp".into(),
            addresses: vec!["10.244.0.100".parse().unwrap()],
        })
        .pod(pod("reviews-1", "10.244.0.1", "reviews"))
        .pod(pod("ratings-1", "10.244.0.2", "ratings"))
        .pod(pod("ratings-2", "10.244.0.3", "ratings"))
        .service(service("reviews", "10.96.0.1", "reviews", Some("wp")))
        .service(service("ratings", "10.96.0.2", "ratings", None));
        let paths = security::Destination {
            paths: vec!["/admin*".into()],
            ..Default::default()
        };
        b.policy(policy(
            "reviews-admin",
            "reviews",
            security::Action::Deny,
            paths.clone(),
        ))
        .policy(policy(
            "ratings-admin",
            "ratings",
            security::Action::Allow,
            paths,
        ))
        .policy(policy(
            "ratings-port",
            "ratings",
            security::Action::Deny,
            security::Destination {
                ports: vec![8080],
                ..Default::default()
            },
        ));
        let mut with_when = policy(
            "ratings-header",
            "ratings",
            security::Action::Audit,
            security::Destination::default(),
        );
        with_when.rules[0].when.push(security::Condition {
            key: "request.headers[x-user]".into(),
            values: vec!["jason".into()],
            ..Default::default()
        });
        b.policy(with_when);
        b.build().unwrap()
    }

    #[test]
    fn l7_policies_on_workloads_without_a_waypoint_are_reported_with_the_fix() {
        let found: BTreeMap<String, UnenforcedL7> = model()
            .unenforced_l7_policies()
            .into_iter()
            .map(|u| (u.policy.to_string(), u))
            .collect();
        let keys: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["demo/ratings-admin", "demo/ratings-header"],
            "the waypoint-fronted and the L4-only policies are fine"
        );
        let model = model();
        assert_eq!(
            model.unenforced_l7_policies_in("demo"),
            model.unenforced_l7_policies(),
            "the namespace's own check finds the same"
        );
        assert!(model.unenforced_l7_policies_in("other").is_empty());
        let admin = &found["demo/ratings-admin"];
        assert_eq!(admin.fields, ["paths"]);
        assert_eq!(
            admin.workloads,
            [
                ObjectKey::new("demo", "ratings-1"),
                ObjectKey::new("demo", "ratings-2")
            ]
        );
        let reason = admin.reason();
        for part in [
            "paths",
            "demo/ratings-1, demo/ratings-2",
            "allow nothing",
            "ambit.io/use-waypoint",
        ] {
            assert!(reason.contains(part), "{part:?} missing in {reason}");
        }
        assert_eq!(found["demo/ratings-header"].fields, ["headers"]);
    }
}
