//! The waypoint reconciler against the fake API server (the ambit-fake-kube-api crate): kube's real
//! client watches Gateways and our objects over a socket and sends reads, server-side applies,
//! deletes and status patches, which the fake records and answers (keeping what was applied, so
//! a read after an apply finds it, as on a real API server).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_controller::waypoints::{self, WaypointOptions};
use hyper::Method;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::fake_api::{FakeApi, Recorded, status};

const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const SERVICE_ACCOUNTS: &str = "/api/v1/serviceaccounts";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const SERVICES: &str = "/api/v1/services";
const CONFIGMAPS: &str = "/api/v1/configmaps";
const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nthe mesh root\n-----END CERTIFICATE-----\n";
const CLUSTER_IP: &str = "10.96.0.50";

fn gateway(name: &str, class: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name, "namespace": "demo", "uid": uid,
            "generation": 1, "resourceVersion": "1",
        },
        "spec": {
            "gatewayClassName": class,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    })
}

/// What the API server answers to a server-side apply: the object, with what the cluster adds
/// (a uid; a Service's cluster IP; a Deployment whose pods are all available; a Gateway's spec
/// around its status).
fn applied(req: &Recorded) -> (u16, Value) {
    let mut object = req.body.clone();
    object["metadata"]["uid"] = json!(format!("uid-of-{}", req.path));
    object["metadata"]["resourceVersion"] = json!("2");
    if req.path.contains("/services/") {
        object["spec"]["clusterIP"] = json!(CLUSTER_IP);
        object["spec"]["clusterIPs"] = json!([CLUSTER_IP]);
    }
    if req.path.ends_with("/status") {
        // A status write answers with the whole Gateway.
        object["spec"] = json!({"gatewayClassName": "ambit-waypoint", "listeners": []});
    }
    if req.path.contains("/deployments/") {
        let replicas = object["spec"]["replicas"].clone();
        object["status"] = json!({"replicas": replicas, "availableReplicas": replicas});
    }
    (200, object)
}

/// The fake with the four kinds the reconciler watches, answering applies, deletes and status.
async fn cluster(gateways: Vec<Value>) -> FakeApi {
    cluster_with(gateways, vec![]).await
}

/// The same, with objects that exist already (by path: a user's Service…). An object read
/// (GET) is what was last applied there, or one of these, or 404.
async fn cluster_with(gateways: Vec<Value>, existing: Vec<(String, Value)>) -> FakeApi {
    let api = FakeApi::start().await;
    api.collection(GATEWAYS, "GatewayList", gateways);
    api.collection(SERVICE_ACCOUNTS, "ServiceAccountList", vec![]);
    api.collection(DEPLOYMENTS, "DeploymentList", vec![]);
    api.collection(SERVICES, "ServiceList", vec![]);
    api.collection(CONFIGMAPS, "ConfigMapList", vec![]);
    let objects = Arc::new(Mutex::new(existing.into_iter().collect::<HashMap<_, _>>()));
    for prefix in [
        "/api/v1/namespaces/",
        "/apis/apps/v1/namespaces/",
        "/apis/gateway.networking.k8s.io/v1/namespaces/",
    ] {
        let stored = objects.clone();
        api.on_prefix(Method::PATCH, prefix, move |req| {
            let (code, object) = applied(req);
            if !req.path.ends_with("/status") {
                stored.lock().insert(req.path.clone(), object.clone());
            }
            (code, object)
        });
        let stored = objects.clone();
        api.on_prefix(Method::GET, prefix, move |req| {
            match stored.lock().get(&req.path) {
                Some(object) => (200, object.clone()),
                None => (404, status(404, "NotFound", "not found")),
            }
        });
        let stored = objects.clone();
        api.on_prefix(Method::DELETE, prefix, move |req| {
            stored.lock().remove(&req.path);
            (
                200,
                json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}),
            )
        });
    }
    api
}

/// An apply's body less `metadata.uid`, which a re-apply adds (the uid it read).
fn without_uid(apply: &Recorded) -> Value {
    let mut body = apply.body.clone();
    if let Some(metadata) = body["metadata"].as_object_mut() {
        metadata.remove("uid");
    }
    body
}

