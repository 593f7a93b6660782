//! kube-runtime wiring: seven watches (Deployments, StatefulSets, DaemonSets, their ReplicaSets and
//! ControllerRevisions, Namespaces, IlertPipelines) feed compact indexes; it decides per workload
//! which pipelines owe an event, and runs one delivery task per channel (deployment events,
//! alerts) and one status task per pipeline.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::domain::alerts;
use crate::domain::keys::{CONTROLLER_NAME, TEST_EVENT_ANNOTATION};
use crate::domain::pacing::{Budget, Plan, backoff, later, retry_wait};
use crate::domain::payload::DeploymentEvent;
use crate::domain::report;
use crate::domain::rollout::{
    Finished, History, Kind, Outcome, Progress, ReplicaSetView, RevisionView, Rollout,
    WorkloadView, resolve_replica_set, resolve_revision,
};
use crate::domain::template::Templates;
use crate::domain::text::{WorkloadRef, truncate};
use crate::ledger::{Decision, Entry, Ledger, RolloutKey, Sight, State, Times, Verdict, judge};
use crate::metrics::{Metrics, PipelineLabels};
use crate::pipeline::{
    AlertPriority, AlertsSpec, IlertPipeline, IlertPipelineSpec, IlertPipelineStatus, LastEvent,
    SecretKeyRef, TestEventStatus,
};
use crate::shell::ilert::{IlertClient, IntegrationKey, SendError};
use crate::shell::supervisor::{Ended, supervise};

/// Settings of one controller instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The controller's own namespace: delivery state lives here.
    pub namespace: String,
    /// Namespaces whose pipelines may use `namespaceSelector`.
    pub trusted_namespaces: Vec<String>,
    pub cluster_name: String,
    pub rate_limit_per_minute: u32,
    /// The same for alert source keys (`spec.alerts`).
    pub alert_rate_limit_per_minute: u32,
    /// Serve only pipelines with these labels (splits a cluster, or isolates tests).
    pub pipeline_selector: Option<String>,
    /// Longest wait between retries of an unavailable ilert.
    pub retry_cap: Duration,
    /// Time-out of one request to ilert.
    pub ilert_timeout: Duration,
    /// The Lease of leader election in `namespace`; None: no election, always leading.
    pub lease: Option<String>,
    /// How much delivery state one pipeline may keep in ConfigMaps.
    pub ledger_capacity: crate::ledger::Capacity,
    pub instance: String,
}

/// Whether the caches are synced and the backlog decided.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Shared {
    metrics: Arc<Metrics>,
    ilert_timeout: Duration,
    /// Set on SIGTERM: senders finish the request in flight and stop.
    shutdown: watch::Receiver<bool>,
    client: Client,
    ilert: IlertClient,
    cfg: Config,
    ledger: Ledger,
    budgets: Mutex<HashMap<IntegrationKey, Budget>>,
    recorder: Recorder,
    /// Bounds the ReplicaSet lists of a burst of finished rollouts.
    history_lists: tokio::sync::Semaphore,
}

/// A problem that makes a pipeline not Ready: a reason for the condition and a message that says
/// what to do.
#[derive(Clone, Debug, PartialEq)]
struct Problem {
    reason: &'static str,
    message: String,
}

#[derive(Default)]
struct Stats {
    generation: Option<i64>,
    selected: u64,
    sent: u64,
    failed: u64,
    pending: u64,
    last_event: Option<LastEvent>,
    test_event: Option<TestEventStatus>,
    config_problem: Option<Problem>,
    delivery_problem: Option<Problem>,
    suspended: bool,
    /// Alert stats only: `spec.alerts` is set.
    enabled: bool,
    /// The Secret the key was last read from (`namespace/name key k`); None until it was.
    key_read_from: Option<String>,
    /// ilert accepted an event (or test event) of this channel since the key was read, or the
    /// status says the last one went out.
    accepted: bool,
    /// Pending events the full ledger could not store (in memory only).
    unstored: usize,
    dirty: bool,
}

/// Problems of reading the key from its Secret: a successful read clears them.
const SECRET_PROBLEMS: [&str; 4] = [
    "SecretNotFound",
    "KeyNotFound",
    "SecretForbidden",
    "SecretUnavailable",
];

impl Stats {
    fn ready(&self) -> (bool, &'static str, String) {
        self.ready_for(Channel::Deployments)
    }

    fn ready_for(&self, channel: Channel) -> (bool, &'static str, String) {
        let (ready, reason, mut message) = self.readiness(channel);
        if self.unstored == 0 {
            return (ready, reason, message);
        }
        let full = format!(
            "the delivery state is full: {} pending events wait in memory only (lost if the controller restarts before they are sent and their workloads move on)",
            self.unstored
        );
        if !ready {
            message = format!("{message}; {full}");
            return (false, reason, message);
        }
        (
            false,
            "LedgerFull",
            format!("{full}; they are stored once delivered events make room"),
        )
    }

    fn readiness(&self, channel: Channel) -> (bool, &'static str, String) {
        let (key, event) = match channel {
            Channel::Deployments => ("Integration key", "event"),
            Channel::Alerts => ("Alert source key", "alert"),
        };
        if let Some(p) = &self.config_problem {
            return (false, p.reason, p.message.clone());
        }
        if self.suspended {
            return (
                false,
                "Suspended",
                "spec.suspend is true: rollouts are recorded and sent once it is false".into(),
            );
        }
        if let Some(p) = &self.delivery_problem {
            return (false, p.reason, p.message.clone());
        }
        // Only what is known: the key was read; whether ilert has taken an event with it yet.
        let Some(from) = &self.key_read_from else {
            return (
                false,
                "KeyNotRead",
                format!("{key} not read from its Secret yet"),
            );
        };
        let message = if self.accepted {
            format!("{key} read from Secret {from}; ilert accepted the last {event}")
        } else {
            format!("{key} read from Secret {from}; no {event} sent yet")
        };
        (true, "Ready", message)
    }

    /// Whether readiness is known: the key was read (or could not be), or something else
    /// already makes the pipeline not ready.
    fn ready_known(&self) -> bool {
        self.key_read_from.is_some()
            || self.config_problem.is_some()
            || self.delivery_problem.is_some()
            || self.suspended
    }
}

/// What the entries of one queue send: a deployment event, or an alert. It is taken out of each
/// entry as the entry is queued, so a queued entry always has one and a batch has a body for each
/// of its entries.
trait Payload: Clone + Send + Sync + 'static {
    const CHANNEL: Channel;
    /// The payload of a pending entry, taken out of it; None: it has nothing to send.
    fn take_from(entry: &mut Entry) -> Option<Self>;
    /// How many of `waiting` (oldest first) go out in one request, and its body.
    fn request(waiting: &[Self], cluster: &str, key: &str) -> (usize, serde_json::Value);
    fn alert_type(&self) -> Option<alerts::EventType> {
        None
    }
}

