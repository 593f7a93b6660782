//! Pure rollout detection: a Deployment (and, for history, its ReplicaSets) -> its rollout.
//! No I/O here; unit tests run it over objects captured from the real control plane.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ManagedFieldsEntry, ObjectMeta, Time,
};
use serde::{Deserialize, Serialize};

use crate::domain::argo::{self, ArgoState};
use crate::domain::keys::{
    ARGO_REVISION_ANNOTATION, ARGO_ROLLOUTS_MANAGER, ARGOCD_TRACKING_ID, CHANGE_CAUSE_ANNOTATION,
    COMMIT_KEYS, HELM_RELEASE_NAME, HELM_RELEASE_NAMESPACE, IGNORE_ANNOTATION, OUR_PREFIX,
    REVISION_ANNOTATION,
};
use crate::domain::pairs::{Images, Pairs};
use crate::domain::sym::Sym;
use crate::domain::uid::Uid;
pub use crate::pipeline::Kind;

/// Kept annotation values are cut to this many characters.
pub const MAX_ANNOTATION_CHARS: usize = 1024;
/// Annotations copied into the compact view; everything else (notably
/// `kubectl.kubernetes.io/last-applied-configuration`, which can hold secrets) is dropped at once.
const KEPT_ANNOTATIONS: &[&str] = &[
    REVISION_ANNOTATION,
    ARGO_REVISION_ANNOTATION,
    CHANGE_CAUSE_ANNOTATION,
    HELM_RELEASE_NAME,
    HELM_RELEASE_NAMESPACE,
    ARGOCD_TRACKING_ID,
];

/// How a finished rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    Completed,
    Failed,
    RolledBack,
    /// Argo Rollouts: the rollout was aborted (`kubectl argo rollouts abort`, a failed analysis)
    /// and went back to the stable ReplicaSet. Reported like a failure.
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "Completed",
            Outcome::Failed => "Failed",
            Outcome::RolledBack => "RolledBack",
            Outcome::Aborted => "Aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Outcome::Completed,
            Outcome::Failed,
            Outcome::RolledBack,
            Outcome::Aborted,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    /// A rollout that did not bring its revision up: it opens an alert (`spec.alerts`).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Aborted)
    }
}

/// Where the current rollout of a workload stands, from the object alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still rolling out (or the Deployment controller has not seen the latest spec yet).
    InProgress,
    /// `spec.paused`: never complete while paused.
    Paused,
    /// Every replica runs the current template and is available.
    Complete,
    /// Progressing=False with reason ProgressDeadlineExceeded.
    Failed,
    /// Argo Rollouts: `status.abort`.
    Aborted,
}

/// What is kept in memory of a watched Deployment: only what rollout detection, selection and the
/// payload need. Built straight from the watch event so full objects never accumulate.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadView {
    pub kind: Kind,
    pub namespace: Sym,
    pub name: Box<str>,
    pub uid: Uid,
    pub labels: Pairs,
    /// Only the revision, change-cause, `ilert.com/*`, owner (Helm, Argo CD) and commit annotations.
    pub annotations: Pairs,
    pub generation: i64,
    pub observed_generation: i64,
    pub paused: bool,
    /// Deployment and StatefulSet: `spec.replicas`; DaemonSet: `desiredNumberScheduled`.
    pub spec_replicas: i32,
    /// DaemonSet: `currentNumberScheduled`.
    pub replicas: i32,
    /// DaemonSet: `updatedNumberScheduled`.
    pub updated_replicas: i32,
    /// DaemonSet: `numberAvailable`.
    pub available_replicas: i32,
    /// DaemonSet: `numberReady`.
    pub ready_replicas: i32,
    /// StatefulSet: `spec.updateStrategy.rollingUpdate.partition` (RollingUpdate only).
    pub partition: Option<i32>,
    /// StatefulSet: `status.updateRevision` and `status.currentRevision` (ControllerRevision names).
    pub update_revision: Option<Box<str>>,
    pub current_revision: Option<Box<str>>,
    /// StatefulSet and DaemonSet: the number of the ControllerRevision of the current template,
    /// which the controller looks up in its ControllerRevision cache ([`resolve_revision`]).
    pub controller_revision: Option<u64>,
    /// DaemonSet: a digest of its pod template, to find the ControllerRevision that holds it
    /// (its status names none).
    pub template_digest: Option<u64>,
    /// Reason and last update time of the Progressing condition.
    pub progressing_reason: Option<Sym>,
    pub progressing_updated: Option<Timestamp>,
    /// Deployment: the ReplicaSet the Progressing condition's message names (`ReplicaSet "web-5d8"
    /// has timed out progressing.`): whose rollout the condition speaks of.
    pub progressing_replica_set: Option<Box<str>>,
    /// Deployment: the name of the ReplicaSet that holds the current revision, which the
    /// controller looks up in its ReplicaSet cache ([`resolve_replica_set`]).
    pub current_replica_set: Option<Box<str>>,
    /// Container name -> image, init containers prefixed with `init:`.
    pub images: Images,
    /// The manager that last changed the pod template, and when (from managedFields).
    pub template_manager: Option<Sym>,
    pub template_changed_at: Option<Timestamp>,
    /// `spec.selector.matchLabels`, to find the workload's ReplicaSets.
    pub match_labels: Pairs,
    pub created_at: Option<Timestamp>,
    /// Rollout (Argo Rollouts) only: its strategy, phase, pod hashes and pauses.
    pub argo: Option<Box<ArgoState>>,
}

