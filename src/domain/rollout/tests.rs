//! Unit tests of `domain::rollout`.

//! Over objects captured from the real control plane (tests/fixtures, `make fixtures`).
use super::*;
use crate::domain::history::*;
use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The view as the controller keeps it: with the ReplicaSet of its current revision, which
/// for the fixtures without a ReplicaSet list is the one its Progressing condition names (a
/// Deployment with one revision has one ReplicaSet).
fn view(name: &str) -> WorkloadView {
    let mut w = WorkloadView::from_deployment(&fixture::<Deployment>(name));
    if w.revision() == Some(1) {
        w.current_replica_set = w.progressing_replica_set.clone();
    }
    w
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
fn a_deadline_carried_over_from_an_earlier_revision_decides_nothing() {
    let failed = view("deployment-failed.json");
    assert_eq!(
        failed.progressing_replica_set.as_deref(),
        Some("stuck-56cd8db9bf")
    );
    assert_eq!(failed.progress(), Progress::Failed);
    // A rollback re-uses an older ReplicaSet as the new revision; the condition still names
    // the ReplicaSet that timed out.
    let mut rolled_back = failed.clone();
    rolled_back.annotations = rolled_back
        .annotations
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                if k == REVISION_ANNOTATION { "3" } else { v }.to_string(),
            )
        })
        .collect();
    rolled_back.current_replica_set = Some("stuck-7f9c6b5d4".into());
    assert_eq!(rolled_back.progress(), Progress::InProgress);
    assert_eq!(
        rolled_back.finished(),
        None,
        "no outcome for revision 3 yet"
    );
    // Until the ReplicaSet of the revision is known, nothing is decided either.
    rolled_back.current_replica_set = None;
    assert_eq!(rolled_back.finished(), None);
    // The ReplicaSet list resolves the current one by revision.
    let rs = |name: &str, revision: u64| ReplicaSetView {
        name: name.into(),
        owner: Some(failed.uid.clone()),
        revision: Some(revision),
        ..Default::default()
    };
    let sets = [rs("stuck-56cd8db9bf", 2), rs("stuck-7f9c6b5d4", 3)];
    assert_eq!(
        resolve_replica_set(&rolled_back, &sets).map(|rs| &*rs.name),
        Some("stuck-7f9c6b5d4")
    );
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
    let history = History::from_replica_sets(&w, 3, &replica_sets("replicasets-rolledback.json"));
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

fn revisions(name: &str) -> Vec<RevisionView> {
    fixture::<k8s_openapi::List<ControllerRevision>>(name)
        .items
        .iter()
        .map(RevisionView::from_controller_revision)
        .collect()
}

fn stateful_set(name: &str) -> WorkloadView {
    WorkloadView::from_stateful_set(&fixture::<StatefulSet>(name))
}

fn daemon_set(name: &str) -> WorkloadView {
    WorkloadView::from_daemon_set(&fixture::<DaemonSet>(name))
}

