//! From the file's shape to the model's input types, remembering where each object was written
//! so the model's errors can be reported by line.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ambit_proto::api::security as spb;
use serde_saphyr::Spanned;

use super::schema::*;
use super::{LocalTopology, TopologyPod, TopologyWaypoint};
use crate::model::{
    self, EgressScope, EgressScopeError, Kind, MeshBuilder, ModelError, ResourceRef,
};
use crate::source::routes::{self, Meta, Note, Outcome, RouteContext, spec as route_spec};
use crate::source::traffic::TrafficContext;

mod traffic;

/// The trust domain when the file does not name one, as in Istio and Kubernetes.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Prefix of workload uids from a mesh file.
const CLUSTER_ID: &str = "local";

fn line<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// Where the parts of one object were written.
#[derive(Debug, Default)]
struct ItemLines {
    name: u64,
    namespace: Option<u64>,
    node: Option<u64>,
    addresses: Vec<(IpAddr, u64)>,
}

/// Lines of every object in a file, by the name the model's errors use.
#[derive(Debug, Default)]
pub struct LineIndex {
    trust_domain: Option<u64>,
    items: HashMap<ResourceRef, ItemLines>,
}

impl LineIndex {
    /// The line that best shows what `error` is about: the offending field when the error is
    /// about one, else the object's name.
    pub fn line_of(&self, error: &ModelError) -> Option<u64> {
        let Some(subject) = error.subject() else {
            return self.trust_domain;
        };
        let item = self.items.get(subject)?;
        let field = match error {
            ModelError::UnknownNode { .. } => item.node,
            ModelError::UnknownNamespace { .. } => item.namespace,
            ModelError::DuplicateAddress { address, .. } => item
                .addresses
                .iter()
                .find(|(a, _)| a == address)
                .map(|(_, l)| *l),
            _ => None,
        };
        Some(field.unwrap_or(item.name))
    }

    /// Keeps the first line of a duplicated name: the model reports the second occurrence, and a
    /// second `insert` would otherwise point at the first.
    fn record(&mut self, subject: ResourceRef, lines: ItemLines) -> bool {
        if self.items.contains_key(&subject) {
            return false;
        }
        self.items.insert(subject, lines);
        true
    }
}

fn addresses(
    ipv4: &Option<Spanned<std::net::Ipv4Addr>>,
    ipv6: &Option<Spanned<std::net::Ipv6Addr>>,
) -> Vec<(IpAddr, u64)> {
    let v4 = ipv4.iter().map(|a| (IpAddr::V4(a.value), line(a)));
    let v6 = ipv6.iter().map(|a| (IpAddr::V6(a.value), line(a)));
    v4.chain(v6).collect()
}

fn namespaced(kind: Kind, ns: &Spanned<String>, name: &Spanned<String>) -> ResourceRef {
    ResourceRef::new(kind, format!("{}/{}", ns.value, name.value))
}

