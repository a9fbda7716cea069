//! The Kubernetes source against a fake API server on 127.0.0.1: kube's real client lists and
//! watches over a socket, the server answers recorded JSON and streams watch events on demand.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::model::{MeshModel, ObjectKey};
use ambit_controller::source::kubernetes::{self, KubernetesError, Options};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, Infallible>;

/// One kind's collection: what a list returns, and the events the first watch streams.
struct Collection {
    kind: &'static str,
    items: Vec<Value>,
    events: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
}

/// A fake API server. `send` streams a watch event of a kind (by its path).
struct FakeApi {
    addr: SocketAddr,
    senders: HashMap<&'static str, mpsc::UnboundedSender<Value>>,
}

const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";

impl FakeApi {
    async fn start(namespaces: Vec<Value>, pods: Vec<Value>, services: Vec<Value>) -> FakeApi {
        let mut senders = HashMap::new();
        let mut collections = HashMap::new();
        for (path, kind, items) in [
            (NAMESPACES, "NamespaceList", namespaces),
            (PODS, "PodList", pods),
            (SERVICES, "ServiceList", services),
        ] {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(path, tx);
            collections.insert(
                path,
                Collection {
                    kind,
                    items,
                    events: Mutex::new(Some(rx)),
                },
            );
        }
        let collections = Arc::new(collections);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let collections = collections.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let collections = collections.clone();
                        async move { Ok::<_, Infallible>(answer(&collections, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, senders }
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn send(&self, path: &str, kind: &str, object: Value) {
        self.senders[path]
            .send(json!({"type": kind, "object": object}))
            .unwrap();
    }
}

fn answer(
    collections: &HashMap<&'static str, Collection>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let Some(collection) = collections.get(req.uri().path()) else {
        return Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"{}")).boxed())
            .unwrap();
    };
    let watching = req.uri().query().is_some_and(|q| q.contains("watch=true"));
    if !watching {
        let list = json!({
            "apiVersion": "v1",
            "kind": collection.kind,
            "metadata": {"resourceVersion": "1"},
            "items": collection.items,
        });
        return Response::new(Full::new(Bytes::from(list.to_string())).boxed());
    }
    // The first watch streams the test's events; a later one (a reconnect) stays open, silent.
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let events = collection.events.lock().take();
    tokio::spawn(async move {
        match events {
            Some(mut events) => {
                while let Some(event) = events.recv().await {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
            None => tx.closed().await,
        }
    });
    let frames = UnboundedReceiverStream::new(rx)
        .map(|event| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{event}\n")))));
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels, "resourceVersion": "1"}})
}

fn pod(ns: &str, name: &str, ip: Option<&str>, labels: Value) -> Value {
    let ips: Vec<Value> = ip.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": "2"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": ips,
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn service(ns: &str, name: &str, vip: &str, selector: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": selector,
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "named", "port": 81, "targetPort": "web", "protocol": "TCP"}
            ]
        }
    })
}

fn options() -> Options {
    Options {
        debounce: Duration::from_millis(50),
        sync_timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

/// Waits for a published model that passes `check`.
async fn model_where(
    models: &mut watch::Receiver<Arc<MeshModel>>,
    check: impl Fn(&MeshModel) -> bool,
) -> Arc<MeshModel> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let model = models.borrow_and_update().clone();
            if check(&model) {
                return model;
            }
            models.changed().await.expect("the source stopped");
        }
    })
    .await
    .expect("no published model passed the check within 10s")
}

fn meshed(model: &MeshModel, ns: &str, name: &str) -> Option<bool> {
    model.workload(&ObjectKey::new(ns, name)).map(|w| w.meshed)
}

