//! The decision loop: watch events in, indexes updated, every change decided against every
//! pipeline (`owed`), leadership and shutdown followed.

mod owed;
mod pipelines;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher::Event;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::domain::alerts;
use crate::domain::argo;
use crate::domain::history::{ReplicaSetView, RevisionView};
use crate::domain::index::{Applied, OwnedCache, Relist, Step, WorkloadRefs, resolve_owned};
use crate::domain::keys::CONTROLLER_NAME;
use crate::domain::pacing::backoff;
use crate::domain::rollout::{Kind, WorkloadView};
use crate::domain::uid::Uid;
use crate::metrics::{Failure, Metrics};
use crate::pipeline::IlertPipeline;
use crate::shell::handle::PipelineHandle;
use crate::shell::ilert::IlertClient;
use crate::shell::lean::Lean;
use crate::shell::ledger_store::Ledger;
use crate::shell::shared::{Config, Readiness, Shared, jitter, lock};
use crate::shell::watch::{Input, Watch, initial_lists, project, watch_all, watch_optional};

/// The decision loop's state: compact workload views, namespace labels, pipelines.
pub(crate) struct Brain {
    pub(crate) shared: Arc<Shared>,
    /// Boxed: a table entry is a key and a pointer, so the table's spare slots cost 32 bytes
    /// each rather than a whole view's 400 (at 10,000 workloads, about 16,384 slots).
    pub(crate) workloads: HashMap<Uid, Box<WorkloadView>>,
    pub(crate) namespaces: HashMap<String, BTreeMap<String, String>>,
    pub(crate) pipelines: HashMap<String, PipelineHandle>,
    /// Per kind: the list in progress.
    pub(crate) relist_workloads: HashMap<Kind, Relist<HashMap<Uid, Box<WorkloadView>>>>,
    pub(crate) relist_namespaces: Relist<HashMap<String, BTreeMap<String, String>>>,
    pub(crate) relist_pipelines: Relist<HashSet<String>>,
    pub(crate) replica_sets: OwnedCache<ReplicaSetView>,
    pub(crate) revisions: OwnedCache<RevisionView>,
    /// Deployments that Rollouts run (`spec.workloadRef`): reported as the Rollout.
    pub(crate) workload_refs: WorkloadRefs,
    pub(crate) synced: [bool; Watch::COUNT],
    pub(crate) readiness: Readiness,
    /// Only the lease holder sends and writes; every replica watches, so failover is instant.
    pub(crate) leading: bool,
    /// After a takeover: when the previous leader's requests must have ended, so the ledger is
    /// read for what they recorded before inherited events go out.
    pub(crate) catch_up_at: Option<Instant>,
}

/// Runs until a watch fails for good.
/// The outside signals one controller instance follows.
pub struct Signals {
    /// true while this replica holds the lease.
    pub leader: watch::Receiver<bool>,
    /// true once the process should stop.
    pub shutdown: watch::Receiver<bool>,
}

