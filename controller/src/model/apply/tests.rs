//! `apply` against the full build: a sequence of random edits of every kind, each applied to
//! the model in place and, from the same objects, built from scratch; the two must agree on
//! whether the result is valid and, when it is, be the same model. The edits' record must name
//! every object that differs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ambit_proto::api::route::{BackendRef, ParentRef, Route as RouteProto, RouteRule};
use ambit_proto::api::security::{Action, Rule, Source};
use ambit_proto::api::traffic::TrafficPolicy as TrafficProto;

use super::*;

const TD: &str = "cluster.local";

/// A small deterministic generator (xorshift64*): the same seed, the same edits.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const NAMESPACES: [&str; 3] = ["mesh", "legacy", "audit"];
const APPS: [&str; 3] = ["a", "b", "c"];

/// The objects of a mesh, by kind and key, as a source holds them.
#[derive(Clone, Default)]
pub(crate) struct Objects {
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<ObjectKey, Pod>,
    services: BTreeMap<ObjectKey, Service>,
    policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    routes: BTreeMap<ObjectKey, Route>,
    traffic: BTreeMap<ObjectKey, TrafficPolicy>,
}

impl Objects {
    pub(crate) fn build(&self) -> Result<MeshModel, Vec<ModelError>> {
        let mut b = MeshBuilder::new(TD, "test");
        b.allow_unaddressed_pods();
        b.namespace(Namespace {
            name: "mesh".into(),
            labels: labels(&[
                (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT),
                (MTLS_MODE_LABEL, "strict"),
            ]),
            egress_scope: None,
        });
        b.namespace(Namespace {
            name: "legacy".into(),
            labels: Labels::new(),
            egress_scope: None,
        });
        b.namespace(Namespace {
            name: "audit".into(),
            labels: labels(&[
                (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT),
                (POLICY_MODE_LABEL, "audit"),
                (USE_WAYPOINT_LABEL, "wp"),
            ]),
            egress_scope: None,
        });
        b.waypoint(Waypoint {
            name: "wp".into(),
            namespace: "audit".into(),
            node: "node-0".into(),
            service_account: "wp".into(),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))],
        });
        self.nodes.values().for_each(|n| {
            b.node(n.clone());
        });
        self.pods.values().for_each(|p| {
            b.pod(p.clone());
        });
        self.services.values().for_each(|s| {
            b.service(s.clone());
        });
        self.policies.values().for_each(|p| {
            b.policy(p.clone());
        });
        self.routes.values().for_each(|r| {
            b.route(r.clone());
        });
        self.traffic.values().for_each(|t| {
            b.traffic_policy(t.clone());
        });
        b.build()
    }

    /// The edit, applied to these objects.
    pub(crate) fn edit(&mut self, edit: &Edit) {
        let key = |ns: &str, name: &str| ObjectKey::new(ns, name);
        match edit.clone() {
            Edit::Node(n) => drop(self.nodes.insert(n.name.clone(), n)),
            Edit::RemoveNode(n) => drop(self.nodes.remove(&n)),
            Edit::Pod(p) => drop(self.pods.insert(key(&p.namespace, &p.name), p)),
            Edit::RemovePod(k) => drop(self.pods.remove(&k)),
            Edit::Service(s) => drop(self.services.insert(key(&s.namespace, &s.name), s)),
            Edit::RemoveService(k) => drop(self.services.remove(&k)),
            Edit::Policy(p) => drop(self.policies.insert(key(&p.namespace, &p.name), p)),
            Edit::RemovePolicy(k) => drop(self.policies.remove(&k)),
            Edit::Route(r) => drop(self.routes.insert(key(&r.namespace, &r.name), r)),
            Edit::RemoveRoute(k) => drop(self.routes.remove(&k)),
            Edit::TrafficPolicy(t) => drop(self.traffic.insert(key(&t.namespace, &t.name), t)),
            Edit::RemoveTrafficPolicy(k) => drop(self.traffic.remove(&k)),
        }
    }
}

fn host(ns: &str, name: &str) -> String {
    service_hostname(name, ns, TD)
}

