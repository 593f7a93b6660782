//! Pure rollout detection: a Deployment (and, for history, its ReplicaSets) -> its rollout.
//! No I/O here; unit tests run it over objects captured from the real control plane.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde::{Deserialize, Serialize};

use crate::pairs::Pairs;

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
/// Kept annotation values are cut to this many characters.
pub const MAX_ANNOTATION_CHARS: usize = 1024;
pub const IGNORE_ANNOTATION: &str = "ilert.com/ignore";
/// Annotations copied into the compact view; everything else (notably
/// `kubectl.kubernetes.io/last-applied-configuration`, which can hold secrets) is dropped at once.
const KEPT_ANNOTATIONS: &[&str] = &[REVISION_ANNOTATION, CHANGE_CAUSE_ANNOTATION];
const KEPT_ANNOTATION_PREFIX: &str = "ilert.com/";

/// How a finished rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    Completed,
    Failed,
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "Completed",
            Outcome::Failed => "Failed",
            Outcome::RolledBack => "RolledBack",
        }
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
}

/// What is kept in memory of a watched Deployment: only what rollout detection, selection and the
/// payload need. Built straight from the watch event so full objects never accumulate.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadView {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Pairs,
    /// Only the revision, change-cause and `ilert.com/*` annotations.
    pub annotations: Pairs,
    pub generation: i64,
    pub observed_generation: i64,
    pub paused: bool,
    pub spec_replicas: i32,
    pub replicas: i32,
    pub updated_replicas: i32,
    pub available_replicas: i32,
    pub ready_replicas: i32,
    /// Reason and last update time of the Progressing condition.
    pub progressing_reason: Option<String>,
    pub progressing_updated: Option<Timestamp>,
    /// Container name -> image, init containers prefixed with `init:`.
    pub images: Pairs,
    /// The manager that last changed the pod template, and when (from managedFields).
    pub template_manager: Option<String>,
    pub template_changed_at: Option<Timestamp>,
    /// `spec.selector.matchLabels`, to find the workload's ReplicaSets.
    pub match_labels: Pairs,
    pub created_at: Option<Timestamp>,
}

