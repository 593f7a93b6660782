//! Pure: what a workload's ReplicaSets or ControllerRevisions add to a finished rollout (rollback,
//! previous images, start time), from the compact views the watches keep, and the finished
//! rollout with its history that the payload is built from.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde::Deserialize;

use crate::domain::keys::{
    ARGO_REVISION_ANNOTATION, ARGO_REVISION_HISTORY_ANNOTATION, REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
};
use crate::domain::pairs::Images;
use crate::domain::rollout::{
    Finished, Kind, Outcome, WorkloadView, controller_uid, images, template_digest,
};
use crate::domain::uid::Uid;

/// What the workload's ReplicaSets add to a finished rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The current template was in use before the previous revision (`kubectl rollout undo`, a
    /// GitOps revert).
    pub rolled_back: bool,
    /// The earlier revisions of the current template, where known (a ReplicaSet's
    /// `revision-history`; a ControllerRevision keeps no such record).
    pub rolled_back_from: Vec<u64>,
    /// Images of the revision before this one.
    pub previous_images: Images,
    pub previous_revision: Option<u64>,
    /// When the current ReplicaSet was created (a fallback start time for the duration).
    pub replica_set_created_at: Option<Timestamp>,
}

/// What the history needs of one ReplicaSet: the controller keeps these (from a watch) instead of
/// full objects, and never asks the API server for ReplicaSets on the path of an event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaSetView {
    /// Unique among its owner's ReplicaSets (all in the owner's namespace), so it is the view's
    /// identity; its UID, which the controller never reads, cost 72 bytes per ReplicaSet as a String.
    pub name: Box<str>,
    /// UID of the workload that controls it.
    pub owner: Option<Uid>,
    pub revision: Option<u64>,
    /// Earlier revisions this ReplicaSet served (`deployment.kubernetes.io/revision-history`).
    pub revision_history: Vec<u64>,
    pub images: Images,
    pub created_at: Option<Timestamp>,
}

