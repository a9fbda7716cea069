//! Gateway API HTTPRoutes and GRPCRoutes to the model's routes, through the conversion both
//! sources share (`source::routes`): a route is the mesh's when a `parentRef` is a Service
//! (GAMMA); one whose parents are all another gateway's is not the mesh's business and is left
//! alone without a word. What is refused or ignored is reported as a [`Skip`] with the field and
//! the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Skip, key};
use crate::model::{self, Kind, ResourceRef};
use crate::source::routes::{self, Meta, Note, Outcome, RouteContext, spec};

/// The object's spec in the shape both sources share. A field that shape does not know is one
/// the waypoint would not honour, so the route is refused naming it.
fn shared_spec<T: Serialize, S: DeserializeOwned>(spec: &T) -> Result<S, String> {
    let value = serde_json::to_value(spec).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| {
        format!("spec: {e}; Ambit's waypoint does not honour that field, so remove it")
    })
}

fn outcome(subject: ResourceRef, outcome: Outcome, skips: &mut Vec<Skip>) -> Option<model::Route> {
    let reason = |reason: String| Skip {
        subject: subject.clone(),
        reason,
    };
    // The notes explain a refusal as much as a route used in part, so they go out either way.
    skips.extend(outcome.notes.into_iter().map(|n| match n {
        Note::Ignored { reason: r, .. } | Note::Info(r) => reason(r),
    }));
    match outcome.route {
        Ok(route) => route,
        Err(refusal) => {
            skips.push(reason(format!(
                "{}; the route is not used until it is fixed",
                refusal.reason
            )));
            None
        }
    }
}

fn refused(reason: String) -> Outcome {
    Outcome {
        route: Err(routes::Refusal { reason, line: None }),
        notes: Vec::new(),
        foreign_parents: Vec::new(),
    }
}

/// The route, `None` when it is not for the mesh or is refused (with a reason in `skips`).
pub(super) fn http_route(
    r: &Arc<HttpRoute>,
    context: &RouteContext<'_>,
    skips: &mut Vec<Skip>,
) -> Option<model::Route> {
    let (namespace, name) = key(&r.metadata);
    let subject = ResourceRef::new(Kind::Route, format!("{namespace}/{name}"));
    let annotations = r.metadata.annotations.clone().unwrap_or_default();
    let meta = Meta {
        namespace: &namespace,
        name: &name,
        annotations: &annotations,
        spec_path: "spec.",
    };
    let result = match shared_spec::<_, spec::HttpRouteSpec>(&r.spec) {
        Ok(spec) => routes::http_route(&meta, &spec, context),
        Err(why) => {
            // Refused only if it is the mesh's: another gateway's route may use what the mesh
            // does not.
            match shared_spec::<_, Parents>(&r.spec) {
                Ok(p) if p.for_mesh() => refused(why),
                _ => return None,
            }
        }
    };
    outcome(subject, result, skips)
}

/// As [`http_route`], for a GRPCRoute; `taken` holds the names of the namespace's HTTPRoutes,
/// which share one name space with GRPCRoutes in the model.
pub(super) fn grpc_route(
    r: &Arc<GrpcRoute>,
    context: &RouteContext<'_>,
    taken: &BTreeSet<(String, String)>,
    skips: &mut Vec<Skip>,
) -> Option<model::Route> {
    let (namespace, name) = key(&r.metadata);
    let subject = ResourceRef::new(Kind::Route, format!("{namespace}/{name}"));
    let annotations: BTreeMap<String, String> = r.metadata.annotations.clone().unwrap_or_default();
    let meta = Meta {
        namespace: &namespace,
        name: &name,
        annotations: &annotations,
        spec_path: "spec.",
    };
    let result = match shared_spec::<_, spec::GrpcRouteSpec>(&r.spec) {
        Ok(spec) => routes::grpc_route(&meta, &spec, context),
        Err(why) => match shared_spec::<_, Parents>(&r.spec) {
            Ok(p) if p.for_mesh() => refused(why),
            _ => return None,
        },
    };
    if result.route.as_ref().is_ok_and(Option::is_some)
        && taken.contains(&(namespace.clone(), name.clone()))
    {
        return outcome(
            subject,
            refused(format!(
                "an HTTPRoute of the same name exists in {namespace}, and Ambit names routes by namespace and name whatever their kind; rename one"
            )),
            skips,
        );
    }
    outcome(subject, result, skips)
}

/// Just the parents of a spec, to tell whether a route the shared shape refuses is the mesh's.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parents {
    #[serde(default)]
    parent_refs: Vec<ParentKind>,
}

#[derive(serde::Deserialize)]
struct ParentKind {
    group: Option<String>,
    kind: Option<String>,
}

impl Parents {
    fn for_mesh(&self) -> bool {
        self.parent_refs.iter().any(|p| {
            matches!(p.group.as_deref(), Some("" | "core")) && p.kind.as_deref() == Some("Service")
        })
    }
}

#[cfg(test)]
mod tests;