impl WorkloadView {
    pub fn from_deployment(d: &Deployment) -> Self {
        let meta = &d.metadata;
        let spec = d.spec.as_ref();
        let status = d.status.as_ref();
        let progressing = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Progressing"));
        let (template_manager, template_changed_at) =
            template_change(meta.managed_fields.as_deref());
        WorkloadView {
            kind: "Deployment",
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default().into(),
            annotations: meta
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| {
                    KEPT_ANNOTATIONS.contains(&k.as_str()) || k.starts_with(KEPT_ANNOTATION_PREFIX)
                })
                // A kept annotation is a line of context, not a document: a 100 KB change-cause
                // would sit in memory for every workload and in every event.
                .map(|(k, v)| (k.clone(), crate::report::truncate(v, MAX_ANNOTATION_CHARS)))
                .collect(),
            generation: meta.generation.unwrap_or(0),
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
            paused: spec.and_then(|s| s.paused).unwrap_or(false),
            spec_replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            replicas: status.and_then(|s| s.replicas).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
            ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            progressing_reason: progressing.and_then(|c| c.reason.clone()),
            progressing_updated: progressing
                .and_then(|c| {
                    c.last_update_time
                        .as_ref()
                        .or(c.last_transition_time.as_ref())
                })
                .map(|t| t.0),
            images: spec.map(|s| images(&s.template)).unwrap_or_default(),
            template_manager,
            template_changed_at,
            match_labels: spec
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default()
                .into(),
            created_at: meta.creation_timestamp.as_ref().map(|t| t.0),
        }
    }

    /// `Kind/namespace/name`, how a workload is named in status, Events and logs.
    pub fn reference(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    pub fn revision(&self) -> Option<u64> {
        self.annotations.get(REVISION_ANNOTATION)?.parse().ok()
    }

    pub fn ignored(&self) -> bool {
        self.annotations
            .get(IGNORE_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The rule of `kubectl rollout status`, plus: a paused Deployment is never complete.
    pub fn progress(&self) -> Progress {
        if self.observed_generation < self.generation {
            return Progress::InProgress;
        }
        if self.progressing_reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return Progress::Failed;
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

    /// The finished rollout the object shows now, if its current revision has finished.
    pub fn finished(&self) -> Option<Finished> {
        let revision = self.revision()?;
        let outcome = match self.progress() {
            Progress::Complete => Outcome::Completed,
            Progress::Failed => Outcome::Failed,
            Progress::InProgress | Progress::Paused => return None,
        };
        Some(Finished {
            revision,
            outcome,
            // The Deployment controller stamps the Progressing condition when the rollout completes
            // or times out; ilert correlates by this time, not by when we happen to send.
            finished_at: self.progressing_updated,
        })
    }
}

/// A finished rollout as the object shows it. `Completed` may still turn out to be a rollback
/// once the ReplicaSets are looked at (see [`History`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub revision: u64,
    pub outcome: Outcome,
    pub finished_at: Option<Timestamp>,
}

/// What the workload's ReplicaSets add to a finished rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The current ReplicaSet was used by earlier revisions (`kubectl rollout undo`, a GitOps revert).
    pub rolled_back_from: Vec<u64>,
    /// Images of the revision before this one.
    pub previous_images: Pairs,
    pub previous_revision: Option<u64>,
    /// When the current ReplicaSet was created (a fallback start time for the duration).
    pub replica_set_created_at: Option<Timestamp>,
}

/// What the history needs of one ReplicaSet: the controller keeps these (from a watch) instead of
/// full objects, and never asks the API server for ReplicaSets on the path of an event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaSetView {
    pub uid: String,
    /// UID of the workload that controls it.
    pub owner: Option<String>,
    pub revision: Option<u64>,
    /// Earlier revisions this ReplicaSet served (`deployment.kubernetes.io/revision-history`).
    pub revision_history: Vec<u64>,
    pub images: Pairs,
    pub created_at: Option<Timestamp>,
}