/// Runs until shutdown (Ok) or until the watches end for good.
pub async fn run(
    client: Client,
    ilert: IlertClient,
    cfg: Config,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let write_errors = metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            error: Failure::Ledger.label().into(),
        })
        .clone();
    let ledger = Ledger::load(
        client.clone(),
        &cfg.namespace,
        cfg.ledger_capacity,
        write_errors,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot read the delivery state (ConfigMaps) in namespace {}: {e}",
            cfg.namespace
        )
    })?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(cfg.instance.clone()),
        },
    );
    let shared = Arc::new(Shared {
        metrics,
        ilert_timeout: cfg.ilert_timeout,
        shutdown: signals.shutdown.clone(),
        client: client.clone(),
        ilert,
        cfg: cfg.clone(),
        ledger,
        budgets: Mutex::default(),
        history_lists: tokio::sync::Semaphore::new(16),
        recorder,
    });

    // A cluster of 10,000 workloads is not one response: lists stream, or come in pages.
    let lists = initial_lists(&client).await;
    let mut pipeline_cfg = lists.clone();
    if let Some(sel) = &cfg.pipeline_selector {
        pipeline_cfg = pipeline_cfg.labels(sel);
    }
    let deployments = watch_all::<Lean<Deployment>>(&client, lists.clone()).map_ok(|ev| {
        Input::Workload(
            Kind::Deployment,
            project(ev, |d| WorkloadView::from_deployment(&d.0)),
        )
    });
    let stateful_sets = watch_all::<Lean<StatefulSet>>(&client, lists.clone()).map_ok(|ev| {
        Input::Workload(
            Kind::StatefulSet,
            project(ev, |s| WorkloadView::from_stateful_set(&s.0)),
        )
    });
    let daemon_sets = watch_all::<Lean<DaemonSet>>(&client, lists.clone()).map_ok(|ev| {
        Input::Workload(
            Kind::DaemonSet,
            project(ev, |d| WorkloadView::from_daemon_set(&d.0)),
        )
    });
    // Argo Rollouts: watched while its CRD is installed (discovery asks periodically).
    let rollouts =
        watch_optional::<Lean<argo::Rollout>>(&client, lists.clone(), cfg.discovery_interval)
            .map_ok(|ev| {
                Input::Workload(
                    Kind::Rollout,
                    project(ev, |r| WorkloadView::from_rollout(&r.0)),
                )
            });
    let revisions = watch_all::<Lean<ControllerRevision>>(&client, lists.clone()).map_ok(|ev| {
        Input::Revision(project(ev, |r| {
            RevisionView::from_controller_revision(&r.0)
        }))
    });
    let pipelines = watch_all::<IlertPipeline>(&client, pipeline_cfg)
        .map_ok(|ev| Input::Pipeline(Box::new(ev)));
    let namespaces =
        watch_all::<PartialObjectMeta<Namespace>>(&client, lists.clone()).map_ok(Input::Namespace);
    let replica_sets = watch_all::<Lean<ReplicaSet>>(&client, lists.clone())
        .map_ok(|ev| Input::ReplicaSet(project(ev, |r| ReplicaSetView::from_replica_set(&r.0))));
    let mut inputs = stream::select_all([
        deployments.boxed(),
        stateful_sets.boxed(),
        daemon_sets.boxed(),
        rollouts.boxed(),
        pipelines.boxed(),
        namespaces.boxed(),
        replica_sets.boxed(),
        revisions.boxed(),
    ]);

    let mut brain = Brain {
        shared,
        workloads: HashMap::new(),
        namespaces: HashMap::new(),
        pipelines: HashMap::new(),
        relist_workloads: HashMap::new(),
        relist_namespaces: Relist::default(),
        relist_pipelines: Relist::default(),
        replica_sets: OwnedCache::default(),
        revisions: OwnedCache::default(),
        workload_refs: WorkloadRefs::default(),
        synced: [false; Watch::COUNT],
        readiness,
        leading: false,
        catch_up_at: None,
    };
    // Without leader election the channel starts (and stays) true: no change would announce it.
    if *signals.leader.borrow_and_update() {
        brain.set_leading(true).await;
    }
    loop {
        tokio::select! {
            input = inputs.next() => match input {
                Some(Ok(input)) => brain.handle(input).await,
                // The backoff retries; a failing watch is logged and resumes.
                Some(Err(e)) => {
                    brain.shared.metrics.error(Failure::Watch);
                    warn!(error = %e, "watch failed; retrying with backoff");
                }
                None => anyhow::bail!("watch streams ended"),
            },
            changed = signals.leader.changed() => {
                let leading = changed.is_ok() && *signals.leader.borrow_and_update();
                brain.set_leading(leading).await;
            }
            _ = tokio::time::sleep_until(brain.catch_up_at.unwrap_or_else(Instant::now)), if brain.catch_up_at.is_some() => {
                brain.catch_up().await;
            }
            _ = signals.shutdown.changed() => {
                brain.shut_down().await;
                return Ok(());
            }
        }
    }
}

impl Brain {
    pub(crate) async fn set_leading(&mut self, leading: bool) {
        if leading == self.leading {
            return;
        }
        self.shared.metrics.leader.set(i64::from(leading));
        if !leading {
            warn!("lost the lease: stopped sending; requests on the wire finish and are recorded");
            self.leading = false;
            self.catch_up_at = None;
            self.shared.ledger.set_term(false, None);
            for h in self.pipelines.values_mut() {
                h.step_down();
            }
            return;
        }
        let epoch = self.lease_epoch().await;
        info!(epoch, "holding the lease: sending");
        self.shared.ledger.set_term(true, Some(epoch));
        // Our own writes still on their way (a lease lost to an API server outage) go first, or
        // the reload would bring back as pending what was already sent.
        self.shared.ledger.flush(Duration::from_secs(30)).await;
        // The previous leader wrote the ledger: read it again before deciding anything.
        let mut attempt = 0;
        while let Err(e) = self.shared.ledger.reload().await {
            attempt += 1;
            self.shared.metrics.error(Failure::Ledger);
            warn!(error = %e, "cannot read the delivery state; retrying before taking over");
            tokio::time::sleep(backoff(attempt, Duration::from_secs(10), jitter())).await;
        }
        self.leading = true;
        // A previous leader may have had requests on the wire when it lost the lease; what it
        // records of them lands within its ilert time-out. Until then inherited events wait.
        self.catch_up_at =
            Some(Instant::now() + self.shared.ilert_timeout + Duration::from_secs(1));
        let uids: Vec<String> = self.pipelines.keys().cloned().collect();
        for uid in &uids {
            if let Some(h) = self.pipelines.get_mut(uid) {
                h.test_claimed = None;
                h.start(&self.shared, true);
            }
            self.maybe_test_event(uid);
        }
        self.after_resync().await;
    }