impl WorkloadView {
    /// What every kind shares: identity, labels, kept annotations, images, who changed the
    /// template. The status fields start at zero for the kind's projection to fill in.
    fn base(
        kind: Kind,
        meta: &ObjectMeta,
        template: Option<&PodTemplateSpec>,
        selector: Option<&LabelSelector>,
    ) -> Self {
        let (template_manager, template_changed_at) =
            template_change(meta.managed_fields.as_deref());
        WorkloadView {
            kind,
            namespace: Sym::new(meta.namespace.as_deref().unwrap_or_default()),
            name: meta.name.as_deref().unwrap_or_default().into(),
            uid: meta.uid.as_deref().map(Uid::new).unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default().into(),
            annotations: meta
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| {
                    KEPT_ANNOTATIONS.contains(&k.as_str())
                        || k.starts_with(OUR_PREFIX)
                        || COMMIT_KEYS.contains(&k.as_str())
                })
                // A kept annotation is a line of context, not a document: a 100 KB change-cause
                // would sit in memory for every workload and in every event.
                .map(|(k, v)| {
                    (
                        k.clone(),
                        crate::domain::text::truncate(v, MAX_ANNOTATION_CHARS),
                    )
                })
                .collect(),
            generation: meta.generation.unwrap_or(0),
            observed_generation: 0,
            paused: false,
            spec_replicas: 0,
            replicas: 0,
            updated_replicas: 0,
            available_replicas: 0,
            ready_replicas: 0,
            progressing_reason: None,
            progressing_updated: None,
            progressing_replica_set: None,
            current_replica_set: None,
            template_digest: None,
            images: template.map(images).unwrap_or_default(),
            template_manager,
            template_changed_at,
            match_labels: selector
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default()
                .into(),
            created_at: meta.creation_timestamp.as_ref().map(|t| t.0),
            partition: None,
            update_revision: None,
            current_revision: None,
            controller_revision: None,
            argo: None,
        }
    }

    /// A Rollout of Argo Rollouts. With `spec.workloadRef` its template lives in the Deployment:
    /// the images then come from the Rollout's current ReplicaSet ([`resolve_owned`]).
    ///
    /// [`resolve_owned`]: crate::domain::index::resolve_owned
    pub fn from_rollout(r: &argo::Rollout) -> Self {
        let spec = r.spec.as_ref();
        let status = r.status.as_ref();
        let Progressing(progressing_reason, progressing_updated, progressing_replica_set) =
            Progressing::find(status.and_then(|s| s.conditions.as_deref()));
        let generation = r.metadata.generation.unwrap_or(0);
        WorkloadView {
            observed_generation: status
                .map(|s| argo::observed_generation(s, generation))
                .unwrap_or(0),
            paused: spec.and_then(|s| s.paused).unwrap_or(false),
            spec_replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            replicas: status.and_then(|s| s.replicas).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
            ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            progressing_reason,
            progressing_updated,
            progressing_replica_set,
            argo: Some(Box::new(ArgoState::of(r))),
            ..Self::base(
                Kind::Rollout,
                &r.metadata,
                spec.and_then(|s| s.template.as_ref()),
                spec.and_then(|s| s.selector.as_ref()),
            )
        }
    }

    pub fn from_deployment(d: &Deployment) -> Self {
        let spec = d.spec.as_ref();
        let status = d.status.as_ref();
        let Progressing(progressing_reason, progressing_updated, progressing_replica_set) =
            Progressing::find(status.and_then(|s| s.conditions.as_deref()));
        WorkloadView {
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
            paused: spec.and_then(|s| s.paused).unwrap_or(false),
            spec_replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            replicas: status.and_then(|s| s.replicas).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
            ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            progressing_reason,
            progressing_updated,
            progressing_replica_set,
            ..Self::base(
                Kind::Deployment,
                &d.metadata,
                spec.map(|s| &s.template),
                spec.map(|s| &s.selector),
            )
        }
    }

    /// The revision number comes from the ControllerRevision named `status.updateRevision`
    /// ([`resolve_revision`]).
    pub fn from_stateful_set(sts: &StatefulSet) -> Self {
        let spec = sts.spec.as_ref();
        let status = sts.status.as_ref();
        let rolling = spec
            .and_then(|s| s.update_strategy.as_ref())
            .filter(|u| u.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate");
        WorkloadView {
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
            spec_replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            replicas: status.map(|s| s.replicas).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
            ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            // The API server defaults the partition to 0 for RollingUpdate.
            partition: rolling.map(|u| {
                u.rolling_update
                    .as_ref()
                    .and_then(|r| r.partition)
                    .unwrap_or(0)
            }),
            update_revision: status
                .and_then(|s| s.update_revision.as_deref())
                .map(Into::into),
            current_revision: status
                .and_then(|s| s.current_revision.as_deref())
                .map(Into::into),
            ..Self::base(
                Kind::StatefulSet,
                &sts.metadata,
                spec.map(|s| &s.template),
                spec.map(|s| &s.selector),
            )
        }
    }

    /// The revision number comes from its newest ControllerRevision ([`resolve_revision`]).
    pub fn from_daemon_set(ds: &DaemonSet) -> Self {
        let spec = ds.spec.as_ref();
        let status = ds.status.as_ref();
        WorkloadView {
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
            spec_replicas: status.map(|s| s.desired_number_scheduled).unwrap_or(0),
            replicas: status.map(|s| s.current_number_scheduled).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_number_scheduled).unwrap_or(0),
            available_replicas: status.and_then(|s| s.number_available).unwrap_or(0),
            ready_replicas: status.map(|s| s.number_ready).unwrap_or(0),
            template_digest: spec.map(|s| template_digest(&s.template)),
            ..Self::base(
                Kind::DaemonSet,
                &ds.metadata,
                spec.map(|s| &s.template),
                spec.map(|s| &s.selector),
            )
        }
    }

    /// `Kind/namespace/name`, how a workload is named in status, Events and logs.
    pub fn reference(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    pub fn revision(&self) -> Option<u64> {
        match self.kind {
            Kind::Deployment => self.annotations.get(REVISION_ANNOTATION)?.parse().ok(),
            Kind::Rollout => self.annotations.get(ARGO_REVISION_ANNOTATION)?.parse().ok(),
            Kind::StatefulSet | Kind::DaemonSet => self.controller_revision,
        }
    }

    pub fn ignored(&self) -> bool {
        self.annotations
            .get(IGNORE_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The rule of `kubectl rollout status` for the kind, plus: a paused Deployment is never
    /// complete.
    pub fn progress(&self) -> Progress {
        match self.kind {
            Kind::Deployment => self.deployment_progress(),
            Kind::StatefulSet => self.stateful_set_progress(),
            Kind::DaemonSet => self.daemon_set_progress(),
            Kind::Rollout => self.rollout_progress(),
        }
    }

    /// Rollout: Argo Rollouts' `GetRolloutPhase` and `IsFullyPromoted`. An abort ends the
    /// rollout (Argo keeps it aborted until a new revision or a retry); a pause step or a
    /// blue-green promotion still to come does not.
    fn rollout_progress(&self) -> Progress {
        let Some(a) = self.argo.as_deref() else {
            return Progress::InProgress;
        };
        if self.observed_generation < self.generation || a.unpausing || !a.workload_observed {
            return Progress::InProgress;
        }
        // `kubectl argo rollouts abort` only sets `status.abort`; the rollout has ended once Argo
        // has acted on it (scaled the canary away, phase Degraded, the reason in its message).
        if a.abort {
            return if a.phase.as_deref() == Some("Degraded") {
                Progress::Aborted
            } else {
                Progress::InProgress
            };
        }
        if self.progressing_reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return if self.deadline_is_current() {
                Progress::Failed
            } else {
                Progress::InProgress
            };
        }
        if a.paused {
            return Progress::Paused;
        }
        if a.healthy() && a.fully_promoted() {
            Progress::Complete
        } else {
            Progress::InProgress
        }
    }

    /// StatefulSet: every replica runs the update revision and is ready and available. Not
    /// `updateRevision == currentRevision`: before Kubernetes' 2026 fix the StatefulSet controller
    /// never advances `currentRevision` under OnDelete, so that rule never completes there; the
    /// counts hold under both strategies on every supported version. A partition that holds
    /// replicas back is a staged rollout, not a finished one: it completes when the partition is
    /// lowered and every replica is updated (one outcome, at the real end).
    fn stateful_set_progress(&self) -> Progress {
        if self.observed_generation == 0 || self.observed_generation < self.generation {
            return Progress::InProgress;
        }
        let all_updated = self.updated_replicas >= self.spec_replicas
            && self.replicas == self.spec_replicas
            && self.ready_replicas >= self.spec_replicas
            && self.available_replicas >= self.spec_replicas;
        if all_updated {
            return Progress::Complete;
        }
        // Replicas above the partition are done and the rest are held back on purpose.
        if let Some(partition) = self.partition.filter(|p| *p > 0)
            && self.updated_replicas >= self.spec_replicas - partition
            && self.ready_replicas >= self.spec_replicas
        {
            return Progress::Paused;
        }
        Progress::InProgress
    }

    /// DaemonSet: every scheduled pod updated and available.
    fn daemon_set_progress(&self) -> Progress {
        if self.observed_generation < self.generation
            || self.updated_replicas < self.spec_replicas
            || self.available_replicas < self.spec_replicas
        {
            return Progress::InProgress;
        }
        Progress::Complete
    }

    fn deployment_progress(&self) -> Progress {
        if self.observed_generation < self.generation {
            return Progress::InProgress;
        }
        if self.progressing_reason.as_deref() == Some("ProgressDeadlineExceeded") {
            // A deadline carried over from an earlier revision (a rollback re-uses an older
            // ReplicaSet) is not this revision's outcome: wait for the controller to update it.
            return if self.deadline_is_current() {
                Progress::Failed
            } else {
                Progress::InProgress
            };
        }
        if self.paused {
            return Progress::Paused;
        }
        if self.updated_replicas < self.spec_replicas
            || self.replicas > self.updated_replicas
            || self.available_replicas < self.updated_replicas
        {
            return Progress::InProgress;
        }
        Progress::Complete
    }

    /// Whether a ProgressDeadlineExceeded condition speaks of the current revision: it names the
    /// revision's ReplicaSet (unknown until the ReplicaSet cache has it: not yet decided). A
    /// message that names no ReplicaSet (the controller had none to create) counts unless it is
    /// older than the last change of the template.
    fn deadline_is_current(&self) -> bool {
        match (&self.progressing_replica_set, &self.current_replica_set) {
            (Some(named), Some(current)) => named == current,
            (Some(_), None) => false,
            (None, _) => match (self.progressing_updated, self.template_changed_at) {
                (Some(updated), Some(changed)) => updated >= changed,
                _ => true,
            },
        }
    }

    /// The finished rollout the object shows now, if its current revision has finished.
    pub fn finished(&self) -> Option<Finished> {
        let revision = self.revision()?;
        let outcome = match self.progress() {
            Progress::Complete => Outcome::Completed,
            Progress::Failed => Outcome::Failed,
            Progress::Aborted => Outcome::Aborted,
            Progress::InProgress | Progress::Paused => return None,
        };
        let aborted_at = self.argo.as_deref().and_then(|a| a.aborted_at);
        Some(Finished {
            revision,
            outcome,
            // The Deployment controller stamps the Progressing condition when the rollout completes
            // or times out (Argo Rollouts likewise, and stamps an abort); ilert correlates by this
            // time, not by when we happen to send.
            finished_at: match outcome {
                Outcome::Aborted => aborted_at.or(self.progressing_updated),
                _ => self.progressing_updated,
            },
        })
    }
}

/// What a Progressing condition (a Deployment's, or Argo Rollouts' of the same shape) tells:
/// its reason, when it was last updated, and the ReplicaSet its message names.
#[derive(Default)]
struct Progressing(Option<Sym>, Option<Timestamp>, Option<Box<str>>);

impl Progressing {
    fn find<C: ProgressCondition>(conditions: Option<&[C]>) -> Self {
        let Some(c) = conditions
            .into_iter()
            .flatten()
            .find(|c| c.fields().0 == "Progressing")
        else {
            return Progressing::default();
        };
        let (_, reason, updated, transitioned, message) = c.fields();
        Progressing(
            reason.map(|r| Sym::new(r)),
            updated.or(transitioned).map(|t| t.0),
            message.and_then(named_replica_set),
        )
    }
}

/// A status condition of a Deployment or a Rollout: type, reason, last update, last transition,
/// message.
trait ProgressCondition {
    fn fields(
        &self,
    ) -> (
        &str,
        Option<&String>,
        Option<&Time>,
        Option<&Time>,
        Option<&str>,
    );
}

/// The two kinds of condition have the same fields.
macro_rules! progress_condition {
    ($($t:ty),*) => {$(
        impl ProgressCondition for $t {
            fn fields(&self) -> (&str, Option<&String>, Option<&Time>, Option<&Time>, Option<&str>) {
                (
                    &self.type_,
                    self.reason.as_ref(),
                    self.last_update_time.as_ref(),
                    self.last_transition_time.as_ref(),
                    self.message.as_deref(),
                )
            }
        }
    )*};
}

progress_condition!(
    k8s_openapi::api::apps::v1::DeploymentCondition,
    argo::Condition
);

/// A finished rollout as the object shows it. `Completed` may still turn out to be a rollback
/// once the ReplicaSets are looked at (see [`History`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub revision: u64,
    pub outcome: Outcome,
    pub finished_at: Option<Timestamp>,
}

