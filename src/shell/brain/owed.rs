//! What one workload change owes each pipeline, carried out: claims, history, the event built
//! and queued.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::domain::alerts;
use crate::domain::channel::Payload;
use crate::domain::context::owners;
use crate::domain::decide;
use crate::domain::group;
use crate::domain::history::History;
use crate::domain::ledger::{Entry, RolloutKey, State};
use crate::domain::payload::DeploymentEvent;
use crate::domain::rollout::{Finished, Outcome, Progress, WorkloadView};
use crate::domain::template::Templates;
use crate::domain::uid::Uid;
use crate::pipeline::AlertPriority;
use crate::shell::brain::Brain;
use crate::shell::events::template_warnings;
use crate::shell::outbox::{Grouping, Outbox};
use crate::shell::shared::{Shared, lock};

impl Brain {
    /// A pipeline changed: re-decide every workload for it (O(workloads), on pipeline changes only).
    /// `trigger` names why, for the decisions metric.
    pub(crate) fn evaluate_pipeline(&mut self, pipeline_uid: &str, trigger: &str) {
        let uids: Vec<Uid> = self.workloads.keys().cloned().collect();
        self.shared.metrics.decided(trigger, uids.len());
        for uid in uids {
            self.evaluate_one(pipeline_uid, &uid);
        }
        if let Some(h) = self.pipelines.get(pipeline_uid) {
            let mut s = lock(&h.stats);
            s.selected = h.selected.len() as u64;
            s.dirty = true;
        }
    }

    /// A workload changed: work in proportion to the number of pipelines.
    pub(crate) fn evaluate_workload(&mut self, workload_uid: &Uid, trigger: &str) {
        let started = std::time::Instant::now();
        self.shared.metrics.reconciles.inc();
        self.shared
            .metrics
            .watched_workloads
            .set(self.workloads.len() as i64);
        let pipelines: Vec<String> = self.pipelines.keys().cloned().collect();
        self.shared.metrics.decided(trigger, pipelines.len());
        for p in pipelines {
            let before = self.pipelines.get(&p).map(|h| h.selected.len());
            self.evaluate_one(&p, workload_uid);
            if let Some(h) = self.pipelines.get(&p)
                && Some(h.selected.len()) != before
            {
                let mut s = lock(&h.stats);
                s.selected = h.selected.len() as u64;
                s.dirty = true;
            }
        }
        self.shared
            .metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
    }

