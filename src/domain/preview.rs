//! Pure: what the controller would send for a workload's latest rollout (`kubectl ilert
//! preview`), built by the same functions the controller builds it with: the view, its history,
//! the pipeline's check, the event and the request body. Only the key is left out.

use jiff::Timestamp;
use serde_json::Value;

use crate::domain::decide::{self, Shaping};
use crate::domain::history::{History, ReplicaSetView, RevisionView};
use crate::domain::report;
use crate::domain::rollout::{Progress, WorkloadView};
use crate::domain::status::Problem;
use crate::domain::template::Templates;

/// Stands in for the integration key in a preview.
pub const REDACTED: &str = "[redacted]";

/// What a preview shows.
#[derive(Debug)]
pub enum Preview {
    /// The request body the controller would send (key redacted), and what of the pipeline's
    /// templates or the workload's annotations did not render (the event goes without it).
    Send { body: Value, warnings: Vec<String> },
    /// The latest revision has not finished: nothing is sent until it has.
    Unfinished {
        revision: Option<u64>,
        progress: Progress,
    },
    /// The pipeline's spec does not pass its check: the controller sends nothing for it, and
    /// its Ready condition says this.
    Invalid(Problem),
}

/// The history of `w` at `revision` from its ReplicaSets (Deployment, Rollout) or
/// ControllerRevisions (StatefulSet, DaemonSet), as the controller reads it.
pub fn history(
    w: &WorkloadView,
    revision: u64,
    replica_sets: &[ReplicaSetView],
    revisions: &[RevisionView],
) -> History {
    if w.kind.has_replica_sets() {
        History::from_views(w, revision, replica_sets)
    } else {
        History::from_revisions(w, revision, revisions)
    }
}

/// The preview of `w`'s latest rollout for a pipeline whose check gave `templates` (Ok(None):
/// no templates, or no pipeline), on cluster `cluster`. `now` stands in for a missing finish time.
pub fn preview(
    w: &WorkloadView,
    replica_sets: &[ReplicaSetView],
    revisions: &[RevisionView],
    templates: Result<Option<&Templates>, Problem>,
    cluster: &str,
    now: Timestamp,
) -> Preview {
    let templates = match templates {
        Ok(t) => t,
        Err(p) => return Preview::Invalid(p),
    };
    let Some(finished) = w.finished() else {
        return Preview::Unfinished {
            revision: w.revision(),
            progress: w.progress(),
        };
    };
    let h = history(w, finished.revision, replica_sets, revisions);
    let pending = decide::pending(
        w,
        finished,
        h,
        now,
        Shaping { cluster, templates },
        true,
        None,
    );
    let event = pending
        .event
        .and_then(|mut e| e.take_event())
        .expect("a reported rollout has its event");
    Preview::Send {
        body: report::body(&event, REDACTED),
        warnings: pending.warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::history::ReplicaSetView;
    use crate::domain::status::Reason;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn a_preview_is_the_body_the_controller_sends_with_the_key_redacted() {
        let d: Deployment = fixture("deployment-rev2-complete.json");
        let mut w = WorkloadView::from_deployment(&d);
        let sets: Vec<ReplicaSetView> =
            fixture::<k8s_openapi::List<ReplicaSet>>("replicasets-rev2.json")
                .items
                .iter()
                .map(ReplicaSetView::from_replica_set)
                .collect();
        w.current_replica_set =
            crate::domain::history::resolve_replica_set(&w, &sets).map(|rs| rs.name.clone());
        let now = Timestamp::now();
        let Preview::Send { body, warnings } = preview(&w, &sets, &[], Ok(None), "prod", now)
        else {
            panic!("a finished rollout previews its body");
        };
        assert!(warnings.is_empty());
        assert_eq!(body["integrationKey"], REDACTED);
        assert_eq!(body["customDetails"]["revision"], "2");
        assert_eq!(body["customDetails"]["previousRevision"], "1");
        // The same as the controller's event for it.
        let finished = w.finished().unwrap();
        let h = history(&w, 2, &sets, &[]);
        let pending = decide::pending(
            &w,
            finished,
            h,
            now,
            Shaping {
                cluster: "prod",
                templates: None,
            },
            true,
            None,
        );
        let event = pending.event.unwrap().take_event().unwrap();
        assert_eq!(body, report::body(&event, REDACTED));
    }

    #[test]
    fn an_unfinished_rollout_or_an_invalid_pipeline_sends_nothing() {
        let d: Deployment = fixture("deployment-progressing.json");
        let w = WorkloadView::from_deployment(&d);
        assert!(matches!(
            preview(&w, &[], &[], Ok(None), "", Timestamp::now()),
            Preview::Unfinished {
                progress: Progress::InProgress,
                ..
            }
        ));
        let problem = Problem {
            reason: Reason::InvalidTemplate,
            message: "spec.template does not render".into(),
        };
        assert!(matches!(
            preview(&w, &[], &[], Err(problem), "", Timestamp::now()),
            Preview::Invalid(Problem {
                reason: Reason::InvalidTemplate,
                ..
            })
        ));
    }
}
