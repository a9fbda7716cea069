//! A fake Kubernetes API server on 127.0.0.1, for kube's real client over a real socket (no
//! cluster runs here). Collections answer list and watch (the first watch of each streams the
//! events a test sends; later ones stay open and silent, as after a reconnect) or, made with
//! [`FakeApi::shared_collection`], behave as the API server's for several clients: every watch
//! streams every later event, and lists and GETs of one object see the events applied.
//! Handlers answer anything else (a TokenReview POST, a server-side apply PATCH…). Every
//! request is recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Body = BoxBody<Bytes, Infallible>;

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The body as JSON; `Value::Null` when empty or not JSON.
    pub body: Value,
}

/// Answers a request with a status and a JSON body.
pub type Handler = Arc<dyn Fn(&Recorded) -> (u16, Value) + Send + Sync>;

struct Collection {
    list_kind: String,
    items: Vec<Value>,
    sender: mpsc::UnboundedSender<Value>,
    events: Option<mpsc::UnboundedReceiver<Value>>,
    /// `Some` for a shared collection: the open watches, each sent every event.
    watchers: Option<Vec<mpsc::UnboundedSender<Value>>>,
}

impl Collection {
    /// Applies a watch event to the items, as the API server's storage would have.
    fn apply(&mut self, event: &str, object: &Value) {
        let key = |o: &Value| {
            (
                o["metadata"]["namespace"].clone(),
                o["metadata"]["name"].clone(),
            )
        };
        self.items.retain(|item| key(item) != key(object));
        if event != "DELETED" {
            self.items.push(object.clone());
        }
    }
}

#[derive(Default)]
struct State {
    collections: Mutex<HashMap<String, Collection>>,
    handlers: Mutex<Vec<(Method, String, Handler)>>,
    prefix_handlers: Mutex<Vec<(Method, String, Handler)>>,
    requests: Mutex<Vec<Recorded>>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FakeApi {
    /// Starts serving; register collections and handlers before the code under test asks.
    pub async fn start() -> FakeApi {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts serving on `addr`: e.g. where a client was already pointed while nothing
    /// listened, to show it recovers once the API is back.
    pub async fn start_on(addr: SocketAddr) -> FakeApi {
        Self::serve(TcpListener::bind(addr).await.unwrap())
    }

    /// Serves on a listener bound elsewhere: e.g. inside a test's network namespace, where
    /// the programs under test run.
    pub fn serve_std(listener: std::net::TcpListener) -> FakeApi {
        listener.set_nonblocking(true).unwrap();
        Self::serve(TcpListener::from_std(listener).unwrap())
    }

    fn serve(listener: TcpListener) -> FakeApi {
        let state = Arc::new(State::default());
        let addr = listener.local_addr().unwrap();
        let serving = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, state }
    }

    /// A client of this fake, as kube would build from a kubeconfig.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Serves GET `path` as a list of `items` (kind `list_kind`, e.g. "PodList") and as a watch.
    pub fn collection(&self, path: &str, list_kind: &str, items: Vec<Value>) {
        let (sender, events) = mpsc::unbounded_channel();
        self.state.collections.lock().insert(
            path.into(),
            Collection {
                list_kind: list_kind.into(),
                items,
                sender,
                events: Some(events),
                watchers: None,
            },
        );
    }

    /// Serves GET `path` as a list and a watch for any number of clients: each watch streams
    /// every event sent after it started, and the items (listed, or got one by one at
    /// `path/<name>` or `/api/v1/namespaces/<ns>/<resource>/<name>`) follow the events.
    pub fn shared_collection(&self, path: &str, list_kind: &str, items: Vec<Value>) {
        let (sender, _) = mpsc::unbounded_channel();
        self.state.collections.lock().insert(
            path.into(),
            Collection {
                list_kind: list_kind.into(),
                items,
                sender,
                events: None,
                watchers: Some(Vec::new()),
            },
        );
    }

    /// Streams a watch event (`ADDED`, `MODIFIED`, `DELETED`) on the collection at `path`.
    pub fn send(&self, path: &str, event: &str, object: Value) {
        let mut collections = self.state.collections.lock();
        let collection = collections
            .get_mut(path)
            .expect("no collection at this path");
        let message = json!({"type": event, "object": object});
        match &mut collection.watchers {
            Some(watchers) => {
                watchers.retain(|w| w.send(message.clone()).is_ok());
                collection.apply(event, &object);
            }
            None => collection.sender.send(message).unwrap(),
        }
    }

    /// Answers `method` on exactly `path` with `handler` (checked before collections).
    pub fn on(
        &self,
        method: Method,
        path: &str,
        handler: impl Fn(&Recorded) -> (u16, Value) + Send + Sync + 'static,
    ) {
        self.state
            .handlers
            .lock()
            .push((method, path.into(), Arc::new(handler)));
    }

    /// Answers `method` on every path starting with `prefix` (checked after the exact handlers
    /// of [`FakeApi::on`], the first registered prefix that matches wins): for a family of
    /// objects, such as every server-side apply in a namespace.
    pub fn on_prefix(
        &self,
        method: Method,
        prefix: &str,
        handler: impl Fn(&Recorded) -> (u16, Value) + Send + Sync + 'static,
    ) {
        self.state
            .prefix_handlers
            .lock()
            .push((method, prefix.into(), Arc::new(handler)));
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().clone()
    }
}

/// A Kubernetes `Status` object, as the API server sends with an error.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code, "reason": reason, "message": message,
    })
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

