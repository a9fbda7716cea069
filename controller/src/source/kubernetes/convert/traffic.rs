//! Ambit's TrafficPolicy objects to the model, through the conversion both sources share
//! (`source::traffic`). A policy that is refused is left out and reported as a [`Skip`] with
//! every reason and its fix; its service then runs with the waypoint's defaults.

use std::sync::Arc;

use super::{Skip, crd::traffic::TrafficPolicy, key};
use crate::model::{self, Kind, ResourceRef};
use crate::source::traffic::{self, Meta, TrafficContext, spec};

/// The policies the model may take, oldest first: the model keeps the first policy of a service
/// and refuses the others, so a new policy never takes a service from one already in force.
pub(super) fn traffic_policies(
    objects: &[Arc<TrafficPolicy>],
    context: &TrafficContext<'_>,
    skips: &mut Vec<Skip>,
) -> Vec<model::TrafficPolicy> {
    let mut sorted: Vec<&Arc<TrafficPolicy>> = objects.iter().collect();
    sorted.sort_by_key(|p| (p.metadata.creation_timestamp.clone(), key(&p.metadata)));
    sorted
        .into_iter()
        .filter_map(|p| traffic_policy(p, context, skips))
        .collect()
}

fn traffic_policy(
    p: &TrafficPolicy,
    context: &TrafficContext<'_>,
    skips: &mut Vec<Skip>,
) -> Option<model::TrafficPolicy> {
    let (namespace, name) = key(&p.metadata);
    let subject = ResourceRef::new(Kind::TrafficPolicy, format!("{namespace}/{name}"));
    let mut say = |reason: String| {
        skips.push(Skip {
            subject: subject.clone(),
            reason,
        })
    };
    // The CRD's type and the shared shape hold the same fields; a disagreement is a bug here,
    // and refusing the policy says so rather than using part of it.
    let spec: spec::TrafficPolicySpec = match serde_json::to_value(&p.spec)
        .and_then(serde_json::from_value)
    {
        Ok(spec) => spec,
        Err(e) => {
            say(format!(
                "spec: {e}; the policy is not used until it is fixed (the service runs with the waypoint's defaults)"
            ));
            return None;
        }
    };
    let meta = Meta {
        namespace: &namespace,
        name: &name,
        spec_path: "spec.",
    };
    let outcome = traffic::traffic_policy(&meta, &spec, context);
    for note in outcome.notes {
        say(note);
    }
    match outcome.policy {
        Ok(policy) => Some(policy),
        Err(refusals) => {
            let reasons: Vec<String> = refusals.into_iter().map(|r| r.reason).collect();
            say(format!(
                "{}; the policy is not used until it is fixed (the service runs with the waypoint's defaults)",
                reasons.join("; ")
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests;
