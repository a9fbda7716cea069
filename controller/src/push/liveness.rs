//! Which nodes' ztunnels are gone. A node whose ztunnel has had no open subscription for a grace
//! period, after having had one since the controller started, is *down*: its meshed pods cannot
//! take HBONE (their ztunnel serves their port 15008), so the snapshot marks them unhealthy and
//! every other ztunnel stops picking them as endpoints. Its next subscription brings them back.
//!
//! Only what this controller saw counts: a node that never subscribed here stays as its source
//! says, so a controller restart does not mark the whole mesh down while ztunnels reconnect.
//! Nothing here runs per subscription beyond a map update: the snapshot is rebuilt only when the
//! set of down nodes changes, which costs what any model change costs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Names of the nodes that are down, shared with every snapshot built while they are.
pub type DownNodes = Arc<BTreeSet<String>>;

enum Presence {
    /// This many subscriptions are open.
    Subscribed(usize),
    /// The last one closed then.
    Gone(Instant),
}

struct Inner {
    grace: Duration,
    nodes: Mutex<HashMap<String, Presence>>,
    /// Written only with `nodes` locked, so a resubscription and the timer cannot interleave.
    down: watch::Sender<DownNodes>,
    /// Wakes the timer when a node's last subscription closes.
    gone: Notify,
}

/// Tracks the ztunnel subscriptions of each node. Cheap to clone.
#[derive(Clone)]
pub struct NodeLiveness {
    inner: Arc<Inner>,
}

/// Held by an open ztunnel subscription; dropping it closes the subscription for liveness.
pub(super) struct Subscribed {
    inner: Arc<Inner>,
    node: String,
}

impl NodeLiveness {
    /// Marks nodes down `grace` after their ztunnel's last subscription closed, until
    /// `shutdown`. A zero `grace` turns this off: nodes are never marked down.
    pub fn start(grace: Duration, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (down, _) = watch::channel(DownNodes::default());
        let liveness = NodeLiveness {
            inner: Arc::new(Inner {
                grace,
                nodes: Mutex::new(HashMap::new()),
                down,
                gone: Notify::new(),
            }),
        };
        let timer = liveness.inner.clone();
        let task = tokio::spawn(async move {
            if !grace.is_zero() {
                timer.run(shutdown).await;
            }
        });
        (liveness, task)
    }

    /// The nodes that are down now, and each change of that set.
    pub fn down_nodes(&self) -> watch::Receiver<DownNodes> {
        self.inner.down.subscribe()
    }

    /// Records an open subscription of `node`'s ztunnel, which brings the node back up if it
    /// was down.
    pub(super) fn subscribed(&self, node: &str) -> Subscribed {
        let inner = &self.inner;
        let mut nodes = inner.nodes.lock();
        let presence = nodes
            .entry(node.to_string())
            .or_insert(Presence::Subscribed(0));
        *presence = match presence {
            Presence::Subscribed(n) => Presence::Subscribed(*n + 1),
            Presence::Gone(_) => Presence::Subscribed(1),
        };
        if inner.down.borrow().contains(node) {
            tracing::info!(%node, "the node's ztunnel subscribed again: its meshed pods are healthy again (as their source says)");
            inner.down.send_modify(|down| {
                Arc::make_mut(down).remove(node);
            });
            metrics::gauge!("ambit_controller_nodes_down").decrement(1.0);
        }
        Subscribed {
            inner: inner.clone(),
            node: node.to_string(),
        }
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        let mut nodes = self.inner.nodes.lock();
        let Some(presence) = nodes.get_mut(&self.node) else {
            return;
        };
        if let Presence::Subscribed(n) = presence {
            *presence = if *n > 1 {
                Presence::Subscribed(*n - 1)
            } else {
                Presence::Gone(Instant::now())
            };
        }
        drop(nodes);
        self.inner.gone.notify_one();
    }
}

impl Inner {
    async fn run(&self, shutdown: CancellationToken) {
        loop {
            let next = self.mark_expired();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.gone.notified() => {}
                () = sleep => {}
            }
        }
    }

    /// Marks down every node gone for the grace period; returns when the next one would be.
    fn mark_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let nodes = self.nodes.lock();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        {
            let down = self.down.borrow();
            for (node, presence) in nodes.iter() {
                let Presence::Gone(since) = presence else {
                    continue;
                };
                if down.contains(node) {
                    continue;
                }
                let at = *since + self.grace;
                if at <= now {
                    expired.push(node.clone());
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        if !expired.is_empty() {
            for node in &expired {
                tracing::warn!(%node, grace = ?self.grace, "the node's ztunnel has had no config subscription for the grace period: marking its meshed pods unhealthy, so that other nodes stop sending them traffic, until it subscribes again (check the ztunnel on that node)");
            }
            metrics::gauge!("ambit_controller_nodes_down").increment(expired.len() as f64);
            self.down
                .send_modify(|down| Arc::make_mut(down).extend(expired));
        }
        drop(nodes);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(500);

    fn down(l: &NodeLiveness) -> Vec<String> {
        l.down_nodes().borrow().iter().cloned().collect()
    }

    async fn wait(how_long: Duration) {
        tokio::time::sleep(how_long).await;
    }

    #[tokio::test]
    async fn a_node_is_down_only_after_the_grace_and_up_again_on_its_next_subscription() {
        let shutdown = CancellationToken::new();
        let (l, _task) = NodeLiveness::start(GRACE, shutdown.clone());
        let first = l.subscribed("node-a");
        let second = l.subscribed("node-a");
        drop(first);
        wait(GRACE * 2).await;
        assert!(down(&l).is_empty(), "one subscription is still open");
        drop(second);
        wait(GRACE / 10).await;
        assert!(down(&l).is_empty(), "still within the grace");
        let mut changes = l.down_nodes();
        tokio::time::timeout(GRACE * 10, changes.changed())
            .await
            .expect("marked down after the grace")
            .unwrap();
        assert_eq!(down(&l), ["node-a"]);
        let back = l.subscribed("node-a");
        assert!(changes.has_changed().unwrap(), "up again at once");
        assert!(down(&l).is_empty());
        // A reconnect within the grace is no change at all.
        drop(back);
        wait(GRACE / 10).await;
        let _again = l.subscribed("node-a");
        changes.borrow_and_update();
        wait(GRACE * 2).await;
        assert!(!changes.has_changed().unwrap());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_node_never_seen_is_never_down_and_zero_grace_turns_it_off() {
        let shutdown = CancellationToken::new();
        let (l, _task) = NodeLiveness::start(GRACE, shutdown.clone());
        let (off, _task) = NodeLiveness::start(Duration::ZERO, shutdown.clone());
        drop(off.subscribed("node-a"));
        drop(l.subscribed("node-b"));
        wait(GRACE * 3).await;
        assert_eq!(down(&l), ["node-b"], "node-a never subscribed to this one");
        assert!(down(&off).is_empty());
        shutdown.cancel();
    }
}
