//! Writes a pipeline's status when something changed, at most twice a second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::domain::alerts;
use crate::domain::pacing::backoff;
use crate::domain::payload::DeploymentEvent;
use crate::domain::status::{Conditions, Problem, Stats, status};
use crate::metrics::{Failure, PipelineLabels};
use crate::pipeline::IlertPipeline;
use crate::shell::events::publish;
use crate::shell::outbox::Outbox;
use crate::shell::sender::FIRST_READ_GRACE;
use crate::shell::shared::{Shared, jitter, lock};
use crate::shell::supervisor::Ended;
use jiff::Timestamp;

/// Writes a pipeline's status when something changed, at most twice a second.
#[derive(Clone)]
pub(crate) struct StatusWriter {
    pub(crate) shared: Arc<Shared>,
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) reference: ObjectReference,
    pub(crate) outbox: Arc<Outbox<DeploymentEvent>>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) alert_outbox: Arc<Outbox<alerts::AlertEvent>>,
    pub(crate) alert_stats: Arc<Mutex<Stats>>,
}

impl StatusWriter {
    pub(crate) async fn run(self) -> Ended {
        let api: Api<IlertPipeline> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let mut last = Conditions::default();
        let mut announced_config_problem: Option<Problem> = None;
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        let mut failures: u32 = 0;
        let started = Instant::now();
        let labels = PipelineLabels {
            pipeline: format!("{}/{}", self.namespace, self.name),
        };
        let alerts_ledger = alerts::ledger_id(&self.uid);
        loop {
            interval.tick().await;
            let ledger = &self.shared.ledger;
            let metrics = &self.shared.metrics;
            for (stats, id) in [
                (&self.stats, &self.uid),
                (&self.alert_stats, &alerts_ledger),
            ] {
                let unstored = ledger.read(|b| b.unstored(id));
                let mut s = lock(stats);
                if s.unstored != unstored {
                    s.unstored = unstored;
                    s.dirty = true;
                }
            }
            metrics.ledger_bytes.get_or_create(&labels).set(
                ledger.read(|b| b.stored_bytes(&self.uid) + b.stored_bytes(&alerts_ledger)) as i64,
            );
            metrics
                .ledger_unstored
                .get_or_create(&labels)
                .set(ledger.read(|b| b.unstored(&self.uid) + b.unstored(&alerts_ledger)) as i64);
            if failures > 0 {
                // The API server is away: retry with backoff, and say so once, not twice a second.
                tokio::time::sleep(backoff(failures, Duration::from_secs(10), jitter())).await;
            }
            let (status, config_problem) = {
                let mut s = lock(&self.stats);
                let mut a = lock(&self.alert_stats);
                if !s.dirty && !a.dirty {
                    continue;
                }
                let known = s.ready_known() && (!a.enabled || a.ready_known());
                if !known && started.elapsed() < FIRST_READ_GRACE {
                    continue;
                }
                s.dirty = false;
                a.dirty = false;
                let status = status(
                    &s,
                    &a,
                    (self.outbox.len(), self.alert_outbox.len()),
                    &mut last,
                    Timestamp::now(),
                );
                // The readiness the Ready condition was just built from.
                let ready = last.ready.as_ref().is_some_and(|(ready, ..)| *ready);
                metrics
                    .pipeline_ready
                    .get_or_create(&labels)
                    .set(i64::from(ready));
                (status, s.config_problem.clone())
            };
            if config_problem != announced_config_problem {
                if let Some(p) = &config_problem {
                    warn!(pipeline = %format!("{}/{}", self.namespace, self.name), reason = p.reason.as_str(), "{}", p.message);
                    publish(
                        &self.shared.recorder,
                        &self.reference,
                        EventType::Warning,
                        p.reason.as_str(),
                        &p.message,
                        None,
                    )
                    .await;
                }
                announced_config_problem = config_problem;
            }
            let mut patch = json!({ "status": status });
            if status.alerts_sent.is_none() {
                // spec.alerts removed: the merge patch must clear what it left.
                for k in ["alertsSent", "alertsFailed", "pendingAlerts"] {
                    patch["status"][k] = serde_json::Value::Null;
                }
            }
            match api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if failures > 0 {
                        info!(pipeline = %format!("{}/{}", self.namespace, self.name), "pipeline status written again");
                    }
                    failures = 0;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // A deleted pipeline is neither Ready nor not: its series ends.
                    metrics.pipeline_ready.remove(&labels);
                    return Ended::PipelineGone;
                }
                Err(e) => {
                    self.shared.metrics.error(Failure::Status);
                    if failures == 0 {
                        warn!(pipeline = %format!("{}/{}", self.namespace, self.name), error = %e, "could not write pipeline status; retrying with backoff");
                    } else {
                        debug!(error = %e, attempt = failures + 1, "could not write pipeline status");
                    }
                    failures = failures.saturating_add(1);
                    lock(&self.stats).dirty = true;
                }
            }
        }
    }
}
