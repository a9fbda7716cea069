use std::sync::atomic::{AtomicU64, Ordering};

use ambit_proto::api::workload as wl;
use ambit_proto::control;
use ambit_proto::identity::CertificateAuthority;
use parking_lot::RwLock;

use super::*;
use crate::state::{ProxyState, StateError};
use crate::testing::{response, uid, workload};

/// State behind a lock, counting what it applied.
#[derive(Default)]
struct Held {
    state: RwLock<ProxyState>,
    applied: AtomicU64,
}

impl Apply for Held {
    type Error = StateError;

    fn apply(&self, response: &SubscribeResponse) -> Result<(), StateError> {
        let next = self.state.read().applied(response)?;
        *self.state.write() = next;
        self.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn versions(&self) -> HashMap<String, String> {
        self.state.read().known_versions()
    }
}

fn client_at(address: &str, applier: Arc<Held>) -> Client<Held> {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let controller = control::default_controller_identity("cluster.local").unwrap();
    let link = ControllerLink::new(address, controller, &ca.trust_bundle(), None, None).unwrap();
    Client::new(
        link,
        subscriber(ProxyKind::Waypoint, "waypoint", "demo"),
        applier,
    )
}

fn client_address(nonce: &str, address: &str) -> SubscribeResponse {
    let mut r = response(
        true,
        vec![workload("client", &[address], wl::Protocol::Hbone)],
    );
    r.nonce = nonce.into();
    r.system_version = format!("v-{nonce}");
    r
}

#[test]
fn acks_what_it_applies_and_nacks_the_rest_keeping_the_last_good() {
    let applier = Held::default();
    // (response, NACK expected, applied count after, address held after)
    let table = [
        (client_address("1", "10.244.1.2"), false, 1, "10.244.1.2"),
        (client_address("2", "not-an-ip"), true, 1, "10.244.1.2"),
        (client_address("3", "10.244.1.7"), false, 2, "10.244.1.7"),
    ];
    for (r, nack, count, held) in table {
        let answer = answer(&applier, &r);
        assert_eq!(
            answer.response_nonce, r.nonce,
            "the answer names the response"
        );
        assert_eq!(
            !answer.error_detail.is_empty(),
            nack,
            "{}",
            answer.error_detail
        );
        if nack {
            assert!(
                answer.error_detail.contains("not-an-ip"),
                "{}",
                answer.error_detail
            );
        }
        assert_eq!(applier.applied.load(Ordering::Relaxed), count);
        let state = applier.state.read();
        let w = state.workload(&uid("client")).expect("kept");
        assert_eq!(w.addresses()[0].to_string(), held);
    }
}

#[tokio::test]
async fn the_first_request_names_the_subscriber_and_what_is_held() {
    let applier = Arc::new(Held::default());
    let client = client_at("https://controller.test:15010", applier.clone());
    let first = client.first_request();
    let who = first
        .subscriber
        .expect("the first request names the subscriber");
    assert_eq!(
        (who.kind, who.name.as_str(), who.namespace.as_str()),
        (ProxyKind::Waypoint as i32, "waypoint", "demo")
    );
    assert!(first.known_versions.is_empty(), "a new proxy holds nothing");
    // On reconnect, what was applied is claimed so that only differences are resent.
    answer(&*applier, &client_address("1", "10.244.1.2"));
    let resumed = client.first_request();
    let key = format!("workload/{}", uid("client"));
    assert_eq!(
        resumed.known_versions,
        HashMap::from([(key, "1".to_string())])
    );
}

#[tokio::test]
async fn parts_are_applied_once_as_one_response() {
    let applier = Arc::new(Held::default());
    let client = client_at("https://controller.test:15010", applier.clone());
    let mut parts = Reassembly::new(MAX_CONFIG_RESPONSE);
    let mut first = client_address("7", "10.244.1.2");
    first.more = true;
    let mut last = response(
        true,
        vec![workload("server", &["10.244.1.3"], wl::Protocol::Hbone)],
    );
    last.nonce = "7".into();
    assert!(client.on_part(&mut parts, first).await.unwrap().is_none());
    assert_eq!(
        applier.applied.load(Ordering::Relaxed),
        0,
        "nothing until the last part"
    );
    let ack = client
        .on_part(&mut parts, last)
        .await
        .unwrap()
        .expect("an answer");
    assert_eq!(
        (ack.response_nonce.as_str(), ack.error_detail.as_str()),
        ("7", "")
    );
    assert_eq!(applier.applied.load(Ordering::Relaxed), 1);
    {
        let state = applier.state.read();
        assert!(
            state.workload(&uid("client")).is_some() && state.workload(&uid("server")).is_some()
        );
    }

    // Parts of two responses interleaved: the stream is broken, and said so.
    let mut a = client_address("8", "10.244.1.2");
    a.more = true;
    let b = client_address("9", "10.244.1.2");
    assert!(client.on_part(&mut parts, a).await.unwrap().is_none());
    let err = client.on_part(&mut parts, b).await.unwrap_err().to_string();
    assert!(
        err.contains("https://controller.test:15010") && err.contains("incomplete"),
        "{err}"
    );
}