async fn answer(state: &State, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.clone(),
        path: parts.uri.path().into(),
        query: parts.uri.query().unwrap_or_default().into(),
        content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .into(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    state.requests.lock().push(recorded.clone());
    let handler = state
        .handlers
        .lock()
        .iter()
        .find(|(m, p, _)| *m == recorded.method && *p == recorded.path)
        .map(|(_, _, h)| h.clone())
        .or_else(|| {
            state
                .prefix_handlers
                .lock()
                .iter()
                .find(|(m, p, _)| *m == recorded.method && recorded.path.starts_with(p.as_str()))
                .map(|(_, _, h)| h.clone())
        });
    if let Some(handler) = handler {
        let (code, body) = handler(&recorded);
        return json_response(code, &body);
    }
    if recorded.method != Method::GET {
        return json_response(405, &status(405, "MethodNotAllowed", "no handler"));
    }
    let watching = recorded.query.contains("watch=true");
    let (list, events) = {
        let mut collections = state.collections.lock();
        let Some(collection) = collections.get_mut(&recorded.path) else {
            return match one_object(&collections, &recorded.path) {
                Some(object) => json_response(200, &object),
                None => json_response(
                    404,
                    &status(404, "NotFound", "no such collection or object"),
                ),
            };
        };
        if watching && let Some(watchers) = &mut collection.watchers {
            let (tx, rx) = mpsc::unbounded_channel::<Value>();
            watchers.push(tx);
            return stream(rx);
        }
        let list = json!({
            "apiVersion": "v1",
            "kind": collection.list_kind,
            "metadata": {"resourceVersion": "1"},
            "items": collection.items,
        });
        (list, watching.then(|| collection.events.take()))
    };
    let Some(events) = events else {
        return json_response(200, &list);
    };
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
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
    stream(rx)
}

/// A watch response: one JSON event per line, as long as `events` has them.
fn stream(events: mpsc::UnboundedReceiver<Value>) -> Response<Body> {
    let frames = UnboundedReceiverStream::new(events)
        .map(|event| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{event}\n")))));
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

/// One object of a shared collection, by its path: `<collection>/<name>` (cluster-scoped) or
/// `/api/v1/namespaces/<ns>/<resource>/<name>` (namespaced, from `/api/v1/<resource>`).
fn one_object(collections: &HashMap<String, Collection>, path: &str) -> Option<Value> {
    let (parent, name) = path.rsplit_once('/')?;
    let (collection, namespace) = match parent
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((namespace, resource)) => (format!("/api/v1/{resource}"), Some(namespace)),
        None => (parent.to_string(), None),
    };
    let collection = collections.get(&collection)?;
    collection.watchers.as_ref()?;
    collection
        .items
        .iter()
        .find(|item| {
            item["metadata"]["name"] == name
                && namespace.is_none_or(|ns| item["metadata"]["namespace"] == ns)
        })
        .cloned()
}