/// The ReplicaSet a Deployment condition's message names: `ReplicaSet "web-5d8" has ...`.
pub fn named_replica_set(message: &str) -> Option<Box<str>> {
    let rest = message.strip_prefix("ReplicaSet \"")?;
    let end = rest.find('"')?;
    Some(rest[..end].into())
}

/// A digest of a pod template: the same for a DaemonSet's template and the ControllerRevision the
/// DaemonSet controller made of it (which holds that template as it was stored).
pub fn template_digest(template: &PodTemplateSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    serde_json::to_string(template)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

pub fn images(template: &PodTemplateSpec) -> Images {
    let Some(spec) = template.spec.as_ref() else {
        return Images::default();
    };
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (format!("init:{}", c.name), c));
    let main = spec.containers.iter().map(|c| (c.name.clone(), c));
    init.chain(main)
        .map(|(name, c)| (name, c.image.clone().unwrap_or_default()))
        .collect()
}

/// UID of the object's controller (its owner reference with `controller: true`).
pub fn controller_uid(meta: &ObjectMeta) -> Option<Uid> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| Uid::new(&o.uid))
}

/// The field manager that last changed `spec.template` and when, from managedFields: `kubectl`,
/// `helm`, `argocd-controller`, ... Scale and status subresource writes do not count, nor do
/// Argo Rollouts' defaults written into a Rollout's template.
fn template_change(entries: Option<&[ManagedFieldsEntry]>) -> (Option<Sym>, Option<Timestamp>) {
    entries
        .into_iter()
        .flatten()
        .filter(|e| e.subresource.as_deref().unwrap_or("").is_empty())
        .filter(|e| e.manager.as_deref() != Some(ARGO_ROLLOUTS_MANAGER))
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:template"))
                .is_some()
        })
        .filter_map(|e| Some((e.manager.as_deref(), e.time.as_ref()?.0)))
        .max_by_key(|(_, t)| *t)
        .map(|(m, t)| (m.map(Sym::new), Some(t)))
        .unwrap_or((None, None))
}

#[cfg(test)]
mod tests;