impl ReplicaSetView {
    pub fn from_replica_set(rs: &ReplicaSet) -> Self {
        let annotation = |key: &str| rs.metadata.annotations.as_ref()?.get(key).cloned();
        ReplicaSetView {
            uid: rs.metadata.uid.clone().unwrap_or_default(),
            owner: rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            revision: annotation(REVISION_ANNOTATION).and_then(|r| r.parse().ok()),
            revision_history: annotation(REVISION_HISTORY_ANNOTATION)
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

impl History {
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
            .filter(|rs| rs.owner.as_deref() == Some(workload.uid.as_str()))
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
        History {
            rolled_back_from: current
                .map(|rs| rs.revision_history.clone())
                .unwrap_or_default(),
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
            Outcome::Completed if !history.rolled_back_from.is_empty() => Outcome::RolledBack,
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

fn images(template: &PodTemplateSpec) -> Pairs {
    let Some(spec) = template.spec.as_ref() else {
        return Pairs::default();
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

/// The field manager that last changed `spec.template` and when, from managedFields: `kubectl`,
/// `helm`, `argocd-controller`, ... Scale and status subresource writes do not count.
fn template_change(entries: Option<&[ManagedFieldsEntry]>) -> (Option<String>, Option<Timestamp>) {
    entries
        .into_iter()
        .flatten()
        .filter(|e| e.subresource.as_deref().unwrap_or("").is_empty())
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:template"))
                .is_some()
        })
        .filter_map(|e| Some((e.manager.clone(), e.time.as_ref()?.0)))
        .max_by_key(|(_, t)| *t)
        .map(|(m, t)| (m, Some(t)))
        .unwrap_or((None, None))
}

#[cfg(test)]
mod tests {
    //! Over objects captured from the real control plane (tests/fixtures, `make fixtures`).
    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn view(name: &str) -> WorkloadView {
        WorkloadView::from_deployment(&fixture::<Deployment>(name))
    }

    fn replica_sets(name: &str) -> Vec<ReplicaSet> {
        fixture::<k8s_openapi::List<ReplicaSet>>(name).items
    }

    #[test]
    fn progress_follows_kubectl_rollout_status() {
        let table = [
            ("deployment-progressing.json", Progress::InProgress),
            ("deployment-complete.json", Progress::Complete),
            ("deployment-scaled.json", Progress::Complete),
            ("deployment-rev2-complete.json", Progress::Complete),
            ("deployment-rolledback.json", Progress::Complete),
            ("deployment-paused.json", Progress::Paused),
            ("deployment-failed.json", Progress::Failed),
        ];
        for (file, want) in table {
            assert_eq!(view(file).progress(), want, "{file}");
        }
    }

    #[test]
    fn finished_rollouts_carry_revision_outcome_and_finish_time() {
        let done = view("deployment-complete.json")
            .finished()
            .expect("complete");
        assert_eq!((done.revision, done.outcome), (1, Outcome::Completed));
        let d: Deployment = fixture("deployment-complete.json");
        let progressing = d
            .status
            .unwrap()
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(done.finished_at, progressing.last_update_time.map(|t| t.0));

        let failed = view("deployment-failed.json").finished().expect("failed");
        assert_eq!((failed.revision, failed.outcome), (1, Outcome::Failed));
        assert_eq!(view("deployment-progressing.json").finished(), None);
        assert_eq!(view("deployment-paused.json").finished(), None);
    }

    #[test]
    fn scaling_is_not_a_rollout() {
        let before = view("deployment-complete.json").finished().unwrap();
        let after = view("deployment-scaled.json").finished().unwrap();
        // Same revision, same outcome, same finish time: the same rollout, not a new one.
        assert_eq!(before, after);
    }

    #[test]
    fn image_change_is_revision_two_with_previous_images() {
        let w = view("deployment-rev2-complete.json");
        let done = w.finished().unwrap();
        assert_eq!(done.revision, 2);
        let history = History::from_replica_sets(&w, 2, &replica_sets("replicasets-rev2.json"));
        assert!(history.rolled_back_from.is_empty());
        assert_eq!(history.previous_revision, Some(1));
        assert_eq!(history.previous_images.get("web"), Some("nginx:1.25"));
        assert_eq!(w.images.get("web"), Some("nginx:1.26"));
        assert_eq!(
            w.images.get("init:migrate"),
            Some("ghcr.io/acme/shop-migrate:1.25")
        );
        let r = Rollout::new(&w, done, history, Timestamp::now());
        assert_eq!(r.outcome, Outcome::Completed);
        assert_eq!(w.template_manager.as_deref(), Some("kubectl-set"));
        assert!(r.duration_seconds().is_some_and(|s| (0..60).contains(&s)));
    }

    #[test]
    fn reapplying_an_old_template_is_a_rollback() {
        let w = view("deployment-rolledback.json");
        let done = w.finished().unwrap();
        assert_eq!(done.revision, 3);
        let history =
            History::from_replica_sets(&w, 3, &replica_sets("replicasets-rolledback.json"));
        assert_eq!(history.rolled_back_from, vec![1]);
        assert_eq!(history.previous_images.get("web"), Some("nginx:1.26"));
        let r = Rollout::new(&w, done, history, Timestamp::now());
        assert_eq!(r.outcome, Outcome::RolledBack);
    }

    #[test]
    fn the_view_keeps_no_secrets_or_last_applied_configuration() {
        let d: Deployment = fixture("deployment-complete.json");
        assert!(
            d.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key("kubectl.kubernetes.io/last-applied-configuration"),
            "the fixture should hold the annotation this test proves is dropped"
        );
        let w = WorkloadView::from_deployment(&d);
        assert!(
            !w.annotations
                .contains_key("kubectl.kubernetes.io/last-applied-configuration")
        );
        assert_eq!(
            w.annotations.get(CHANGE_CAUSE_ANNOTATION),
            Some("release 1.25")
        );
        assert!(!format!("{w:?}").contains("do-not-send"));
    }
}
