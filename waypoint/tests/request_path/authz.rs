//! L4 authorization at the waypoint: the reviews pods' policies, judged on the client's
//! identity (the pods themselves only ever see the waypoint's).

use ambit_proto::api::security::Action;
use http::StatusCode;

use crate::support::*;

const DENIED: &str = "spiffe://cluster.local/ns/demo/sa/denied-client";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_policy_on_the_client_principal_is_403_rbac_naming_the_policy() {
    let mesh = Mesh::start(Setup {
        policies: vec![policy("deny-denied", Action::Deny, &[DENIED])],
        ..Setup::default()
    })
    .await;

    let mut denied = mesh.client_as("denied-client").http1(REVIEWS).await;
    for _ in 0..5 {
        let reply = denied.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
        assert_eq!(reply.flags(), Some("RBAC"), "{reply:?}");
        assert!(
            reply.text().contains("demo/deny-denied"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(mesh.app("reviews-v1").requests(), 0);
    assert_eq!(mesh.app("reviews-v2").requests(), 0);

    let mut allowed = mesh.client().http1(REVIEWS).await;
    for _ in 0..5 {
        let reply = allowed.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    let served = mesh.app("reviews-v1").requests() + mesh.app("reviews-v2").requests();
    assert_eq!(served, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_policy_lets_its_principal_through_and_no_one_else() {
    let mesh = Mesh::start(Setup {
        policies: vec![policy("allow-client", Action::Allow, &[CLIENT])],
        ..Setup::default()
    })
    .await;

    let mut allowed = mesh.client().http1(REVIEWS).await;
    let reply = allowed.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    let mut other = mesh.client_as("other").http1(REVIEWS).await;
    let reply = other.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.flags(), Some("RBAC"), "{reply:?}");
    assert!(
        reply.text().contains("other"),
        "the reply says who was refused: {}",
        reply.text()
    );

    let served = mesh.app("reviews-v1").requests() + mesh.app("reviews-v2").requests();
    assert_eq!(served, 1);
}
