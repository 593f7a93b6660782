//! The key cache of a sender: the integration key read from its Secret, used while young,
//! read again in the background while busy, warmed while a selected workload rolls out.

use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tracing::debug;

use crate::domain::channel::Payload;
use crate::domain::pacing::backoff;
use crate::pipeline::IlertPipelineSpec;
use crate::shell::ilert::IntegrationKey;
use crate::shell::secrets::read_key;
use crate::shell::shared::{jitter, lock};

use super::{Delivery, KEY_MAX_AGE, KEY_TTL, Sender};

impl<P: Payload> Sender<P> {
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
                debug!(pipeline = %self.name(), reason = problem.reason.as_str(), "background read of the key failed; the key in hand is still young");
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
}
