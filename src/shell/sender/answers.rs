//! What an answer of ilert means for a sender: retry timing, status, counters, metrics and
//! Kubernetes Events.

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::events::EventType;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::domain::alerts;
use crate::domain::channel::{Channel, Payload};
use crate::domain::digest::Intent;
use crate::domain::group;
use crate::domain::ledger::{Entry, RolloutKey};
use crate::domain::pacing::{backoff, later, retry_wait};
use crate::domain::status::{Problem, Reason};
use crate::pipeline::{LastEvent, TestEventStatus};
use crate::shell::events::{publish, workload_reference};
use crate::shell::ilert::SendError;
use crate::shell::shared::{jitter, lock};

use super::{Delivery, Done, Rejected, Sender};

impl<P: Payload> Sender<P> {
    /// Acts on one request's answer: status, metrics, Events, retry timing.
    pub(crate) async fn settle(&mut self, d: &mut Delivery, done: Done) {
        let Done {
            batch,
            alert,
            key,
            result,
            waited,
            group,
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
                if let Some(id) = &group {
                    lock(&self.grouping).groups.sent(id);
                }
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
                let names: Vec<&str> = batch.iter().map(|(_, e)| &*e.workload).collect();
                let message = format!("{e}; not retried: {}", names.join(", "));
                warn!(pipeline = %self.name(), error = %message, "event rejected");
                if let Some(id) = &group {
                    lock(&self.grouping).groups.sent(id);
                }
                self.finished(batch, "failed");
                self.tests_rejected(batch, &e.to_string()).await;
                {
                    let mut s = lock(&self.stats);
                    s.failed += batch.iter().filter(|(_, e)| e.test().is_none()).count() as u64;
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

    /// Removes a batch whose outcome is recorded from the outbox, and counts it.
    pub(crate) fn finished(&self, batch: &[(RolloutKey, Entry)], result: &str) {
        let keys: HashSet<&RolloutKey> = batch.iter().map(|(k, _)| k).collect();
        self.outbox.remove(&keys);
        if P::CHANNEL == Channel::Alerts {
            return;
        }
        for (k, e) in batch.iter().filter(|(_, e)| e.test().is_none()) {
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
            batch.iter().cloned().partition(|(_, e)| e.test().is_some());
        for (_, e) in &tests {
            let value = e.test().unwrap_or_default().to_string();
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
                workload: last.workload.to_string(),
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
        } else if let Some(id) = last.group() {
            format!(
                "Reported {} rollouts of {} to ilert as one change",
                batch.len(),
                group::owner_of(id)
            )
        } else {
            format!(
                "Reported {} rollouts to ilert in one combined event",
                batch.len()
            )
        };
        info!(pipeline = %self.name(), "{note}");
        let reason = if alert.is_some() {
            "AlertSent"
        } else {
            "Delivered"
        };
        // One Event per delivery would be one more API request per rollout: the first after a
        // quiet spell goes at once, the rest of a burst in one digest Event (domain::digest).
        // None: publish now; Some(at): publish the digest at `at`.
        let digest_at = match lock(&self.digest).delivered(&note, Instant::now()) {
            Intent::Publish => None,
            Intent::Hold(Some(at)) => Some(at),
            // Held for the digest another delivery already scheduled.
            Intent::Hold(None) => return,
        };
        // Related to the workload, so each workload's deliveries form their own Event series
        // instead of folding into one series under the first note.
        let related = (batch.len() == 1)
            .then(|| workload_reference(&last.workload))
            .flatten();
        let (recorder, reference) = (self.shared.recorder.clone(), self.reference.clone());
        let digest = self.digest.clone();
        // Off the send path.
        tokio::spawn(async move {
            let (note, related) = match digest_at {
                None => (Some(note), related),
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    (lock(&digest).flush(Instant::now()), None)
                }
            };
            if let Some(note) = note {
                publish(
                    &recorder,
                    &reference,
                    EventType::Normal,
                    reason,
                    &note,
                    related,
                )
                .await;
            }
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
            if let Some(value) = e.test() {
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
            warn!(pipeline = %self.name(), reason = p.reason.as_str(), "{message}");
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