impl ReplicaSetView {
    pub fn from_replica_set(rs: &ReplicaSet) -> Self {
        let annotations = rs.metadata.annotations.as_ref();
        // A Deployment's ReplicaSets carry Kubernetes' annotations, a Rollout's Argo's.
        let annotation = |key: &str, argo: &str| {
            annotations.and_then(|a| a.get(key).or_else(|| a.get(argo)).cloned())
        };
        ReplicaSetView {
            name: rs.metadata.name.as_deref().unwrap_or_default().into(),
            owner: controller_uid(&rs.metadata),
            revision: annotation(REVISION_ANNOTATION, ARGO_REVISION_ANNOTATION)
                .and_then(|r| r.parse().ok()),
            revision_history: annotation(
                REVISION_HISTORY_ANNOTATION,
                ARGO_REVISION_HISTORY_ANNOTATION,
            )
            .map(|h| h.split(',').filter_map(|r| r.trim().parse().ok()).collect())
            .unwrap_or_default(),
            images: rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(images)
                .unwrap_or_default(),
            created_at: rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// What the controller keeps of a ControllerRevision, the history of StatefulSets and DaemonSets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RevisionView {
    pub name: Box<str>,
    /// UID of the workload that controls it.
    pub owner: Option<Uid>,
    pub revision: u64,
    /// The images of the template it holds (`data.spec.template`).
    pub images: Images,
    /// [`template_digest`] of the template it holds.
    pub template_digest: Option<u64>,
    pub created_at: Option<Timestamp>,
}

impl RevisionView {
    pub fn from_controller_revision(cr: &ControllerRevision) -> Self {
        let template = cr
            .data
            .as_ref()
            .and_then(|d| d.0.pointer("/spec/template"))
            .and_then(|t| PodTemplateSpec::deserialize(t).ok());
        RevisionView {
            name: cr.metadata.name.as_deref().unwrap_or_default().into(),
            owner: controller_uid(&cr.metadata),
            revision: u64::try_from(cr.revision).unwrap_or(0),
            images: template.as_ref().map(images).unwrap_or_default(),
            template_digest: template.as_ref().map(template_digest),
            created_at: cr.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// The revision number of a StatefulSet's or DaemonSet's current template, from its
/// ControllerRevisions: for a StatefulSet the one named by `status.updateRevision`, for a
/// DaemonSet (whose status names none) the one that holds its template (the newest, should a
/// template come back without a rollback). None until that ControllerRevision is known: the
/// watches are separate streams, and the newest ControllerRevision can belong to an update of
/// the DaemonSet not seen yet.
pub fn resolve_revision<'a>(
    workload: &WorkloadView,
    revisions: impl IntoIterator<Item = &'a RevisionView>,
) -> Option<u64> {
    let mut owned = revisions
        .into_iter()
        .filter(|r| r.owner.as_ref() == Some(&workload.uid));
    match workload.kind {
        Kind::Deployment | Kind::Rollout => None,
        Kind::StatefulSet => {
            let name = workload.update_revision.as_deref()?;
            owned.find(|r| &*r.name == name).map(|r| r.revision)
        }
        Kind::DaemonSet => {
            let digest = workload.template_digest?;
            owned
                .filter(|r| r.template_digest == Some(digest))
                .map(|r| r.revision)
                .max()
        }
    }
}

/// The ReplicaSet that holds a Deployment's or Rollout's current revision, from its
/// ReplicaSets. None until that ReplicaSet is known (the watches are separate streams) and for
/// other kinds.
pub fn resolve_replica_set<'a>(
    workload: &WorkloadView,
    replica_sets: impl IntoIterator<Item = &'a ReplicaSetView>,
) -> Option<&'a ReplicaSetView> {
    if !workload.kind.has_replica_sets() {
        return None;
    }
    let revision = workload.revision()?;
    replica_sets
        .into_iter()
        .filter(|rs| rs.owner.as_ref() == Some(&workload.uid))
        .find(|rs| rs.revision == Some(revision))
}

impl History {
    /// Reads the history of a StatefulSet or DaemonSet at `revision` from its ControllerRevisions.
    /// Going back to an earlier template reuses that template's ControllerRevision with a new
    /// number: a current revision created before the previous one is a rollback.
    pub fn from_revisions<'a>(
        workload: &WorkloadView,
        revision: u64,
        revisions: impl IntoIterator<Item = &'a RevisionView>,
    ) -> Self {
        let owned: Vec<&RevisionView> = revisions
            .into_iter()
            .filter(|r| r.owner.as_ref() == Some(&workload.uid))
            .collect();
        let current = owned.iter().find(|r| r.revision == revision);
        let previous = owned
            .iter()
            .filter(|r| r.revision < revision)
            .max_by_key(|r| r.revision);
        let rolled_back = matches!(
            (current.and_then(|c| c.created_at), previous.and_then(|p| p.created_at)),
            (Some(c), Some(p)) if c < p
        );
        History {
            rolled_back,
            rolled_back_from: Vec::new(),
            previous_images: previous.map(|r| r.images.clone()).unwrap_or_default(),
            previous_revision: previous.map(|r| r.revision),
            replica_set_created_at: if rolled_back {
                None
            } else {
                current.and_then(|r| r.created_at)
            },
        }
    }

    /// Reads the history of `workload` at `revision` from its ReplicaSets (those it owns).
    pub fn from_replica_sets(
        workload: &WorkloadView,
        revision: u64,
        replica_sets: &[ReplicaSet],
    ) -> Self {
        let views: Vec<ReplicaSetView> = replica_sets
            .iter()
            .map(ReplicaSetView::from_replica_set)
            .collect();
        Self::from_views(workload, revision, views.iter())
    }

    /// The same from projected ReplicaSets (any; only those `workload` controls count).
    pub fn from_views<'a>(
        workload: &WorkloadView,
        revision: u64,
        replica_sets: impl IntoIterator<Item = &'a ReplicaSetView>,
    ) -> Self {
        let owned: Vec<(u64, &ReplicaSetView)> = replica_sets
            .into_iter()
            .filter(|rs| rs.owner.as_ref() == Some(&workload.uid))
            .filter_map(|rs| Some((rs.revision?, rs)))
            .collect();
        let current = owned
            .iter()
            .find(|(rev, _)| *rev == revision)
            .map(|(_, rs)| *rs);
        let previous = owned
            .iter()
            .filter(|(rev, _)| *rev < revision)
            .max_by_key(|(rev, _)| *rev);
        let rolled_back_from = current
            .map(|rs| rs.revision_history.clone())
            .unwrap_or_default();
        History {
            rolled_back: !rolled_back_from.is_empty(),
            rolled_back_from,
            previous_images: previous
                .map(|(_, rs)| rs.images.clone())
                .unwrap_or_default(),
            previous_revision: previous.map(|(rev, _)| *rev),
            replica_set_created_at: current.and_then(|rs| rs.created_at),
        }
    }
}

/// A finished rollout with everything the payload needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub workload: WorkloadView,
    pub revision: u64,
    pub outcome: Outcome,
    pub finished_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub history: History,
}

impl Rollout {
    /// Combines the object's view with its history. `now` stands in for a missing finish time.
    pub fn new(
        workload: &WorkloadView,
        finished: Finished,
        history: History,
        now: Timestamp,
    ) -> Self {
        let outcome = match finished.outcome {
            Outcome::Completed if history.rolled_back => Outcome::RolledBack,
            other => other,
        };
        let finished_at = finished.finished_at.unwrap_or(now);
        // The template change that started this rollout, else the ReplicaSet's creation (a first
        // rollout, or a change made by a manager whose entry was lost).
        let started_at = [workload.template_changed_at, history.replica_set_created_at]
            .into_iter()
            .flatten()
            .find(|t| *t <= finished_at);
        Rollout {
            workload: workload.clone(),
            revision: finished.revision,
            outcome,
            finished_at,
            started_at,
            history,
        }
    }

    pub fn duration_seconds(&self) -> Option<i64> {
        let start = self.started_at?;
        Some((self.finished_at.as_second() - start.as_second()).max(0))
    }
}
