use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lookups() -> Arc<Lookups> {
    Arc::new(Lookups::new(
        Duration::from_secs(60),
        Duration::from_secs(5),
    ))
}

/// A connection's lookup of `address`, waiting on a task of its own.
fn waiting(
    l: &Arc<Lookups>,
    address: &str,
) -> tokio::task::JoinHandle<Result<Answer, LookupError>> {
    let (l, address) = (l.clone(), ip(address));
    tokio::spawn(async move { l.look_up(address).await })
}

#[tokio::test]
async fn a_lookup_waits_for_its_answer_and_later_ones_do_not_ask_again() {
    let l = lookups();
    l.set_connected(true);
    let asked = waiting(&l, "10.96.0.7");
    l.wanted().await;
    assert_eq!(l.take_outbox(), (vec!["10.96.0.7".to_string()], vec![]));
    assert!(!asked.is_finished());
    l.answered(&["10.96.0.7".into(), "10.0.0.1".into()], &[]);
    assert_eq!(asked.await.unwrap(), Ok(Answer::Known));
    assert_eq!(l.look_up(ip("10.96.0.7")).await, Ok(Answer::Known));
    assert_eq!(l.take_outbox(), (vec![], vec![]), "asked once");
}

#[tokio::test]
async fn an_address_the_mesh_does_not_know_is_answered_unknown() {
    let l = lookups();
    l.set_connected(true);
    let asked = waiting(&l, "192.0.2.1");
    l.wanted().await;
    l.take_outbox();
    l.answered(&["192.0.2.1".into()], &["192.0.2.1".into()]);
    assert_eq!(asked.await.unwrap(), Ok(Answer::Unknown));
}

#[tokio::test]
async fn without_a_stream_a_lookup_fails_at_once_and_a_drop_fails_waiters() {
    let l = lookups();
    let err = l.look_up(ip("10.96.0.7")).await.unwrap_err();
    assert!(matches!(err, LookupError::NoController { .. }));
    assert!(err.to_string().contains("10.96.0.7"));
    l.set_connected(true);
    let asked = waiting(&l, "10.96.0.8");
    l.wanted().await;
    l.set_connected(false);
    assert!(matches!(
        asked.await.unwrap(),
        Err(LookupError::NoController { .. })
    ));
    // Still held: a reconnect asks again in its first request.
    assert!(l.held().contains(&"10.96.0.8".to_string()));
}

#[tokio::test]
async fn a_lookup_nobody_answers_times_out() {
    let l = Lookups::new(Duration::from_secs(60), Duration::from_millis(300));
    l.set_connected(true);
    let err = l.look_up(ip("10.96.0.9")).await.unwrap_err();
    assert_eq!(
        err,
        LookupError::TimedOut {
            address: ip("10.96.0.9"),
            timeout: Duration::from_millis(300)
        }
    );
}

#[tokio::test]
async fn a_refused_answer_fails_its_waiters_and_is_released() {
    let l = lookups();
    l.set_connected(true);
    let asked = waiting(&l, "10.96.0.7");
    l.wanted().await;
    l.take_outbox();
    l.refused(&["10.96.0.7".into()]);
    assert!(matches!(
        asked.await.unwrap(),
        Err(LookupError::Refused { .. })
    ));
    assert_eq!(l.take_outbox(), (vec![], vec!["10.96.0.7".to_string()]));
}

#[tokio::test]
async fn only_answered_addresses_unused_for_the_idle_time_are_released() {
    let l = Lookups::new(Duration::from_secs(1), Duration::from_secs(5));
    l.set_connected(true);
    for a in ["10.96.0.1", "10.96.0.2"] {
        let l2 = &l;
        let asked = async move { l2.look_up(ip(a)).await };
        let answer = async {
            tokio::task::yield_now().await;
            l.answered(&[a.into()], &[]);
        };
        let (got, ()) = tokio::join!(asked, answer);
        assert_eq!(got, Ok(Answer::Known));
    }
    l.take_outbox();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Used just now: kept whatever the machine's delays, short of a second.
    l.touch(ip("10.96.0.2"));
    assert_eq!(l.release_idle(), 1);
    assert_eq!(l.take_outbox(), (vec![], vec!["10.96.0.1".to_string()]));
    assert_eq!(l.snapshot(), [(ip("10.96.0.2"), Answer::Known)]);
}
