//! The root certificate ConfigMap against the fake API server (the ambit-fake-kube-api crate):
//! published with the root certificate and never the key, put back when deleted or edited,
//! retried after a refusal whose error names the ConfigMap and the RBAC fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_controller::ca::root_configmap::{self, CONFIGMAP_NAME, ROOT_CERT_KEY};
use ambit_proto::identity::CertificateAuthority;
use hyper::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::fake_api::{FakeApi, Recorded, status};

const NAMESPACE: &str = "mesh-system";
const CONFIGMAPS: &str = "/api/v1/namespaces/mesh-system/configmaps";

fn configmap_path() -> String {
    format!("{CONFIGMAPS}/{CONFIGMAP_NAME}")
}

/// What the API server answers to a server-side apply: the object, with a uid.
fn applied(req: &Recorded) -> (u16, Value) {
    let mut object = req.body.clone();
    object["metadata"]["uid"] = json!("cm-uid");
    object["metadata"]["resourceVersion"] = json!("2");
    (200, object)
}

async fn cluster() -> FakeApi {
    let api = FakeApi::start().await;
    api.collection(CONFIGMAPS, "ConfigMapList", vec![]);
    api
}

fn applies(requests: &[Recorded]) -> Vec<Recorded> {
    requests
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path == configmap_path())
        .cloned()
        .collect()
}

async fn until_applies(api: &FakeApi, count: usize) -> Vec<Recorded> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let found = applies(&api.requests());
            if found.len() >= count {
                return found;
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
        panic!("not {count} applies within 10s; requests: {seen:#?}")
    })
}

fn start(api: &FakeApi, root_pem: &str) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(root_configmap::publish(
        api.client(),
        NAMESPACE.into(),
        root_pem.into(),
        shutdown.clone(),
    ));
    (shutdown, task)
}

#[tokio::test]
async fn the_root_certificate_is_published_without_the_key_and_put_back_when_deleted_or_edited() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let api = cluster().await;
    api.on(Method::PATCH, &configmap_path(), applied);
    let (shutdown, task) = start(&api, ca.root_pem());

    let first = until_applies(&api, 1).await.remove(0);
    assert_eq!(first.content_type, "application/apply-patch+yaml");
    assert!(
        first.query.contains("fieldManager=ambit-controller"),
        "{}",
        first.query
    );
    assert!(first.query.contains("force=true"), "{}", first.query);
    assert_eq!(first.body["kind"], "ConfigMap");
    assert_eq!(first.body["metadata"]["namespace"], NAMESPACE);
    assert_eq!(first.body["data"], json!({ROOT_CERT_KEY: ca.root_pem()}));
    assert!(first.body.get("binaryData").is_none());
    let sent = first.body.to_string();
    assert!(
        !sent.contains("PRIVATE KEY"),
        "the key was published: {sent}"
    );
    let key_body: String = ca
        .root_key_pem()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!sent.contains(&key_body[..40]), "the key was published");

    // Deleted: applied again at once.
    let (_, listed) = applied(&first);
    api.send(CONFIGMAPS, "DELETED", listed.clone());
    until_applies(&api, 2).await;
    // Edited to another root: applied again.
    let mut edited = listed.clone();
    edited["data"][ROOT_CERT_KEY] = json!("not our root");
    edited["metadata"]["resourceVersion"] = json!("3");
    api.send(CONFIGMAPS, "MODIFIED", edited);
    until_applies(&api, 3).await;
    // A change that keeps the root (someone's label): left alone.
    let mut labelled = listed;
    labelled["metadata"]["labels"] = json!({"team": "mesh"});
    labelled["metadata"]["resourceVersion"] = json!("4");
    api.send(CONFIGMAPS, "MODIFIED", labelled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(applies(&api.requests()).len(), 3);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the publisher did not stop on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_refused_apply_names_the_configmap_and_the_rbac_fix_and_is_retried() {
    let api = cluster().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    api.on(Method::PATCH, &configmap_path(), move |req| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            (
                403,
                status(
                    403,
                    "Forbidden",
                    "configmaps \"ambit-ca-root-cert\" is forbidden",
                ),
            )
        } else {
            applied(req)
        }
    });
    let err = root_configmap::apply(api.client(), NAMESPACE, "ROOT")
        .await
        .unwrap_err()
        .to_string();
    for want in [
        "mesh-system/ambit-ca-root-cert",
        "is forbidden",
        "may not create or patch configmaps in namespace mesh-system",
        "ambit-controller Role",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }

    // The publisher retries (after its first backoff) until it is accepted.
    attempts.store(0, Ordering::SeqCst);
    let (shutdown, _task) = start(&api, "ROOT");
    until_applies(&api, 3).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "one refusal, then success"
    );
    shutdown.cancel();
}