#[test]
fn stateful_sets_and_daemon_sets_follow_kubectl_rollout_status() {
    for file in [
        "statefulset-complete.json",
        "statefulset-scaled.json",
        "statefulset-rev2-complete.json",
    ] {
        assert_eq!(stateful_set(file).progress(), Progress::Complete, "{file}");
    }
    for file in ["daemonset-complete.json", "daemonset-rev2-complete.json"] {
        assert_eq!(daemon_set(file).progress(), Progress::Complete, "{file}");
    }

    // Partition 2 of 4: the 2 above it updated is a staged rollout held back, not its end.
    let mut sts = stateful_set("statefulset-partitioned-complete.json");
    assert_eq!(sts.progress(), Progress::Paused, "held by the partition");
    sts.updated_replicas = 1;
    assert_eq!(sts.progress(), Progress::InProgress, "above the partition");
    // The partition lowered and every replica updated: the real end of the same revision.
    let mut sts = stateful_set("statefulset-partitioned-complete.json");
    sts.partition = Some(0);
    assert_eq!(sts.progress(), Progress::InProgress, "partition lowered");
    sts.updated_replicas = 4;
    assert_eq!(sts.progress(), Progress::Complete, "every replica updated");
    let mut sts = stateful_set("statefulset-rev2-complete.json");
    sts.observed_generation -= 1;
    assert_eq!(
        sts.progress(),
        Progress::InProgress,
        "spec not observed yet"
    );
    let mut sts = stateful_set("statefulset-rev2-complete.json");
    sts.ready_replicas -= 1;
    assert_eq!(sts.progress(), Progress::InProgress, "a replica not ready");
    // OnDelete: no partition; complete once every pod runs the update revision, although
    // before Kubernetes' 2026 fix `currentRevision` never moves to the update revision.
    let mut sts = stateful_set("statefulset-partitioned-complete.json");
    sts.partition = None;
    assert_eq!(sts.progress(), Progress::InProgress, "OnDelete, pods left");
    sts.updated_replicas = 4;
    assert_ne!(sts.current_revision, sts.update_revision);
    assert_eq!(sts.progress(), Progress::Complete, "OnDelete, all replaced");
    sts.ready_replicas = 3;
    assert_eq!(
        sts.progress(),
        Progress::InProgress,
        "OnDelete, one not ready"
    );

    let mut ds = daemon_set("daemonset-rev2-complete.json");
    ds.updated_replicas -= 1;
    assert_eq!(ds.progress(), Progress::InProgress, "a node not updated");
    let mut ds = daemon_set("daemonset-rev2-complete.json");
    ds.available_replicas -= 1;
    assert_eq!(
        ds.progress(),
        Progress::InProgress,
        "an updated pod not available"
    );
}

#[test]
fn stateful_set_and_daemon_set_revisions_come_from_controller_revisions() {
    let crs = revisions("controllerrevisions-statefulset.json");
    let mut first = stateful_set("statefulset-complete.json");
    assert_eq!(
        first.revision(),
        None,
        "unknown until the ControllerRevision is seen"
    );
    first.controller_revision = resolve_revision(&first, &crs);
    assert_eq!(first.revision(), Some(1));
    let scaled = stateful_set("statefulset-scaled.json");
    assert_eq!(
        resolve_revision(&scaled, &crs),
        Some(1),
        "scaling is no new revision"
    );
    let mut second = stateful_set("statefulset-rev2-complete.json");
    second.controller_revision = resolve_revision(&second, &crs);
    let done = second.finished().expect("revision 2 finished");
    assert_eq!((done.revision, done.outcome), (2, Outcome::Completed));
    assert_eq!(second.images.get("postgres"), Some("postgres:16.4"));

    let history = History::from_revisions(&second, 2, &crs);
    assert!(!history.rolled_back);
    assert_eq!(history.previous_revision, Some(1));
    assert_eq!(
        history.previous_images.get("postgres"),
        Some("postgres:16.3")
    );
    assert_eq!(
        history.previous_images.get("exporter"),
        Some("quay.io/prometheuscommunity/postgres-exporter:v0.15.0")
    );

    let ds_crs = revisions("controllerrevisions-daemonset.json");
    let ds = daemon_set("daemonset-rev2-complete.json");
    assert_eq!(resolve_revision(&ds, &ds_crs), Some(2));
    assert_eq!(
        resolve_revision(&ds, &crs),
        None,
        "another workload's revisions"
    );
    let history = History::from_revisions(&ds, 2, &ds_crs);
    assert_eq!(
        history.previous_images.get("agent"),
        Some("ghcr.io/acme/node-agent:2.0")
    );
}