/// One random edit. Names and addresses come from small sets, so edits collide: a pod takes
/// another's IP, a route names a service that is gone, two traffic policies want one service.
pub(crate) fn random_edit(rng: &mut Rng) -> Edit {
    let ns = rng.pick(&NAMESPACES).to_string();
    let app = rng.pick(&APPS);
    let remove = rng.below(4) == 0;
    let name = |rng: &mut Rng, prefix: &str| format!("{prefix}-{}", rng.below(4));
    match rng.below(7) {
        0 => {
            let name = format!("node-{}", rng.below(3));
            if remove {
                return Edit::RemoveNode(name);
            }
            let token = rng
                .below(2)
                .eq(&0)
                .then(|| format!("token-{}", rng.below(4)));
            Edit::Node(Node {
                name,
                bootstrap_token: token,
            })
        }
        1 | 2 => {
            let name = name(rng, app);
            if remove {
                return Edit::RemovePod(ObjectKey::new(ns, name));
            }
            let addresses = match rng.below(5) {
                0 => Vec::new(),
                n => vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    0,
                    0,
                    (n * 10 + rng.below(6)) as u8,
                ))],
            };
            let mut l = labels(&[("app", app)]);
            match rng.below(8) {
                0 => drop(l.insert(DATAPLANE_MODE_LABEL.into(), DATAPLANE_MODE_NONE.into())),
                1 => drop(l.insert(USE_WAYPOINT_LABEL.into(), "wp".into())),
                2 => drop(l.insert("version".into(), "v2".into())),
                _ => {}
            }
            Edit::Pod(Pod {
                name,
                namespace: ns,
                service_account: app.into(),
                node: format!("node-{}", rng.below(3)),
                addresses,
                labels: l,
                healthy: rng.below(5) != 0,
            })
        }
        3 => {
            let name = format!("svc-{app}");
            if remove {
                return Edit::RemoveService(ObjectKey::new(ns, name));
            }
            let explicit = rng.below(3) == 0;
            let mut l = Labels::new();
            if rng.below(4) == 0 {
                l.insert(USE_WAYPOINT_LABEL.into(), rng.pick(&["wp", "none"]).into());
            }
            Edit::Service(Service {
                name,
                namespace: ns.clone(),
                vips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, rng.below(12) as u8))],
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: 8080,
                    app_protocol: AppProtocol::Http,
                }],
                selector: if explicit {
                    Labels::new()
                } else {
                    labels(&[("app", app)])
                },
                explicit_endpoints: if explicit {
                    let other = rng.pick(&NAMESPACES);
                    vec![
                        ObjectKey::new(ns, format!("{app}-{}", rng.below(4))),
                        ObjectKey::new(other, format!("{}-{}", rng.pick(&APPS), rng.below(4))),
                    ]
                } else {
                    Vec::new()
                },
                labels: l,
            })
        }
        4 => {
            let name = name(rng, "allow");
            if remove {
                return Edit::RemovePolicy(ObjectKey::new(ns, name));
            }
            let principal = match rng.below(6) {
                0 => "not a principal".to_string(),
                n => format!("spiffe://{TD}/ns/mesh/sa/client-{n}"),
            };
            Edit::Policy(AuthorizationPolicy {
                name,
                namespace: ns,
                selector: if rng.below(3) == 0 {
                    Labels::new()
                } else {
                    labels(&[("app", app)])
                },
                action: Action::Allow,
                rules: vec![Rule {
                    from: vec![Source {
                        principals: vec![principal],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                dry_run: false,
            })
        }
        5 => {
            let name = name(rng, "route");
            if remove {
                return Edit::RemoveRoute(ObjectKey::new(ns, name));
            }
            let backend_ns = rng.pick(&NAMESPACES);
            Edit::Route(RouteProto {
                name,
                namespace: ns.clone(),
                parents: vec![ParentRef {
                    service: host(&ns, &format!("svc-{app}")),
                    ..Default::default()
                }],
                rules: vec![RouteRule {
                    backends: vec![BackendRef {
                        service: host(backend_ns, &format!("svc-{}", rng.pick(&APPS))),
                        weight: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
        }
        _ => {
            let name = name(rng, "tp");
            if remove {
                return Edit::RemoveTrafficPolicy(ObjectKey::new(ns, name));
            }
            Edit::TrafficPolicy(TrafficProto {
                name,
                namespace: ns.clone(),
                target: host(&ns, &format!("svc-{app}")),
                ..Default::default()
            })
        }
    }
}

/// Every key whose object differs between `old` and `new` must be in `changes`.
fn assert_recorded(old: &MeshModel, new: &MeshModel, changes: &Changes, edit: &Edit) {
    fn differing<'a, T: PartialEq>(old: KeyedIter<'a, T>, new: KeyedIter<'a, T>) -> Vec<ObjectKey> {
        let old: BTreeMap<_, _> = old.collect();
        let new: BTreeMap<_, _> = new.collect();
        let keys: std::collections::BTreeSet<_> = old.keys().chain(new.keys()).collect();
        keys.into_iter()
            .filter(|k| old.get(*k) != new.get(*k))
            .map(|k| (*k).clone())
            .collect()
    }
    let (o, n) = (old.keyed(), new.keyed());
    let checks = [
        (
            differing(o.workloads, n.workloads),
            &changes.workloads,
            "workload",
        ),
        (
            differing(o.services, n.services),
            &changes.services,
            "service",
        ),
        (
            differing(o.policies, n.policies),
            &changes.policies,
            "policy",
        ),
        (differing(o.routes, n.routes), &changes.routes, "route"),
        (
            differing(o.traffic_policies, n.traffic_policies),
            &changes.traffic_policies,
            "traffic policy",
        ),
    ];
    for (differ, recorded, kind) in checks {
        for key in differ {
            assert!(
                recorded.contains(&key),
                "{kind} {key} changed by {edit:?} but not recorded"
            );
        }
    }
    assert!(differing(o.waypoints, n.waypoints).is_empty());
}

/// A starting mesh: every node, a few pods, services and policies.
pub(crate) fn seed(rng: &mut Rng) -> (Objects, MeshModel) {
    let mut objects = Objects::default();
    for i in 0..3 {
        objects.edit(&Edit::Node(Node {
            name: format!("node-{i}"),
            bootstrap_token: Some(format!("token-{i}")),
        }));
    }
    let mut model = objects.build().expect("nodes and namespaces only");
    for _ in 0..30 {
        let edit = random_edit(rng);
        let mut next = objects.clone();
        next.edit(&edit);
        if let Ok(m) = next.build() {
            objects = next;
            model = m;
        }
    }
    (objects, model)
}

#[test]
fn every_edit_applied_in_place_is_the_model_a_full_build_makes() {
    let mut applied = [0usize; 2];
    for seed_value in 1..=40u64 {
        let mut rng = Rng(seed_value.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (mut objects, mut model) = seed(&mut rng);
        for step in 0..150 {
            let edit = random_edit(&mut rng);
            let mut next = objects.clone();
            next.edit(&edit);
            let built = next.build();
            let incremental = model.apply([edit.clone()]);
            match (&built, &incremental) {
                (Ok(built), Ok(new)) => {
                    assert!(
                        new == built,
                        "seed {seed_value} step {step}: {edit:?} applied differs from the full build"
                    );
                    let changes = new.changes_since(&model).expect("applied to `model`");
                    assert_recorded(&model, new, changes, &edit);
                    objects = next;
                    model = incremental.unwrap();
                    applied[0] += 1;
                }
                (Err(_), Err(_)) => applied[1] += 1,
                (built, incremental) => panic!(
                    "seed {seed_value} step {step}: {edit:?}: full build {:?}, applied {:?}",
                    built.as_ref().err(),
                    incremental.as_ref().err()
                ),
            }
        }
    }
    // The generator must exercise both outcomes, or the test proves little.
    assert!(applied[0] > 1000 && applied[1] > 300, "{applied:?}");
}

#[test]
fn a_batch_applies_as_its_edits_one_by_one_in_any_order() {
    for seed_value in 1..=30u64 {
        let mut rng = Rng(seed_value.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        let (mut objects, model) = seed(&mut rng);
        let edits: Vec<Edit> = (0..6).map(|_| random_edit(&mut rng)).collect();
        edits.iter().for_each(|e| objects.edit(e));
        let mut reversed = edits.clone();
        reversed.reverse();
        // Of two edits of one object the later wins, so reversing changes the outcome; only
        // batches of distinct objects are order-free.
        let distinct: std::collections::BTreeSet<ResourceRef> =
            edits.iter().map(Edit::subject).collect();
        if let Ok(new) = model.apply(edits.clone()) {
            assert!(
                new == objects.build().expect("applied, so valid"),
                "seed {seed_value}"
            );
            if distinct.len() == edits.len() {
                assert!(model.apply(reversed).ok() == Some(new), "seed {seed_value}");
            }
        }
    }
}

#[test]
fn a_model_applied_to_knows_its_parent_and_no_other() {
    let mut rng = Rng(7);
    let (_, model) = seed(&mut rng);
    let child = model
        .apply([Edit::RemovePolicy(ObjectKey::new("mesh", "none"))])
        .unwrap();
    assert!(child.changes_since(&model).is_some());
    assert!(model.changes_since(&child).is_none());
    let grandchild = child.apply([]).unwrap();
    assert!(grandchild.changes_since(&model).is_none());
    assert!(grandchild.changes_since(&child).is_some());
}