    /// The leader term: the Lease's `leaseTransitions`, which grows with every new holder. With
    /// no election, 0.
    pub(crate) async fn lease_epoch(&self) -> u64 {
        let Some(name) = &self.shared.cfg.lease else {
            return 0;
        };
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.shared.client.clone(), &self.shared.cfg.namespace);
        let mut attempt = 0;
        loop {
            match api.get(name).await {
                Ok(lease) => {
                    let transitions = lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0);
                    return u64::try_from(transitions).unwrap_or(0);
                }
                Err(e) => {
                    attempt += 1;
                    self.shared.metrics.error(Failure::Lease);
                    warn!(error = %e, "cannot read the Lease for the leader term; retrying before taking over");
                    tokio::time::sleep(backoff(attempt, Duration::from_secs(10), jitter())).await;
                }
            }
        }
    }

    /// The previous leader's requests have ended: drop from the queues what it recorded as
    /// answered since the takeover, then let inherited events go.
    pub(crate) async fn catch_up(&mut self) {
        match self.shared.ledger.catch_up().await {
            Ok(done) => {
                for h in self.pipelines.values() {
                    let pipeline = format!("{}/{}", h.namespace, h.name);
                    h.outbox.inherited_done(&pipeline, done.get(&h.uid));
                    h.alert_outbox
                        .inherited_done(&pipeline, done.get(&alerts::ledger_id(&h.uid)));
                }
                self.catch_up_at = None;
            }
            Err(e) => {
                self.shared.metrics.error(Failure::Ledger);
                warn!(error = %e, "cannot read the delivery state after the takeover; inherited events wait");
                self.catch_up_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }

    /// SIGTERM: let every sender finish its request in flight (they watch the shutdown signal),
    /// give them a bounded time, then return so the lease is released.
    pub(crate) async fn shut_down(&mut self) {
        info!("shutting down: finishing requests in flight");
        let limit = self.shared.ilert_timeout + Duration::from_secs(2);
        // The senders (deployment events and alerts) come first in `tasks`, the status writer last.
        let tasks: Vec<JoinHandle<()>> = self
            .pipelines
            .values_mut()
            .flat_map(|h| {
                let senders = h.tasks.len().saturating_sub(1);
                h.tasks.drain(..senders).collect::<Vec<_>>()
            })
            .collect();
        let _ = tokio::time::timeout(limit, futures::future::join_all(tasks)).await;
        for h in self.pipelines.values_mut() {
            h.stop();
        }
        // Pending and sent states handed to the ledger go out before the lease is released.
        self.shared.ledger.flush(Duration::from_secs(5)).await;
    }

    pub(crate) fn all_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    pub(crate) async fn handle(&mut self, input: Input) {
        match input {
            Input::Workload(kind, ev) => self.workload_event(kind, ev).await,
            Input::Namespace(ev) => self.namespace_event(ev).await,
            Input::Pipeline(ev) => self.pipeline_event(*ev).await,
            Input::ReplicaSet(ev) => {
                let applied = self.replica_sets.apply(ev);
                self.owned_changed(applied, Watch::ReplicaSets).await;
            }
            Input::Revision(ev) => {
                let applied = self.revisions.apply(ev);
                self.owned_changed(applied, Watch::Revisions).await;
            }
        }
    }

    async fn workload_event(&mut self, kind: Kind, ev: Event<WorkloadView>) {
        match self.relist_workloads.entry(kind).or_default().step(ev) {
            Step::Listing(None) => {}
            Step::Listing(Some(view)) => {
                let view = self.with_revision(view);
                if let Some(r) = self.relist_workloads.get_mut(&kind) {
                    r.add(|m| {
                        m.insert(view.uid.clone(), Box::new(view));
                    });
                }
            }
            Step::Listed(fresh) => {
                let gone: Vec<Uid> = self
                    .workloads
                    .iter()
                    .filter(|(k, w)| w.kind == kind && !fresh.contains_key(*k))
                    .map(|(k, _)| k.clone())
                    .collect();
                self.workloads.retain(|_, w| w.kind != kind);
                self.workloads.extend(fresh);
                if kind == Kind::Rollout {
                    let rollouts: Vec<Uid> = gone
                        .iter()
                        .cloned()
                        .chain(
                            self.workloads
                                .values()
                                .filter(|w| w.kind == Kind::Rollout)
                                .map(|w| w.uid.clone()),
                        )
                        .collect();
                    for uid in rollouts {
                        self.workload_refs
                            .set(&uid, self.workloads.get(&uid).map(Box::as_ref));
                    }
                }
                for uid in gone {
                    for p in self.pipelines.values_mut() {
                        p.selected.remove(&uid);
                    }
                }
                self.synced[Watch::of(kind) as usize] = true;
                self.after_resync().await;
            }
            Step::Applied(view) => {
                let view = self.with_revision(view);
                let uid = view.uid.clone();
                self.keep_workload(view);
                if self.all_synced() {
                    self.evaluate_workload(&uid, "workload");
                }
                if kind == Kind::Rollout {
                    self.workload_ref_changed(&uid);
                }
            }
            Step::Deleted(view) => {
                let view = self.with_revision(view);
                let uid = view.uid.clone();
                // Its last state may hold a finished rollout not yet seen.
                self.keep_workload(view);
                if self.all_synced() {
                    self.evaluate_workload(&uid, "workload");
                }
                self.workloads.remove(&uid);
                if kind == Kind::Rollout {
                    self.workload_ref_changed(&uid);
                }
                for p in self.pipelines.values_mut() {
                    if p.selected.remove(&uid) {
                        let mut s = lock(&p.stats);
                        s.selected = p.selected.len() as u64;
                        s.dirty = true;
                    }
                    // A member of a change that is gone does not hold it open.
                    if lock(&p.grouping).groups.stopped(&uid) {
                        p.outbox.notify.notify_one();
                    }
                }
                let pipelines: Vec<String> = self.pipelines.keys().cloned().collect();
                for p in pipelines {
                    self.resolve_gone(&p, &uid);
                    // What was delivered for it goes now, not at the next re-list.
                    if self.leading {
                        for id in [p.clone(), alerts::ledger_id(&p)] {
                            self.shared.ledger.forget_workload(&id, &uid);
                        }
                    }
                }
            }
        }
    }

    /// Keeps a workload's newest view, in the allocation of the one before where there is one
    /// (most events of a rollout are status updates of a workload already known).
    fn keep_workload(&mut self, view: WorkloadView) {
        match self.workloads.get_mut(&view.uid) {
            Some(known) => **known = view,
            None => {
                self.workloads.insert(view.uid.clone(), Box::new(view));
            }
        }
    }

    /// A Rollout changed or went: the Deployment its `spec.workloadRef` names (before or now) is
    /// decided again, so that it leaves (or rejoins) the pipelines' selection at once.
    fn workload_ref_changed(&mut self, rollout_uid: &Uid) {
        let changed = self.workload_refs.set(
            rollout_uid,
            self.workloads.get(rollout_uid).map(Box::as_ref),
        );
        if changed.is_empty() || !self.all_synced() {
            return;
        }
        let uids: Vec<Uid> = self
            .workloads
            .values()
            .filter(|w| {
                w.kind == Kind::Deployment
                    && changed.contains(&format!("{}/{}", w.namespace, w.name))
            })
            .map(|w| w.uid.clone())
            .collect();
        for uid in uids {
            self.evaluate_workload(&uid, "workload");
        }
    }

    async fn namespace_event(&mut self, ev: Event<PartialObjectMeta<Namespace>>) {
        match self.relist_namespaces.step(ev) {
            Step::Listing(None) => {}
            Step::Listing(Some(ns)) => self.relist_namespaces.add(|m| {
                m.insert(ns.name_any(), ns.labels().clone());
            }),
            Step::Listed(fresh) => {
                self.namespaces = fresh;
                self.synced[Watch::Namespaces as usize] = true;
                self.after_resync().await;
            }
            Step::Applied(ns) => {
                let name = ns.name_any();
                let labels = ns.labels().clone();
                if self.namespaces.get(&name) != Some(&labels) {
                    self.namespaces.insert(name.clone(), labels);
                    if self.all_synced() {
                        let uids: Vec<Uid> = self
                            .workloads
                            .values()
                            .filter(|w| w.namespace == name)
                            .map(|w| w.uid.clone())
                            .collect();
                        for uid in uids {
                            self.evaluate_workload(&uid, "namespace");
                        }
                    }
                }
            }
            Step::Deleted(ns) => {
                self.namespaces.remove(&ns.name_any());
            }
        }
    }

    async fn pipeline_event(&mut self, ev: Event<IlertPipeline>) {
        match self.relist_pipelines.step(ev) {
            Step::Listing(None) => {}
            Step::Listing(Some(p)) => {
                self.relist_pipelines.add(|s| {
                    s.insert(p.uid().unwrap_or_default());
                });
                // after_resync decides every pipeline once all watches are in.
                self.upsert_pipeline(&p);
            }
            Step::Listed(seen) => {
                let gone: Vec<String> = self
                    .pipelines
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.remove_pipeline(&uid).await;
                }
                self.synced[Watch::Pipelines as usize] = true;
                self.after_resync().await;
            }
            Step::Applied(p) => {
                let (uid, selection_changed) = self.upsert_pipeline(&p);
                if selection_changed && self.all_synced() {
                    self.evaluate_pipeline(&uid, "pipeline");
                }
            }
            Step::Deleted(p) => self.remove_pipeline(&p.uid().unwrap_or_default()).await,
        }
    }

    /// A view with what the objects its workload owns tell: for a StatefulSet or DaemonSet its
    /// revision number (ControllerRevisions), for a Deployment the name of its current
    /// revision's ReplicaSet.
    pub(crate) fn with_revision(&self, mut view: WorkloadView) -> WorkloadView {
        resolve_owned(&mut view, &self.replica_sets, &self.revisions);
        view
    }

    /// A ReplicaSet or ControllerRevision changed. What it tells its workload can be what
    /// completes (or decides the outcome of) a rollout in our eyes: the watches are separate
    /// streams.
    pub(crate) async fn owned_changed(&mut self, applied: Applied, watch: Watch) {
        match applied {
            Applied::Synced => {
                for w in self.workloads.values_mut() {
                    resolve_owned(w, &self.replica_sets, &self.revisions);
                }
                self.synced[watch as usize] = true;
                self.after_resync().await;
            }
            Applied::Owner(owner) => {
                let Some(w) = self.workloads.get_mut(&owner) else {
                    return;
                };
                let before = (w.current_replica_set.clone(), w.controller_revision);
                resolve_owned(w, &self.replica_sets, &self.revisions);
                if (w.current_replica_set.clone(), w.controller_revision) != before
                    && self.all_synced()
                {
                    self.evaluate_workload(&owner, "workload");
                }
            }
            Applied::Nothing => {}
        }
    }

    /// After a (re-)list: decide every workload against every pipeline, forget state of pipelines
    /// and workloads that are gone, and declare readiness.
    pub(crate) async fn after_resync(&mut self) {
        self.shared
            .metrics
            .watched_workloads
            .set(self.workloads.len() as i64);
        if !self.all_synced() {
            return;
        }
        if !self.leading {
            // A standby keeps its caches and selection counts warm, and is ready.
            let uids: Vec<String> = self.pipelines.keys().cloned().collect();
            for uid in &uids {
                self.evaluate_pipeline(uid, "resync");
            }
            self.declare_ready();
            return;
        }
        let uids: Vec<String> = self.pipelines.keys().cloned().collect();
        for uid in &uids {
            self.evaluate_pipeline(uid, "resync");
        }
        self.forget_deleted_pipelines().await;
        let ledger = &self.shared.ledger;
        // Workloads deleted while unseen (controller down, watch re-listed) resolve their open
        // alerts before pruning forgets that they had one.
        for uid in &uids {
            let gone: Vec<Uid> = ledger
                .read(|b| b.workloads_of(&alerts::ledger_id(uid)))
                .into_iter()
                .filter(|w| !self.workloads.contains_key(w))
                .collect();
            for w in gone {
                self.resolve_gone(uid, &w);
            }
        }
        for uid in uids.iter().flat_map(|u| [u.clone(), alerts::ledger_id(u)]) {
            let alive = |w: &Uid| self.workloads.contains_key(w);
            let n = ledger.prune(&uid, &alive);
            if n > 0 {
                debug!(pipeline_uid = %uid, pruned = n, "pruning delivery state of deleted workloads");
            }
        }
        self.declare_ready();
    }

    pub(crate) fn declare_ready(&self) {
        if !self.readiness.is_ready() {
            info!(
                workloads = self.workloads.len(),
                pipelines = self.pipelines.len(),
                namespaces = self.namespaces.len(),
                "caches synced and backlog decided"
            );
            self.readiness.set();
        }
    }
}