/// The watches are separate streams: the ControllerRevision of a new DaemonSet template can
/// arrive before the DaemonSet update that made it. The DaemonSet as last seen (the old template,
/// complete) must not be taken for the new revision complete, with the old images.
#[test]
fn a_daemon_sets_revision_is_the_one_of_its_own_template() {
    let crs = revisions("controllerrevisions-daemonset.json");
    let mut old = daemon_set("daemonset-complete.json");
    assert_eq!(resolve_revision(&old, &crs), Some(1));
    old.controller_revision = resolve_revision(&old, &crs);
    let done = old.finished().expect("revision 1 is complete");
    assert_eq!(done.revision, 1);
    // Until the ControllerRevision of its template is known, it has no revision.
    let new = daemon_set("daemonset-rev2-complete.json");
    let only_first: Vec<RevisionView> = crs.iter().filter(|r| r.revision == 1).cloned().collect();
    assert_eq!(resolve_revision(&new, &only_first), None);
    assert_eq!(resolve_revision(&new, &crs), Some(2));
}

#[test]
fn going_back_to_an_earlier_template_is_a_rollback() {
    // `kubectl rollout undo` gives the earlier template's ControllerRevision the next number.
    let mut crs = revisions("controllerrevisions-statefulset.json");
    crs.iter_mut().find(|r| r.revision == 1).unwrap().revision = 3;
    let mut sts = stateful_set("statefulset-complete.json");
    sts.controller_revision = resolve_revision(&sts, &crs);
    let done = sts.finished().expect("finished");
    assert_eq!(done.revision, 3);
    let history = History::from_revisions(&sts, 3, &crs);
    assert!(history.rolled_back);
    assert_eq!(history.previous_revision, Some(2));
    let rollout = Rollout::new(&sts, done, history, Timestamp::now());
    assert_eq!(rollout.outcome, Outcome::RolledBack);
}

/// A Rollout's view as the controller keeps it: with its ReplicaSets (from `replica_sets`, a
/// fixture of them) resolved.
fn rollout_view(name: &str, replica_sets: Option<&str>) -> WorkloadView {
    let mut w = WorkloadView::from_rollout(&fixture::<crate::domain::argo::Rollout>(name));
    if let Some(list) = replica_sets {
        let views: Vec<ReplicaSetView> = self::replica_sets(list)
            .iter()
            .map(ReplicaSetView::from_replica_set)
            .collect();
        w.current_replica_set = resolve_replica_set(&w, &views).map(|rs| rs.name.clone());
    }
    w
}

/// Argo Rollouts' own rule, over Rollouts its real controller wrote: a pause step is not an end,
/// an abort is one only once Argo has acted on it.
#[test]
fn rollout_progress_follows_argo_rollouts() {
    let table = [
        ("rollout-canary-complete.json", Progress::Complete),
        ("rollout-canary-paused.json", Progress::Paused),
        ("rollout-canary-rev2-complete.json", Progress::Complete),
        ("rollout-abort-requested.json", Progress::InProgress),
        ("rollout-aborted.json", Progress::Aborted),
        ("rollout-rolledback.json", Progress::Complete),
        ("rollout-bluegreen-complete.json", Progress::Complete),
        ("rollout-failed.json", Progress::InProgress),
    ];
    for (file, want) in table {
        assert_eq!(rollout_view(file, None).progress(), want, "{file}");
    }
    // A deadline counts once the ReplicaSet it names is known to be the current one (the
    // watches are separate streams).
    assert_eq!(
        rollout_view(
            "rollout-failed.json",
            Some("replicasets-rollout-failed.json")
        )
        .progress(),
        Progress::Failed
    );
}

#[test]
fn a_rollout_finishes_with_its_argo_revision_and_the_time_argo_gives() {
    let done = rollout_view("rollout-canary-rev2-complete.json", None)
        .finished()
        .expect("complete");
    assert_eq!((done.revision, done.outcome), (2, Outcome::Completed));
    assert!(done.finished_at.is_some());
    let r: crate::domain::argo::Rollout = fixture("rollout-aborted.json");
    let aborted = WorkloadView::from_rollout(&r).finished().expect("aborted");
    assert_eq!((aborted.revision, aborted.outcome), (3, Outcome::Aborted));
    let aborted_at = r.status.unwrap().aborted_at.expect("abortedAt").0;
    assert_eq!(aborted.finished_at, Some(aborted_at));
    assert!(
        rollout_view("rollout-canary-paused.json", None)
            .finished()
            .is_none()
    );
    let failed = rollout_view(
        "rollout-failed.json",
        Some("replicasets-rollout-failed.json"),
    )
    .finished()
    .expect("failed");
    assert_eq!((failed.revision, failed.outcome), (2, Outcome::Failed));
}

