//! Per pipeline and channel: the events waiting for delivery, oldest first, each rollout at
//! most once, with a wake-up for its sender; and the pipeline's changes under way, which hold
//! their members' events until they close.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{error, info};

use crate::domain::channel::Payload;
use crate::domain::group::Groups;
use crate::domain::ledger::{Entry, RolloutKey};
use crate::domain::template::Templates;
use crate::shell::shared::lock;

/// A pipeline's changes under way (`spec.groupBy: Owner`), shared by the decision loop, which
/// tells which rollouts belong together, and the deployment sender, which holds their events
/// until the change closes.
#[derive(Default)]
pub(crate) struct Grouping {
    pub(crate) groups: Groups,
    /// The pipeline's templates: a change's event renders them over its `workloads`.
    pub(crate) templates: Option<Arc<Templates>>,
}

#[derive(Clone)]
pub(crate) struct QueuedEvent<P> {
    pub(crate) key: RolloutKey,
    /// The ledger entry, without its payload.
    pub(crate) entry: Entry,
    pub(crate) payload: P,
    /// When it was queued (a rollout seen finished, or a pending one reloaded).
    pub(crate) queued_at: Instant,
    /// Inherited from a previous leader, whose request for it may still be on the wire: waits
    /// until the ledger has been read again after that request must have ended.
    pub(crate) held: bool,
}

/// Events waiting for delivery, oldest first; each rollout at most once.
pub(crate) struct Queue<P> {
    pub(crate) items: VecDeque<QueuedEvent<P>>,
    pub(crate) keys: HashSet<RolloutKey>,
}

pub(crate) struct Outbox<P> {
    pub(crate) queue: Mutex<Queue<P>>,
    pub(crate) notify: Notify,
}

impl<P> Default for Outbox<P> {
    fn default() -> Self {
        Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                keys: HashSet::new(),
            }),
            notify: Notify::new(),
        }
    }
}

impl<P: Payload> Outbox<P> {
    /// Queues an event unless it already waits (a pending entry reloaded from the ledger and a
    /// late hand-over of the same rollout after a leadership change). An entry with nothing to
    /// send (a claim reloaded before its event was built) is left out, so it neither takes the
    /// place of the real one nor reaches a batch.
    /// `held`: inherited from a previous leader (see [`QueuedEvent::held`]).
    pub(crate) fn push(&self, key: RolloutKey, mut entry: Entry, held: bool) {
        let Some(payload) = P::take_from(&mut entry) else {
            error!(workload = %entry.workload, revision = key.revision, channel = ?P::CHANNEL, "a pending entry has nothing to send; left out of the queue");
            return;
        };
        {
            let mut q = lock(&self.queue);
            if !q.keys.insert(key.clone()) {
                return;
            }
            q.items.push_back(QueuedEvent {
                key,
                entry,
                payload,
                queued_at: Instant::now(),
                held,
            });
        }
        self.notify.notify_one();
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.queue).items.len()
    }

    pub(crate) fn clear(&self) {
        let mut q = lock(&self.queue);
        q.items.clear();
        q.keys.clear();
    }

    /// The previous leader's requests have ended: what it delivered meanwhile (`delivered`)
    /// leaves the queue, the rest of what was inherited may go.
    pub(crate) fn inherited_done(&self, pipeline: &str, delivered: Option<&Vec<RolloutKey>>) {
        if let Some(keys) = delivered {
            info!(pipeline = %pipeline, events = keys.len(), channel = ?P::CHANNEL, "the previous leader delivered these after the takeover; not sent again");
            self.remove(&keys.iter().collect());
        }
        self.release_held();
    }

    /// Lets inherited events go (their previous leader's requests have ended by now).
    pub(crate) fn release_held(&self) {
        let released = {
            let mut q = lock(&self.queue);
            let mut any = false;
            for i in q.items.iter_mut().filter(|i| i.held) {
                i.held = false;
                any = true;
            }
            any
        };
        if released {
            self.notify.notify_one();
        }
    }

    /// Keeps only the events `keep` says still wait.
    pub(crate) fn retain(&self, keep: impl Fn(&RolloutKey) -> bool) {
        let mut q = lock(&self.queue);
        q.items.retain(|i| keep(&i.key));
        q.keys = q.items.iter().map(|i| i.key.clone()).collect();
    }

    pub(crate) fn remove(&self, keys: &HashSet<&RolloutKey>) {
        let mut q = lock(&self.queue);
        q.items.retain(|i| !keys.contains(&i.key));
        for k in keys {
            q.keys.remove(*k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ledger::State;
    use crate::domain::payload::{AlertEvent, DeploymentEvent};
    use crate::domain::report;
    use jiff::Timestamp;

    fn entry(event: Option<DeploymentEvent>) -> Entry {
        Entry::new(State::Pending, "Deployment/shop/web").with_event(event)
    }

    fn event(value: &str) -> DeploymentEvent {
        report::test_event("shop/p", "prod", value, Timestamp::now())
    }

    /// A claim reloaded as pending before its event was built (a lease lost and won back while
    /// the ReplicaSets were listed) has no event: it must not take the place of the real one.
    #[test]
    fn an_entry_without_its_event_is_never_queued() {
        let outbox = Outbox::<DeploymentEvent>::default();
        let key = RolloutKey::test_event("1");
        outbox.push(key.clone(), entry(None), false);
        assert_eq!(outbox.len(), 0);
        outbox.push(key.clone(), entry(Some(event("1"))), false);
        let q = lock(&outbox.queue);
        assert_eq!(q.items.len(), 1);
        assert_eq!(q.items[0].payload, event("1"));
        // The payload travels beside the entry, not twice.
        assert_eq!(q.items[0].entry.event(), None);
        drop(q);
        // An alerts queue takes only entries with an alert.
        let alerts = Outbox::<AlertEvent>::default();
        alerts.push(key, entry(Some(event("1"))), false);
        assert_eq!(alerts.len(), 0);
    }
}