    pub(crate) fn evaluate_one(&mut self, pipeline_uid: &str, workload_uid: &Uid) {
        let Some(w) = self.workloads.get(workload_uid) else {
            return;
        };
        let Some(h) = self.pipelines.get_mut(pipeline_uid) else {
            return;
        };
        // A Deployment a Rollout runs (`spec.workloadRef`) rolls out as that Rollout.
        let selected = !self.workload_refs.runs(w)
            && h.selection
                .as_ref()
                .is_some_and(|sel| sel.selects(w, &h.namespace, &self.namespaces));
        let grouped = h.selection.as_ref().is_some_and(|s| s.group.is_some());
        if !selected {
            h.selected.remove(workload_uid);
            if grouped && lock(&h.grouping).groups.stopped(workload_uid) {
                h.outbox.notify.notify_one();
            }
            return;
        }
        h.selected.insert(workload_uid.clone());
        if !self.leading {
            return;
        }
        let facts = decide::Pipeline {
            uid: pipeline_uid,
            created: h.created,
            alerts: h
                .selection
                .as_ref()
                .and_then(|s| s.alerts.as_ref())
                .map(|a| a.priority),
        };
        let owed = self
            .shared
            .ledger
            .change(pipeline_uid, |book| decide::owe(book, w, &facts));
        if let Some(key) = &owed.remembered {
            debug!(workload = %w.reference(), revision = key.revision, "seen, not reported: the first-sight baseline or a rollout under way");
        }
        if owed.warm {
            h.warm.notify_one();
        }
        // With `groupBy: Owner`: the change this rollout belongs to.
        let group = if grouped {
            join_change(&h.grouping, &h.outbox, w, owed.report)
        } else {
            None
        };
        let Some((key, finished)) = owed.finished else {
            return;
        };
        let (report, alert) = (owed.report, owed.alert);
        let pipeline = format!("{}/{}", h.namespace, h.name);
        if report {
            info!(workload = %w.reference(), revision = finished.revision, outcome = finished.outcome.as_str(), pipeline = %pipeline, "rollout finished");
            let mut s = lock(&h.stats);
            s.pending += 1;
            s.dirty = true;
        }
        if let Some((action, _)) = alert {
            info!(workload = %w.reference(), revision = finished.revision, action = ?action, pipeline = %pipeline, "alert to send");
        }
        // The history from the ReplicaSet cache; a list only if the current ReplicaSet is not in
        // it yet (the watches are separate streams). A StatefulSet's or DaemonSet's revision was
        // found in the ControllerRevision cache, so its history is there.
        let cached = self.replica_sets.get(workload_uid);
        let has_current = cached
            .iter()
            .any(|rs| rs.revision == Some(finished.revision));
        let plan = ToQueue {
            shared: self.shared.clone(),
            pipeline_uid: pipeline_uid.to_string(),
            pipeline,
            key,
            finished,
            templates: h.selection.as_ref().and_then(|s| s.templates.clone()),
            outbox: report.then(|| h.outbox.clone()),
            alert: alert.map(|(action, priority)| (action, priority, h.alert_outbox.clone())),
            group: group.map(|id| (id, h.grouping.clone())),
        };
        if !w.kind.has_replica_sets() {
            let history =
                History::from_revisions(w, finished.revision, self.revisions.get(workload_uid));
            plan.queue(w, history);
            return;
        }
        if has_current {
            let history = History::from_views(w, finished.revision, cached);
            plan.queue(w, history);
            return;
        }
        let view = w.clone();
        tokio::spawn(async move {
            let history = {
                let _permit = plan.shared.history_lists.acquire().await;
                replica_set_history(&plan.shared.client, &view, finished.revision).await
            };
            plan.queue(&view, history);
        });
    }

    /// A workload that is gone resolves the alert it left open in a pipeline (`spec.alerts`):
    /// no later rollout will.
    pub(crate) fn resolve_gone(&self, pipeline_uid: &str, workload_uid: &Uid) {
        if !self.leading {
            return;
        }
        let Some(h) = self.pipelines.get(pipeline_uid) else {
            return;
        };
        if h.selection
            .as_ref()
            .and_then(|s| s.alerts.as_ref())
            .is_none()
        {
            return;
        }
        let ledger_id = alerts::ledger_id(pipeline_uid);
        let key = RolloutKey {
            workload_uid: workload_uid.clone(),
            revision: alerts::GONE_REVISION,
            outcome: Outcome::Completed,
        };
        let (action, workload) = self.shared.ledger.read(|book| {
            let known: Vec<_> = book.of_workload(&ledger_id, workload_uid).collect();
            let workload = known.last().map(|(_, e)| e.workload.clone());
            (alerts::action(&key, known), workload)
        });
        let (Some(alerts::Action::Resolve), Some(workload)) = (action, workload) else {
            return;
        };
        info!(workload = %workload, pipeline = %format!("{}/{}", h.namespace, h.name), "deleted with its alert open: resolving");
        let entry = Entry::new(State::Pending, workload.clone()).with_alert(Some(
            alerts::gone_event(&workload, &self.shared.cfg.cluster_name),
        ));
        self.shared
            .ledger
            .read_mut(|book| book.claim(&ledger_id, key.clone(), entry.clone()));
        record_and_queue(&self.shared, &h.alert_outbox, &ledger_id, key, entry);
    }
}

/// What to queue for one finished rollout of one pipeline, once its history is known.
pub(crate) struct ToQueue {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pipeline_uid: String,
    /// `namespace/name`, for logs.
    pub(crate) pipeline: String,
    pub(crate) key: RolloutKey,
    pub(crate) finished: Finished,
    pub(crate) templates: Option<Arc<Templates>>,
    /// The deployment event's queue, when it is to be reported.
    pub(crate) outbox: Option<Arc<Outbox<DeploymentEvent>>>,
    /// The alert or resolve, its priority and the alerts queue.
    pub(crate) alert: Option<(
        alerts::Action,
        Option<AlertPriority>,
        Arc<Outbox<alerts::AlertEvent>>,
    )>,
    /// The change the deployment event belongs to, and the pipeline's changes: it is held open
    /// until the event is queued.
    pub(crate) group: Option<(String, Arc<Mutex<Grouping>>)>,
}