#[test]
fn a_rollout_view_keeps_strategy_steps_and_who_changed_the_template() {
    let w = rollout_view("rollout-canary-rev2-complete.json", None);
    let a = w.argo.as_deref().unwrap();
    assert_eq!(a.strategy, Some(crate::domain::argo::StrategyKind::Canary));
    assert_eq!(a.steps_line().as_deref(), Some("3/3"));
    assert_eq!(w.images.get("app"), Some("nginx:1.26"));
    // Argo's controller writes `resources: {}` into each new template: not a change of its own.
    assert_eq!(w.template_manager.as_deref(), Some("helm"));
    let bg = rollout_view("rollout-bluegreen-complete.json", None);
    let a = bg.argo.as_deref().unwrap();
    assert_eq!(
        a.strategy,
        Some(crate::domain::argo::StrategyKind::BlueGreen)
    );
    assert_eq!(a.steps_line(), None);
    let aborted = rollout_view("rollout-aborted.json", None);
    assert!(
        aborted
            .argo
            .as_deref()
            .and_then(|a| a.message.as_deref())
            .is_some_and(|m| m.starts_with("RolloutAborted")),
        "{:?}",
        aborted.argo
    );
}

/// An undo re-uses an older ReplicaSet, which Argo gives a new revision and a revision history.
#[test]
fn an_undone_rollout_is_a_rollback_from_its_replica_sets() {
    let w = rollout_view(
        "rollout-rolledback.json",
        Some("replicasets-rollout-rolledback.json"),
    );
    assert!(
        w.current_replica_set.is_some(),
        "current ReplicaSet resolved"
    );
    let finished = w.finished().expect("complete");
    assert_eq!(finished.revision, 4);
    let rs = replica_sets("replicasets-rollout-rolledback.json");
    let history = History::from_replica_sets(&w, 4, &rs);
    assert!(history.rolled_back, "{history:?}");
    assert_eq!(history.rolled_back_from, vec![1]);
    assert_eq!(history.previous_revision, Some(3));
    assert_eq!(history.previous_images.get("app"), Some("nginx:1.27-bad"));
    let rollout = Rollout::new(&w, finished, history, Timestamp::now());
    assert_eq!(rollout.outcome, Outcome::RolledBack);
    // A plain new revision is not.
    let w2 = rollout_view(
        "rollout-canary-rev2-complete.json",
        Some("replicasets-rollout-rev2.json"),
    );
    let h2 = History::from_replica_sets(&w2, 2, &replica_sets("replicasets-rollout-rev2.json"));
    assert!(!h2.rolled_back);
    assert_eq!(h2.previous_images.get("app"), Some("nginx:1.25"));
}

/// One view per watched workload: jemalloc rounds it up to its size class (…, 320, 384, 448), so
/// a field more can cost 64 bytes per workload. Shared strings (`Sym`) for the namespace, the
/// field manager and the Progressing reason, and `Box<str>` for the name, brought it from 408 to
/// 376 bytes, into the 384 class.
#[test]
fn a_workload_view_fits_the_384_byte_class() {
    assert!(
        std::mem::size_of::<WorkloadView>() <= 384,
        "{} bytes",
        std::mem::size_of::<WorkloadView>()
    );
    let v = view("deployment-complete.json");
    assert_eq!(&*v.namespace, v.namespace.as_str());
    // Equal strings of two views are one copy.
    let again = view("deployment-complete.json");
    assert!(std::ptr::eq(v.namespace.as_str(), again.namespace.as_str()));
    let (key, _) = v.annotations.iter().next().expect("a kept annotation");
    let (key2, _) = again.annotations.iter().next().unwrap();
    assert!(std::ptr::eq(key, key2));
}