#[tokio::test]
async fn the_cluster_becomes_the_model_and_watch_events_update_it() {
    let api = FakeApi::start(
        vec![
            namespace("demo", json!({"ambit.io/dataplane-mode": "ambient"})),
            namespace("plain", json!({})),
        ],
        vec![
            pod(
                "demo",
                "reviews-1",
                Some("10.244.0.1"),
                json!({"app": "reviews"}),
            ),
            pod(
                "demo",
                "opted-out",
                Some("10.244.0.2"),
                json!({"app": "reviews", "ambit.io/dataplane-mode": "none"}),
            ),
            pod(
                "demo",
                "ratings-1",
                Some("10.244.0.3"),
                json!({"app": "ratings"}),
            ),
            pod("plain", "legacy", Some("10.244.0.4"), json!({})),
            pod("demo", "starting", None, json!({"app": "reviews"})),
        ],
        vec![service(
            "demo",
            "reviews",
            "10.96.0.10",
            json!({"app": "reviews"}),
        )],
    )
    .await;
    let shutdown = CancellationToken::new();
    let mut watching = kubernetes::watch(api.client(), options(), shutdown.clone())
        .await
        .unwrap();

    let model = watching.models.borrow_and_update().clone();
    assert_eq!(meshed(&model, "demo", "reviews-1"), Some(true));
    assert_eq!(meshed(&model, "demo", "opted-out"), Some(false));
    assert_eq!(meshed(&model, "plain", "legacy"), Some(false));
    assert_eq!(
        meshed(&model, "demo", "starting"),
        None,
        "a pod without IP is left out"
    );
    let reviews = model.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert_eq!(
        reviews.endpoints,
        vec![
            ObjectKey::new("demo", "opted-out"),
            ObjectKey::new("demo", "reviews-1")
        ]
    );
    // The named target port resolves on no pod (none declares "web"): that port is left out.
    let ports: Vec<u16> = reviews.service.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![80]);

    // A pod added through the watch shows up in the published model, as an endpoint.
    api.send(
        PODS,
        "ADDED",
        pod(
            "demo",
            "reviews-2",
            Some("10.244.0.5"),
            json!({"app": "reviews"}),
        ),
    );
    let model = model_where(&mut watching.models, |m| {
        meshed(m, "demo", "reviews-2").is_some()
    })
    .await;
    assert_eq!(meshed(&model, "demo", "reviews-2"), Some(true));
    let reviews = model.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert!(
        reviews
            .endpoints
            .contains(&ObjectKey::new("demo", "reviews-2"))
    );

    // The pending pod gets its IP; the plain namespace opts in.
    api.send(
        PODS,
        "MODIFIED",
        pod(
            "demo",
            "starting",
            Some("10.244.0.6"),
            json!({"app": "reviews"}),
        ),
    );
    api.send(
        NAMESPACES,
        "MODIFIED",
        namespace("plain", json!({"ambit.io/dataplane-mode": "ambient"})),
    );
    let model = model_where(&mut watching.models, |m| {
        meshed(m, "demo", "starting") == Some(true) && meshed(m, "plain", "legacy") == Some(true)
    })
    .await;
    assert_eq!(model.workloads().count(), 6);

    // A deleted pod leaves the model and its service's endpoints.
    api.send(
        PODS,
        "DELETED",
        pod(
            "demo",
            "reviews-1",
            Some("10.244.0.1"),
            json!({"app": "reviews"}),
        ),
    );
    let model = model_where(&mut watching.models, |m| {
        meshed(m, "demo", "reviews-1").is_none()
    })
    .await;
    let reviews = model.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert!(
        !reviews
            .endpoints
            .contains(&ObjectKey::new("demo", "reviews-1"))
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watching.task)
        .await
        .expect("the source did not stop on shutdown")
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_api_fails_the_start_with_a_clear_error() {
    // A port nobody listens on: bind, note it, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let options = Options {
        sync_timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let error = kubernetes::watch(client, options, CancellationToken::new())
        .await
        .err()
        .expect("the start should fail");
    assert!(
        matches!(error, KubernetesError::NotSynced { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("RBAC"), "{error}");
}