impl ToQueue {
    /// Builds the deployment event (and the alert from it), records them pending and queues them.
    pub(crate) fn queue(self, view: &WorkloadView, history: History) {
        let built = decide::pending(
            view,
            self.finished,
            history,
            Timestamp::now(),
            decide::Shaping {
                cluster: &self.shared.cfg.cluster_name,
                templates: self.templates.as_deref(),
            },
            self.outbox.is_some(),
            self.alert
                .as_ref()
                .map(|(action, priority, _)| (*action, *priority)),
        );
        if !built.warnings.is_empty() {
            template_warnings(&self.shared, view, &self.pipeline, built.warnings);
        }
        if let (Some((_, _, outbox)), Some(entry)) = (&self.alert, built.alert) {
            let ledger_id = alerts::ledger_id(&self.pipeline_uid);
            record_and_queue(&self.shared, outbox, &ledger_id, self.key.clone(), entry);
        }
        if let (Some(outbox), Some(entry)) = (&self.outbox, built.event) {
            let entry = entry.with_group(self.group.as_ref().map(|(id, _)| id.as_str().into()));
            let uid = self.key.workload_uid.clone();
            record_and_queue(&self.shared, outbox, &self.pipeline_uid, self.key, entry);
            if let Some((id, grouping)) = &self.group {
                lock(grouping).groups.queued(id, &uid);
                outbox.notify.notify_one();
            }
        }
    }
}

/// With `groupBy: Owner`: books workload `w` in its owner's change: rolling out, finished with an
/// event to send (`report`: the change's id, the tag of that event), or neither any more. None:
/// its event, if any, goes on its own (no owner).
fn join_change(
    grouping: &Mutex<Grouping>,
    outbox: &Outbox<DeploymentEvent>,
    w: &WorkloadView,
    report: bool,
) -> Option<String> {
    let owner = owners(&w.labels, &w.annotations)
        .first()
        .map(group::owner_key)?;
    let (now, stamp) = (Instant::now(), Timestamp::now().as_millisecond());
    let mut g = lock(grouping);
    if report {
        return g.groups.finished(&owner, &w.uid, now, stamp);
    }
    match w.progress() {
        Progress::InProgress => g.groups.rolling(&owner, &w.uid, &w.reference(), now, stamp),
        // A pause is not an end: a member stays one until it finishes or the change's wait ends.
        Progress::Paused => {}
        Progress::Complete | Progress::Failed | Progress::Aborted => {
            if g.groups.stopped(&w.uid) {
                outbox.notify.notify_one();
            }
        }
    }
    None
}

/// Records an event as pending and queues it at once. The pending write and the send race: a
/// crash before the pending write is on the API server loses nothing that waiting for it would
/// have saved (the rollout is decided again from the workload), and a crash after ilert's 202 but
/// before the sent write repeats the event either way.
pub(crate) fn record_and_queue<P: Payload>(
    shared: &Shared,
    outbox: &Outbox<P>,
    pipeline_uid: &str,
    key: RolloutKey,
    entry: Entry,
) {
    shared
        .ledger
        .record(pipeline_uid, &[(key.clone(), entry.clone())]);
    outbox.push(key, entry, false);
}

/// Reads the ReplicaSets of a workload: rollback detection, previous images, start time.
/// Only when the ReplicaSet cache lacks the current ReplicaSet; scoped by the workload's selector.
pub(crate) async fn replica_set_history(
    client: &Client,
    w: &WorkloadView,
    revision: u64,
) -> History {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &w.namespace);
    let selector: Selector = w.match_labels.to_btree().into_iter().collect();
    // From the API server's watch cache (resourceVersion=0): no quorum read from etcd on the
    // path of every event. The current ReplicaSet is older than the rollout's end by far.
    let lp = ListParams::default().labels_from(&selector).match_any();
    for attempt in 1..=3 {
        match api.list(&lp).await {
            Ok(list) => return History::from_replica_sets(w, revision, &list.items),
            Err(e) => {
                warn!(error = %e, workload = %w.reference(), attempt, "could not list ReplicaSets; the event goes without history if this persists");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
        }
    }
    History::default()
}
