//! A `trafficPolicies` item to the model, through the conversion both sources share
//! (`source::traffic`), each refusal reported at its line.

use super::{ItemLines, LineIndex, line, namespaced};
use crate::model::{self, Kind, ModelError};
use crate::source::traffic::{self, Meta, TrafficContext, spec::TrafficPolicyItem};

/// The policy, or `None` with every problem located. A note (its service uses no waypoint yet)
/// is not a problem: the file may be on its way to labelling the service.
pub(super) fn convert(
    item: TrafficPolicyItem,
    context: &TrafficContext<'_>,
    lines: &mut LineIndex,
    located: &mut Vec<(ModelError, u64)>,
) -> Option<model::TrafficPolicy> {
    let (name, namespace, spec) = item.into_parts();
    let subject = namespaced(Kind::TrafficPolicy, &namespace, &name);
    let name_line = line(&name);
    let item_lines = ItemLines {
        name: name_line,
        namespace: Some(line(&namespace)),
        ..Default::default()
    };
    if !lines.record(subject.clone(), item_lines) {
        located.push((ModelError::Duplicate { subject }, name_line));
        return None;
    }
    let meta = Meta {
        namespace: &namespace.value,
        name: &name.value,
        spec_path: "",
    };
    match traffic::traffic_policy(&meta, &spec, context).policy {
        Ok(policy) => Some(policy),
        Err(refusals) => {
            for refusal in refusals {
                let error = ModelError::InvalidTrafficPolicy {
                    subject: subject.clone(),
                    reason: refusal.reason,
                };
                located.push((error, refusal.line.unwrap_or(name_line)));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests;
