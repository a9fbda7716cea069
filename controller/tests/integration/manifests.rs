//! Every document of every file in manifests/ read into its Kubernetes (k8s_openapi), Gateway
//! API or CRD type, strictly: a field the type does not know (a typo) fails, though serde alone
//! would drop it. Also: the controller's and the node agent's RBAC grant exactly what the code
//! calls, the controller's, ztunnel's and the node agent's args are flags their binaries accept
//! (and agree on ztunnel's socket), and the kustomization lists every file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ambit_controller::ca::{root_configmap, root_secret};
use ambit_controller::waypoints::{self, REQUIRED_PERMISSIONS};
use clap::Parser;
use gateway_api::apis::experimental::httproutes::HttpRoute;
use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// One YAML document: where it is, and its content.
struct Doc {
    origin: String,
    value: Value,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn documents() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&manifests_dir(), &mut files);
    files.sort();
    assert!(files.len() >= 7, "manifests/ has too few files: {files:?}");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file
            .strip_prefix(manifests_dir())
            .unwrap()
            .display()
            .to_string();
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
        for (i, value) in values.into_iter().enumerate() {
            if value.is_null() {
                continue;
            }
            docs.push(Doc {
                origin: format!("{name} document {}", i + 1),
                value,
            });
        }
    }
    docs
}

/// Paths present in `original` that `typed` (the same document after a trip through its
/// type) lost: fields the type does not know.
fn lost_fields(original: &Value, typed: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(back) => lost_fields(value, back, &here, lost),
                    None if value.is_null() => {}
                    None => lost.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, value) in a.iter().enumerate() {
                match b.get(i) {
                    Some(back) => lost_fields(value, back, &format!("{path}[{i}]"), lost),
                    None => lost.push(format!("{path}[{i}]")),
                }
            }
        }
        _ => {}
    }
}

/// `doc` as a `T`, failing on any field `T` does not have.
fn strict<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    let typed: T =
        serde_json::from_value(doc.value.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc.origin));
    let back = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    lost_fields(&doc.value, &back, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{}: unknown fields (typos?): {lost:?}",
        doc.origin
    );
    typed
}

