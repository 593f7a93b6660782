//! One served pipeline: its queues, counters and tasks (senders and status writer), started
//! when this instance leads and stopped when it no longer does.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::domain::alerts;
use crate::domain::payload::DeploymentEvent;
use crate::domain::selection::Selection;
use crate::domain::status::Stats;
use crate::domain::uid::Uid;
use crate::pipeline::{IlertPipelineSpec, IlertPipelineStatus};
use crate::shell::outbox::{Grouping, Outbox};
use crate::shell::sender::Sender;
use crate::shell::shared::{Shared, lock};
use crate::shell::status_writer::StatusWriter;
use crate::shell::supervisor::{Ended, supervise};

pub(crate) struct PipelineHandle {
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) reference: ObjectReference,
    /// The status as last seen in the watch: a new leader continues its counters.
    pub(crate) last_status: IlertPipelineStatus,
    /// Its labels, as last seen: with the spec, what a change must re-decide workloads for.
    pub(crate) labels: BTreeMap<String, String>,
    /// The `ilert.com/test-event` annotation, and the value already queued.
    pub(crate) test_value: Option<String>,
    pub(crate) test_claimed: Option<String>,
    pub(crate) created: Timestamp,
    pub(crate) spec_tx: watch::Sender<IlertPipelineSpec>,
    pub(crate) selection: Option<Selection>,
    pub(crate) selected: HashSet<Uid>,
    pub(crate) outbox: Arc<Outbox<DeploymentEvent>>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    /// Alerts and resolves (`spec.alerts`): their own queue, ledger and counters.
    pub(crate) alert_outbox: Arc<Outbox<alerts::AlertEvent>>,
    pub(crate) alert_stats: Arc<Mutex<Stats>>,
    /// Wakes the deployment sender to read its key while a selected workload rolls out.
    pub(crate) warm: Arc<Notify>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    /// Tells the senders that leadership was lost (see [`PipelineHandle::step_down`]).
    pub(crate) deposed: Option<watch::Sender<bool>>,
    /// Its changes under way (`spec.groupBy: Owner`).
    pub(crate) grouping: Arc<Mutex<Grouping>>,
}

impl PipelineHandle {
    /// Follows the pipeline's checked spec: grouping on, off or with another window, and the
    /// templates a change's event renders. Held events are looked at again.
    pub(crate) fn configure_grouping(&self) {
        let Some(sel) = &self.selection else {
            // An invalid spec changes nothing here: what waits keeps waiting as it was.
            return;
        };
        {
            let mut g = lock(&self.grouping);
            if g.groups.policy() != sel.group {
                g.groups.set_policy(sel.group);
            }
            g.templates = sel.templates.clone();
        }
        self.outbox.notify.notify_one();
    }

