//! From the converted cluster state to one checked model. A mesh file is refused as a whole when
//! anything in it is wrong, because a human is there to fix it; a cluster is not refused: the
//! objects the model rejects are left out (and reported), and the rest is served.

use std::collections::BTreeSet;

use super::convert::{Input, Skip};
use crate::model::{
    self, Kind, Labels, MeshBuilder, MeshModel, ModelError, MtlsMode, PolicyMode, ResourceRef,
    USE_WAYPOINT_LABEL, UnenforcedL7,
};

/// Rounds of leaving rejected objects out before giving up. Leaving an object out can make
/// another one invalid only through a reference: a namespace takes its objects with it, a
/// service the routes and traffic policies to it, a waypoint the labels naming it (which are then dropped, not their
/// objects). Two rounds settle that, the rest is margin.
const MAX_ROUNDS: usize = 4;

fn namespaced(kind: Kind, namespace: &str, name: &str) -> ResourceRef {
    ResourceRef::new(kind, format!("{namespace}/{name}"))
}

/// The label naming a waypoint that was left out is dropped, so its object stays, without
/// waypoint, instead of being refused as naming an unknown one.
fn without_dropped_waypoint(
    subject: &ResourceRef,
    namespace: &str,
    labels: &Labels,
    out: &BTreeSet<ResourceRef>,
    skips: &mut Vec<Skip>,
) -> Labels {
    let mut labels = labels.clone();
    if let Some(name) = labels.get(USE_WAYPOINT_LABEL)
        && out.contains(&namespaced(Kind::Waypoint, namespace, name))
    {
        skips.push(Skip {
            subject: subject.clone(),
            reason: format!(
                "label {USE_WAYPOINT_LABEL}={name:?} names a waypoint the model rejected; ignoring the label"
            ),
        });
        labels.remove(USE_WAYPOINT_LABEL);
    }
    labels
}

/// The mesh-wide settings a cluster's objects do not carry (they come from the controller's
/// flags).
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub trust_domain: String,
    pub cluster_id: String,
    /// For meshed pods whose namespace has no `ambit.io/mtls-mode` label.
    pub mtls_mode: MtlsMode,
    /// For the policies of namespaces without an `ambit.io/policy-mode` label.
    pub policy_mode: PolicyMode,
}

fn builder(
    input: &Input,
    settings: &MeshSettings,
    out: &BTreeSet<ResourceRef>,
    skips: &mut Vec<Skip>,
) -> MeshBuilder {
    let dropped_ns = |ns: &str| out.contains(&ResourceRef::new(Kind::Namespace, ns));
    let kept = |kind: Kind, ns: &str, name: &str| {
        !dropped_ns(ns) && !out.contains(&namespaced(kind, ns, name))
    };
    let mut b = MeshBuilder::new(&settings.trust_domain, &settings.cluster_id);
    b.mtls_mode(settings.mtls_mode);
    b.policy_mode(settings.policy_mode);
    // A waypoint is in the model from its Gateway on, before any pod of it is ready.
    b.allow_pending_waypoints();
    // A pod is in the model from its scheduling on, so that its node's ztunnel can capture it
    // when the CNI plugin runs, before its IP is known.
    b.allow_unaddressed_pods();
    for node in &input.nodes {
        b.node(model::Node {
            name: node.clone(),
            bootstrap_token: None,
        });
    }
    for ns in input.namespaces.iter().filter(|ns| !dropped_ns(&ns.name)) {
        let subject = ResourceRef::new(Kind::Namespace, &ns.name);
        let labels = without_dropped_waypoint(&subject, &ns.name, &ns.labels, out, skips);
        b.namespace(model::Namespace {
            labels,
            ..ns.clone()
        });
    }
    for wp in &input.waypoints {
        if kept(Kind::Waypoint, &wp.namespace, &wp.name) {
            b.waypoint(wp.clone());
        }
    }
    for pod in &input.pods {
        if kept(Kind::Pod, &pod.namespace, &pod.name) {
            let subject = namespaced(Kind::Pod, &pod.namespace, &pod.name);
            let labels =
                without_dropped_waypoint(&subject, &pod.namespace, &pod.labels, out, skips);
            b.pod(model::Pod {
                labels,
                ..pod.clone()
            });
        }
    }
    for svc in &input.services {
        if kept(Kind::Service, &svc.namespace, &svc.name) {
            let subject = namespaced(Kind::Service, &svc.namespace, &svc.name);
            let labels =
                without_dropped_waypoint(&subject, &svc.namespace, &svc.labels, out, skips);
            b.service(model::Service {
                labels,
                ..svc.clone()
            });
        }
    }
    for policy in &input.policies {
        if kept(Kind::AuthorizationPolicy, &policy.namespace, &policy.name) {
            b.policy(policy.clone());
        }
    }
    for route in &input.routes {
        if kept(Kind::Route, &route.namespace, &route.name) {
            b.route(route.clone());
        }
    }
    for policy in &input.traffic_policies {
        if kept(Kind::TrafficPolicy, &policy.namespace, &policy.name) {
            b.traffic_policy(policy.clone());
        }
    }
    b
}

/// What a model reports of itself: policies kept (ztunnel fails their L7 fields closed) but not
/// enforceable as written.
pub(super) fn model_skips(model: &MeshModel) -> impl Iterator<Item = Skip> {
    unenforced_skips(model.unenforced_l7_policies())
}

/// What is said of policies not enforceable as written.
pub(super) fn unenforced_skips(
    policies: impl IntoIterator<Item = UnenforcedL7>,
) -> impl Iterator<Item = Skip> {
    policies.into_iter().map(|u| Skip {
        subject: namespaced(
            Kind::AuthorizationPolicy,
            &u.policy.namespace,
            &u.policy.name,
        ),
        reason: u.reason(),
    })
}

/// A model made of a cluster's input.
pub struct Assembled {
    pub model: MeshModel,
    /// The input's own skips, the objects the model rejected and [`model_skips`].
    pub skips: Vec<Skip>,
    /// The model rejected some object of the input (so it is not in the model).
    pub left_out: bool,
}

/// The model of everything the model accepts, and what was left out on the way. `Err` only
/// when the model cannot be built at all (an invalid trust domain).
pub fn assemble(input: &Input, settings: &MeshSettings) -> Result<Assembled, Vec<ModelError>> {
    let mut skips = input.skips.clone();
    let mut out = BTreeSet::new();
    let mut last = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let mut round_skips = Vec::new();
        match builder(input, settings, &out, &mut round_skips).build() {
            Ok(model) => {
                skips.extend(round_skips);
                skips.extend(model_skips(&model));
                skips.sort();
                skips.dedup();
                return Ok(Assembled {
                    model,
                    skips,
                    left_out: !out.is_empty(),
                });
            }
            Err(errors) => {
                let mut progress = false;
                for error in &errors {
                    let Some(subject) = error.subject() else {
                        return Err(errors);
                    };
                    // A duplicate address is reported on the later object; the earlier one stays.
                    if out.insert(subject.clone()) {
                        progress = true;
                        skips.push(Skip {
                            subject: subject.clone(),
                            reason: format!("rejected by the model: {error}"),
                        });
                    }
                }
                if !progress {
                    return Err(errors);
                }
                last = errors;
            }
        }
    }
    Err(last)
}