/// Checks `value` against a CRD's structural schema (what the API server would prune or
/// refuse): unknown properties, types, enums, required fields.
fn check_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != true {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(object) = value.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            if !object.contains_key(key.as_str().unwrap()) {
                errors.push(format!("{path}: required field {key} is missing"));
            }
        }
        for (key, field) in object {
            let here = format!("{path}.{key}");
            if let Some(sub) = schema["properties"].get(key) {
                check_schema(sub, field, &here, errors);
            } else if schema["additionalProperties"].is_object() {
                check_schema(&schema["additionalProperties"], field, &here, errors);
            } else if schema["x-kubernetes-preserve-unknown-fields"] != true {
                errors.push(format!("{here}: unknown field"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            check_schema(&schema["items"], item, &format!("{path}[{i}]"), errors);
        }
    }
}

/// A custom resource of one of our CRDs, checked against that CRD's schema.
fn check_custom_resource(doc: &Doc, crds: &[CustomResourceDefinition]) {
    let api_version = doc.value["apiVersion"].as_str().unwrap();
    let kind = doc.value["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap();
    let crd = crds
        .iter()
        .find(|c| c.spec.group == group && c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("{}: no CRD in manifests/ for {kind}", doc.origin));
    let served = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version && v.served)
        .unwrap_or_else(|| panic!("{}: {api_version} is not a served version", doc.origin));
    let schema = served
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let schema = serde_json::to_value(schema).unwrap();
    let mut body = doc.value.clone();
    let metadata = body.as_object_mut().unwrap().remove("metadata");
    strict::<ObjectMeta>(&Doc {
        origin: format!("{} metadata", doc.origin),
        value: metadata.unwrap_or_default(),
    });
    for key in ["apiVersion", "kind"] {
        body.as_object_mut().unwrap().remove(key);
    }
    let mut errors = Vec::new();
    check_schema(&schema, &body, "", &mut errors);
    assert!(errors.is_empty(), "{}: {errors:#?}", doc.origin);
}

fn kind_of(doc: &Doc) -> (&str, &str) {
    (
        doc.value["apiVersion"].as_str().unwrap_or_default(),
        doc.value["kind"].as_str().unwrap_or_default(),
    )
}

#[test]
fn every_manifest_document_is_its_type_without_unknown_fields() {
    let docs = documents();
    let crds: Vec<CustomResourceDefinition> = docs
        .iter()
        .filter(|d| kind_of(d) == ("apiextensions.k8s.io/v1", "CustomResourceDefinition"))
        .map(strict)
        .collect();
    assert!(!crds.is_empty(), "no CRDs found under manifests/crds");
    let mut kinds = BTreeSet::new();
    for doc in &docs {
        let (api_version, kind) = kind_of(doc);
        kinds.insert(kind.to_string());
        match (api_version, kind) {
            ("v1", "Namespace") => drop(strict::<Namespace>(doc)),
            ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(doc)),
            ("v1", "Service") => drop(strict::<Service>(doc)),
            ("apps/v1", "Deployment") => drop(strict::<Deployment>(doc)),
            ("apps/v1", "DaemonSet") => drop(strict::<DaemonSet>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(strict::<ClusterRole>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                drop(strict::<ClusterRoleBinding>(doc))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => drop(strict::<Role>(doc)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(strict::<RoleBinding>(doc)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {}
            ("gateway.networking.k8s.io/v1", "GatewayClass") => drop(strict::<GatewayClass>(doc)),
            ("gateway.networking.k8s.io/v1", "Gateway") => drop(strict::<Gateway>(doc)),
            // The experimental type: a superset (retry), as the README's install allows.
            ("gateway.networking.k8s.io/v1", "HTTPRoute") => drop(strict::<HttpRoute>(doc)),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {}
            (group, _) if group.starts_with("ambit.io/") => check_custom_resource(doc, &crds),
            _ => panic!("{}: no type known for {api_version} {kind}", doc.origin),
        }
    }
    for expected in [
        "DaemonSet",
        "Deployment",
        "ClusterRole",
        "Gateway",
        "HTTPRoute",
        "AuthorizationPolicy",
    ] {
        assert!(kinds.contains(expected), "no {expected} in manifests/");
    }
}

#[test]
fn the_strict_reading_catches_a_typo() {
    let doc = Doc {
        origin: "typo".into(),
        value: serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x"},
            "spec": {"ports": [{"port": 80, "targtPort": 8080}]},
        }),
    };
    let caught = std::panic::catch_unwind(|| drop(strict::<Service>(&doc)));
    let message = *caught.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains(".spec.ports[0].targtPort"), "{message}");
    let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let mut errors = Vec::new();
    check_schema(
        &schema,
        &serde_json::json!({"a": "x", "b": 1}),
        "",
        &mut errors,
    );
    assert_eq!(errors, [".b: unknown field"]);
}

fn find<T: DeserializeOwned + Serialize>(docs: &[Doc], kind: &str, name: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d.value["kind"] == kind && d.value["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in manifests/"));
    strict(doc)
}

/// What the Kubernetes source lists and watches (controller/src/source/kubernetes/watch.rs,
/// which declares no list of its own), and what the CA calls to check tokens
/// (controller/src/ca/token_review.rs: a TokenReview create).
const SOURCE_AND_CA_PERMISSIONS: &[(&str, &str, &str)] = &[
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("gateway.networking.k8s.io", "gateways", "list"),
    ("gateway.networking.k8s.io", "gateways", "watch"),
    ("gateway.networking.k8s.io", "httproutes", "list"),
    ("gateway.networking.k8s.io", "httproutes", "watch"),
    ("gateway.networking.k8s.io", "grpcroutes", "list"),
    ("gateway.networking.k8s.io", "grpcroutes", "watch"),
    ("ambit.io", "authorizationpolicies", "list"),
    ("ambit.io", "authorizationpolicies", "watch"),
    ("ambit.io", "trafficpolicies", "list"),
    ("ambit.io", "trafficpolicies", "watch"),
    ("authentication.k8s.io", "tokenreviews", "create"),
];

type Grant = (String, String, String);

/// Every (group, resource, verb) `rules` grant, each with the names it is restricted to (empty:
/// any). Wildcards and non-resource URLs are refused outright: they grant what no list says.
fn granted(rules: &[PolicyRule], origin: &str) -> Vec<(Grant, Vec<String>)> {
    let mut out = Vec::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "{origin}: non-resource URLs {rule:?}"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        for list in [&groups, &resources, &rule.verbs] {
            assert!(
                !list.iter().any(|x| x == "*"),
                "{origin}: wildcard in {rule:?}"
            );
        }
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    out.push((
                        (group.clone(), resource.clone(), verb.clone()),
                        rule.resource_names.clone().unwrap_or_default(),
                    ));
                }
            }
        }
    }
    out
}