    /// Starts delivery and status writing (the leader only): pending events come from the ledger,
    /// counters from the last status seen.
    /// `hold`: pending events inherited from the ledger wait for [`Outbox::release_held`].
    pub(crate) fn start(&mut self, shared: &Arc<Shared>, hold: bool) {
        self.stop();
        let (deposed_tx, deposed) = watch::channel(false);
        self.deposed = Some(deposed_tx);
        let alerts_ledger = alerts::ledger_id(&self.uid);
        lock(&self.grouping).groups.clear();
        for (key, entry) in shared.ledger.read(|b| b.pending(&self.uid)) {
            // A member of a change: the change is open again until its other rollouts are seen.
            if let Some(id) = entry.group() {
                lock(&self.grouping)
                    .groups
                    .reopen(id, tokio::time::Instant::now());
            }
            self.outbox.push(key, entry, hold);
        }
        let mut pending = shared.ledger.read(|b| b.pending(&alerts_ledger));
        // Key order puts (revision, Completed) before (revision, Failed): the ALERT of a
        // revision that failed and then recovered must go out before its RESOLVE.
        pending.sort_by_key(|(k, e)| {
            let resolve = e
                .alert()
                .is_some_and(|a| a.event_type == alerts::EventType::Resolve);
            (k.workload_uid.clone(), k.revision, resolve)
        });
        for (key, entry) in pending {
            self.alert_outbox.push(key, entry, hold);
        }
        {
            let mut s = lock(&self.stats);
            s.sent = self.last_status.events_sent;
            s.failed = self.last_status.events_failed;
            s.last_event = self.last_status.last_event.clone();
            s.test_event = self.last_status.test_event.clone();
            s.accepted = s.last_event.is_some()
                || s.test_event
                    .as_ref()
                    .is_some_and(|t| t.result == "Accepted");
            s.dirty = true;
        }
        {
            let mut s = lock(&self.alert_stats);
            s.sent = self.last_status.alerts_sent.unwrap_or(0);
            s.failed = self.last_status.alerts_failed.unwrap_or(0);
            s.accepted = s.sent > 0;
            s.dirty = true;
        }
        let deployments = Sender {
            shared: shared.clone(),
            warm: self.warm.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            reference: self.reference.clone(),
            outbox: self.outbox.clone(),
            stats: self.stats.clone(),
            spec: self.spec_tx.subscribe(),
            shutdown: shared.shutdown.clone(),
            deposed: deposed.clone(),
            digest: Arc::default(),
            grouping: self.grouping.clone(),
        };
        let alerts = Sender {
            shared: shared.clone(),
            // Alerts follow a progress deadline of minutes: nothing to gain.
            warm: Arc::new(Notify::new()),
            uid: alerts_ledger,
            namespace: self.namespace.clone(),
            reference: self.reference.clone(),
            outbox: self.alert_outbox.clone(),
            stats: self.alert_stats.clone(),
            spec: self.spec_tx.subscribe(),
            shutdown: shared.shutdown.clone(),
            deposed: deposed.clone(),
            digest: Arc::default(),
            // Alerts are per workload.
            grouping: Arc::default(),
        };
        let status = StatusWriter {
            shared: shared.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reference: self.reference.clone(),
            outbox: self.outbox.clone(),
            stats: self.stats.clone(),
            alert_outbox: self.alert_outbox.clone(),
            alert_stats: self.alert_stats.clone(),
        };
        let pipeline = format!("{}/{}", self.namespace, self.name);
        let supervised = |task, start: StartTask| {
            tokio::spawn(supervise(
                pipeline.clone(),
                task,
                shared.metrics.clone(),
                TASK_RESTART_DELAY,
                start,
            ))
        };
        self.tasks = vec![
            supervised(
                "sender",
                Box::new(move |again| deployments.clone().run(again).boxed()),
            ),
            supervised(
                "alert_sender",
                Box::new(move |again| alerts.clone().run(again).boxed()),
            ),
            supervised("status", Box::new(move |_| status.clone().run().boxed())),
        ];
    }

    /// Leadership lost: nothing new goes out; requests on the wire finish and their outcome is
    /// recorded (ilert may have accepted them: the next leader must not send them again).
    pub(crate) fn step_down(&mut self) {
        if let Some(d) = self.deposed.take() {
            let _ = d.send(true);
        }
        // The senders come first in `tasks` and end by themselves; the status writer is the
        // leader's alone.
        if let Some(status) = self.tasks.last() {
            status.abort();
        }
    }

    /// Stops sending at once (pipeline deleted, or a new term starts).
    pub(crate) fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.outbox.clear();
        self.alert_outbox.clear();
    }
}

impl Drop for PipelineHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a pipeline task afresh; true: it starts again after a failure.
pub(crate) type StartTask =
    Box<dyn FnMut(bool) -> futures::future::BoxFuture<'static, Ended> + Send>;

/// The first wait before a failed pipeline task starts again (doubling while it keeps failing).
pub(crate) const TASK_RESTART_DELAY: Duration = Duration::from_secs(1);