/// The model input, the topology and the line index of a parsed file. A duplicated object is
/// reported here, at its own line (the index knows only the first occurrence's), and left out of
/// the model input.
pub fn convert(
    file: MeshFile,
) -> (
    MeshBuilder,
    LocalTopology,
    LineIndex,
    Vec<(ModelError, u64)>,
) {
    let mut lines = LineIndex {
        trust_domain: file.trust_domain.as_ref().map(line),
        ..Default::default()
    };
    // Errors on a duplicated object are located here, where its own lines are still known.
    let mut located = Vec::new();
    let mut scope_errors = Vec::new();
    let mut seen = |lines: &mut LineIndex, subject: ResourceRef, item: ItemLines| {
        let name_line = item.name;
        if !lines.record(subject.clone(), item) {
            located.push((ModelError::Duplicate { subject }, name_line));
            false
        } else {
            true
        }
    };
    let trust_domain = file
        .trust_domain
        .map(|t| t.value)
        .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.into());
    let mut b = MeshBuilder::new(&trust_domain, CLUSTER_ID);
    b.mtls_mode(match file.mtls_mode {
        MtlsModeSpec::Permissive => model::MtlsMode::Permissive,
        MtlsModeSpec::Strict => model::MtlsMode::Strict,
    });
    b.policy_mode(match file.policy_mode {
        PolicyModeSpec::Enforce => model::PolicyMode::Enforce,
        PolicyModeSpec::Audit => model::PolicyMode::Audit,
    });
    let mut topology = LocalTopology::default();
    // What routes are checked against.
    let mut namespaces = Vec::new();
    let mut services = Vec::new();

    for n in file.nodes {
        let subject = ResourceRef::new(Kind::Node, &n.name.value);
        if !seen(
            &mut lines,
            subject,
            ItemLines {
                name: line(&n.name),
                ..Default::default()
            },
        ) {
            continue;
        }
        topology.nodes.push(n.name.value.clone());
        b.node(model::Node {
            name: n.name.value,
            bootstrap_token: n.bootstrap_token,
        });
    }
    for ns in file.namespaces {
        let subject = ResourceRef::new(Kind::Namespace, &ns.name.value);
        if !seen(
            &mut lines,
            subject,
            ItemLines {
                name: line(&ns.name),
                ..Default::default()
            },
        ) {
            continue;
        }
        let egress_scope = ns.egress_scope.as_ref().and_then(|entries| {
            let words = entries.iter().map(|e| e.value.as_str());
            EgressScope::parse(&ns.name.value, words)
                .map_err(|source| {
                    let at = egress_scope_error_line(&source, entries).unwrap_or(line(&ns.name));
                    let subject = ResourceRef::new(Kind::Namespace, &ns.name.value);
                    scope_errors.push((ModelError::InvalidEgressScope { subject, source }, at));
                })
                .ok()
        });
        let namespace = model::Namespace {
            name: ns.name.value,
            labels: ns.labels,
            egress_scope,
        };
        namespaces.push(namespace.clone());
        b.namespace(namespace);
    }
    for w in file.waypoints {
        let subject = namespaced(Kind::Waypoint, &w.namespace, &w.name);
        let item = ItemLines {
            name: line(&w.name),
            namespace: Some(line(&w.namespace)),
            node: Some(line(&w.node)),
            addresses: addresses(&w.ipv4, &w.ipv6),
        };
        let addrs: Vec<IpAddr> = item.addresses.iter().map(|(a, _)| *a).collect();
        if !seen(&mut lines, subject, item) {
            continue;
        }
        topology.waypoints.push(TopologyWaypoint {
            name: w.name.value.clone(),
            namespace: w.namespace.value.clone(),
            node: w.node.value.clone(),
            addresses: addrs.clone(),
        });
        b.waypoint(model::Waypoint {
            service_account: w.service_account.unwrap_or_else(|| w.name.value.clone()),
            name: w.name.value,
            namespace: w.namespace.value,
            node: w.node.value,
            addresses: addrs,
        });
    }
    for p in file.pods {
        let subject = namespaced(Kind::Pod, &p.namespace, &p.name);
        let item = ItemLines {
            name: line(&p.name),
            namespace: Some(line(&p.namespace)),
            node: Some(line(&p.node)),
            addresses: addresses(&p.ipv4, &p.ipv6),
        };
        let addrs: Vec<IpAddr> = item.addresses.iter().map(|(a, _)| *a).collect();
        if !seen(&mut lines, subject, item) {
            continue;
        }
        topology.pods.push(TopologyPod {
            name: p.name.value.clone(),
            namespace: p.namespace.value.clone(),
            node: p.node.value.clone(),
            addresses: addrs.clone(),
            ports: p.ports,
            app: p.app,
        });
        b.pod(model::Pod {
            name: p.name.value,
            namespace: p.namespace.value,
            service_account: p.service_account,
            node: p.node.value,
            addresses: addrs,
            labels: p.labels,
            // A mesh file describes pods that are running.
            healthy: true,
        });
    }
    for s in file.services {
        let subject = namespaced(Kind::Service, &s.namespace, &s.name);
        let item = ItemLines {
            name: line(&s.name),
            namespace: Some(line(&s.namespace)),
            node: None,
            addresses: s.vips.iter().map(|v| (v.value, line(v))).collect(),
        };
        if !seen(&mut lines, subject, item) {
            continue;
        }
        let service = model::Service {
            name: s.name.value,
            namespace: s.namespace.value,
            vips: s.vips.into_iter().map(|v| v.value).collect(),
            ports: s.ports.into_iter().map(service_port).collect(),
            selector: s.selector,
            // A mesh file's services get their endpoints from their selector only.
            explicit_endpoints: Vec::new(),
            labels: s.labels,
        };
        services.push(service.clone());
        b.service(service);
    }
    for p in file.authorization_policies {
        let subject = namespaced(Kind::AuthorizationPolicy, &p.namespace, &p.name);
        let item = ItemLines {
            name: line(&p.name),
            namespace: Some(line(&p.namespace)),
            ..Default::default()
        };
        if !seen(&mut lines, subject, item) {
            continue;
        }
        b.policy(policy(p));
    }
    let no_gateways = BTreeSet::new();
    let context = RouteContext::new(&namespaces, &services, &no_gateways, &trust_domain);
    for r in file.http_routes {
        let spec = route_spec::HttpRouteSpec {
            parent_refs: r.parent_refs,
            hostnames: r.hostnames,
            rules: r.rules,
        };
        let route = RouteItem {
            name: &r.name,
            namespace: &r.namespace,
            annotations: &r.annotations,
        };
        if let Some(found) = route.convert(&mut lines, &mut located, |meta| {
            routes::http_route(meta, &spec, &context)
        }) {
            b.route(found);
        }
    }
    for r in file.grpc_routes {
        let spec = route_spec::GrpcRouteSpec {
            parent_refs: r.parent_refs,
            hostnames: r.hostnames,
            rules: r.rules,
        };
        let route = RouteItem {
            name: &r.name,
            namespace: &r.namespace,
            annotations: &r.annotations,
        };
        if let Some(found) = route.convert(&mut lines, &mut located, |meta| {
            routes::grpc_route(meta, &spec, &context)
        }) {
            b.route(found);
        }
    }
    let context = TrafficContext::new(&namespaces, &services, &trust_domain);
    for p in file.traffic_policies {
        if let Some(policy) = traffic::convert(p, &context, &mut lines, &mut located) {
            b.traffic_policy(policy);
        }
    }
    located.extend(scope_errors);
    (b, topology, lines, located)
}