/// Fails unless `grants` are exactly `needed`, naming what is missing and what is extra.
fn assert_exactly<'a>(
    grants: &[(Grant, Vec<String>)],
    needed: impl IntoIterator<Item = &'a (&'a str, &'a str, &'a str)>,
    origin: &str,
) {
    let have: BTreeSet<Grant> = grants.iter().map(|(g, _)| g.clone()).collect();
    let want: BTreeSet<Grant> = needed
        .into_iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "manifests/controller.yaml {origin}: missing {missing:?}, granted but never used {extra:?}"
    );
}

#[test]
fn the_controller_may_do_exactly_what_it_does() {
    let docs = documents();
    let cluster_role: ClusterRole = find(&docs, "ClusterRole", "ambit-controller");
    let grants = granted(&cluster_role.rules.unwrap_or_default(), "ClusterRole");
    assert_exactly(
        &grants,
        REQUIRED_PERMISSIONS.iter().chain(SOURCE_AND_CA_PERMISSIONS),
        "ClusterRole ambit-controller",
    );
    assert!(
        grants.iter().all(|(_, names)| names.is_empty()),
        "the ClusterRole restricts by name; {grants:?}"
    );
    // Secrets only in ambit-system, for the CA root.
    assert!(!grants.iter().any(|((_, r, _), _)| r == "secrets"));
    assert!(
        REQUIRED_PERMISSIONS
            .iter()
            .any(|(_, resource, _)| *resource == "configmaps"),
        "waypoints get their namespace's root certificate ConfigMap"
    );

    let role: Role = find(&docs, "Role", "ambit-controller");
    assert_eq!(role.metadata.namespace.as_deref(), Some("ambit-system"));
    let grants = granted(&role.rules.unwrap_or_default(), "Role");
    // The CA root's Secret and the root certificate ConfigMap's publisher: their namespace only.
    assert_exactly(
        &grants,
        root_secret::REQUIRED_PERMISSIONS
            .iter()
            .chain(root_configmap::REQUIRED_PERMISSIONS),
        "Role ambit-system/ambit-controller",
    );
    // Reading secrets: the CA's one Secret, the one the controller's --ca-secret names.
    let controller: Deployment = find(&docs, "Deployment", "ambit-controller");
    let pod = controller.spec.unwrap().template.spec.unwrap();
    let args = args_of(&pod.containers[0], "controller");
    let config = ambit_controller::config::Config::try_parse_from(&args).unwrap();
    let ca_secret = config
        .ca_secret
        .expect("the controller keeps its CA in a Secret");
    assert_eq!(ca_secret.namespace, "ambit-system");
    for ((_, resource, verb), names) in &grants {
        match (resource.as_str(), verb.as_str()) {
            ("secrets", "get") => {
                assert_eq!(names, std::slice::from_ref(&ca_secret.name), "secrets get")
            }
            // A create cannot be restricted by name (a rule with names would not allow it).
            (_, "create") => assert!(names.is_empty(), "{resource} create restricted by name"),
            _ => {}
        }
    }

    let binding: ClusterRoleBinding = find(&docs, "ClusterRoleBinding", "ambit-controller");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("ambit-controller", Some("ambit-system"))
    );
}

#[test]
fn the_exact_check_names_an_extra_verb() {
    let rule = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["services".into()]),
        verbs: vec!["get".into(), "update".into()],
        ..PolicyRule::default()
    };
    let grants = granted(&[rule], "test");
    let caught = std::panic::catch_unwind(|| {
        assert_exactly(&grants, &[("", "services", "get")], "test");
    });
    let message = *caught.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("\"update\""), "{message}");
}

/// The container's args with `$(VAR)` references resolved as the kubelet would, with a
/// stand-in for downward-API values.
fn args_of(container: &Container, program: &str) -> Vec<String> {
    let mut args = vec![program.to_string()];
    for arg in container.args.iter().flatten() {
        let mut arg = arg.clone();
        for env in container.env.iter().flatten() {
            arg = arg.replace(&format!("$({})", env.name), "stand-in");
        }
        args.push(arg);
    }
    args
}

