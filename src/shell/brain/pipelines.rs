//! The loop's pipelines: taken in as the watch shows them, removed, test events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use kube::api::{ListParams, PartialObjectMeta};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::domain::alerts;
use crate::domain::book::Book;
use crate::domain::keys::TEST_EVENT_ANNOTATION;
use crate::domain::ledger::{Entry, RolloutKey, State};
use crate::domain::report;
use crate::domain::selection::Selection;
use crate::domain::status::Stats;
use crate::pipeline::IlertPipeline;
use crate::shell::brain::Brain;
use crate::shell::brain::owed::record_and_queue;
use crate::shell::handle::PipelineHandle;
use crate::shell::outbox::Outbox;
use crate::shell::shared::lock;

impl Brain {
    /// Removes the delivery state of pipelines deleted while unseen. Only of pipelines that no
    /// longer exist in the cluster: one this instance does not serve (another instance's shard
    /// under `--pipeline-selector`, or one relabelled out of it for a while) keeps its state.
    pub(crate) async fn forget_deleted_pipelines(&self) {
        let ledger = &self.shared.ledger;
        let unserved: Vec<String> = ledger
            .read(Book::pipelines)
            .into_iter()
            .filter(|p| !self.pipelines.contains_key(alerts::pipeline_of(p)))
            .collect();
        if unserved.is_empty() {
            return;
        }
        let api: Api<PartialObjectMeta<IlertPipeline>> = Api::all(self.shared.client.clone());
        let existing: HashSet<String> = match api.list_metadata(&ListParams::default()).await {
            Ok(list) => list.items.iter().filter_map(|p| p.uid()).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list IlertPipelines to find deleted ones; their delivery state is kept for now");
                return;
            }
        };
        for stale in unserved
            .iter()
            .filter(|p| !existing.contains(alerts::pipeline_of(p)))
        {
            info!(pipeline_uid = %stale, "removing delivery state of a pipeline that no longer exists");
            if let Err(e) = ledger.forget_pipeline(stale).await {
                warn!(error = %e, "could not remove delivery state of a deleted pipeline");
            }
        }
    }

    /// Takes in a pipeline as the watch shows it. Returns its uid and whether what it selects may
    /// have changed (new, or its spec or labels changed): our own status writes come back here
    /// too, and they must not decide every workload again.
    pub(crate) fn upsert_pipeline(&mut self, p: &IlertPipeline) -> (String, bool) {
        let uid = p.uid().unwrap_or_default();
        let namespace = p.namespace().unwrap_or_default();
        if let Some(h) = self.pipelines.get_mut(&uid) {
            h.last_status = p.status.clone().unwrap_or_default();
            h.test_value = p.annotations().get(TEST_EVENT_ANNOTATION).cloned();
            // Status writes come back as watch events: wake the sender only for a real spec change.
            let spec_changed = h.spec_tx.send_if_modified(|spec| {
                let changed = *spec != p.spec;
                if changed {
                    *spec = p.spec.clone();
                }
                changed
            });
            let labels_changed = h.labels != *p.labels();
            if labels_changed {
                h.labels = p.labels().clone();
            }
            let generation_changed = lock(&h.stats).generation != p.metadata.generation;
            if !spec_changed && !labels_changed && !generation_changed {
                self.maybe_test_event(&uid);
                return (uid, false);
            }
            let sel = Selection::check(&p.spec, &namespace, &self.shared.cfg.trusted_namespaces);
            let mut s = lock(&h.stats);
            let problem = sel.as_ref().err().cloned();
            // Our own status writes come back here: only a real change needs another write.
            if s.generation != p.metadata.generation
                || s.suspended != p.spec.suspend
                || s.config_problem != problem
            {
                s.generation = p.metadata.generation;
                s.suspended = p.spec.suspend;
                s.config_problem = problem;
                s.dirty = true;
            }
            drop(s);
            let mut a = lock(&h.alert_stats);
            if a.enabled != p.spec.alerts.is_some() || a.suspended != p.spec.suspend {
                a.enabled = p.spec.alerts.is_some();
                a.suspended = p.spec.suspend;
                a.dirty = true;
            }
            drop(a);
            h.selection = sel.ok();
            h.configure_grouping();
            self.maybe_test_event(&uid);
            return (uid, true);
        }
        let sel = Selection::check(&p.spec, &namespace, &self.shared.cfg.trusted_namespaces);
        let stats = Arc::new(Mutex::new(Stats {
            generation: p.metadata.generation,
            config_problem: sel.as_ref().err().cloned(),
            suspended: p.spec.suspend,
            dirty: true,
            ..Default::default()
        }));
        let alert_stats = Arc::new(Mutex::new(Stats {
            enabled: p.spec.alerts.is_some(),
            suspended: p.spec.suspend,
            dirty: true,
            ..Default::default()
        }));
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let (spec_tx, _) = watch::channel(p.spec.clone());
        info!(pipeline = %format!("{namespace}/{}", p.name_any()), "serving pipeline");
        let mut handle = PipelineHandle {
            uid: uid.clone(),
            namespace,
            name: p.name_any(),
            reference: p.object_ref(&()),
            last_status: p.status.clone().unwrap_or_default(),
            labels: p.labels().clone(),
            test_value: p.annotations().get(TEST_EVENT_ANNOTATION).cloned(),
            test_claimed: None,
            created,
            spec_tx,
            selection: sel.ok(),
            selected: HashSet::new(),
            outbox: Arc::new(Outbox::default()),
            stats,
            alert_outbox: Arc::new(Outbox::default()),
            alert_stats,
            warm: Arc::new(Notify::new()),
            tasks: Vec::new(),
            deposed: None,
            grouping: Arc::default(),
        };
        handle.configure_grouping();
        if self.leading {
            handle.start(&self.shared, self.catch_up_at.is_some());
        }
        self.pipelines.insert(uid.clone(), handle);
        self.maybe_test_event(&uid);
        (uid, true)
    }

    /// A pipeline left this instance's watch: deleted, or relabelled out of `--pipeline-selector`
    /// (the watch cannot tell). Stops serving it; its delivery state is removed only once the API
    /// server confirms that it is gone, so a pipeline that comes back is not reported again.
    pub(crate) async fn remove_pipeline(&mut self, uid: &str) {
        let Some(h) = self.pipelines.remove(uid) else {
            return;
        };
        let pipeline = format!("{}/{}", h.namespace, h.name);
        let api: Api<IlertPipeline> = Api::namespaced(self.shared.client.clone(), &h.namespace);
        let name = h.name.clone();
        drop(h);
        if !self.leading {
            return;
        }
        match api.get_metadata_opt(&name).await {
            Ok(Some(p)) if p.uid().as_deref() == Some(uid) => {
                info!(pipeline = %pipeline, "pipeline no longer selected by --pipeline-selector; its delivery state is kept");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                // Decided at the next re-list, against a list of every pipeline.
                warn!(pipeline = %pipeline, error = %e, "cannot tell whether the pipeline was deleted; its delivery state is kept for now");
                return;
            }
        }
        info!(pipeline = %pipeline, "pipeline deleted; removing its delivery state");
        for id in [uid.to_string(), alerts::ledger_id(uid)] {
            if let Err(e) = self.shared.ledger.forget_pipeline(&id).await {
                warn!(error = %e, "could not remove delivery state of a deleted pipeline");
            }
        }
    }

    /// A new `ilert.com/test-event` value on a pipeline: one test event through the real path.
    pub(crate) fn maybe_test_event(&mut self, pipeline_uid: &str) {
        if !self.leading {
            return;
        }
        let Some(h) = self.pipelines.get_mut(pipeline_uid) else {
            return;
        };
        let Some(value) = h.test_value.clone() else {
            return;
        };
        let answered = h
            .last_status
            .test_event
            .as_ref()
            .is_some_and(|t| t.value == value);
        if answered || h.test_claimed.as_deref() == Some(value.as_str()) {
            return;
        }
        h.test_claimed = Some(value.clone());
        let key = RolloutKey::test_event(&value);
        if self.shared.ledger.read(|b| b.contains(pipeline_uid, &key)) {
            return;
        }
        let pipeline = format!("{}/{}", h.namespace, h.name);
        info!(pipeline = %pipeline, value = %value, "test event requested");
        let entry = Entry::new(State::Pending, format!("IlertPipeline/{pipeline}"))
            .with_event(Some(report::test_event(
                &pipeline,
                &self.shared.cfg.cluster_name,
                &value,
                Timestamp::now(),
            )))
            .with_test(Some(value.into()));
        record_and_queue(&self.shared, &h.outbox, pipeline_uid, key, entry);
    }
}