impl Payload for DeploymentEvent {
    const CHANNEL: Channel = Channel::Deployments;
    fn take_from(entry: &mut Entry) -> Option<Self> {
        entry.event.take()
    }
    fn request(waiting: &[Self], cluster: &str, key: &str) -> (usize, serde_json::Value) {
        let take = report::combinable(waiting, cluster).min(waiting.len());
        match &waiting[..take] {
            [] => (0, serde_json::Value::Null),
            events => (take, report::body(&report::combine(events, cluster), key)),
        }
    }
}

/// Never combined: each has its workload's alert key.
impl Payload for alerts::AlertEvent {
    const CHANNEL: Channel = Channel::Alerts;
    fn take_from(entry: &mut Entry) -> Option<Self> {
        entry.alert.take()
    }
    fn request(waiting: &[Self], _cluster: &str, key: &str) -> (usize, serde_json::Value) {
        match waiting.first() {
            Some(alert) => (1, report::body(alert, key)),
            None => (0, serde_json::Value::Null),
        }
    }
    fn alert_type(&self) -> Option<alerts::EventType> {
        Some(self.event_type)
    }
}

#[derive(Clone)]
struct QueuedEvent<P> {
    key: RolloutKey,
    /// The ledger entry, without its payload.
    entry: Entry,
    payload: P,
    /// When it was queued (a rollout seen finished, or a pending one reloaded).
    queued_at: Instant,
    /// Inherited from a previous leader, whose request for it may still be on the wire: waits
    /// until the ledger has been read again after that request must have ended.
    held: bool,
}

/// Events waiting for delivery, oldest first; each rollout at most once.
struct Queue<P> {
    items: VecDeque<QueuedEvent<P>>,
    keys: HashSet<RolloutKey>,
}