#[test]
fn the_controller_and_ztunnel_args_are_flags_they_accept() {
    let docs = documents();
    let controller: Deployment = find(&docs, "Deployment", "ambit-controller");
    let pod = controller.spec.unwrap().template.spec.unwrap();
    let args = args_of(&pod.containers[0], "controller");
    let config = ambit_controller::config::Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("manifests/controller.yaml args {args:?}: {e}"));
    assert_eq!(
        config.source,
        ambit_controller::config::SourceSpec::Kubernetes
    );
    assert!(config.waypoints);
    // ztunnel mounts the ConfigMap from the namespace the controller publishes it in.
    assert_eq!(config.root_cert_namespace(), "ambit-system");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("ambit-controller")
    );

    let ztunnel: DaemonSet = find(&docs, "DaemonSet", "ztunnel");
    let pod = ztunnel.spec.unwrap().template.spec.unwrap();
    let args = args_of(&pod.containers[0], "ztunnel");
    let config = ambit_ztunnel::config::Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("manifests/ztunnel.yaml args {args:?}: {e}"));
    assert_eq!(config.node, "stand-in");
    let node_env = pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    let field = node_env
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    // The token ztunnel shows the CA: projected, for the CA's audience, where --token-file says.
    let token_file = config.token_file.unwrap();
    let token = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .next()
        .expect("no projected service-account token in the ztunnel DaemonSet");
    assert_eq!(
        token.audience.as_deref(),
        Some(waypoints::WaypointOptions::default().ca_audience.as_str())
    );
    assert_eq!(
        token_file.file_name().unwrap().to_str(),
        Some(token.path.as_str())
    );
}

#[test]
fn the_kustomization_lists_every_manifest_but_the_sample() {
    let text = std::fs::read_to_string(manifests_dir().join("kustomization.yaml")).unwrap();
    let kustomization: Value = serde_saphyr::from_str(&text).unwrap();
    let keys: BTreeSet<&str> = kustomization
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, BTreeSet::from(["apiVersion", "kind", "resources"]));
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let mut files = Vec::new();
    yaml_files(&manifests_dir(), &mut files);
    let present: BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(manifests_dir())
                .unwrap()
                .display()
                .to_string()
        })
        .filter(|f| f != "kustomization.yaml" && f != "sample-app.yaml")
        .collect();
    assert_eq!(listed, present);
    // Install order: the namespace before what lives in it, CRDs before their objects.
    let order: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(order.first(), Some(&"namespace.yaml"));
}

/// The pod templates of every Deployment and DaemonSet in manifests/, by name.
fn pod_specs(docs: &[Doc]) -> Vec<(String, k8s_openapi::api::core::v1::PodSpec)> {
    docs.iter()
        .filter_map(|doc| {
            let name = doc.value["metadata"]["name"].as_str()?.to_string();
            let spec = match kind_of(doc) {
                ("apps/v1", "Deployment") => strict::<Deployment>(doc).spec?.template.spec,
                ("apps/v1", "DaemonSet") => strict::<DaemonSet>(doc).spec?.template.spec,
                _ => None,
            }?;
            Some((name, spec))
        })
        .collect()
}

#[test]
fn ztunnel_mounts_the_root_certificate_configmap_and_no_pod_mounts_a_secret() {
    let docs = documents();
    for (name, pod) in pod_specs(&docs) {
        let secrets: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .filter(|v| {
                v.secret.is_some()
                    || v.projected
                        .iter()
                        .any(|p| p.sources.iter().flatten().any(|s| s.secret.is_some()))
            })
            .map(|v| v.name.as_str())
            .collect();
        // The kubelet of a node running such a pod could read the CA key.
        assert!(secrets.is_empty(), "{name} mounts secrets {secrets:?}");
    }
    let ztunnel: DaemonSet = find(&docs, "DaemonSet", "ztunnel");
    let pod = ztunnel.spec.unwrap().template.spec.unwrap();
    let args = args_of(&pod.containers[0], "ztunnel");
    let config = ambit_ztunnel::config::Config::try_parse_from(&args).unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.config_map.is_some())
        .expect("no ConfigMap volume in the ztunnel DaemonSet");
    let source = volume.config_map.as_ref().unwrap();
    assert_eq!(source.name, root_configmap::CONFIGMAP_NAME);
    let item = &source.items.as_ref().unwrap()[0];
    assert_eq!(item.key, root_configmap::ROOT_CERT_KEY);
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("the root certificate volume is not mounted");
    assert_eq!(
        config.root_cert,
        Path::new(&mount.mount_path).join(&item.path),
        "--root-cert is not the mounted ConfigMap key"
    );
}

