//! The delivery loop of one pipeline and channel: the key, pacing, combining, retries, the
//! requests on the wire, and what their answers mean for status, metrics and Events.

mod answers;
mod key;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::warn;

use crate::domain::alerts;
use crate::domain::channel::{Channel, Payload, Request};
use crate::domain::digest::Digest;
use crate::domain::group::Closing;
use crate::domain::ledger::{Entry, RolloutKey, State};
use crate::domain::pacing::{Budget, Plan};
use crate::domain::payload::MAX_COMBINED;
use crate::domain::status::{Problem, Stats};
use crate::domain::uid::Uid;
use crate::metrics::PipelineLabels;
use crate::pipeline::IlertPipelineSpec;
use crate::shell::ilert::{IntegrationKey, SendError};
use crate::shell::outbox::{Grouping, Outbox, QueuedEvent};
use crate::shell::shared::{Shared, lock};
use crate::shell::supervisor::Ended;

/// Most requests one pipeline has on the wire at once. A kill -9 can repeat at most the events of
/// these (ilert answered 202, the sent state was not written yet).
pub(crate) const MAX_IN_FLIGHT: usize = 16;
/// How long a key read from the Secret is used before it is read again: a rotated key is used
/// within this, a rejected key is read again at once. A burst reads the Secret once per this.
pub const KEY_TTL: Duration = Duration::from_secs(2);
/// The oldest key ever used without reading the Secret first: a rotated key is used within this.
pub const KEY_MAX_AGE: Duration = Duration::from_secs(4);
/// How often an idle pipeline reads its Secret, so that status tells a deleted Secret.
pub const KEY_RECHECK: Duration = Duration::from_secs(30);
/// How long a pipeline's first status write waits for the first read of its key, so that it does
/// not say "not read yet" for the moment the read takes.
pub(crate) const FIRST_READ_GRACE: Duration = Duration::from_secs(5);

pub(crate) type Batch = Vec<(RolloutKey, Entry)>;

/// One request's answer, back from its task (its outcome already handed to the ledger).
pub(crate) struct Done {
    pub(crate) batch: Batch,
    /// For an alert: whether it opened or resolved one.
    pub(crate) alert: Option<alerts::EventType>,
    pub(crate) key: IntegrationKey,
    pub(crate) result: Result<(), SendError>,
    /// How long each event of the batch waited from being queued to ilert's answer.
    pub(crate) waited: Vec<Duration>,
    /// The change the batch reported (`spec.groupBy: Owner`).
    pub(crate) group: Option<String>,
}

/// Delivers one pipeline's events: key from the Secret, pacing per key, combining, retries, up to
/// [`MAX_IN_FLIGHT`] requests at once (never two for the same workload).
#[derive(Clone)]
pub(crate) struct Sender<P> {
    pub(crate) shared: Arc<Shared>,
    /// The ledger the channel records in: the pipeline's uid, or its alerts ledger.
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) reference: ObjectReference,
    pub(crate) outbox: Arc<Outbox<P>>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) spec: watch::Receiver<IlertPipelineSpec>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// true once this instance lost the lease: finish what is on the wire, start nothing.
    pub(crate) deposed: watch::Receiver<bool>,
    /// Notified while a selected workload rolls out (see `warm_key`).
    pub(crate) warm: Arc<Notify>,
    /// Deliveries since the channel's last Normal Event.
    pub(crate) digest: Arc<Mutex<Digest>>,
    /// The pipeline's changes under way: events of an open one wait for the rest of it.
    pub(crate) grouping: Arc<Mutex<Grouping>>,
}

/// The key ilert rejected, and when to try it once more anyway.
pub(crate) struct Rejected {
    pub(crate) key: IntegrationKey,
    pub(crate) retry_at: Instant,
    pub(crate) attempts: u32,
}

/// The delivery loop's state between requests.
#[derive(Default)]
pub(crate) struct Delivery {
    pub(crate) in_flight: HashSet<RolloutKey>,
    pub(crate) busy_workloads: HashSet<Uid>,
    /// Consecutive rounds ilert was unavailable: while > 0, one request at a time probes it.
    pub(crate) failures: u32,
    pub(crate) secret_failures: u32,
    pub(crate) rejected: Option<Rejected>,
    pub(crate) key: Option<(IntegrationKey, Instant)>,
    /// The Secret being read again while the key in hand is used.
    /// It yields when the read started: a key is as old as the read that got it.
    pub(crate) refresh: Option<JoinHandle<(Result<IntegrationKey, Problem>, Instant)>>,
    /// Nothing new goes out before this (backoff, pacing).
    pub(crate) resume_at: Option<Instant>,
    /// Read the key now, sending or not: the pipeline was applied or changed, or the key in hand
    /// is older than [`KEY_RECHECK`]. Status says only what is known.
    pub(crate) needs_read: bool,
}

impl Delivery {
    /// `open`: the changes whose events still wait for the rest of them.
    pub(crate) fn sendable<P>(&self, item: &QueuedEvent<P>, open: &HashSet<String>) -> bool {
        !item.held
            && !self.in_flight.contains(&item.key)
            && !self.busy_workloads.contains(&item.key.workload_uid)
            && item.entry.group().is_none_or(|g| !open.contains(g))
    }
}

