//! A snapshot of an applied model, built incrementally from the previous snapshot, against one
//! built from nothing: the same resources at the same versions, the same shared part (the one
//! `scope::mesh_wide` makes), and every node whose scope changed named as touched.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::Snapshot;
use crate::model::random_edits::{Rng, random_edit, seed};
use crate::push::ResourceKey;
use crate::push::on_demand::keys_for;
use crate::push::scope::mesh_wide;

fn versions(s: &Snapshot) -> BTreeMap<ResourceKey, u64> {
    s.resources
        .iter()
        .map(|(k, r)| (k.clone(), r.version))
        .collect()
}

fn shared(s: &Snapshot) -> BTreeMap<ResourceKey, u64> {
    s.mesh_wide()
        .resolved
        .iter()
        .map(|(k, r)| (k.clone(), r.version))
        .collect()
}

#[test]
fn an_incremental_snapshot_is_the_snapshot_built_from_nothing() {
    let mut incremental_builds = 0;
    for seed_value in 1..=25u64 {
        let mut rng = Rng(seed_value.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (_, model) = seed(&mut rng);
        let mut snapshot = Snapshot::build(Arc::new(model), None);
        // As a subscription sent everything would: each snapshot then patches the part.
        let _user = snapshot.use_mesh_wide();
        snapshot.mesh_wide();
        for step in 0..60 {
            let edit = random_edit(&mut rng);
            let Ok(next) = snapshot.model().apply([edit.clone()]) else {
                continue;
            };
            let next = Arc::new(next);
            let new = Snapshot::build(next.clone(), Some(&snapshot));
            let fresh = Snapshot::build(next.clone(), None);
            let at = format!("seed {seed_value} step {step}: {edit:?}");
            assert_eq!(versions(&new), versions(&fresh), "{at}: resources");
            assert_eq!(shared(&new), shared(&fresh), "{at}: shared part");
            let expected: Vec<ResourceKey> = mesh_wide(&next);
            assert_eq!(
                shared(&new).into_keys().collect::<Vec<_>>(),
                expected,
                "{at}"
            );
            let hash = fresh.mesh_wide().hash;
            assert_eq!(new.mesh_wide().hash, hash, "{at}: shared hash");
            // Every key that changed in the shared part is listed for the subscriptions.
            let changes = new.mesh_wide().changes.as_ref().expect("has a previous");
            let (old_shared, new_shared) = (shared(&snapshot), shared(&new));
            for key in old_shared.keys().chain(new_shared.keys()) {
                if old_shared.get(key) != new_shared.get(key) {
                    assert!(changes.keys.contains(key), "{at}: {key} not in the changes");
                }
            }
            // Every resource that came, went or was re-versioned is listed for on-demand
            // subscriptions, and so is every address at which a lookup brings other keys.
            let changed = new.changed.as_ref().expect("incremental");
            let (old_versions, new_versions) = (versions(&snapshot), versions(&new));
            for key in old_versions.keys().chain(new_versions.keys()) {
                if old_versions.get(key) != new_versions.get(key) {
                    assert!(changed.keys.contains(key), "{at}: {key} not in the changes");
                }
            }
            let addresses = snapshot.model().workloads().chain(next.workloads());
            let addresses = addresses.flat_map(|w| w.pod.addresses.clone()).chain(
                (snapshot.model().services().chain(next.services()))
                    .flat_map(|s| s.service.vips.clone()),
            );
            for ip in addresses {
                let brings = |m: &crate::model::MeshModel| keys_for(m, ip);
                if brings(snapshot.model()) != brings(&next) {
                    assert!(
                        changed.addresses.contains(&ip),
                        "{at}: {ip} not in the changes"
                    );
                }
            }
            // Every node whose own workloads changed is touched.
            let touched = new.touched_nodes.as_ref().expect("incremental");
            for node in snapshot.model().nodes().chain(next.nodes()) {
                let mine = |s: &Snapshot| -> Vec<String> {
                    s.model()
                        .workloads_on_node(&node.name)
                        .filter_map(|w| {
                            let key = ResourceKey::new(
                                ambit_proto::api::discovery::ResourceType::Workload,
                                w.uid.as_str(),
                            );
                            s.resource(&key).map(|r| format!("{key}@{}", r.version))
                        })
                        .collect()
                };
                if mine(&snapshot) != mine(&new) {
                    assert!(
                        touched.contains(&node.name),
                        "{at}: {} not touched",
                        node.name
                    );
                }
            }
            snapshot = new;
            incremental_builds += 1;
        }
    }
    assert!(incremental_builds > 500, "{incremental_builds}");
}