fn options() -> WaypointOptions {
    WaypointOptions {
        image: "example.test/waypoint:test".into(),
        root_cert_pem: ROOT_PEM.into(),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..WaypointOptions::default()
    }
}

/// Runs the reconciler against `api` until the returned token is cancelled.
fn start(api: &FakeApi, options: WaypointOptions) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(waypoints::run(api.client(), options, shutdown.clone()));
    shutdown
}

/// Waits until the requests so far pass `check`.
async fn until(api: &FakeApi, what: &str, check: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let requests = api.requests();
            if check(&requests) {
                return requests;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let seen: Vec<String> = api
            .requests()
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect();
        panic!("not within 10s: {what}; requests: {seen:#?}")
    })
}

fn object_path(group_path: &str, resource: &str, name: &str) -> String {
    format!("{group_path}/namespaces/demo/{resource}/{name}")
}

fn sa_path(name: &str) -> String {
    object_path("/api/v1", "serviceaccounts", name)
}
fn deployment_path(name: &str) -> String {
    object_path("/apis/apps/v1", "deployments", name)
}
fn service_path(name: &str) -> String {
    object_path("/api/v1", "services", name)
}
fn root_cert_path() -> String {
    object_path("/api/v1", "configmaps", "ambit-ca-root-cert")
}
fn status_path(name: &str) -> String {
    format!(
        "{}/status",
        object_path("/apis/gateway.networking.k8s.io/v1", "gateways", name)
    )
}

fn patches<'a>(requests: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    requests
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path == path)
        .collect()
}

