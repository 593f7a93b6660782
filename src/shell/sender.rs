//! The delivery loop of one pipeline and channel: the key, pacing, combining, retries, the
//! requests on the wire, and what their answers mean for status, metrics and Events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::EventType;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::domain::alerts;
use crate::domain::ledger::{Entry, RolloutKey, State};
use crate::domain::pacing::{Budget, Plan, backoff, later, retry_wait};
use crate::metrics::PipelineLabels;
use crate::pipeline::{IlertPipelineSpec, LastEvent, TestEventStatus};
use crate::shell::ilert::{IntegrationKey, SendError};
use crate::shell::supervisor::Ended;

use crate::domain::channel::{Channel, Payload};
use crate::domain::status::{Problem, Reason, Stats};
use crate::shell::events::{publish, workload_reference};
use crate::shell::outbox::{Outbox, QueuedEvent};
use crate::shell::secrets::read_key;
use crate::shell::shared::{Shared, jitter, lock};

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
    pub(crate) busy_workloads: HashSet<String>,
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
    pub(crate) fn sendable<P>(&self, item: &QueuedEvent<P>) -> bool {
        !item.held
            && !self.in_flight.contains(&item.key)
            && !self.busy_workloads.contains(&item.key.workload_uid)
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
            let (waiting, sendable) = {
                let q = lock(&self.outbox.queue);
                (
                    q.items.len(),
                    q.items.iter().filter(|i| d.sendable(i)).count(),
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
            let picked: Vec<QueuedEvent<P>> = lock(&self.outbox.queue)
                .items
                .iter()
                .filter(|i| d.sendable(i))
                .take(n)
                .cloned()
                .collect();
            let payloads: Vec<P> = picked.iter().map(|i| i.payload.clone()).collect();
            let (take, body) = P::request(&payloads, &self.shared.cfg.cluster_name, key.expose());
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
                }
            });
        }
    }

    /// The integration key: from the cache, or read from the Secret (a problem in status if not).
    pub(crate) async fn key(
        &mut self,
        spec: &IlertPipelineSpec,
        d: &mut Delivery,
    ) -> Option<IntegrationKey> {
        let refreshed = match d.refresh.take() {
            Some(task) if task.is_finished() => task.await.ok(),
            other => {
                d.refresh = other;
                None
            }
        };
        let (result, read_at) = match refreshed {
            Some((Ok(k), at)) if at.elapsed() < KEY_MAX_AGE => (Ok(k), at),
            // A background read failed but the key in hand is still young: keep sending with
            // it; the next read (at most KEY_MAX_AGE from now) decides.
            Some((Err(problem), _))
                if d.key
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() < KEY_MAX_AGE) =>
            {
                debug!(pipeline = %self.name(), reason = %problem.reason, "background read of the key failed; the key in hand is still young");
                let (k, at) = d.key.clone().expect("checked above");
                (Ok(k), at)
            }
            Some((Err(problem), at)) => (Err(problem), at),
            _ => {
                if let Some((k, at)) = d.key.clone()
                    && at.elapsed() < KEY_MAX_AGE
                {
                    // While busy, the key in hand is used and the Secret read again in the
                    // background: a slow API server must not hold up delivery every few seconds.
                    // A key older than KEY_MAX_AGE (the sender was idle, and no rollout in
                    // progress warmed it) is read first.
                    if at.elapsed() >= KEY_TTL {
                        self.refresh_key(spec, d);
                    }
                    return Some(k);
                }
                let at = Instant::now();
                (
                    read_key(&self.shared.client, &self.namespace, spec, P::CHANNEL).await,
                    at,
                )
            }
        };
        match result {
            Ok(k) => {
                d.secret_failures = 0;
                d.key = Some((k.clone(), read_at));
                self.key_read(spec).await;
                Some(k)
            }
            Err(problem) => {
                d.secret_failures += 1;
                self.set_problem(Some(problem)).await;
                d.resume_at = Some(
                    Instant::now()
                        + backoff(d.secret_failures + 1, Duration::from_secs(10), jitter()),
                );
                None
            }
        }
    }

    /// The key was read: status names the Secret, and a problem reading it is over.
    pub(crate) async fn key_read(&self, spec: &IlertPipelineSpec) {
        let from = P::CHANNEL
            .secret_ref(spec)
            .map(|(r, _)| format!("{}/{} key {}", self.namespace, r.name, r.key));
        let secret_problem = {
            let mut s = lock(&self.stats);
            if s.key_read_from != from {
                // Another Secret: what ilert accepted with the old one says nothing of this one.
                if s.key_read_from.is_some() {
                    s.accepted = false;
                }
                s.key_read_from = from;
                s.dirty = true;
            }
            s.delivery_problem
                .as_ref()
                .is_some_and(|p| p.reason.is_secret_problem())
        };
        if secret_problem {
            self.set_problem(None).await;
        }
    }

    /// Reads the Secret again in the background, unless a read is under way.
    pub(crate) fn refresh_key(&self, spec: &IlertPipelineSpec, d: &mut Delivery) {
        if d.refresh.is_some() {
            return;
        }
        let (client, namespace, spec, channel) = (
            self.shared.client.clone(),
            self.namespace.clone(),
            spec.clone(),
            P::CHANNEL,
        );
        d.refresh = Some(tokio::spawn(async move {
            let at = Instant::now();
            (read_key(&client, &namespace, &spec, channel).await, at)
        }));
    }

    /// A selected workload is rolling out: have a key younger than KEY_TTL ready for when it
    /// finishes, so the first event after a quiet spell does not wait for a Secret read.
    pub(crate) fn warm_key(&self, spec: &IlertPipelineSpec, d: &mut Delivery) {
        // After a failed read, only key() reads again (with its backoff, and it reports why):
        // warming must not turn a missing Secret into a GET per workload update.
        if spec.suspend || P::CHANNEL.secret_ref(spec).is_none() || d.secret_failures > 0 {
            return;
        }
        // A read that finished meanwhile: its key is kept with the time of the read.
        if d.refresh.as_ref().is_some_and(|t| t.is_finished())
            && let Some(task) = d.refresh.take()
        {
            match task.now_or_never().and_then(Result::ok) {
                Some((Ok(k), at)) => d.key = Some((k, at)),
                _ => {
                    d.secret_failures += 1;
                    return;
                }
            }
        }
        if d.key.as_ref().is_none_or(|(_, at)| at.elapsed() >= KEY_TTL) {
            self.refresh_key(spec, d);
        }
    }

    /// Acts on one request's answer: status, metrics, Events, retry timing.
    pub(crate) async fn settle(&mut self, d: &mut Delivery, done: Done) {
        let Done {
            batch,
            alert,
            key,
            result,
            waited,
        } = done;
        for (k, _) in &batch {
            d.in_flight.remove(k);
            d.busy_workloads.remove(&k.workload_uid);
        }
        let batch = &batch[..];
        match result {
            Ok(()) => {
                for w in waited {
                    self.shared.metrics.delivery_delay.observe(w.as_secs_f64());
                }
                d.failures = 0;
                d.rejected = None;
                self.finished(batch, "sent");
                self.delivered(batch, alert).await;
                self.set_problem(None).await;
            }
            Err(SendError::RateLimited { retry_after }) => {
                // However long ilert asks for, never longer than --retry-max-seconds.
                let wait = retry_wait(retry_after, self.shared.cfg.retry_cap, jitter());
                info!(pipeline = %self.name(), wait_seconds = wait.as_secs(), asked_seconds = retry_after.map(|d| d.as_secs()), "ilert rate limit reached; waiting");
                self.shared.metrics.rate_limit_waits.inc();
                self.budget(&key, |b| b.exhausted_until(later(Instant::now(), wait)));
            }
            Err(SendError::Unavailable(msg)) => {
                let now = Instant::now();
                // Requests that were on the wire together fail together: one backoff round.
                if d.resume_at.is_some_and(|t| t > now) {
                    return;
                }
                d.failures += 1;
                let wait = backoff(d.failures, self.shared.cfg.retry_cap, jitter());
                warn!(pipeline = %self.name(), attempt = d.failures, retry_in_seconds = wait.as_secs_f32(), error = %msg, "ilert unavailable; retrying");
                d.resume_at = Some(later(now, wait));
                if d.failures >= 3 {
                    self.set_problem(Some(Problem {
                        reason: Reason::IlertUnavailable,
                        message: format!(
                            "{msg}; {} events wait and are retried with backoff",
                            self.outbox.len()
                        ),
                    }))
                    .await;
                }
            }
            Err(e @ SendError::KeyRejected { .. }) => {
                // Requests that were on the wire together are refused together: one round.
                if d.rejected
                    .as_ref()
                    .is_some_and(|r| r.key == key && Instant::now() < r.retry_at)
                {
                    self.tests_rejected(batch, &e.to_string()).await;
                    return;
                }
                let attempts = d
                    .rejected
                    .as_ref()
                    .filter(|r| r.key == key)
                    .map_or(1, |r| r.attempts + 1);
                // The same key is tried again only rarely (10 min, doubling to 1 h); a new key at once.
                let wait = Duration::from_secs(600)
                    .saturating_mul(1 << (attempts - 1).min(3))
                    .min(Duration::from_secs(3600));
                d.rejected = Some(Rejected {
                    key: key.clone(),
                    retry_at: Instant::now() + wait,
                    attempts,
                });
                d.key = None;
                let spec = self.spec.borrow().clone();
                let (secret, key_name) = P::CHANNEL
                    .secret_ref(&spec)
                    .map(|(r, _)| (r.name.clone(), r.key.clone()))
                    .unwrap_or_default();
                let message = format!(
                    "{e}. Put the integration key of {} into Secret {}/{secret} key {key_name}; {} events wait and go out once the key changes",
                    P::CHANNEL.key_owner(),
                    self.namespace,
                    self.outbox.len()
                );
                warn!(pipeline = %self.name(), error = %message, "integration key rejected");
                self.tests_rejected(batch, &e.to_string()).await;
                self.set_problem(Some(Problem {
                    reason: Reason::IntegrationKeyRejected,
                    message,
                }))
                .await;
            }
            Err(e @ SendError::EventRejected { .. }) => {
                let names: Vec<&str> = batch.iter().map(|(_, e)| e.workload.as_str()).collect();
                let message = format!("{e}; not retried: {}", names.join(", "));
                warn!(pipeline = %self.name(), error = %message, "event rejected");
                self.finished(batch, "failed");
                self.tests_rejected(batch, &e.to_string()).await;
                {
                    let mut s = lock(&self.stats);
                    s.failed += batch.iter().filter(|(_, e)| e.test.is_none()).count() as u64;
                    s.dirty = true;
                }
                self.publish(EventType::Warning, "EventRejected", &message)
                    .await;
                self.set_problem(Some(Problem {
                    reason: Reason::EventRejected,
                    message,
                }))
                .await;
            }
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

    /// Removes a batch whose outcome is recorded from the outbox, and counts it.
    pub(crate) fn finished(&self, batch: &[(RolloutKey, Entry)], result: &str) {
        let keys: HashSet<&RolloutKey> = batch.iter().map(|(k, _)| k).collect();
        self.outbox.remove(&keys);
        if P::CHANNEL == Channel::Alerts {
            return;
        }
        for (k, e) in batch.iter().filter(|(_, e)| e.test.is_none()) {
            self.shared
                .metrics
                .event(e.reported_outcome.unwrap_or(k.outcome).as_str(), result)
                .inc();
        }
    }

    pub(crate) async fn delivered(
        &self,
        batch: &[(RolloutKey, Entry)],
        alert: Option<alerts::EventType>,
    ) {
        let (tests, rollouts): (Vec<_>, Vec<_>) =
            batch.iter().cloned().partition(|(_, e)| e.test.is_some());
        for (_, e) in &tests {
            let value = e.test.clone().unwrap_or_default();
            self.test_result(&value, "Accepted", "ilert accepted the test event")
                .await;
        }
        if !batch.is_empty() {
            let mut s = lock(&self.stats);
            if !s.accepted {
                s.accepted = true;
                s.dirty = true;
            }
        }
        let batch = &rollouts[..];
        let Some((last_key, last)) = batch.last() else {
            return;
        };
        let outcome = last.reported_outcome.unwrap_or(last_key.outcome);
        {
            let mut s = lock(&self.stats);
            s.sent += batch.len() as u64;
            s.last_event = Some(LastEvent {
                workload: last.workload.clone(),
                revision: last_key.revision.to_string(),
                outcome: outcome.as_str().to_string(),
                sent_at: Timestamp::now().to_string(),
            });
            s.dirty = true;
        }
        let note = if let Some(t) = alert {
            let what = match t {
                alerts::EventType::Alert => "Opened an ilert alert for",
                alerts::EventType::Resolve => "Resolved the ilert alert of",
            };
            format!(
                "{what} {} (revision {}, {})",
                last.workload,
                last_key.revision,
                outcome.as_str()
            )
        } else if batch.len() == 1 {
            format!(
                "Reported {} revision {} ({}) to ilert",
                last.workload,
                last_key.revision,
                outcome.as_str()
            )
        } else {
            format!(
                "Reported {} rollouts to ilert in one combined event",
                batch.len()
            )
        };
        info!(pipeline = %self.name(), "{note}");
        // Related to the workload, so each workload's deliveries form their own Event series
        // instead of folding into one series under the first note.
        let related = (batch.len() == 1)
            .then(|| workload_reference(&last.workload))
            .flatten();
        // Off the send path: recording the Event is one more API request per delivery.
        let (recorder, reference) = (self.shared.recorder.clone(), self.reference.clone());
        tokio::spawn(async move {
            publish(
                &recorder,
                &reference,
                EventType::Normal,
                if alert.is_some() {
                    "AlertSent"
                } else {
                    "Delivered"
                },
                &note,
                related,
            )
            .await;
        });
    }

    /// Records what ilert said to a test event, in status and as a Kubernetes Event.
    pub(crate) async fn test_result(&self, value: &str, result: &str, message: &str) {
        {
            let mut s = lock(&self.stats);
            s.test_event = Some(TestEventStatus {
                value: value.to_string(),
                result: result.to_string(),
                message: message.to_string(),
                at: Timestamp::now().to_string(),
            });
            s.dirty = true;
        }
        let (type_, reason) = if result == "Accepted" {
            (EventType::Normal, "TestEventDelivered")
        } else {
            (EventType::Warning, "TestEventRejected")
        };
        info!(pipeline = %self.name(), value, result, "test event: {message}");
        self.publish(type_, reason, &format!("Test event {value:?}: {message}"))
            .await;
    }

    /// Test events in a batch ilert refused get their answer recorded.
    pub(crate) async fn tests_rejected(&self, batch: &[(RolloutKey, Entry)], message: &str) {
        for (_, e) in batch {
            if let Some(value) = &e.test {
                self.test_result(value, "Rejected", message).await;
            }
        }
    }

    pub(crate) async fn set_problem(&self, problem: Option<Problem>) {
        let changed = {
            let mut s = lock(&self.stats);
            if s.delivery_problem != problem {
                s.delivery_problem = problem.clone();
                s.dirty = true;
                true
            } else {
                false
            }
        };
        if let (true, Some(p)) = (changed, problem) {
            let message = match P::CHANNEL {
                Channel::Deployments => p.message,
                Channel::Alerts => format!("Alerts: {}", p.message),
            };
            warn!(pipeline = %self.name(), reason = %p.reason, "{message}");
            self.publish(EventType::Warning, p.reason.as_str(), &message)
                .await;
        }
    }

    pub(crate) async fn publish(&self, type_: EventType, reason: &str, note: &str) {
        publish(
            &self.shared.recorder,
            &self.reference,
            type_,
            reason,
            note,
            None,
        )
        .await;
    }
}

/// The ledger entries that record a batch's outcome (the event body is no longer needed).
pub(crate) fn outcome_entries(batch: &[(RolloutKey, Entry)], state: State) -> Batch {
    batch
        .iter()
        .map(|(k, e)| {
            (
                k.clone(),
                Entry {
                    state,
                    workload: e.workload.clone(),
                    event: None,
                    reported_outcome: e.reported_outcome,
                    test: e.test.clone(),
                    alert: None,
                },
            )
        })
        .collect()
}