/// The line of the entry an egress scope error is about.
fn egress_scope_error_line(error: &EgressScopeError, entries: &[Spanned<String>]) -> Option<u64> {
    let entry = match error {
        EgressScopeError::Empty => return None,
        EgressScopeError::Malformed { entry }
        | EgressScopeError::EveryNamespace { entry }
        | EgressScopeError::HostName { entry, .. }
        | EgressScopeError::InvalidName { entry, .. } => entry,
    };
    entries.iter().find(|e| e.value == *entry).map(line)
}

fn service_port(p: ServicePortSpec) -> model::ServicePort {
    model::ServicePort {
        name: p.name,
        port: p.port,
        target_port: p.target_port.unwrap_or(p.port),
        app_protocol: match p.app_protocol {
            AppProtocolSpec::Tcp => model::AppProtocol::Tcp,
            AppProtocolSpec::Http => model::AppProtocol::Http,
            AppProtocolSpec::Http2 => model::AppProtocol::Http2,
            AppProtocolSpec::Grpc => model::AppProtocol::Grpc,
        },
    }
}

fn ports(ports: Vec<u16>) -> Vec<u32> {
    ports.into_iter().map(u32::from).collect()
}

fn policy(p: PolicySpec) -> model::AuthorizationPolicy {
    model::AuthorizationPolicy {
        name: p.name.value,
        namespace: p.namespace.value,
        selector: p.selector.match_labels,
        action: match p.action {
            ActionSpec::Allow => spb::Action::Allow,
            ActionSpec::Deny => spb::Action::Deny,
            ActionSpec::Audit => spb::Action::Audit,
        },
        // The model sets it from the namespace's policy mode.
        dry_run: false,
        rules: p
            .rules
            .into_iter()
            .map(|r| spb::Rule {
                from: r
                    .from
                    .into_iter()
                    .map(|s| spb::Source {
                        principals: s.principals,
                        not_principals: s.not_principals,
                        namespaces: s.namespaces,
                        not_namespaces: s.not_namespaces,
                        ip_blocks: s.ip_blocks,
                        not_ip_blocks: s.not_ip_blocks,
                    })
                    .collect(),
                to: r
                    .to
                    .into_iter()
                    .map(|d| spb::Destination {
                        ports: ports(d.ports),
                        not_ports: ports(d.not_ports),
                        methods: d.methods,
                        not_methods: d.not_methods,
                        paths: d.paths,
                        not_paths: d.not_paths,
                        hosts: d.hosts,
                        not_hosts: d.not_hosts,
                        headers: d
                            .headers
                            .into_iter()
                            .map(|h| spb::HeaderMatch {
                                name: h.name,
                                values: h.values,
                            })
                            .collect(),
                    })
                    .collect(),
                when: r
                    .when
                    .into_iter()
                    .map(|c| spb::Condition {
                        key: c.key,
                        values: c.values,
                        not_values: c.not_values,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// An `httpRoutes` or `grpcRoutes` item's metadata.
struct RouteItem<'a> {
    name: &'a Spanned<String>,
    namespace: &'a Spanned<String>,
    annotations: &'a Labels,
}

impl RouteItem<'_> {
    /// The route, or `None` with every problem located: a file is for the mesh alone, so what
    /// Kubernetes would leave aside (a parent that is no Service, a parent or field ignored) is
    /// an error here too.
    fn convert(
        &self,
        lines: &mut LineIndex,
        located: &mut Vec<(ModelError, u64)>,
        convert: impl FnOnce(&Meta<'_>) -> Outcome,
    ) -> Option<model::Route> {
        let subject = namespaced(Kind::Route, self.namespace, self.name);
        let name_line = line(self.name);
        let item = ItemLines {
            name: name_line,
            namespace: Some(line(self.namespace)),
            ..Default::default()
        };
        if !lines.record(subject.clone(), item) {
            located.push((ModelError::Duplicate { subject }, name_line));
            return None;
        }
        let meta = Meta {
            namespace: &self.namespace.value,
            name: &self.name.value,
            annotations: self.annotations,
            spec_path: "",
        };
        let outcome = convert(&meta);
        let mut problem = |reason: String, at: Option<u64>| {
            let error = ModelError::InvalidRoute {
                subject: subject.clone(),
                reason,
            };
            located.push((error, at.unwrap_or(name_line)));
        };
        for (field, at) in &outcome.foreign_parents {
            problem(
                format!(
                    "{field} is not a Service; a mesh file's routes attach to Services: {{group: \"\", kind: Service, name: <service>}}"
                ),
                *at,
            );
        }
        for note in outcome.notes {
            if let Note::Ignored { reason, line } = note {
                problem(reason, line);
            }
        }
        match outcome.route {
            Ok(Some(route)) => Some(route),
            Ok(None) => {
                if outcome.foreign_parents.is_empty() {
                    problem(
                        "it has no parentRefs; give the services it routes: parentRefs: [{group: \"\", kind: Service, name: <service>}]".into(),
                        None,
                    );
                }
                None
            }
            Err(refusal) => {
                problem(refusal.reason, refusal.line);
                None
            }
        }
    }
}