/// A request task that panicked takes its sender down with it: the supervisor starts the sender
/// again with clean books (the events are still queued) instead of leaving them in flight forever.
pub(crate) fn answered(joined: Result<Done, JoinError>) -> Option<Done> {
    match joined {
        Ok(done) => Some(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

impl<P: Payload> Sender<P> {
    /// Delivers until SIGTERM or the lease is lost. `again`: started again after a failure, when
    /// requests that were on the wire may have been answered and recorded without being settled.
    pub(crate) async fn run(mut self, again: bool) -> Ended {
        if again {
            // What the ledger no longer holds as pending went out (or was given up) already.
            let pending: HashSet<RolloutKey> = (self.shared.ledger)
                .read(|b| b.pending(&self.uid))
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            self.outbox.retain(|k| pending.contains(k));
        }
        let mut d = Delivery {
            needs_read: true,
            ..Delivery::default()
        };
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let pending_gauge = self
            .shared
            .metrics
            .pending
            .get_or_create(&PipelineLabels {
                pipeline: self.name(),
            })
            .clone();
        loop {
            if *self.shutdown.borrow() || *self.deposed.borrow() {
                // SIGTERM or the lease lost: what is on the wire finishes and is recorded;
                // nothing new starts.
                while let Some(done) = tasks.join_next().await {
                    if let Some(done) = answered(done) {
                        self.settle(&mut d, done).await;
                    }
                }
                return Ended::Shutdown;
            }
            if self.spec.has_changed().unwrap_or(false) {
                d.key = None;
                d.refresh = None;
                d.needs_read = true;
            }
            let spec = self.spec.borrow_and_update().clone();
            let (mut open, closes_at) = {
                let g = lock(&self.grouping);
                let now = Instant::now();
                (g.groups.open_ids(now), g.groups.next_close(now))
            };
            let (waiting, sendable) = {
                let q = lock(&self.outbox.queue);
                // A change goes whole: one with a member inherited from a previous leader, or whose
                // workload has an earlier event on the wire, waits for it.
                open.extend(
                    q.items
                        .iter()
                        .filter(|i| i.entry.group().is_some() && !d.sendable(i, &HashSet::new()))
                        .filter_map(|i| i.entry.group().map(String::from)),
                );
                (
                    q.items.len(),
                    q.items.iter().filter(|i| d.sendable(i, &open)).count(),
                )
            };
            if P::CHANNEL == Channel::Deployments {
                pending_gauge.set(waiting as i64);
            }
            {
                let mut s = lock(&self.stats);
                if s.pending != waiting as u64 {
                    s.pending = waiting as u64;
                    s.dirty = true;
                }
            }
            let now = Instant::now();
            let limit = if d.failures > 0 || d.rejected.is_some() {
                1
            } else {
                MAX_IN_FLIGHT
            };
            let paused = spec.suspend || P::CHANNEL.secret_ref(&spec).is_none();
            if d.needs_read && !paused && d.resume_at.is_none_or(|t| t <= now) {
                // A failed read set a backoff (resume_at) and is tried again after it.
                if self.key(&spec, &mut d).await.is_some() {
                    d.needs_read = false;
                }
                continue;
            }
            let go = !paused
                && sendable > 0
                && tasks.len() < limit
                && d.resume_at.is_none_or(|t| t <= now);
            if !go {
                let resume = d.resume_at.filter(|t| *t > now);
                // An idle pipeline reads its Secret now and then: a deleted or changed Secret
                // shows in status without waiting for the next rollout.
                let recheck = d
                    .key
                    .as_ref()
                    .filter(|_| !paused && !d.needs_read)
                    .map(|(_, at)| *at + KEY_RECHECK);
                tokio::select! {
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        if let Some(done) = answered(done) {
                            self.settle(&mut d, done).await;
                        }
                    }
                    _ = self.outbox.notify.notified(), if !paused => {}
                    _ = self.warm.notified() => self.warm_key(&spec, &mut d),
                    _ = self.spec.changed() => {
                        // A new Secret name, suspend: act on it now rather than after a backoff.
                        d.key = None;
                        d.refresh = None;
                        d.resume_at = None;
                        d.needs_read = true;
                    }
                    _ = tokio::time::sleep_until(recheck.unwrap_or(now)), if recheck.is_some() => {
                        d.needs_read = true;
                    }
                    _ = self.shutdown.changed() => {}
                    _ = self.deposed.changed() => {}
                    _ = tokio::time::sleep_until(resume.unwrap_or(now)), if resume.is_some() => {
                        d.resume_at = None;
                    }
                    // A change closes: its events may go.
                    _ = tokio::time::sleep_until(closes_at.unwrap_or(now)), if closes_at.is_some() => {}
                }
                continue;
            }
            let Some(key) = self.key(&spec, &mut d).await else {
                continue;
            };
            // A rejected key is read again every few seconds; a new key is tried at once.
            if let Some(r) = &d.rejected
                && r.key == key
                && Instant::now() < r.retry_at
            {
                d.key = None;
                d.resume_at = Some(r.retry_at.min(Instant::now() + Duration::from_secs(5)));
                continue;
            }
            // Checked and counted under one lock: pipelines on the same key share its budget.
            let n = match self.budget(&key, |b| b.reserve(sendable, Instant::now())) {
                Plan::WaitUntil(t) => {
                    self.shared.metrics.rate_limit_waits.inc();
                    d.resume_at = Some(t);
                    continue;
                }
                Plan::Send(n) => n,
            };
            // One request is one closed change, whole, or events outside any change.
            let picked: Vec<QueuedEvent<P>> = {
                let q = lock(&self.outbox.queue);
                let group = q
                    .items
                    .iter()
                    .find(|i| d.sendable(i, &open))
                    .and_then(|i| i.entry.group());
                let limit = if group.is_some() { MAX_COMBINED } else { n };
                q.items
                    .iter()
                    .filter(|i| d.sendable(i, &open) && i.entry.group() == group)
                    .take(limit)
                    .cloned()
                    .collect()
            };
            let group = picked
                .first()
                .and_then(|i| i.entry.group().map(String::from));
            let (unfinished, templates) = match &group {
                Some(id) => {
                    let g = lock(&self.grouping);
                    (g.groups.unfinished(id), g.templates.clone())
                }
                None => (Vec::new(), None),
            };
            let closing = group.as_ref().map(|_| Closing {
                unfinished: &unfinished,
                templates: templates.as_deref(),
            });
            let payloads: Vec<P> = picked.iter().map(|i| i.payload.clone()).collect();
            let Request {
                take,
                body,
                warnings,
            } = P::request(
                &payloads,
                closing.as_ref(),
                &self.shared.cfg.cluster_name,
                key.expose(),
            );
            if !warnings.is_empty() {
                let note = warnings.join("; ");
                warn!(pipeline = %self.name(), problem = %note, "part of the event of a change did not render and was left out");
            }
            let picked = &picked[..take];
            if picked.is_empty() {
                continue;
            }
            let batch: Batch = picked
                .iter()
                .map(|i| (i.key.clone(), i.entry.clone()))
                .collect();
            let queued_at: Vec<Instant> = picked.iter().map(|i| i.queued_at).collect();
            let alert = picked.last().and_then(|i| i.payload.alert_type());
            for (k, _) in &batch {
                d.in_flight.insert(k.clone());
                d.busy_workloads.insert(k.workload_uid.clone());
            }
            let (shared, uid, channel) = (self.shared.clone(), self.uid.clone(), P::CHANNEL);
            tasks.spawn(async move {
                let started = std::time::Instant::now();
                let result = match channel {
                    Channel::Deployments => shared.ilert.send_deployment_event(&body, &key).await,
                    Channel::Alerts => shared.ilert.send_alert_event(&body, &key).await,
                };
                let waited = queued_at.iter().map(|t| t.elapsed()).collect();
                shared
                    .metrics
                    .send_duration
                    .observe(started.elapsed().as_secs_f64());
                shared.metrics.request(
                    result
                        .as_ref()
                        .err()
                        .map_or("accepted", SendError::metric_label),
                );
                // Handed to the ledger at once (its writers get it to the API server; SIGTERM and
                // a new lease wait for them). The slot is free again without waiting for the
                // write: under a busy API server the write, not ilert, would set the pace.
                let state = match &result {
                    Ok(()) => Some(State::Sent),
                    Err(SendError::EventRejected { .. }) => Some(State::Failed),
                    Err(_) => None,
                };
                if let Some(state) = state {
                    shared.ledger.record(&uid, &outcome_entries(&batch, state));
                }
                Done {
                    batch,
                    alert,
                    key,
                    result,
                    waited,
                    group,
                }
            });
        }
    }

    /// The pacing budget of `key`, shared by every pipeline that uses the same key.
    pub(crate) fn budget<R>(&self, key: &IntegrationKey, f: impl FnOnce(&mut Budget) -> R) -> R {
        let mut budgets = lock(&self.shared.budgets);
        f(budgets.entry(key.clone()).or_insert_with(|| {
            Budget::new(match P::CHANNEL {
                Channel::Deployments => self.shared.cfg.rate_limit_per_minute,
                Channel::Alerts => self.shared.cfg.alert_rate_limit_per_minute,
            })
        }))
    }

    pub(crate) fn name(&self) -> String {
        format!(
            "{}/{}",
            self.namespace,
            self.reference.name.as_deref().unwrap_or_default()
        )
    }
}

/// The ledger entries that record a batch's outcome (the event body is no longer needed).
pub(crate) fn outcome_entries(batch: &[(RolloutKey, Entry)], state: State) -> Batch {
    batch
        .iter()
        .map(|(k, e)| {
            (
                k.clone(),
                Entry::new(state, e.workload.clone())
                    .with_outcome(e.reported_outcome)
                    .with_test(e.test().map(Into::into)),
            )
        })
        .collect()
}
