//! Graceful shutdown. A trigger tells every long-lived task to wind down, then waits for all of
//! them to finish, up to a deadline. Each task (listener, connection) holds a [`DrainWatch`];
//! dropping it is how the task says it is done.

use std::time::Duration;

use tokio::sync::watch;

/// Creates a trigger and the first watch; clone the watch for each task.
pub fn channel() -> (DrainTrigger, DrainWatch) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger { tx }, DrainWatch { rx })
}

pub struct DrainTrigger {
    tx: watch::Sender<bool>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every task finished before the deadline.
    Complete,
    /// Some tasks were still running at the deadline.
    DeadlineExceeded,
}

impl DrainTrigger {
    /// Signals every watch and waits until all of them are dropped or `deadline` passes.
    pub async fn drain(self, deadline: Duration) -> DrainOutcome {
        self.tx.send_replace(true);
        match tokio::time::timeout(deadline, self.tx.closed()).await {
            Ok(()) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::DeadlineExceeded,
        }
    }

    /// A watch for a task started after the trigger was created.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct DrainWatch {
    rx: watch::Receiver<bool>,
}

impl DrainWatch {
    /// Resolves once a drain has started (or the trigger is gone).
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger was dropped: nothing can start a drain any more, and the
        // owner is gone, so wind down as if one had started.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_then_completes() {
        let (trigger, watch) = channel();
        let task = tokio::spawn({
            let watch = watch.clone();
            async move {
                watch.signaled().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(watch);
            }
        });
        drop(watch);
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            DrainOutcome::Complete
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn drain_gives_up_at_the_deadline() {
        let (trigger, watch) = channel();
        let _stuck = watch;
        assert_eq!(
            trigger.drain(Duration::from_millis(50)).await,
            DrainOutcome::DeadlineExceeded
        );
    }
}