fn condition<'a>(status_patch: &'a Recorded, type_: &str) -> Option<&'a Value> {
    status_patch.body["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether some status patch of `name` set Programmed to `want`.
fn programmed(requests: &[Recorded], name: &str, want: &str) -> bool {
    patches(requests, &status_path(name))
        .iter()
        .any(|r| condition(r, "Programmed").is_some_and(|c| c["status"] == want))
}

#[tokio::test]
async fn a_waypoint_gateway_gets_its_objects_applied_owned_and_programmed() {
    let api = cluster(vec![gateway("wp", "ambit-waypoint", "gw-uid-1")]).await;
    let shutdown = start(&api, options());
    let requests = until(&api, "Programmed=True on wp", |r| {
        programmed(r, "wp", "True")
    })
    .await;

    for (path, kind) in [
        (sa_path("wp"), "ServiceAccount"),
        (deployment_path("wp"), "Deployment"),
        (service_path("wp"), "Service"),
    ] {
        let apply = patches(&requests, &path);
        let apply = apply
            .first()
            .unwrap_or_else(|| panic!("no apply of {path}"));
        assert_eq!(apply.content_type, "application/apply-patch+yaml", "{path}");
        assert!(
            apply.query.contains("fieldManager=ambit-controller"),
            "{}",
            apply.query
        );
        assert!(apply.query.contains("force=true"), "{}", apply.query);
        assert_eq!(apply.body["kind"], kind);
        let owner = &apply.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], "gw-uid-1", "{path}");
        assert_eq!(owner["kind"], "Gateway");
        assert_eq!(owner["name"], "wp");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
    }
    let deployment = &patches(&requests, &deployment_path("wp"))[0].body;
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["ambit.io/dataplane-mode"], "none");
    assert_eq!(pod["spec"]["serviceAccountName"], "wp");
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "example.test/waypoint:test"
    );

    // The root certificate: the namespace's ConfigMap, owned by the Gateway, applied before the
    // Deployment whose pods mount it as their --root-cert.
    let root_cert = patches(&requests, &root_cert_path());
    let root_cert = root_cert
        .first()
        .expect("no apply of the root certificate ConfigMap");
    assert_eq!(root_cert.content_type, "application/apply-patch+yaml");
    assert!(root_cert.query.contains("fieldManager=ambit-controller"));
    assert_eq!(root_cert.body["kind"], "ConfigMap");
    assert_eq!(root_cert.body["data"], json!({"root-cert.pem": ROOT_PEM}));
    let owners = root_cert.body["metadata"]["ownerReferences"]
        .as_array()
        .unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0]["uid"], "gw-uid-1");
    assert_eq!(owners[0]["kind"], "Gateway");
    assert_eq!(
        root_cert.body["metadata"]["labels"]["ambit.io/managed-by"],
        "waypoint-controller"
    );
    let position = |path: &str| {
        requests
            .iter()
            .position(|r| r.method == Method::PATCH && r.path == path)
            .unwrap()
    };
    assert!(position(&root_cert_path()) < position(&deployment_path("wp")));
    let container = &pod["spec"]["containers"][0];
    assert!(
        container["args"].as_array().unwrap().contains(&json!(
            "--root-cert=/var/run/secrets/ambit/root/root-cert.pem"
        )),
        "{}",
        container["args"]
    );
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "root-cert")
        .expect("no root-cert volume");
    assert_eq!(volume["configMap"]["name"], "ambit-ca-root-cert");
    assert!(volume.get("secret").is_none());
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "root-cert" && m["mountPath"] == "/var/run/secrets/ambit/root")
    );

    let status = patches(&requests, &status_path("wp"));
    let status = status.last().unwrap();
    assert_eq!(status.content_type, "application/apply-patch+yaml");
    assert_eq!(condition(status, "Accepted").unwrap()["status"], "True");
    assert_eq!(
        condition(status, "Programmed").unwrap()["reason"],
        "Programmed"
    );
    assert_eq!(status.body["status"]["addresses"][0]["value"], CLUSTER_IP);

    // The status write comes back as a Gateway event, as from a real API server; with nothing
    // changed, it is not written again (no write-event-write loop).
    let mut written = gateway("wp", "ambit-waypoint", "gw-uid-1");
    written["metadata"]["resourceVersion"] = json!("3");
    written["status"] = status.body["status"].clone();
    api.send(GATEWAYS, "MODIFIED", written);
    let applies = |r: &[Recorded]| patches(r, &deployment_path("wp")).len();
    let requests = until(&api, "the re-apply after the event", |r| applies(r) >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(patches(&api.requests(), &status_path("wp")).len(), 1);
    let deployment_applies = patches(&requests, &deployment_path("wp"));
    assert_eq!(
        without_uid(deployment_applies[1]),
        without_uid(deployment_applies[0]),
        "a re-apply sends the same object"
    );
    // Each apply was preceded by a read; a re-apply names the uid it read, so it cannot land
    // on a same-named object created in between.
    assert!(deployment_applies[0].body["metadata"].get("uid").is_none());
    assert_eq!(
        deployment_applies[1].body["metadata"]["uid"],
        format!("uid-of-{}", deployment_path("wp"))
    );
    let first_apply = requests
        .iter()
        .position(|r| r.method == Method::PATCH && r.path == deployment_path("wp"))
        .unwrap();
    assert!(
        requests[..first_apply]
            .iter()
            .any(|r| r.method == Method::GET && r.path == deployment_path("wp")),
        "the Deployment was applied without being read first"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_gateway_of_another_class_gets_nothing() {
    let api = cluster(vec![
        gateway("ingress", "some-other-class", "gw-uid-2"),
        gateway("wp", "ambit-waypoint", "gw-uid-1"),
    ])
    .await;
    let shutdown = start(&api, options());
    // Both were listed together; by the time wp is done, ingress has had its turn too.
    until(&api, "Programmed=True on wp", |r| {
        programmed(r, "wp", "True")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let touched: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.method != Method::GET && r.path.contains("/ingress"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    shutdown.cancel();
}

/// What the API's watch shows once our apply of `path` took effect.
fn as_listed(api: &FakeApi, path: &str) -> Value {
    let apply = patches(&api.requests(), path)[0].clone();
    let mut object = applied(&apply).1;
    object["metadata"]["uid"] = json!(format!("uid-of-{path}"));
    object
}

#[tokio::test]
async fn a_class_change_deletes_what_the_gateway_owned_and_releases_its_status() {
    let api = cluster(vec![gateway("wp", "ambit-waypoint", "gw-uid-1")]).await;
    let shutdown = start(&api, options());
    until(&api, "Programmed=True on wp", |r| {
        programmed(r, "wp", "True")
    })
    .await;
    // The watches show what was applied, as a real API server's would.
    api.send(SERVICE_ACCOUNTS, "ADDED", as_listed(&api, &sa_path("wp")));
    api.send(
        DEPLOYMENTS,
        "ADDED",
        as_listed(&api, &deployment_path("wp")),
    );
    api.send(SERVICES, "ADDED", as_listed(&api, &service_path("wp")));
    api.send(CONFIGMAPS, "ADDED", as_listed(&api, &root_cert_path()));

    let mut changed = gateway("wp", "some-other-class", "gw-uid-1");
    changed["metadata"]["resourceVersion"] = json!("5");
    changed["metadata"]["generation"] = json!(2);
    changed["metadata"]["managedFields"] = json!([{
        "manager": "ambit-controller", "operation": "Apply", "apiVersion": "gateway.networking.k8s.io/v1",
        "subresource": "status", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}},
    }]);
    api.send(GATEWAYS, "MODIFIED", changed);

    let deletes = |r: &[Recorded]| -> Vec<String> {
        r.iter()
            .filter(|r| r.method == Method::DELETE)
            .map(|r| r.path.clone())
            .collect()
    };
    // The root certificate ConfigMap too: wp was the namespace's only waypoint.
    let requests = until(&api, "four DELETEs", |r| deletes(r).len() >= 4).await;
    let mut deleted = deletes(&requests);
    deleted.sort();
    let mut want = vec![
        sa_path("wp"),
        deployment_path("wp"),
        service_path("wp"),
        root_cert_path(),
    ];
    want.sort();
    assert_eq!(deleted, want);
    for delete in requests.iter().filter(|r| r.method == Method::DELETE) {
        // Only the object we saw: a same-named one created since is not ours to delete.
        assert_eq!(
            delete.body["preconditions"]["uid"],
            format!("uid-of-{}", delete.path)
        );
    }
    let released = patches(&requests, &status_path("wp"));
    assert_eq!(released.last().unwrap().body["status"], json!({}));
    shutdown.cancel();
}

#[tokio::test]
async fn an_api_error_on_one_gateway_is_retried_and_does_not_block_another() {
    let api = cluster(vec![
        gateway("broken", "ambit-waypoint", "gw-uid-3"),
        gateway("good", "ambit-waypoint", "gw-uid-4"),
    ])
    .await;
    // The broken one's ServiceAccount is refused twice (as with RBAC missing), then accepted.
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    api.on(Method::PATCH, &sa_path("broken"), move |req| {
        if counted.fetch_add(1, Ordering::SeqCst) < 2 {
            (
                403,
                status(403, "Forbidden", "serviceaccounts \"broken\" is forbidden"),
            )
        } else {
            applied(req)
        }
    });
    let shutdown = start(&api, options());
    let requests = until(&api, "both Programmed=True", |r| {
        programmed(r, "good", "True") && programmed(r, "broken", "True")
    })
    .await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "two refusals, then success"
    );
    // The refusal was reported on the Gateway, with the fix.
    let reported = patches(&requests, &status_path("broken"))
        .into_iter()
        .filter_map(|r| condition(r, "Programmed"))
        .find(|c| c["status"] == "False")
        .expect("the failure was not reported on the Gateway")
        .clone();
    let message = reported["message"].as_str().unwrap();
    assert!(message.contains("ServiceAccount demo/broken"), "{message}");
    assert!(message.contains("ClusterRole"), "{message}");
    // The good one did not wait for the broken one's retries.
    let good_done = requests
        .iter()
        .position(|r| r.path == status_path("good"))
        .unwrap();
    let last_broken_try = requests
        .iter()
        .rposition(|r| r.path == sa_path("broken"))
        .unwrap();
    assert!(
        good_done < last_broken_try,
        "good waited for broken's retries"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_invalid_waypoint_gateway_is_reported_and_not_deployed() {
    let mut bad = gateway("wp", "ambit-waypoint", "gw-uid-5");
    bad["spec"]["listeners"][0]["protocol"] = json!("HTTP");
    let api = cluster(vec![bad]).await;
    let shutdown = start(&api, options());
    let requests = until(&api, "a status patch", |r| {
        !patches(r, &status_path("wp")).is_empty()
    })
    .await;
    let status = patches(&requests, &status_path("wp"))[0];
    let accepted = condition(status, "Accepted").unwrap();
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "ListenersNotValid");
    assert!(patches(&requests, &deployment_path("wp")).is_empty());
    shutdown.cancel();
}

/// The owner uids of a root certificate ConfigMap apply.
fn owner_uids(apply: &Recorded) -> Vec<String> {
    apply.body["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| o["uid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_waypoints_of_a_namespace_share_its_root_certificate_configmap() {
    let api = cluster(vec![
        gateway("wp-a", "ambit-waypoint", "gw-uid-a"),
        gateway("wp-b", "ambit-waypoint", "gw-uid-b"),
    ])
    .await;
    let shutdown = start(&api, options());
    let requests = until(&api, "both Programmed=True", |r| {
        programmed(r, "wp-a", "True") && programmed(r, "wp-b", "True")
    })
    .await;
    // Each Gateway's reconcile applies the same object, owned by both: they never take the
    // ConfigMap from each other.
    let applies = patches(&requests, &root_cert_path());
    assert!(applies.len() >= 2, "{}", applies.len());
    for apply in &applies {
        assert_eq!(owner_uids(apply), ["gw-uid-a", "gw-uid-b"]);
        assert_eq!(without_uid(apply), without_uid(applies[0]));
        let refs = apply.body["metadata"]["ownerReferences"]
            .as_array()
            .unwrap();
        assert!(refs.iter().all(|o| o["controller"] == false), "{refs:?}");
    }
    api.send(CONFIGMAPS, "ADDED", as_listed(&api, &root_cert_path()));

    // wp-a leaves the class: the ConfigMap stays, owned by wp-b alone.
    let mut changed = gateway("wp-a", "some-other-class", "gw-uid-a");
    changed["metadata"]["resourceVersion"] = json!("5");
    api.send(GATEWAYS, "MODIFIED", changed);
    let before = applies.len();
    let requests = until(&api, "the ConfigMap re-applied without wp-a", |r| {
        patches(r, &root_cert_path())
            .iter()
            .skip(before)
            .any(|a| owner_uids(a) == ["gw-uid-b"])
    })
    .await;
    assert!(
        !requests
            .iter()
            .any(|r| r.method == Method::DELETE && r.path == root_cert_path()),
        "the ConfigMap was deleted though wp-b still needs it"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_waypoint_in_the_controllers_namespace_leaves_the_controllers_configmap_alone() {
    let mut wp = gateway("wp", "ambit-waypoint", "gw-uid-1");
    wp["metadata"]["namespace"] = json!("ambit-system");
    let api = cluster(vec![wp]).await;
    let shutdown = start(&api, options());
    let requests = until(&api, "the Deployment applied", |r| {
        r.iter()
            .any(|r| r.path == "/apis/apps/v1/namespaces/ambit-system/deployments/wp")
    })
    .await;
    // The publisher keeps that one, unowned: the reconciler neither applies nor owns it.
    assert!(
        !requests
            .iter()
            .any(|r| r.path.ends_with("/configmaps/ambit-ca-root-cert")),
        "the reconciler touched the controller's own ConfigMap"
    );
    shutdown.cancel();
}

/// A user's object of `kind` at `path`, owned by no Gateway.
fn users(kind: &str, api_version: &str, name: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {
            "name": name, "namespace": "demo", "uid": format!("user-uid-{kind}"),
            "resourceVersion": "7", "labels": {"app": name},
        },
    })
}

#[tokio::test]
async fn objects_named_like_the_gateway_that_are_not_its_own_are_left_alone_and_the_status_says_why()
 {
    let mut service = users("Service", "v1", "reviews");
    service["spec"] = json!({"selector": {"app": "reviews"}, "ports": [{"port": 9080}]});
    let mut configmap = users("ConfigMap", "v1", "ambit-ca-root-cert");
    configmap["data"] = json!({"root-cert.pem": "the user's own"});
    let api = cluster_with(
        vec![gateway("reviews", "ambit-waypoint", "gw-uid-r")],
        vec![
            (service_path("reviews"), service.clone()),
            (sa_path("reviews"), users("ServiceAccount", "v1", "reviews")),
            (root_cert_path(), configmap),
        ],
    )
    .await;
    let shutdown = start(&api, options());
    let accepted = |r: &[Recorded]| -> Option<Value> {
        patches(r, &status_path("reviews"))
            .iter()
            .find_map(|p| condition(p, "Accepted").cloned())
    };
    let requests = until(&api, "a status on reviews", |r| accepted(r).is_some()).await;
    let accepted = accepted(&requests).unwrap();
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "NameConflict");
    let message = accepted["message"].as_str().unwrap();
    for part in [
        "Service demo/reviews",
        "ServiceAccount demo/reviews",
        "ConfigMap demo/ambit-ca-root-cert",
        "nothing was deployed",
        "rename the Gateway",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    // Nothing applied for this Gateway: not the conflicting objects, nor the free Deployment
    // (all or nothing), nor the root certificate.
    let writes = |requests: &[Recorded]| -> Vec<String> {
        requests
            .iter()
            .filter(|r| r.method != Method::GET && !r.path.ends_with("/status"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    };
    assert!(writes(&requests).is_empty(), "{:?}", writes(&requests));

    // A class change must not delete them either, even with a stale cache claiming the
    // Service is the Gateway's: the API server's copy says it is not.
    let mut claimed = service.clone();
    claimed["metadata"]["labels"]["ambit.io/managed-by"] = json!("waypoint-controller");
    claimed["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "reviews",
        "uid": "gw-uid-r", "controller": true,
    }]);
    api.send(SERVICES, "ADDED", claimed);
    let mut changed = gateway("reviews", "some-other-class", "gw-uid-r");
    changed["metadata"]["resourceVersion"] = json!("5");
    api.send(GATEWAYS, "MODIFIED", changed);
    let reads_before = requests
        .iter()
        .filter(|r| r.method == Method::GET && r.path == service_path("reviews"))
        .count();
    until(&api, "the Service read again after the class change", |r| {
        r.iter()
            .filter(|r| r.method == Method::GET && r.path == service_path("reviews"))
            .count()
            > reads_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = api.requests();
    assert!(writes(&requests).is_empty(), "{:?}", writes(&requests));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_waypoints_of_a_namespace_write_their_shared_configmap_one_at_a_time() {
    let api = cluster(vec![
        gateway("wp-a", "ambit-waypoint", "gw-uid-a"),
        gateway("wp-b", "ambit-waypoint", "gw-uid-b"),
    ])
    .await;
    // A slow API server: two writes of the ConfigMap at once would overlap here.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (in_flight.clone(), most.clone());
    api.on(Method::PATCH, &root_cert_path(), move |req| {
        peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(150));
        now.fetch_sub(1, Ordering::SeqCst);
        applied(req)
    });
    let shutdown = start(&api, options());
    let requests = until(&api, "both Programmed=True", |r| {
        programmed(r, "wp-a", "True") && programmed(r, "wp-b", "True")
    })
    .await;
    assert!(patches(&requests, &root_cert_path()).len() >= 2);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two reconciles wrote the namespace's ConfigMap at the same time"
    );
    let last = *patches(&requests, &root_cert_path()).last().unwrap();
    assert_eq!(owner_uids(last), ["gw-uid-a", "gw-uid-b"]);
    shutdown.cancel();
}
