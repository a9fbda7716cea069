//! From the converted cluster state to one checked model. A mesh file is refused as a whole when
//! anything in it is wrong, because a human is there to fix it; a cluster is not refused: the
//! objects the model rejects are left out (and reported), and the rest is served.

use std::collections::BTreeSet;

use super::convert::{Input, Skip};
use crate::model::{self, Kind, MeshBuilder, MeshModel, ModelError, ResourceRef};

/// Rounds of leaving rejected objects out before giving up. Leaving an object out cannot make
/// another one invalid (nothing refers to pods or services), except a namespace, which takes its
/// objects with it; two rounds settle that, the rest is margin.
const MAX_ROUNDS: usize = 4;

fn builder(
    input: &Input,
    trust_domain: &str,
    cluster_id: &str,
    out: &BTreeSet<ResourceRef>,
) -> MeshBuilder {
    let dropped_ns = |ns: &str| out.contains(&ResourceRef::new(Kind::Namespace, ns));
    let mut b = MeshBuilder::new(trust_domain, cluster_id);
    for node in &input.nodes {
        b.node(model::Node {
            name: node.clone(),
            bootstrap_token: None,
        });
    }
    for ns in input.namespaces.iter().filter(|ns| !dropped_ns(&ns.name)) {
        b.namespace(ns.clone());
    }
    for pod in &input.pods {
        let subject = ResourceRef::new(Kind::Pod, format!("{}/{}", pod.namespace, pod.name));
        if !dropped_ns(&pod.namespace) && !out.contains(&subject) {
            b.pod(pod.clone());
        }
    }
    for svc in &input.services {
        let subject = ResourceRef::new(Kind::Service, format!("{}/{}", svc.namespace, svc.name));
        if !dropped_ns(&svc.namespace) && !out.contains(&subject) {
            b.service(svc.clone());
        }
    }
    b
}

/// The model of everything the model accepts, and what was left out on the way (the input's own
/// skips plus the objects the model rejected). `Err` only when the model cannot be built at all
/// (an invalid trust domain).
pub fn assemble(
    input: &Input,
    trust_domain: &str,
    cluster_id: &str,
) -> Result<(MeshModel, Vec<Skip>), Vec<ModelError>> {
    let mut skips = input.skips.clone();
    let mut out = BTreeSet::new();
    let mut last = Vec::new();
    for _ in 0..MAX_ROUNDS {
        match builder(input, trust_domain, cluster_id, &out).build() {
            Ok(model) => {
                skips.sort();
                skips.dedup();
                return Ok((model, skips));
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
