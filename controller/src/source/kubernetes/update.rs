//! The next model after a change in the cluster. The objects the change names are converted
//! again ([`Converted::update`]) and what differs becomes [`Edit`]s for [`MeshModel::apply`]:
//! the new model shares everything else with the current one and records what changed, so the
//! snapshot re-resolves only that. A change costs what it touches, not what the cluster holds.
//!
//! Built whole instead, as a first model is: a change that reaches across the cluster (a
//! namespace, a Gateway, a kind listed again after a reconnect), a current model that left an
//! object out (that object may be valid now without having changed itself), and a batch
//! `apply` refuses (the full build then reports what is wrong, object by object). A full
//! conversion is still applied as edits when namespaces and waypoints did not change.
//!
//! Everything said of the objects (a [`Skip`]) is logged once, when it appears.

use std::collections::{BTreeMap, BTreeSet};

use super::assemble::{MeshSettings, assemble, model_skips, unenforced_skips};
use super::convert::{Changed, Converted, Lookup, Skip, Update};
use super::{KubernetesError, Options};
use crate::model::{Edit, MeshModel, ObjectKey};

/// Keeps the model in step with the cluster; see the module's documentation.
pub struct Updater {
    settings: MeshSettings,
    /// What the model in force was made from.
    converted: Option<Converted>,
    /// The model in force left an object of `converted` out.
    left_out: bool,
    /// Everything said now, as logged.
    said: BTreeSet<Skip>,
    /// What the model says of itself (policies it cannot enforce as written), by namespace.
    model_said: BTreeMap<String, Vec<Skip>>,
}

impl Updater {
    pub fn new(options: &Options) -> Updater {
        Updater {
            settings: options.mesh_settings(),
            converted: None,
            left_out: false,
            said: BTreeSet::new(),
            model_said: BTreeMap::new(),
        }
    }

    /// The model of the cluster as `now` holds it, built whole.
    pub fn first(&mut self, now: &dyn Lookup) -> Result<MeshModel, KubernetesError> {
        self.whole(now, None)
    }

    /// The model after `changed`, made from `current`; `None` when it is the same model.
    pub fn next(
        &mut self,
        changed: &Changed,
        now: &dyn Lookup,
        current: &MeshModel,
    ) -> Result<Option<MeshModel>, KubernetesError> {
        if changed.is_empty() {
            return Ok(None);
        }
        if let Some(update) = self.update(changed, now, current) {
            let Update {
                edits,
                new_skips,
                gone_skips,
            } = update;
            for skip in gone_skips {
                self.said.remove(&skip);
            }
            for skip in new_skips {
                if self.said.insert(skip.clone()) {
                    log(&skip);
                }
            }
            if edits.is_empty() {
                return Ok(None);
            }
            let namespaces = touched_namespaces(&edits);
            match current.apply(edits) {
                Ok(model) => {
                    for ns in namespaces {
                        let skips = namespace_skips(&model, &ns);
                        let before = self.model_said.remove(&ns).unwrap_or_default();
                        self.say(&before, &skips);
                        if !skips.is_empty() {
                            self.model_said.insert(ns, skips);
                        }
                    }
                    return Ok(Some(model));
                }
                // The conversion holds what the model refused: no longer what it was made of.
                Err(_) => self.converted = None,
            }
        }
        let model = self.whole(now, Some(current))?;
        Ok((model != *current).then_some(model))
    }

    /// `changed` converted in place, when it can be.
    fn update(
        &mut self,
        changed: &Changed,
        now: &dyn Lookup,
        current: &MeshModel,
    ) -> Option<Update> {
        if self.left_out {
            return None;
        }
        self.converted.as_mut()?.update(changed, now, current)
    }

    /// Converts everything and makes its model: applied to `current` when only objects
    /// `apply` takes changed, else built whole.
    fn whole(
        &mut self,
        now: &dyn Lookup,
        current: Option<&MeshModel>,
    ) -> Result<MeshModel, KubernetesError> {
        let new = Converted::full(&now.objects(), &self.settings.trust_domain);
        let applied = match (current, &self.converted) {
            (Some(current), Some(old)) if !self.left_out => old
                .edits_to(&new)
                .and_then(|edits| current.apply(edits).ok()),
            _ => None,
        };
        let (model, left_out, mut skips) = match applied {
            Some(model) => {
                let skips: Vec<Skip> = new.skips().cloned().chain(model_skips(&model)).collect();
                (model, false, skips)
            }
            None => {
                let a = assemble(&new.input(), &self.settings)
                    .map_err(|errors| KubernetesError::Model { errors })?;
                (a.model, a.left_out, a.skips)
            }
        };
        skips.sort();
        skips.dedup();
        let now: BTreeSet<Skip> = skips.into_iter().collect();
        for skip in now.difference(&self.said) {
            log(skip);
        }
        self.said = now;
        self.model_said = BTreeMap::new();
        for u in model.unenforced_l7_policies() {
            let ns = u.policy.namespace.clone();
            let skips = unenforced_skips([u]);
            self.model_said.entry(ns).or_default().extend(skips);
        }
        self.converted = Some(new);
        self.left_out = left_out;
        Ok(model)
    }

    /// Everything said now.
    #[cfg(test)]
    pub(super) fn said(&self) -> &BTreeSet<Skip> {
        &self.said
    }

    /// Replaces `before` by `now` in what is said, logging what is new.
    fn say(&mut self, before: &[Skip], now: &[Skip]) {
        for skip in before.iter().filter(|s| !now.contains(s)) {
            self.said.remove(skip);
        }
        for skip in now {
            if self.said.insert(skip.clone()) {
                log(skip);
            }
        }
    }
}

fn log(skip: &Skip) {
    tracing::info!(object = %skip.subject, reason = %skip.reason, "left out of the mesh model, or used in part");
}

/// What the model says of the policies of `namespace`.
fn namespace_skips(model: &MeshModel, namespace: &str) -> Vec<Skip> {
    unenforced_skips(model.unenforced_l7_policies_in(namespace)).collect()
}

/// The namespaces whose workloads or policies `edits` change: where what the model says of
/// its policies may have changed.
fn touched_namespaces(edits: &[Edit]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for edit in edits {
        match edit {
            Edit::Pod(p) => {
                out.insert(p.namespace.clone());
            }
            Edit::Service(s) => {
                out.insert(s.namespace.clone());
                out.extend(s.explicit_endpoints.iter().map(|k| k.namespace.clone()));
            }
            Edit::Policy(p) => {
                out.insert(p.namespace.clone());
            }
            Edit::RemovePod(ObjectKey { namespace, .. })
            | Edit::RemoveService(ObjectKey { namespace, .. })
            | Edit::RemovePolicy(ObjectKey { namespace, .. }) => {
                out.insert(namespace.clone());
            }
            Edit::Node(_)
            | Edit::RemoveNode(_)
            | Edit::Route(_)
            | Edit::RemoveRoute(_)
            | Edit::TrafficPolicy(_)
            | Edit::RemoveTrafficPolicy(_) => {}
        }
    }
    out
}