struct Outbox<P> {
    queue: Mutex<Queue<P>>,
    notify: Notify,
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
    fn push(&self, key: RolloutKey, mut entry: Entry, held: bool) {
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

    fn len(&self) -> usize {
        lock(&self.queue).items.len()
    }

    fn clear(&self) {
        let mut q = lock(&self.queue);
        q.items.clear();
        q.keys.clear();
    }

    /// The previous leader's requests have ended: what it delivered meanwhile (`delivered`)
    /// leaves the queue, the rest of what was inherited may go.
    fn inherited_done(&self, pipeline: &str, delivered: Option<&Vec<RolloutKey>>) {
        if let Some(keys) = delivered {
            info!(pipeline = %pipeline, events = keys.len(), channel = ?P::CHANNEL, "the previous leader delivered these after the takeover; not sent again");
            self.remove(&keys.iter().collect());
        }
        self.release_held();
    }

    /// Lets inherited events go (their previous leader's requests have ended by now).
    fn release_held(&self) {
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
    fn retain(&self, keep: impl Fn(&RolloutKey) -> bool) {
        let mut q = lock(&self.queue);
        q.items.retain(|i| keep(&i.key));
        q.keys = q.items.iter().map(|i| i.key.clone()).collect();
    }

    fn remove(&self, keys: &HashSet<&RolloutKey>) {
        let mut q = lock(&self.queue);
        q.items.retain(|i| !keys.contains(&i.key));
        for k in keys {
            q.keys.remove(*k);
        }
    }
}

/// What the pipeline selects, once its spec has been checked.
struct Selection {
    /// None: the pipeline's own namespace only.
    namespaces: Option<Selector>,
    workloads: Selector,
    /// `spec.workloads`; absent: every kind.
    kinds: Vec<Kind>,
    /// `spec.template`, checked.
    templates: Option<Arc<Templates>>,
    /// `spec.alerts`: failed rollouts page.
    alerts: Option<AlertsSpec>,
}

struct PipelineHandle {
    uid: String,
    namespace: String,
    name: String,
    reference: ObjectReference,
    /// The status as last seen in the watch: a new leader continues its counters.
    last_status: IlertPipelineStatus,
    /// Its labels, as last seen: with the spec, what a change must re-decide workloads for.
    labels: BTreeMap<String, String>,
    /// The `ilert.com/test-event` annotation, and the value already queued.
    test_value: Option<String>,
    test_claimed: Option<String>,
    created: Timestamp,
    spec_tx: watch::Sender<IlertPipelineSpec>,
    selection: Option<Selection>,
    selected: HashSet<String>,
    outbox: Arc<Outbox<DeploymentEvent>>,
    stats: Arc<Mutex<Stats>>,
    /// Alerts and resolves (`spec.alerts`): their own queue, ledger and counters.
    alert_outbox: Arc<Outbox<alerts::AlertEvent>>,
    alert_stats: Arc<Mutex<Stats>>,
    /// Wakes the deployment sender to read its key while a selected workload rolls out.
    warm: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    /// Tells the senders that leadership was lost (see [`PipelineHandle::step_down`]).
    deposed: Option<watch::Sender<bool>>,
}

impl PipelineHandle {
    /// Starts delivery and status writing (the leader only): pending events come from the ledger,
    /// counters from the last status seen.
    /// `hold`: pending events inherited from the ledger wait for [`Outbox::release_held`].
    fn start(&mut self, shared: &Arc<Shared>, hold: bool) {
        self.stop();
        let (deposed_tx, deposed) = watch::channel(false);
        self.deposed = Some(deposed_tx);
        let alerts_ledger = alerts::ledger_id(&self.uid);
        for (key, entry) in shared.ledger.pending(&self.uid) {
            self.outbox.push(key, entry, hold);
        }
        let mut pending = shared.ledger.pending(&alerts_ledger);
        // Key order puts (revision, Completed) before (revision, Failed): the ALERT of a
        // revision that failed and then recovered must go out before its RESOLVE.
        pending.sort_by_key(|(k, e)| {
            let resolve = e
                .alert
                .as_ref()
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
    fn step_down(&mut self) {
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
    fn stop(&mut self) {
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
type StartTask = Box<dyn FnMut(bool) -> futures::future::BoxFuture<'static, Ended> + Send>;

/// The first wait before a failed pipeline task starts again (doubling while it keeps failing).
const TASK_RESTART_DELAY: Duration = Duration::from_secs(1);

fn jitter() -> f64 {
    rand::random()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks a pipeline's selectors and tenancy.
fn selection(
    spec: &IlertPipelineSpec,
    namespace: &str,
    trusted: &[String],
) -> Result<Selection, Problem> {
    let namespaces = match &spec.namespace_selector {
        None => None,
        Some(_) if !trusted.iter().any(|t| t == namespace) => {
            return Err(Problem {
                reason: "NamespaceSelectorNotAllowed",
                message: format!(
                    "spec.namespaceSelector is only honoured for pipelines in the controller's trusted namespaces ({}); remove it to report this namespace's workloads, or create the pipeline in a trusted namespace",
                    trusted.join(", ")
                ),
            });
        }
        Some(sel) => Some(Selector::try_from(sel.clone()).map_err(|e| Problem {
            reason: "InvalidSelector",
            message: format!("spec.namespaceSelector is invalid: {e}"),
        })?),
    };
    let workloads = match &spec.selector {
        None => Selector::default(),
        Some(sel) => Selector::try_from(sel.clone()).map_err(|e| Problem {
            reason: "InvalidSelector",
            message: format!("spec.selector is invalid: {e}"),
        })?,
    };
    let templates = match &spec.template {
        None => None,
        Some(t) => Some(Arc::new(Templates::check(t).map_err(|e| Problem {
            reason: "InvalidTemplate",
            message: format!(
                "spec.template does not render: {e}; no events are sent until it is fixed, then the latest rollout of each workload is"
            ),
        })?)),
    };
    Ok(Selection {
        namespaces,
        workloads,
        kinds: spec.workloads.clone().unwrap_or_else(|| Kind::ALL.to_vec()),
        templates,
        alerts: spec.alerts.clone(),
    })
}

enum Input {
    /// Projected to the compact view as soon as it arrives: full workloads never pile up.
    Workload(Kind, Event<WorkloadView>),
    Pipeline(Box<Event<IlertPipeline>>),
    Namespace(Event<PartialObjectMeta<Namespace>>),
    /// Projected too: what the history of a rollout needs, so no list on the path of an event.
    ReplicaSet(Event<ReplicaSetView>),
    /// StatefulSet and DaemonSet history (and their revision numbers), projected likewise.
    Revision(Event<RevisionView>),
}

/// The watches whose first list must be in before the backlog is decided.
#[derive(Clone, Copy)]
enum Watch {
    Deployments,
    Pipelines,
    Namespaces,
    ReplicaSets,
    StatefulSets,
    DaemonSets,
    Revisions,
}

impl Watch {
    const COUNT: usize = 7;

    fn of(kind: Kind) -> Self {
        match kind {
            Kind::Deployment => Watch::Deployments,
            Kind::StatefulSet => Watch::StatefulSets,
            Kind::DaemonSet => Watch::DaemonSets,
        }
    }
}

/// A view of an object that a workload controls: a ReplicaSet, a ControllerRevision.
trait OwnedView {
    fn owner(&self) -> Option<&str>;
    fn same(&self, other: &Self) -> bool;
}

impl OwnedView for ReplicaSetView {
    fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
    fn same(&self, other: &Self) -> bool {
        self.uid == other.uid
    }
}

impl OwnedView for RevisionView {
    fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
    fn same(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// What a watch event did to an [`OwnedCache`].
enum Applied {
    /// A (re-)list is complete.
    Synced,
    /// The objects of this owner changed.
    Owner(String),
    Nothing,
}

/// Views of owned objects by the UID of the workload that controls them (a few each: a Vec, not
/// a map), kept from a watch so the history of a rollout needs no list.
struct OwnedCache<V> {
    by_owner: HashMap<String, Vec<V>>,
    init: Option<HashMap<String, Vec<V>>>,
}

impl<V> Default for OwnedCache<V> {
    fn default() -> Self {
        OwnedCache {
            by_owner: HashMap::new(),
            init: None,
        }
    }
}

impl<V: OwnedView> OwnedCache<V> {
    fn get(&self, owner: &str) -> &[V] {
        self.by_owner.get(owner).map(Vec::as_slice).unwrap_or(&[])
    }

    fn apply(&mut self, ev: Event<V>) -> Applied {
        match ev {
            Event::Init => {
                self.init = Some(HashMap::new());
                Applied::Nothing
            }
            Event::InitApply(view) => {
                if let Some(m) = self.init.as_mut() {
                    Self::insert(m, view);
                }
                Applied::Nothing
            }
            Event::InitDone => {
                self.by_owner = self.init.take().unwrap_or_default();
                Applied::Synced
            }
            Event::Apply(view) => match view.owner().map(str::to_string) {
                Some(owner) => {
                    Self::insert(&mut self.by_owner, view);
                    Applied::Owner(owner)
                }
                None => Applied::Nothing,
            },
            Event::Delete(view) => {
                let Some(owner) = view.owner().map(str::to_string) else {
                    return Applied::Nothing;
                };
                if let Some(m) = self.by_owner.get_mut(&owner) {
                    m.retain(|v| !v.same(&view));
                    if m.is_empty() {
                        self.by_owner.remove(&owner);
                    }
                }
                Applied::Owner(owner)
            }
        }
    }

    fn insert(map: &mut HashMap<String, Vec<V>>, view: V) {
        if let Some(owner) = view.owner() {
            let owned = map.entry(owner.to_string()).or_default();
            match owned.iter_mut().find(|v| v.same(&view)) {
                Some(known) => *known = view,
                None => owned.push(view),
            }
        }
    }
}

/// The decision loop's state: compact workload views, namespace labels, pipelines.
struct Brain {
    shared: Arc<Shared>,
    workloads: HashMap<String, WorkloadView>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    pipelines: HashMap<String, PipelineHandle>,
    /// Per kind: the list in progress.
    init_workloads: HashMap<Kind, HashMap<String, WorkloadView>>,
    init_namespaces: Option<HashMap<String, BTreeMap<String, String>>>,
    init_pipelines: Option<HashSet<String>>,
    replica_sets: OwnedCache<ReplicaSetView>,
    revisions: OwnedCache<RevisionView>,
    synced: [bool; Watch::COUNT],
    readiness: Readiness,
    /// Only the lease holder sends and writes; every replica watches, so failover is instant.
    leading: bool,
    /// After a takeover: when the previous leader's requests must have ended, so the ledger is
    /// read for what they recorded before inherited events go out.
    catch_up_at: Option<Instant>,
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
            error: "ledger".into(),
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

    let mut pipeline_cfg = watcher::Config::default();
    if let Some(sel) = &cfg.pipeline_selector {
        pipeline_cfg = pipeline_cfg.labels(sel);
    }
    // The big lists come in pages: a cluster of 10,000 workloads is not one response.
    let paged = || watcher::Config::default().page_size(500);
    let deployments = watch_all::<Deployment>(&client, paged())
        .map_ok(|ev| Input::Workload(Kind::Deployment, project(ev, WorkloadView::from_deployment)));
    let stateful_sets = watch_all::<StatefulSet>(&client, paged()).map_ok(|ev| {
        Input::Workload(
            Kind::StatefulSet,
            project(ev, WorkloadView::from_stateful_set),
        )
    });
    let daemon_sets = watch_all::<DaemonSet>(&client, paged())
        .map_ok(|ev| Input::Workload(Kind::DaemonSet, project(ev, WorkloadView::from_daemon_set)));
    let revisions = watch_all::<ControllerRevision>(&client, paged())
        .map_ok(|ev| Input::Revision(project(ev, RevisionView::from_controller_revision)));
    let pipelines = watch_all::<IlertPipeline>(&client, pipeline_cfg)
        .map_ok(|ev| Input::Pipeline(Box::new(ev)));
    let namespaces = watch_all::<PartialObjectMeta<Namespace>>(&client, watcher::Config::default())
        .map_ok(Input::Namespace);
    let replica_sets = watch_all::<ReplicaSet>(&client, paged())
        .map_ok(|ev| Input::ReplicaSet(project(ev, ReplicaSetView::from_replica_set)));
    let mut inputs = stream::select_all([
        deployments.boxed(),
        stateful_sets.boxed(),
        daemon_sets.boxed(),
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
        init_workloads: HashMap::new(),
        init_namespaces: None,
        init_pipelines: None,
        replica_sets: OwnedCache::default(),
        revisions: OwnedCache::default(),
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
                    brain.shared.metrics.error("watch");
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

/// Retry timing of a failed watch: exponential with jitter, capped at 5 s. kube's default caps at
/// 30 s, which after an API server outage costs up to a minute of blindness (30 s to find it back,
/// 30 s more after the first 403 of its RBAC cache warming up). Seven watches per controller:
/// retrying every few seconds is no burden.
#[derive(Default)]
struct WatchBackoff {
    attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(backoff(self.attempt, Duration::from_secs(5), jitter()))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A watch event with its object projected to the compact view at once.
fn project<K, V>(ev: Event<K>, view: impl Fn(&K) -> V) -> Event<V> {
    match ev {
        Event::Apply(o) => Event::Apply(view(&o)),
        Event::Delete(o) => Event::Delete(view(&o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(view(&o)),
        Event::InitDone => Event::InitDone,
    }
}

/// A cluster-wide watch of `K`, re-established with the controller's backoff.
fn watch_all<K>(
    client: &Client,
    cfg: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    kube::runtime::watcher(Api::all(client.clone()), cfg).backoff(WatchBackoff::default())
}

impl Brain {
    async fn set_leading(&mut self, leading: bool) {
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
            self.shared.metrics.error("ledger");
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
    async fn lease_epoch(&self) -> u64 {
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
                    self.shared.metrics.error("lease");
                    warn!(error = %e, "cannot read the Lease for the leader term; retrying before taking over");
                    tokio::time::sleep(backoff(attempt, Duration::from_secs(10), jitter())).await;
                }
            }
        }
    }

    /// The previous leader's requests have ended: drop from the queues what it recorded as
    /// answered since the takeover, then let inherited events go.
    async fn catch_up(&mut self) {
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
                self.shared.metrics.error("ledger");
                warn!(error = %e, "cannot read the delivery state after the takeover; inherited events wait");
                self.catch_up_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }

    /// SIGTERM: let every sender finish its request in flight (they watch the shutdown signal),
    /// give them a bounded time, then return so the lease is released.
    async fn shut_down(&mut self) {
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

    fn all_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    async fn handle(&mut self, input: Input) {
        match input {
            Input::Workload(kind, ev) => match ev {
                Event::Init => {
                    self.init_workloads.insert(kind, HashMap::new());
                }
                Event::InitApply(view) => {
                    let view = self.with_revision(view);
                    if let Some(m) = self.init_workloads.get_mut(&kind) {
                        m.insert(view.uid.clone(), view);
                    }
                }
                Event::InitDone => {
                    let fresh = self.init_workloads.remove(&kind).unwrap_or_default();
                    let gone: Vec<String> = self
                        .workloads
                        .iter()
                        .filter(|(k, w)| w.kind == kind && !fresh.contains_key(*k))
                        .map(|(k, _)| k.clone())
                        .collect();
                    self.workloads.retain(|_, w| w.kind != kind);
                    self.workloads.extend(fresh);
                    for uid in gone {
                        for p in self.pipelines.values_mut() {
                            p.selected.remove(&uid);
                        }
                    }
                    self.synced[Watch::of(kind) as usize] = true;
                    self.after_resync().await;
                }
                Event::Apply(view) => {
                    let view = self.with_revision(view);
                    let uid = view.uid.clone();
                    self.workloads.insert(uid.clone(), view);
                    if self.all_synced() {
                        self.evaluate_workload(&uid, "workload");
                    }
                }
                Event::Delete(view) => {
                    let view = self.with_revision(view);
                    let uid = view.uid.clone();
                    // Its last state may hold a finished rollout not yet seen.
                    self.workloads.insert(uid.clone(), view);
                    if self.all_synced() {
                        self.evaluate_workload(&uid, "workload");
                    }
                    self.workloads.remove(&uid);
                    for p in self.pipelines.values_mut() {
                        if p.selected.remove(&uid) {
                            let mut s = lock(&p.stats);
                            s.selected = p.selected.len() as u64;
                            s.dirty = true;
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
            },
            Input::Namespace(ev) => match ev {
                Event::Init => self.init_namespaces = Some(HashMap::new()),
                Event::InitApply(ns) => {
                    if let Some(m) = self.init_namespaces.as_mut() {
                        m.insert(ns.name_any(), ns.labels().clone());
                    }
                }
                Event::InitDone => {
                    self.namespaces = self.init_namespaces.take().unwrap_or_default();
                    self.synced[Watch::Namespaces as usize] = true;
                    self.after_resync().await;
                }
                Event::Apply(ns) => {
                    let name = ns.name_any();
                    let labels = ns.labels().clone();
                    if self.namespaces.get(&name) != Some(&labels) {
                        self.namespaces.insert(name.clone(), labels);
                        if self.all_synced() {
                            let uids: Vec<String> = self
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
                Event::Delete(ns) => {
                    self.namespaces.remove(&ns.name_any());
                }
            },
            Input::Pipeline(ev) => match *ev {
                Event::Init => self.init_pipelines = Some(HashSet::new()),
                Event::InitApply(p) => {
                    if let Some(s) = self.init_pipelines.as_mut() {
                        s.insert(p.uid().unwrap_or_default());
                    }
                    // after_resync decides every pipeline once all watches are in.
                    self.upsert_pipeline(&p);
                }
                Event::InitDone => {
                    let seen = self.init_pipelines.take().unwrap_or_default();
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
                Event::Apply(p) => {
                    let (uid, selection_changed) = self.upsert_pipeline(&p);
                    if selection_changed && self.all_synced() {
                        self.evaluate_pipeline(&uid, "pipeline");
                    }
                }
                Event::Delete(p) => self.remove_pipeline(&p.uid().unwrap_or_default()).await,
            },
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

    /// A view with what the objects its workload owns tell: for a StatefulSet or DaemonSet its
    /// revision number (ControllerRevisions), for a Deployment the name of its current
    /// revision's ReplicaSet.
    fn with_revision(&self, mut view: WorkloadView) -> WorkloadView {
        resolve_owned(&mut view, &self.replica_sets, &self.revisions);
        view
    }

    /// A ReplicaSet or ControllerRevision changed. What it tells its workload can be what
    /// completes (or decides the outcome of) a rollout in our eyes: the watches are separate
    /// streams.
    async fn owned_changed(&mut self, applied: Applied, watch: Watch) {
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
    async fn after_resync(&mut self) {
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
            let gone: Vec<String> = ledger
                .workloads_of(&alerts::ledger_id(uid))
                .into_iter()
                .filter(|w| !self.workloads.contains_key(w))
                .collect();
            for w in gone {
                self.resolve_gone(uid, &w);
            }
        }
        for uid in uids.iter().flat_map(|u| [u.clone(), alerts::ledger_id(u)]) {
            let alive = |w: &str| self.workloads.contains_key(w);
            let n = ledger.prune(&uid, &alive);
            if n > 0 {
                debug!(pipeline_uid = %uid, pruned = n, "pruning delivery state of deleted workloads");
            }
        }
        self.declare_ready();
    }

    /// Removes the delivery state of pipelines deleted while unseen. Only of pipelines that no
    /// longer exist in the cluster: one this instance does not serve (another instance's shard
    /// under `--pipeline-selector`, or one relabelled out of it for a while) keeps its state.
    async fn forget_deleted_pipelines(&self) {
        let ledger = &self.shared.ledger;
        let unserved: Vec<String> = ledger
            .pipelines()
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

    fn declare_ready(&self) {
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

    /// Takes in a pipeline as the watch shows it. Returns its uid and whether what it selects may
    /// have changed (new, or its spec or labels changed): our own status writes come back here
    /// too, and they must not decide every workload again.
    fn upsert_pipeline(&mut self, p: &IlertPipeline) -> (String, bool) {
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
            let sel = selection(&p.spec, &namespace, &self.shared.cfg.trusted_namespaces);
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
            self.maybe_test_event(&uid);
            return (uid, true);
        }
        let sel = selection(&p.spec, &namespace, &self.shared.cfg.trusted_namespaces);
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
        };
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
    async fn remove_pipeline(&mut self, uid: &str) {
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

    /// A pipeline changed: re-decide every workload for it (O(workloads), on pipeline changes only).
    /// `trigger` names why, for the decisions metric.
    fn evaluate_pipeline(&mut self, pipeline_uid: &str, trigger: &str) {
        let uids: Vec<String> = self.workloads.keys().cloned().collect();
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
    fn evaluate_workload(&mut self, workload_uid: &str, trigger: &str) {
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

    fn evaluate_one(&mut self, pipeline_uid: &str, workload_uid: &str) {
        let Some(w) = self.workloads.get(workload_uid) else {
            return;
        };
        let Some(h) = self.pipelines.get_mut(pipeline_uid) else {
            return;
        };
        let selected = h.selection.as_ref().is_some_and(|sel| {
            let ns_ok = match &sel.namespaces {
                None => w.namespace == h.namespace,
                Some(ns_sel) => self
                    .namespaces
                    .get(&w.namespace)
                    .is_some_and(|labels| ns_sel.matches(labels)),
            };
            ns_ok
                && sel.kinds.contains(&w.kind)
                && (sel.workloads.selects_all() || sel.workloads.matches(&w.labels.to_btree()))
        }) && !w.ignored();
        if !selected {
            h.selected.remove(workload_uid);
            return;
        }
        h.selected.insert(workload_uid.to_string());
        if !self.leading {
            return;
        }
        let ledger = &self.shared.ledger;
        let sight = Sight {
            workload_uid,
            finished: w.finished(),
            workload_created: w.created_at,
            pipeline_created: h.created,
        };
        let verdict = ledger.with_workload(pipeline_uid, workload_uid, |known| {
            judge(known.map(|(k, _)| k), &sight)
        });
        let report = match verdict {
            Verdict::Report(_) => true,
            Verdict::Remember(key) => {
                debug!(workload = %w.reference(), revision = key.revision, "seen, not reported: the first-sight baseline or a rollout under way");
                ledger.record(pipeline_uid, &[(key, remembered(w))]);
                false
            }
            Verdict::Nothing => false,
        };
        let Some(finished) = sight.finished else {
            if w.progress() == Progress::InProgress {
                h.warm.notify_one();
            }
            return;
        };
        let key = RolloutKey::new(workload_uid, &finished);
        let times = Times {
            finished: finished.finished_at,
            workload_created: w.created_at,
            pipeline_created: h.created,
        };
        // Alerts decide on their own ledger: a crash between the two claims loses neither.
        let alerts_ledger = alerts::ledger_id(pipeline_uid);
        let alert = h
            .selection
            .as_ref()
            .and_then(|s| s.alerts.as_ref())
            .and_then(|spec| {
                // A failure from before the pipeline, or older than one already known, pages no one.
                let stale = key.outcome == Outcome::Failed
                    && matches!(
                        ledger.decide(&alerts_ledger, &key, times),
                        Decision::Baseline | Decision::Superseded
                    );
                if stale {
                    return None;
                }
                let action = ledger.with_workload(&alerts_ledger, workload_uid, |known| {
                    alerts::action(&key, known)
                })?;
                Some((action, spec.priority))
            });
        if !report && alert.is_none() {
            return;
        }
        let pending = Entry {
            state: State::Pending,
            workload: w.reference(),
            event: None,
            reported_outcome: None,
            test: None,
            alert: None,
        };
        let pipeline = format!("{}/{}", h.namespace, h.name);
        if report {
            info!(workload = %w.reference(), revision = finished.revision, outcome = finished.outcome.as_str(), pipeline = %pipeline, "rollout finished");
            ledger.claim(pipeline_uid, key.clone(), pending.clone());
            let mut s = lock(&h.stats);
            s.pending += 1;
            s.dirty = true;
        }
        if let Some((action, _)) = alert {
            info!(workload = %w.reference(), revision = finished.revision, action = ?action, pipeline = %pipeline, "alert to send");
            ledger.claim(&alerts_ledger, key.clone(), pending);
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
        };
        if w.kind != Kind::Deployment {
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
    fn resolve_gone(&self, pipeline_uid: &str, workload_uid: &str) {
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
            workload_uid: workload_uid.to_string(),
            revision: alerts::GONE_REVISION,
            outcome: Outcome::Completed,
        };
        let (action, workload) =
            self.shared
                .ledger
                .with_workload(&ledger_id, workload_uid, |known| {
                    let known: Vec<_> = known.collect();
                    let workload = known.last().map(|(_, e)| e.workload.clone());
                    (alerts::action(&key, known), workload)
                });
        let (Some(alerts::Action::Resolve), Some(workload)) = (action, workload) else {
            return;
        };
        info!(workload = %workload, pipeline = %format!("{}/{}", h.namespace, h.name), "deleted with its alert open: resolving");
        let entry = Entry {
            state: State::Pending,
            workload: workload.clone(),
            event: None,
            reported_outcome: None,
            test: None,
            alert: Some(alerts::gone_event(&workload, &self.shared.cfg.cluster_name)),
        };
        self.shared
            .ledger
            .claim(&ledger_id, key.clone(), entry.clone());
        record_and_queue(&self.shared, &h.alert_outbox, &ledger_id, key, entry);
    }

    /// A new `ilert.com/test-event` value on a pipeline: one test event through the real path.
    fn maybe_test_event(&mut self, pipeline_uid: &str) {
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
        if self.shared.ledger.contains(pipeline_uid, &key) {
            return;
        }
        let pipeline = format!("{}/{}", h.namespace, h.name);
        info!(pipeline = %pipeline, value = %value, "test event requested");
        let entry = Entry {
            state: State::Pending,
            workload: format!("IlertPipeline/{pipeline}"),
            event: Some(report::test_event(
                &pipeline,
                &self.shared.cfg.cluster_name,
                &value,
                Timestamp::now(),
            )),
            reported_outcome: None,
            test: Some(value),
            alert: None,
        };
        record_and_queue(&self.shared, &h.outbox, pipeline_uid, key, entry);
    }
}

/// Sets what the objects a workload owns tell of it (see [`Brain::with_revision`]).
fn resolve_owned(
    w: &mut WorkloadView,
    replica_sets: &OwnedCache<ReplicaSetView>,
    revisions: &OwnedCache<RevisionView>,
) {
    if w.kind == Kind::Deployment {
        w.current_replica_set = resolve_replica_set(w, replica_sets.get(&w.uid));
    } else {
        w.controller_revision = resolve_revision(w, revisions.get(&w.uid));
    }
}

/// The ledger entry of a workload seen but not reported (baseline, or first seen mid-rollout).
fn remembered(w: &WorkloadView) -> Entry {
    Entry {
        state: State::Baseline,
        workload: w.reference(),
        event: None,
        reported_outcome: None,
        test: None,
        alert: None,
    }
}

/// What to queue for one finished rollout of one pipeline, once its history is known.
struct ToQueue {
    shared: Arc<Shared>,
    pipeline_uid: String,
    /// `namespace/name`, for logs.
    pipeline: String,
    key: RolloutKey,
    finished: Finished,
    templates: Option<Arc<Templates>>,
    /// The deployment event's queue, when it is to be reported.
    outbox: Option<Arc<Outbox<DeploymentEvent>>>,
    /// The alert or resolve, its priority and the alerts queue.
    alert: Option<(
        alerts::Action,
        Option<AlertPriority>,
        Arc<Outbox<alerts::AlertEvent>>,
    )>,
}

impl ToQueue {
    /// Builds the deployment event (and the alert from it), records them pending and queues them.
    fn queue(self, view: &WorkloadView, history: History) {
        let rollout = Rollout::new(view, self.finished, history, Timestamp::now());
        let cluster = &self.shared.cfg.cluster_name;
        let (event, warnings) =
            report::deployment_event(&rollout, cluster, self.templates.as_deref());
        if !warnings.is_empty() {
            template_warnings(&self.shared, view, &self.pipeline, warnings);
        }
        if let Some((action, priority, outbox)) = &self.alert {
            let alert = alerts::event(*action, &event, &view.reference(), cluster, *priority);
            let entry = Entry {
                state: State::Pending,
                workload: view.reference(),
                event: None,
                reported_outcome: Some(rollout.outcome),
                test: None,
                alert: Some(alert),
            };
            let ledger_id = alerts::ledger_id(&self.pipeline_uid);
            record_and_queue(&self.shared, outbox, &ledger_id, self.key.clone(), entry);
        }
        if let Some(outbox) = &self.outbox {
            let entry = Entry {
                state: State::Pending,
                workload: view.reference(),
                event: Some(event),
                reported_outcome: Some(rollout.outcome),
                test: None,
                alert: None,
            };
            record_and_queue(&self.shared, outbox, &self.pipeline_uid, self.key, entry);
        }
    }
}

/// A template or `ilert.com/*` annotation that did not render: the event went out without it;
/// the log and a Warning Event on the workload say which and why.
fn template_warnings(
    shared: &Arc<Shared>,
    view: &WorkloadView,
    pipeline: &str,
    warnings: Vec<String>,
) {
    let note = warnings.join("; ");
    warn!(workload = %view.reference(), pipeline = %pipeline, problem = %note, "part of the event did not render and was left out");
    let Some(reference) = workload_reference(&view.reference()) else {
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        publish(
            &shared.recorder,
            &reference,
            EventType::Warning,
            "TemplateFailed",
            &format!("Reported to ilert without the part that did not render: {note}"),
            None,
        )
        .await;
    });
}

/// Records an event as pending and queues it at once. The pending write and the send race: a
/// crash before the pending write is on the API server loses nothing that waiting for it would
/// have saved (the rollout is decided again from the workload), and a crash after ilert's 202 but
/// before the sent write repeats the event either way.
fn record_and_queue<P: Payload>(
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
async fn replica_set_history(client: &Client, w: &WorkloadView, revision: u64) -> History {
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

/// Most requests one pipeline has on the wire at once. A kill -9 can repeat at most the events of
/// these (ilert answered 202, the sent state was not written yet).
const MAX_IN_FLIGHT: usize = 16;
/// How long a key read from the Secret is used before it is read again: a rotated key is used
/// within this, a rejected key is read again at once. A burst reads the Secret once per this.
pub const KEY_TTL: Duration = Duration::from_secs(2);
/// The oldest key ever used without reading the Secret first: a rotated key is used within this.
pub const KEY_MAX_AGE: Duration = Duration::from_secs(4);
/// How often an idle pipeline reads its Secret, so that status tells a deleted Secret.
pub const KEY_RECHECK: Duration = Duration::from_secs(30);
/// How long a pipeline's first status write waits for the first read of its key, so that it does
/// not say "not read yet" for the moment the read takes.
const FIRST_READ_GRACE: Duration = Duration::from_secs(5);

type Batch = Vec<(RolloutKey, Entry)>;

/// One request's answer, back from its task (its outcome already handed to the ledger).
struct Done {
    batch: Batch,
    /// For an alert: whether it opened or resolved one.
    alert: Option<alerts::EventType>,
    key: IntegrationKey,
    result: Result<(), SendError>,
    /// How long each event of the batch waited from being queued to ilert's answer.
    waited: Vec<Duration>,
}

/// Delivers one pipeline's events: key from the Secret, pacing per key, combining, retries, up to
/// [`MAX_IN_FLIGHT`] requests at once (never two for the same workload).
#[derive(Clone)]
struct Sender<P> {
    shared: Arc<Shared>,
    /// The ledger the channel records in: the pipeline's uid, or its alerts ledger.
    uid: String,
    namespace: String,
    reference: ObjectReference,
    outbox: Arc<Outbox<P>>,
    stats: Arc<Mutex<Stats>>,
    spec: watch::Receiver<IlertPipelineSpec>,
    shutdown: watch::Receiver<bool>,
    /// true once this instance lost the lease: finish what is on the wire, start nothing.
    deposed: watch::Receiver<bool>,
    /// Notified while a selected workload rolls out (see `warm_key`).
    warm: Arc<Notify>,
}

/// What a sender delivers: deployment events to the pipeline's key, or alerts and resolves to the
/// alert source's key (`spec.alerts`; never combined: each has its workload's alert key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Deployments,
    Alerts,
}

impl Channel {
    /// The Secret reference of the key, and the field that names it; None: nothing to send to.
    fn secret_ref(self, spec: &IlertPipelineSpec) -> Option<(&SecretKeyRef, &'static str)> {
        match self {
            Channel::Deployments => Some((
                &spec.integration_key_secret_ref,
                "spec.integrationKeySecretRef",
            )),
            Channel::Alerts => spec.alerts.as_ref().map(|a| {
                (
                    &a.alert_source_key_secret_ref,
                    "spec.alerts.alertSourceKeySecretRef",
                )
            }),
        }
    }

    /// What ilert calls the thing the key belongs to.
    fn key_owner(self) -> &'static str {
        match self {
            Channel::Deployments => "an ilert deployment pipeline",
            Channel::Alerts => "an ilert alert source (API / Events integration)",
        }
    }
}

/// The key ilert rejected, and when to try it once more anyway.
struct Rejected {
    key: IntegrationKey,
    retry_at: Instant,
    attempts: u32,
}

/// The delivery loop's state between requests.
#[derive(Default)]
struct Delivery {
    in_flight: HashSet<RolloutKey>,
    busy_workloads: HashSet<String>,
    /// Consecutive rounds ilert was unavailable: while > 0, one request at a time probes it.
    failures: u32,
    secret_failures: u32,
    rejected: Option<Rejected>,
    key: Option<(IntegrationKey, Instant)>,
    /// The Secret being read again while the key in hand is used.
    /// It yields when the read started: a key is as old as the read that got it.
    refresh: Option<JoinHandle<(Result<IntegrationKey, Problem>, Instant)>>,
    /// Nothing new goes out before this (backoff, pacing).
    resume_at: Option<Instant>,
    /// Read the key now, sending or not: the pipeline was applied or changed, or the key in hand
    /// is older than [`KEY_RECHECK`]. Status says only what is known.
    needs_read: bool,
}

impl Delivery {
    fn sendable<P>(&self, item: &QueuedEvent<P>) -> bool {
        !item.held
            && !self.in_flight.contains(&item.key)
            && !self.busy_workloads.contains(&item.key.workload_uid)
    }
}

/// A request task that panicked takes its sender down with it: the supervisor starts the sender
/// again with clean books (the events are still queued) instead of leaving them in flight forever.
fn answered(joined: Result<Done, JoinError>) -> Option<Done> {
    match joined {
        Ok(done) => Some(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

impl<P: Payload> Sender<P> {
    /// Delivers until SIGTERM or the lease is lost. `again`: started again after a failure, when
    /// requests that were on the wire may have been answered and recorded without being settled.
    async fn run(mut self, again: bool) -> Ended {
        if again {
            // What the ledger no longer holds as pending went out (or was given up) already.
            let pending: HashSet<RolloutKey> = self
                .shared
                .ledger
                .pending(&self.uid)
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
    async fn key(&mut self, spec: &IlertPipelineSpec, d: &mut Delivery) -> Option<IntegrationKey> {
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
                debug!(pipeline = %self.name(), reason = problem.reason, "background read of the key failed; the key in hand is still young");
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
    async fn key_read(&self, spec: &IlertPipelineSpec) {
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
                .is_some_and(|p| SECRET_PROBLEMS.contains(&p.reason))
        };
        if secret_problem {
            self.set_problem(None).await;
        }
    }

    /// Reads the Secret again in the background, unless a read is under way.
    fn refresh_key(&self, spec: &IlertPipelineSpec, d: &mut Delivery) {
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
    fn warm_key(&self, spec: &IlertPipelineSpec, d: &mut Delivery) {
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
    async fn settle(&mut self, d: &mut Delivery, done: Done) {
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
                        reason: "IlertUnavailable",
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
                    reason: "IntegrationKeyRejected",
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
                    reason: "EventRejected",
                    message,
                }))
                .await;
            }
        }
    }

    /// The pacing budget of `key`, shared by every pipeline that uses the same key.
    fn budget<R>(&self, key: &IntegrationKey, f: impl FnOnce(&mut Budget) -> R) -> R {
        let mut budgets = lock(&self.shared.budgets);
        f(budgets.entry(key.clone()).or_insert_with(|| {
            Budget::new(match P::CHANNEL {
                Channel::Deployments => self.shared.cfg.rate_limit_per_minute,
                Channel::Alerts => self.shared.cfg.alert_rate_limit_per_minute,
            })
        }))
    }

    fn name(&self) -> String {
        format!(
            "{}/{}",
            self.namespace,
            self.reference.name.as_deref().unwrap_or_default()
        )
    }

    /// Removes a batch whose outcome is recorded from the outbox, and counts it.
    fn finished(&self, batch: &[(RolloutKey, Entry)], result: &str) {
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

    async fn delivered(&self, batch: &[(RolloutKey, Entry)], alert: Option<alerts::EventType>) {
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
    async fn test_result(&self, value: &str, result: &str, message: &str) {
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
    async fn tests_rejected(&self, batch: &[(RolloutKey, Entry)], message: &str) {
        for (_, e) in batch {
            if let Some(value) = &e.test {
                self.test_result(value, "Rejected", message).await;
            }
        }
    }

    async fn set_problem(&self, problem: Option<Problem>) {
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
            warn!(pipeline = %self.name(), reason = p.reason, "{message}");
            self.publish(EventType::Warning, p.reason, &message).await;
        }
    }

    async fn publish(&self, type_: EventType, reason: &str, note: &str) {
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

/// Reads the integration key from the pipeline's Secret; a problem for status if it cannot.
async fn read_key(
    client: &Client,
    namespace: &str,
    spec: &IlertPipelineSpec,
    channel: Channel,
) -> Result<IntegrationKey, Problem> {
    let Some((r, field)) = channel.secret_ref(spec) else {
        return Err(Problem {
            reason: "KeyNotFound",
            message: "spec.alerts is not set".into(),
        });
    };
    let owner = channel.key_owner();
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get(&r.name).await {
        Ok(s) => s,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(Problem {
                reason: "SecretNotFound",
                message: format!(
                    "Secret {}/{} not found ({field}): create it with the integration key of {owner} under key {}; events wait until then",
                    namespace, r.name, r.key
                ),
            });
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(Problem {
                reason: "SecretForbidden",
                message: format!(
                    "the controller may not read Secret {}/{} (403): grant it get on secrets",
                    namespace, r.name
                ),
            });
        }
        Err(e) => {
            return Err(Problem {
                reason: "SecretUnavailable",
                message: format!("reading Secret {}/{} failed: {e}", namespace, r.name),
            });
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .cloned()
        })
        // `echo key | base64` leaves a newline: never part of a key.
        .map(|v| IntegrationKey::new(v.trim().to_string()))
        .filter(|k| !k.expose().is_empty());
    value.ok_or_else(|| Problem {
        reason: "KeyNotFound",
        message: format!(
            "Secret {}/{} has no non-empty key {}: add the integration key of {owner} under that key, or set {field}.key",
            namespace, r.name, r.key
        ),
    })
}

/// The ledger entries that record a batch's outcome (the event body is no longer needed).
fn outcome_entries(batch: &[(RolloutKey, Entry)], state: State) -> Batch {
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

/// `Kind/namespace/name` -> a reference to that workload.
fn workload_reference(workload: &str) -> Option<ObjectReference> {
    let w = WorkloadRef::parse(workload)?;
    Some(ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(w.kind.into()),
        namespace: Some(w.namespace.into()),
        name: Some(w.name.into()),
        ..Default::default()
    })
}

async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
    related: Option<ObjectReference>,
) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: if type_ == EventType::Normal {
            "Report".into()
        } else {
            "Deliver".into()
        },
        secondary: related,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        debug!(error = %e, "could not record a Kubernetes Event");
    }
}

/// Writes a pipeline's status when something changed, at most twice a second.
#[derive(Clone)]
struct StatusWriter {
    shared: Arc<Shared>,
    uid: String,
    namespace: String,
    name: String,
    reference: ObjectReference,
    outbox: Arc<Outbox<DeploymentEvent>>,
    stats: Arc<Mutex<Stats>>,
    alert_outbox: Arc<Outbox<alerts::AlertEvent>>,
    alert_stats: Arc<Mutex<Stats>>,
}

/// A condition's readiness, and since when it has been so.
type Since = Option<(bool, &'static str, String, Time)>;

/// The condition for `ready`, keeping its transition time while readiness stays the same.
fn condition(
    type_: &str,
    (ready, reason, message): (bool, &'static str, String),
    last: &mut Since,
    generation: Option<i64>,
) -> Condition {
    let since = match last {
        Some((r, _, _, t)) if *r == ready => t.clone(),
        _ => Time(Timestamp::now()),
    };
    *last = Some((ready, reason, message.clone(), since.clone()));
    Condition {
        type_: type_.into(),
        status: if ready { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

impl StatusWriter {
    async fn run(self) -> Ended {
        let api: Api<IlertPipeline> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let mut last_ready: Since = None;
        let mut last_alerts_ready: Since = None;
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
                let unstored = ledger.unstored(id);
                let mut s = lock(stats);
                if s.unstored != unstored {
                    s.unstored = unstored;
                    s.dirty = true;
                }
            }
            metrics
                .ledger_bytes
                .get_or_create(&labels)
                .set((ledger.stored_bytes(&self.uid) + ledger.stored_bytes(&alerts_ledger)) as i64);
            metrics
                .ledger_unstored
                .get_or_create(&labels)
                .set((ledger.unstored(&self.uid) + ledger.unstored(&alerts_ledger)) as i64);
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
                let ready = s.ready();
                metrics
                    .pipeline_ready
                    .get_or_create(&labels)
                    .set(i64::from(ready.0));
                let mut conditions = vec![condition("Ready", ready, &mut last_ready, s.generation)];
                let alerts = a.enabled.then(|| {
                    let mut ready = a.ready_for(Channel::Alerts);
                    // A problem of the pipeline's spec stops alerts too.
                    if let Some(p) = &s.config_problem {
                        ready = (false, p.reason, p.message.clone());
                    }
                    conditions.push(condition(
                        "AlertsReady",
                        ready,
                        &mut last_alerts_ready,
                        s.generation,
                    ));
                    (
                        a.sent,
                        a.failed,
                        a.pending.max(self.alert_outbox.len() as u64),
                    )
                });
                let status = IlertPipelineStatus {
                    observed_generation: s.generation,
                    conditions,
                    selected_workloads: s.selected,
                    events_sent: s.sent,
                    events_failed: s.failed,
                    pending_events: s.pending.max(self.outbox.len() as u64),
                    last_event: s.last_event.clone(),
                    test_event: s.test_event.clone(),
                    alerts_sent: alerts.map(|a| a.0),
                    alerts_failed: alerts.map(|a| a.1),
                    pending_alerts: alerts.map(|a| a.2),
                };
                (status, s.config_problem.clone())
            };
            if config_problem != announced_config_problem {
                if let Some(p) = &config_problem {
                    warn!(pipeline = %format!("{}/{}", self.namespace, self.name), reason = p.reason, "{}", p.message);
                    publish(
                        &self.shared.recorder,
                        &self.reference,
                        EventType::Warning,
                        p.reason,
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
                    self.shared.metrics.error("status");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: Option<DeploymentEvent>) -> Entry {
        Entry {
            state: State::Pending,
            workload: "Deployment/shop/web".into(),
            event,
            reported_outcome: None,
            test: None,
            alert: None,
        }
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
        assert_eq!(q.items[0].entry.event, None);
        drop(q);
        // An alerts queue takes only entries with an alert.
        let alerts = Outbox::<alerts::AlertEvent>::default();
        alerts.push(key, entry(Some(event("1"))), false);
        assert_eq!(alerts.len(), 0);
    }

    #[test]
    fn a_request_covers_exactly_the_entries_it_names() {
        let events: Vec<DeploymentEvent> = (0..3).map(|i| event(&i.to_string())).collect();
        let (take, body) = DeploymentEvent::request(&events, "prod", "key");
        assert_eq!(take, 3);
        assert_eq!(body["integrationKey"], "key");
        assert!(
            body["summary"].as_str().is_some_and(|s| s.contains('3')),
            "{body}"
        );
        let (take, body) = DeploymentEvent::request(&events[..1], "prod", "key");
        assert_eq!(take, 1);
        assert_eq!(body["summary"], events[0].summary.as_str());
        assert_eq!(
            DeploymentEvent::request(&[], "prod", "key"),
            (0, serde_json::Value::Null)
        );
    }
}