/// The host directory a container's `path` lies in, through its hostPath mounts.
fn host_path_of(
    pod: &k8s_openapi::api::core::v1::PodSpec,
    container: &Container,
    path: &Path,
) -> PathBuf {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("{} is on no mount of {}", path.display(), container.name));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let host = &volume
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("volume {} is not a hostPath", volume.name))
        .path;
    Path::new(host).join(path.strip_prefix(&mount.mount_path).unwrap())
}

#[test]
fn the_node_agent_reaches_ztunnel_on_the_hosts_socket_and_only_reads_pods_and_namespaces() {
    let docs = documents();
    let agent: DaemonSet = find(&docs, "DaemonSet", "ambit-node-agent");
    let agent_pod = agent.spec.unwrap().template.spec.unwrap();
    let container = &agent_pod.containers[0];
    let args = args_of(container, "ambit-node-agent");
    let config = ambit_cni::agent::Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("manifests/node-agent.yaml args {args:?}: {e}"));
    assert!(config.install_cni);
    assert_eq!(config.node, "stand-in");

    let ztunnel: DaemonSet = find(&docs, "DaemonSet", "ztunnel");
    let ztunnel_pod = ztunnel.spec.unwrap().template.spec.unwrap();
    let ztunnel_config = ambit_ztunnel::config::Config::try_parse_from(args_of(
        &ztunnel_pod.containers[0],
        "ztunnel",
    ))
    .unwrap();
    // One socket on the host: where ztunnel listens, where the agent dials, and what the
    // plugin (run on the host) is told.
    let socket = host_path_of(
        &ztunnel_pod,
        &ztunnel_pod.containers[0],
        &ztunnel_config.node_agent_socket(),
    );
    assert_eq!(
        host_path_of(&agent_pod, container, &config.ztunnel_socket),
        socket
    );
    assert_eq!(config.host_ztunnel_socket, socket);
    // The CNI directories the agent writes are the host's, and it names them as the host does.
    assert_eq!(
        host_path_of(&agent_pod, container, &config.cni_conf_dir),
        config.host_cni_conf_dir
    );
    assert_eq!(
        host_path_of(&agent_pod, container, &config.cni_bin_dir),
        Path::new("/opt/cni/bin")
    );
    // Both see the runtime's pinned namespaces at the path the agent hands ztunnel.
    for (pod, c) in [
        (&agent_pod, container),
        (&ztunnel_pod, &ztunnel_pod.containers[0]),
    ] {
        assert_eq!(host_path_of(pod, c, &config.netns_dir), config.netns_dir);
    }

    let role: ClusterRole = find(&docs, "ClusterRole", "ambit-node-agent");
    let granted: BTreeSet<(String, String, String)> = role
        .rules
        .iter()
        .flatten()
        .flat_map(|r| {
            let groups = r.api_groups.clone().unwrap_or_default();
            let resources = r.resources.clone().unwrap_or_default();
            let verbs = r.verbs.clone();
            groups.into_iter().flat_map(move |g| {
                let verbs = verbs.clone();
                resources.clone().into_iter().flat_map(move |res| {
                    let g = g.clone();
                    verbs
                        .clone()
                        .into_iter()
                        .map(move |v| (g.clone(), res.clone(), v))
                })
            })
        })
        .collect();
    // The agent lists and watches (cni/src/agent/run.rs); the plugin gets (cni/src/decide.rs).
    let wanted: BTreeSet<(String, String, String)> = ["namespaces", "pods"]
        .into_iter()
        .flat_map(|res| {
            ["get", "list", "watch"]
                .into_iter()
                .map(move |v| (String::new(), res.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, wanted);
    let binding: ClusterRoleBinding = find(&docs, "ClusterRoleBinding", "ambit-node-agent");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (
            subject.name.as_str(),
            agent_pod.service_account_name.as_deref()
        ),
        ("ambit-node-agent", Some("ambit-node-agent"))
    );
}
