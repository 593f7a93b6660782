//! Table-driven tests of the pure decision steps, "events in, intents out": objects captured from
//! a real control plane (tests/fixtures) go into `Selection`, `decide::owe` and `status`, and the
//! intents that come out are asserted, case by case. No API server, no network, no clock.
//!
//! Where the captured objects do not show a step a sequence needs (a failed Deployment's next
//! revision, a StatefulSet mid-rollout), the view is derived by editing the fixture's JSON before
//! it is read, and the case says so.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use ilert_rollout_controller::domain::alerts::{self, Action};
use ilert_rollout_controller::domain::book::{Book, Capacity};
use ilert_rollout_controller::domain::channel::Channel;
use ilert_rollout_controller::domain::decide::{self, Owed, Pipeline};
use ilert_rollout_controller::domain::history::{
    ReplicaSetView, RevisionView, resolve_replica_set, resolve_revision,
};
use ilert_rollout_controller::domain::ledger::{RolloutKey, State};
use ilert_rollout_controller::domain::rollout::{Finished, Kind, Outcome, WorkloadView};
use ilert_rollout_controller::domain::selection::Selection;
use ilert_rollout_controller::domain::status::{self, Conditions, Problem, Reason, Stats};
use ilert_rollout_controller::pipeline::{AlertPriority, IlertPipelineSpec};

// ---------------------------------------------------------------------------------------------
// Fixtures

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn list<T: serde::de::DeserializeOwned + k8s_openapi::ListableResource>(name: &str) -> Vec<T> {
    serde_json::from_value::<k8s_openapi::List<T>>(fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .items
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The Progressing condition of a Deployment document.
fn progressing(doc: &mut Value) -> &mut Value {
    doc["status"]["conditions"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Progressing"))
        .expect("a Progressing condition")
}

/// A Deployment as the controller keeps it: the ReplicaSet of its current revision resolved from
/// the ReplicaSet list captured with it, or, where none was captured (a Deployment with one
/// revision has one ReplicaSet), the one its Progressing condition names.
fn deployment(doc: Value, replica_sets: Option<&str>) -> WorkloadView {
    let d: Deployment = serde_json::from_value(doc).expect("a Deployment");
    let mut w = WorkloadView::from_deployment(&d);
    w.current_replica_set = match replica_sets {
        Some(file) => {
            let sets: Vec<ReplicaSetView> = list::<ReplicaSet>(file)
                .iter()
                .map(ReplicaSetView::from_replica_set)
                .collect();
            resolve_replica_set(&w, &sets).map(|rs| rs.name.clone())
        }
        None => w.progressing_replica_set.clone(),
    };
    w
}

fn shop(file: &str, replica_sets: &str) -> WorkloadView {
    deployment(fixture(file), Some(replica_sets))
}

/// `deployment-failed.json` (revision 1, ProgressDeadlineExceeded) as it looks once `revision`
/// has rolled out in full (derived: no such object was captured), its Progressing condition
/// stamped `at` and naming ReplicaSet `rs`.
fn stuck_recovered(revision: u64, rs: &str, at: &str) -> Value {
    let mut d = fixture("deployment-failed.json");
    d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!(revision.to_string());
    d["metadata"]["generation"] = json!(revision);
    let status = &mut d["status"];
    status["observedGeneration"] = json!(revision);
    for field in [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ] {
        status[field] = json!(2);
    }
    status
        .as_object_mut()
        .expect("a status")
        .remove("unavailableReplicas");
    let p = progressing(&mut d);
    p["status"] = json!("True");
    p["reason"] = json!("NewReplicaSetAvailable");
    p["message"] = json!(format!("ReplicaSet \"{rs}\" has successfully progressed."));
    p["lastUpdateTime"] = json!(at);
    p["lastTransitionTime"] = json!(at);
    d
}

/// A Deployment document with its Progressing condition stamped `at` (derived: the captured
/// rollouts all finished within seconds, a pipeline created in between is not realistic).
fn stamped(file: &str, at: &str) -> Value {
    let mut d = fixture(file);
    progressing(&mut d)["lastUpdateTime"] = json!(at);
    d
}

fn revisions(file: &str, up_to: u64) -> Vec<RevisionView> {
    list::<ControllerRevision>(file)
        .iter()
        .map(RevisionView::from_controller_revision)
        .filter(|r| r.revision <= up_to)
        .collect()
}

fn stateful_set(doc: Value) -> WorkloadView {
    let sts: StatefulSet = serde_json::from_value(doc).expect("a StatefulSet");
    let mut w = WorkloadView::from_stateful_set(&sts);
    w.controller_revision = resolve_revision(
        &w,
        &revisions("controllerrevisions-statefulset.json", u64::MAX),
    );
    w
}

/// The ControllerRevision list was captured after revision 2: a DaemonSet's revision is its
/// newest, so the first object is resolved against the revisions that existed then.
fn daemon_set(file: &str, up_to: u64) -> WorkloadView {
    let ds: DaemonSet = serde_json::from_value(fixture(file)).expect("a DaemonSet");
    let mut w = WorkloadView::from_daemon_set(&ds);
    w.controller_revision =
        resolve_revision(&w, &revisions("controllerrevisions-daemonset.json", up_to));
    w
}

fn with_annotation(mut doc: Value, key: &str, value: &str) -> Value {
    doc["metadata"]["annotations"][key] = json!(value);
    doc
}

fn in_namespace(mut doc: Value, namespace: &str) -> Value {
    doc["metadata"]["namespace"] = json!(namespace);
    doc
}

fn spec(extra: Value) -> IlertPipelineSpec {
    let mut doc = json!({ "integrationKeySecretRef": { "name": "ilert" } });
    for (k, v) in extra.as_object().expect("an object") {
        doc[k] = v.clone();
    }
    serde_json::from_value(doc).expect("an IlertPipelineSpec")
}

// ---------------------------------------------------------------------------------------------
// 1. Selection

const TRUSTED: &str = "ilert-system";

#[test]
fn selection() {
    struct Check {
        name: &'static str,
        spec: Value,
        namespace: &'static str,
        /// Err: the reason and what its message must name.
        want: Result<(), (Reason, &'static [&'static str])>,
    }
    let checks = vec![
        Check {
            name: "no selectors: the pipeline's own namespace",
            spec: json!({}),
            namespace: "fixtures",
            want: Ok(()),
        },
        Check {
            name: "valid label selector",
            spec: json!({ "selector": {
                "matchLabels": { "app": "shop" },
                "matchExpressions": [{ "key": "tier", "operator": "NotIn", "values": ["batch"] }],
            }}),
            namespace: "fixtures",
            want: Ok(()),
        },
        Check {
            name: "invalid label selector operator",
            spec: json!({ "selector": {
                "matchExpressions": [{ "key": "app", "operator": "Equals", "values": ["shop"] }],
            }}),
            namespace: "fixtures",
            want: Err((Reason::InvalidSelector, &["spec.selector"])),
        },
        Check {
            name: "In without values",
            spec: json!({ "selector": { "matchExpressions": [{ "key": "app", "operator": "In" }] } }),
            namespace: "fixtures",
            want: Err((Reason::InvalidSelector, &["spec.selector is invalid"])),
        },
        Check {
            name: "namespaceSelector from an untrusted namespace",
            spec: json!({ "namespaceSelector": { "matchLabels": { "env": "prod" } } }),
            namespace: "fixtures",
            want: Err((
                Reason::NamespaceSelectorNotAllowed,
                &["spec.namespaceSelector", "(ilert-system, platform)"],
            )),
        },
        Check {
            name: "namespaceSelector from a trusted namespace",
            spec: json!({ "namespaceSelector": { "matchLabels": { "env": "prod" } } }),
            namespace: TRUSTED,
            want: Ok(()),
        },
        Check {
            name: "invalid namespaceSelector from a trusted namespace",
            spec: json!({ "namespaceSelector": {
                "matchExpressions": [{ "key": "env", "operator": "Near" }],
            }}),
            namespace: "platform",
            want: Err((
                Reason::InvalidSelector,
                &["spec.namespaceSelector is invalid"],
            )),
        },
        Check {
            name: "template that does not parse",
            spec: json!({ "template": { "summary": "{{ workload.name " } }),
            namespace: "fixtures",
            want: Err((
                Reason::InvalidTemplate,
                &["spec.template does not render", "spec.template.summary"],
            )),
        },
        Check {
            name: "link template with an unknown filter",
            spec: json!({ "template": {
                "links": [{ "text": "logs", "href": "https://logs/{{ workload.name | nosuchfilter }}" }],
            }}),
            namespace: "fixtures",
            want: Err((Reason::InvalidTemplate, &["spec.template.links[0].href"])),
        },
        Check {
            name: "template that renders",
            spec: json!({ "template": { "summary": "{{ summary }} (checked)" } }),
            namespace: "fixtures",
            want: Ok(()),
        },
    ];
    let trusted = [TRUSTED.to_string(), "platform".to_string()];
    for c in checks {
        let got = Selection::check(&spec(c.spec), c.namespace, &trusted);
        match (got, c.want) {
            (Ok(_), Ok(())) => {}
            (Err(p), Err((reason, names))) => {
                assert_eq!(p.reason, reason, "{}: {}", c.name, p.message);
                for n in names {
                    assert!(
                        p.message.contains(n),
                        "{}: message should name {n:?}: {}",
                        c.name,
                        p.message
                    );
                }
            }
            (Ok(_), Err((reason, _))) => panic!("{}: accepted, want {reason}", c.name),
            (Err(p), Ok(())) => panic!("{}: refused: {} {}", c.name, p.reason, p.message),
        }
    }

    // A checked selection keeps what the spec says.
    let s = Selection::check(
        &spec(json!({ "workloads": ["StatefulSet"], "alerts": {
            "alertSourceKeySecretRef": { "name": "pager" }, "priority": "HIGH",
        }})),
        "fixtures",
        &trusted,
    )
    .unwrap_or_else(|p| panic!("checked: {p:?}"));
    assert_eq!(s.kinds, [Kind::StatefulSet], "spec.workloads");
    assert_eq!(
        s.alerts.and_then(|a| a.priority),
        Some(AlertPriority::High),
        "spec.alerts"
    );
    assert!(s.namespaces.is_none() && s.templates.is_none(), "absent");

    struct Selects {
        name: &'static str,
        spec: Value,
        pipeline_namespace: &'static str,
        workload: WorkloadView,
        want: bool,
    }
    let shop_in =
        |ns: &str| deployment(in_namespace(fixture("deployment-complete.json"), ns), None);
    let ignored = |value: &str| {
        deployment(
            with_annotation(
                fixture("deployment-complete.json"),
                "ilert.com/ignore",
                value,
            ),
            None,
        )
    };
    let db = stateful_set(fixture("statefulset-complete.json"));
    let prod = json!({ "namespaceSelector": { "matchLabels": { "env": "prod" } } });
    let cases = vec![
        Selects {
            name: "same namespace by default",
            spec: json!({}),
            pipeline_namespace: "fixtures",
            workload: shop_in("fixtures"),
            want: true,
        },
        Selects {
            name: "other namespace without namespaceSelector",
            spec: json!({}),
            pipeline_namespace: "fixtures",
            workload: shop_in("payments"),
            want: false,
        },
        Selects {
            name: "namespaceSelector matches the namespace's labels",
            spec: prod.clone(),
            pipeline_namespace: TRUSTED,
            workload: shop_in("payments"),
            want: true,
        },
        Selects {
            name: "namespaceSelector does not match the namespace's labels",
            spec: prod.clone(),
            pipeline_namespace: TRUSTED,
            workload: shop_in("fixtures"),
            want: false,
        },
        Selects {
            name: "namespaceSelector: not even the pipeline's own namespace unless it matches",
            spec: prod,
            pipeline_namespace: TRUSTED,
            workload: shop_in(TRUSTED),
            want: false,
        },
        Selects {
            name: "namespaceSelector {}: every known namespace",
            spec: json!({ "namespaceSelector": {} }),
            pipeline_namespace: TRUSTED,
            workload: shop_in("fixtures"),
            want: true,
        },
        Selects {
            name: "namespaceSelector {}: a namespace not (yet) known",
            spec: json!({ "namespaceSelector": {} }),
            pipeline_namespace: TRUSTED,
            workload: shop_in("unknown"),
            want: false,
        },
        Selects {
            name: "label selector matches",
            spec: json!({ "selector": { "matchLabels": { "app.kubernetes.io/part-of": "webshop" } } }),
            pipeline_namespace: "fixtures",
            workload: shop_in("fixtures"),
            want: true,
        },
        Selects {
            name: "label selector does not match",
            spec: json!({ "selector": { "matchLabels": { "app": "shop" } } }),
            pipeline_namespace: "fixtures",
            workload: db.clone(),
            want: false,
        },
        Selects {
            name: "matchExpressions In",
            spec: json!({ "selector": {
                "matchExpressions": [{ "key": "app", "operator": "In", "values": ["db", "cache"] }],
            }}),
            pipeline_namespace: "fixtures",
            workload: db.clone(),
            want: true,
        },
        Selects {
            name: "matchExpressions DoesNotExist",
            spec: json!({ "selector": {
                "matchExpressions": [{ "key": "app.kubernetes.io/version", "operator": "DoesNotExist" }],
            }}),
            pipeline_namespace: "fixtures",
            workload: shop_in("fixtures"),
            want: false,
        },
        Selects {
            name: "spec.workloads [StatefulSet] excludes a Deployment",
            spec: json!({ "workloads": ["StatefulSet"] }),
            pipeline_namespace: "fixtures",
            workload: shop_in("fixtures"),
            want: false,
        },
        Selects {
            name: "spec.workloads [StatefulSet] includes a StatefulSet",
            spec: json!({ "workloads": ["StatefulSet"] }),
            pipeline_namespace: "fixtures",
            workload: db,
            want: true,
        },
        Selects {
            name: "spec.workloads [Deployment, DaemonSet] includes a DaemonSet",
            spec: json!({ "workloads": ["Deployment", "DaemonSet"] }),
            pipeline_namespace: "fixtures",
            workload: daemon_set("daemonset-complete.json", 1),
            want: true,
        },
        Selects {
            name: "ilert.com/ignore: \"true\" is never selected",
            spec: json!({ "namespaceSelector": {}, "selector": { "matchLabels": { "app": "shop" } } }),
            pipeline_namespace: TRUSTED,
            workload: ignored("true"),
            want: false,
        },
        Selects {
            name: "ilert.com/ignore: \"TRUE\" (any case)",
            spec: json!({}),
            pipeline_namespace: "fixtures",
            workload: ignored("TRUE"),
            want: false,
        },
        Selects {
            name: "ilert.com/ignore: \"false\"",
            spec: json!({}),
            pipeline_namespace: "fixtures",
            workload: ignored("false"),
            want: true,
        },
        Selects {
            name: "ilert.com/ignore: \"yes\" is not true",
            spec: json!({}),
            pipeline_namespace: "fixtures",
            workload: ignored("yes"),
            want: true,
        },
    ];
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let namespaces: HashMap<String, BTreeMap<String, String>> = [
        ("fixtures", labels(&[("env", "test")])),
        ("payments", labels(&[("env", "prod"), ("team", "payments")])),
        (TRUSTED, labels(&[])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for c in cases {
        let s = Selection::check(&spec(c.spec), c.pipeline_namespace, &trusted)
            .unwrap_or_else(|p| panic!("{}: refused: {p:?}", c.name));
        assert_eq!(
            s.selects(&c.workload, c.pipeline_namespace, &namespaces),
            c.want,
            "{}: {}",
            c.name,
            c.workload.reference()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Decide

const PIPELINE: &str = "5d1e0c9a-pipeline";

/// The intents of one sight, in revisions and outcomes.
#[derive(Default)]
struct Want {
    remembered: Option<(u64, Outcome)>,
    warm: bool,
    finished: Option<(u64, Outcome)>,
    report: bool,
    alert: Option<(Action, Option<AlertPriority>)>,
}

fn nothing() -> Want {
    Want::default()
}

fn warm() -> Want {
    Want {
        warm: true,
        ..Want::default()
    }
}

fn remembered(revision: u64, outcome: Outcome) -> Want {
    Want {
        remembered: Some((revision, outcome)),
        ..Want::default()
    }
}

fn reported(revision: u64, outcome: Outcome) -> Want {
    Want {
        finished: Some((revision, outcome)),
        report: true,
        ..Want::default()
    }
}

impl Want {
    fn alert(self, action: Action, priority: Option<AlertPriority>) -> Want {
        Want {
            alert: Some((action, priority)),
            ..self
        }
    }

    fn also_warm(self) -> Want {
        Want { warm: true, ..self }
    }

    /// The [`Owed`] these intents are, for workload `w`.
    fn owed(&self, w: &WorkloadView) -> Owed {
        let key = |(revision, outcome): (u64, Outcome)| RolloutKey {
            workload_uid: w.uid.clone(),
            revision,
            outcome,
        };
        Owed {
            remembered: self.remembered.map(key),
            warm: self.warm,
            finished: self.finished.map(|(revision, outcome)| {
                (
                    key((revision, outcome)),
                    Finished {
                        revision,
                        outcome,
                        // Deployments: the Progressing condition's stamp; the other kinds' status
                        // gives no finish time.
                        finished_at: w.progressing_updated,
                    },
                )
            }),
            report: self.report,
            alert: self.alert,
        }
    }
}

struct Step {
    name: &'static str,
    view: WorkloadView,
    want: Want,
}

fn step(name: &'static str, view: WorkloadView, want: Want) -> Step {
    Step { name, view, want }
}

struct Scenario {
    name: &'static str,
    pipeline_created: &'static str,
    alerts: Option<Option<AlertPriority>>,
    steps: Vec<Step>,
}

#[test]
fn decide() {
    use Outcome::{Completed, Failed};
    let stuck = |doc: Value| deployment(doc, None);
    let high = Some(AlertPriority::High);
    let scenarios = vec![
        Scenario {
            name: "Deployment created after the pipeline",
            pipeline_created: "2026-11-26T14:00:00Z",
            alerts: None,
            steps: vec![
                step(
                    "progressing: a key kept warm, nothing owed",
                    shop("deployment-progressing.json", "replicasets-rev1.json"),
                    warm(),
                ),
                step(
                    "complete: revision 1 reported",
                    shop("deployment-complete.json", "replicasets-rev1.json"),
                    reported(1, Completed),
                ),
                step(
                    "the same object again: no second report",
                    shop("deployment-complete.json", "replicasets-rev1.json"),
                    nothing(),
                ),
                step(
                    "scaled: the same revision, no new rollout",
                    shop("deployment-scaled.json", "replicasets-rev1.json"),
                    nothing(),
                ),
                step(
                    "new image: revision 2 reported",
                    shop("deployment-rev2-complete.json", "replicasets-rev2.json"),
                    reported(2, Completed),
                ),
                step(
                    "undo: revision 3 reported (RolledBack is the history's refinement)",
                    shop("deployment-rolledback.json", "replicasets-rolledback.json"),
                    reported(3, Completed),
                ),
                step(
                    "a stale sight of revision 2 (a lagging cache): already known",
                    shop("deployment-rev2-complete.json", "replicasets-rev2.json"),
                    nothing(),
                ),
                step(
                    "paused at revision 3: not warm, nothing owed",
                    shop("deployment-paused.json", "replicasets-rolledback.json"),
                    nothing(),
                ),
            ],
        },
        Scenario {
            name: "Deployment older than the pipeline, first seen complete",
            // After the workload's creation (14:31:23) and after its rollout finished (14:31:23).
            pipeline_created: "2026-11-26T15:00:00Z",
            alerts: None,
            steps: vec![
                step(
                    "first sight: the baseline, remembered, not reported",
                    shop("deployment-complete.json", "replicasets-rev1.json"),
                    remembered(1, Completed),
                ),
                step(
                    "again: nothing",
                    shop("deployment-complete.json", "replicasets-rev1.json"),
                    nothing(),
                ),
                step(
                    // Derived: stamped after the pipeline, as a rollout that follows it would be.
                    "revision 2 finishes: reported",
                    deployment(
                        stamped("deployment-rev2-complete.json", "2026-11-26T15:10:00Z"),
                        Some("replicasets-rev2.json"),
                    ),
                    reported(2, Completed),
                ),
            ],
        },
        Scenario {
            name: "Deployment older than the pipeline, its rollout ended while unwatched",
            pipeline_created: "2026-11-26T14:32:00Z",
            alerts: None,
            steps: vec![step(
                "first sight: finished after the pipeline was created, so reported",
                deployment(
                    stamped("deployment-complete.json", "2026-11-26T14:35:00Z"),
                    Some("replicasets-rev1.json"),
                ),
                reported(1, Completed),
            )],
        },
        Scenario {
            name: "Deployment older than the pipeline, first seen mid-rollout",
            pipeline_created: "2026-11-26T15:00:00Z",
            alerts: None,
            steps: vec![
                step(
                    "progressing: remembered at revision 0, warm",
                    shop("deployment-progressing.json", "replicasets-rev1.json"),
                    remembered(0, Completed).also_warm(),
                ),
                step(
                    "still progressing: warm, nothing new remembered",
                    shop("deployment-progressing.json", "replicasets-rev1.json"),
                    warm(),
                ),
                step(
                    // The captured stamp (14:31:23) predates the pipeline: only the remembered
                    // revision 0 makes this a rollout to report rather than the baseline.
                    "complete: reported, not taken for the baseline",
                    shop("deployment-complete.json", "replicasets-rev1.json"),
                    reported(1, Completed),
                ),
            ],
        },
        Scenario {
            name: "StatefulSet created after the pipeline",
            pipeline_created: "2026-11-27T04:00:00Z",
            alerts: None,
            steps: vec![
                step(
                    "complete: revision 1 (from its ControllerRevision) reported",
                    stateful_set(fixture("statefulset-complete.json")),
                    reported(1, Completed),
                ),
                step(
                    "scaled: the same ControllerRevision",
                    stateful_set(fixture("statefulset-scaled.json")),
                    nothing(),
                ),
                step(
                    "revision 2 complete: reported",
                    stateful_set(fixture("statefulset-rev2-complete.json")),
                    reported(2, Completed),
                ),
                step(
                    "again: nothing",
                    stateful_set(fixture("statefulset-rev2-complete.json")),
                    nothing(),
                ),
            ],
        },
        Scenario {
            name: "StatefulSet older than the pipeline",
            pipeline_created: "2026-11-27T05:00:00Z",
            alerts: None,
            steps: vec![
                step(
                    "first sight complete: the baseline (no finish time to say otherwise)",
                    stateful_set(fixture("statefulset-complete.json")),
                    remembered(1, Completed),
                ),
                step(
                    "revision 2 complete: reported",
                    stateful_set(fixture("statefulset-rev2-complete.json")),
                    reported(2, Completed),
                ),
            ],
        },
        Scenario {
            name: "StatefulSet older than the pipeline, first seen mid-rollout",
            pipeline_created: "2026-11-27T05:00:00Z",
            alerts: None,
            steps: vec![
                step(
                    // Derived: revision 2 with one of four replicas updated.
                    "rolling out: remembered at revision 0, warm",
                    stateful_set({
                        let mut d = fixture("statefulset-rev2-complete.json");
                        d["status"]["updatedReplicas"] = json!(1);
                        d
                    }),
                    remembered(0, Completed).also_warm(),
                ),
                step(
                    "complete: reported, although its status gives no finish time",
                    stateful_set(fixture("statefulset-rev2-complete.json")),
                    reported(2, Completed),
                ),
            ],
        },
        Scenario {
            name: "StatefulSet first seen at revision 2, then a stale sight of revision 1",
            pipeline_created: "2026-11-27T04:00:00Z",
            alerts: None,
            steps: vec![
                step(
                    "revision 2 complete: reported",
                    stateful_set(fixture("statefulset-rev2-complete.json")),
                    reported(2, Completed),
                ),
                step(
                    "revision 1 (a lagging cache): superseded, nothing",
                    stateful_set(fixture("statefulset-complete.json")),
                    nothing(),
                ),
            ],
        },
        Scenario {
            name: "DaemonSet created after the pipeline",
            pipeline_created: "2026-11-27T04:00:00Z",
            alerts: Some(None),
            steps: vec![
                step(
                    "complete: revision 1 reported; never failed, so no resolve",
                    daemon_set("daemonset-complete.json", 1),
                    reported(1, Completed),
                ),
                step(
                    "revision 2 complete: reported",
                    daemon_set("daemonset-rev2-complete.json", 2),
                    reported(2, Completed),
                ),
            ],
        },
        Scenario {
            name: "failed Deployment pages, the next revision resolves",
            pipeline_created: "2026-11-26T14:00:00Z",
            alerts: Some(high),
            steps: vec![
                step(
                    "deadline exceeded: reported Failed, an alert opened",
                    stuck(fixture("deployment-failed.json")),
                    reported(1, Failed).alert(Action::Alert, high),
                ),
                step(
                    "again: nothing",
                    stuck(fixture("deployment-failed.json")),
                    nothing(),
                ),
                step(
                    // Derived: revision 2 (a new ReplicaSet) rolled out in full.
                    "revision 2 complete: reported, the alert resolved",
                    stuck(stuck_recovered(
                        2,
                        "stuck-7f9c6b5d4",
                        "2026-11-26T14:40:00Z",
                    )),
                    reported(2, Completed).alert(Action::Resolve, high),
                ),
                step(
                    "again: nothing",
                    stuck(stuck_recovered(
                        2,
                        "stuck-7f9c6b5d4",
                        "2026-11-26T14:40:00Z",
                    )),
                    nothing(),
                ),
                step(
                    // Derived, as revision 2.
                    "revision 3 complete: reported, nothing left to resolve",
                    stuck(stuck_recovered(
                        3,
                        "stuck-6b8f9c7d5",
                        "2026-11-26T14:50:00Z",
                    )),
                    reported(3, Completed),
                ),
            ],
        },
        Scenario {
            name: "failed Deployment recovers within the same revision",
            pipeline_created: "2026-11-26T14:00:00Z",
            alerts: Some(None),
            steps: vec![
                step(
                    "deadline exceeded: reported Failed, an alert opened",
                    stuck(fixture("deployment-failed.json")),
                    reported(1, Failed).alert(Action::Alert, None),
                ),
                step(
                    // Derived: the same ReplicaSet became available after its deadline.
                    "revision 1 complete: one outcome per revision, but the alert resolves",
                    stuck(stuck_recovered(
                        1,
                        "stuck-56cd8db9bf",
                        "2026-11-26T14:40:00Z",
                    )),
                    Want {
                        finished: Some((1, Completed)),
                        ..nothing().alert(Action::Resolve, None)
                    },
                ),
            ],
        },
        Scenario {
            name: "Deployment that failed before the pipeline existed",
            pipeline_created: "2026-11-26T15:00:00Z",
            alerts: Some(None),
            steps: vec![
                step(
                    "first sight Failed: the baseline, and it pages no one",
                    stuck(fixture("deployment-failed.json")),
                    remembered(1, Failed),
                ),
                step(
                    // Derived: revision 2 rolled out in full after the pipeline existed.
                    "revision 2 complete: reported; no alert was opened, so none resolved",
                    stuck(stuck_recovered(
                        2,
                        "stuck-7f9c6b5d4",
                        "2026-11-26T15:10:00Z",
                    )),
                    reported(2, Completed),
                ),
            ],
        },
    ];

    for sc in scenarios {
        let p = Pipeline {
            uid: PIPELINE,
            created: ts(sc.pipeline_created),
            alerts: sc.alerts,
        };
        let alerts_ledger = alerts::ledger_id(PIPELINE);
        let mut book = Book::from_pages(Capacity::default(), []);
        let mut claimed = Vec::new();
        let mut paged = Vec::new();
        for s in sc.steps {
            let name = format!("{} / {}", sc.name, s.name);
            let w = &s.view;
            let entries = |book: &Book| {
                book.of_workload(PIPELINE, &w.uid).count()
                    + book.of_workload(&alerts_ledger, &w.uid).count()
            };
            let before = entries(&book);
            let want = s.want.owed(w);

            let (owed, writes) = decide::owe(&mut book, w, &p);
            assert_eq!(owed, want, "{name}");

            // What is remembered is recorded as the baseline, and only that is written.
            assert_eq!(
                writes.is_empty(),
                owed.remembered.is_none(),
                "{name}: writes {writes:?}"
            );
            if let Some(key) = &owed.remembered {
                let entry = book
                    .of_workload(PIPELINE, &w.uid)
                    .find(|(k, _)| *k == key)
                    .map(|(_, e)| e.clone());
                assert_eq!(
                    entry.map(|e| (e.state, e.workload)),
                    Some((State::Baseline, w.reference().into())),
                    "{name}: remembered"
                );
            }
            // What is owed is claimed pending in its ledger.
            if let Some((key, _)) = owed.finished.as_ref().filter(|_| owed.report) {
                claimed.push(key.clone());
                let entry = book
                    .pending(PIPELINE)
                    .into_iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, e)| e);
                assert_eq!(
                    entry.map(|e| (e.state, e.event().is_none(), e.workload)),
                    Some((State::Pending, true, w.reference().into())),
                    "{name}: claimed for the report"
                );
            }
            if let Some((key, _)) = owed.finished.as_ref().filter(|_| owed.alert.is_some()) {
                paged.push(key.clone());
                assert!(
                    book.pending(&alerts_ledger).iter().any(|(k, _)| k == key),
                    "{name}: claimed in the alerts ledger"
                );
            }
            let owes = owed.report || owed.alert.is_some() || owed.remembered.is_some();
            if !owes {
                assert_eq!(
                    entries(&book),
                    before,
                    "{name}: nothing owed, nothing booked"
                );
            }
            // Booked: the same sight again owes nothing more (however often a watch repeats it).
            let again = decide::owed(w, &p, &book);
            assert_eq!(
                (again.report, again.alert, again.remembered),
                (false, None, None),
                "{name}: seen again"
            );
            assert_eq!(again.warm, owed.warm, "{name}: seen again, warm");
        }
        let pending = |ledger: &str| -> Vec<RolloutKey> {
            book.pending(ledger).into_iter().map(|(k, _)| k).collect()
        };
        claimed.sort();
        paged.sort();
        assert_eq!(pending(PIPELINE), claimed, "{}: pending reports", sc.name);
        assert_eq!(
            pending(&alerts_ledger),
            paged,
            "{}: pending alerts",
            sc.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Status

fn problem(reason: Reason, message: &str) -> Option<Problem> {
    Some(Problem {
        reason,
        message: message.into(),
    })
}

const FROM: &str = "shop/ilert key integrationKey";

fn read() -> Stats {
    Stats {
        key_read_from: Some(FROM.into()),
        ..Stats::default()
    }
}

#[test]
fn readiness() {
    struct Case {
        name: &'static str,
        stats: Stats,
        channel: Channel,
        want: (bool, Reason, &'static str),
    }
    let cases = vec![
        Case {
            name: "a config problem wins over everything",
            stats: Stats {
                config_problem: problem(Reason::InvalidSelector, "spec.selector is invalid: x"),
                delivery_problem: problem(Reason::IlertUnavailable, "ilert answered 503"),
                suspended: true,
                unstored: 0,
                ..read()
            },
            channel: Channel::Deployments,
            want: (false, Reason::InvalidSelector, "spec.selector is invalid"),
        },
        Case {
            name: "suspended, before a delivery problem",
            stats: Stats {
                suspended: true,
                delivery_problem: problem(Reason::IlertUnavailable, "ilert answered 503"),
                ..read()
            },
            channel: Channel::Deployments,
            want: (false, Reason::Suspended, "spec.suspend is true"),
        },
        Case {
            name: "suspended, key not read",
            stats: Stats {
                suspended: true,
                ..Stats::default()
            },
            channel: Channel::Deployments,
            want: (false, Reason::Suspended, "sent once it is false"),
        },
        Case {
            name: "delivery problem",
            stats: Stats {
                delivery_problem: problem(
                    Reason::IntegrationKeyRejected,
                    "ilert rejected the integration key",
                ),
                accepted: true,
                ..read()
            },
            channel: Channel::Deployments,
            want: (
                false,
                Reason::IntegrationKeyRejected,
                "ilert rejected the integration key",
            ),
        },
        Case {
            name: "key not read",
            stats: Stats::default(),
            channel: Channel::Deployments,
            want: (
                false,
                Reason::KeyNotRead,
                "Integration key not read from its Secret yet",
            ),
        },
        Case {
            name: "read, nothing sent",
            stats: read(),
            channel: Channel::Deployments,
            want: (true, Reason::Ready, "no event sent yet"),
        },
        Case {
            name: "read, names the Secret",
            stats: read(),
            channel: Channel::Deployments,
            want: (
                true,
                Reason::Ready,
                "read from Secret shop/ilert key integrationKey",
            ),
        },
        Case {
            name: "accepted",
            stats: Stats {
                accepted: true,
                ..read()
            },
            channel: Channel::Deployments,
            want: (true, Reason::Ready, "ilert accepted the last event"),
        },
        Case {
            name: "unstored and otherwise ready: LedgerFull",
            stats: Stats {
                accepted: true,
                unstored: 3,
                ..read()
            },
            channel: Channel::Deployments,
            want: (
                false,
                Reason::LedgerFull,
                "3 pending events wait in memory only",
            ),
        },
        Case {
            name: "unstored and not ready: the first reason, both messages",
            stats: Stats {
                unstored: 2,
                delivery_problem: problem(Reason::IlertUnavailable, "ilert answered 503"),
                ..read()
            },
            channel: Channel::Deployments,
            want: (
                false,
                Reason::IlertUnavailable,
                "ilert answered 503; the delivery state is full: 2 pending events",
            ),
        },
        Case {
            name: "alerts channel: key not read",
            stats: Stats::default(),
            channel: Channel::Alerts,
            want: (false, Reason::KeyNotRead, "Alert source key not read"),
        },
        Case {
            name: "alerts channel: accepted",
            stats: Stats {
                accepted: true,
                ..read()
            },
            channel: Channel::Alerts,
            want: (true, Reason::Ready, "Alert source key read from Secret"),
        },
        Case {
            name: "alerts channel: the last alert",
            stats: Stats {
                accepted: true,
                ..read()
            },
            channel: Channel::Alerts,
            want: (true, Reason::Ready, "ilert accepted the last alert"),
        },
    ];
    for c in cases {
        let (ready, reason, message) = c.stats.ready_for(c.channel);
        let (want_ready, want_reason, want_message) = c.want;
        assert_eq!(
            (ready, reason),
            (want_ready, want_reason),
            "{}: {message}",
            c.name
        );
        assert!(
            message.contains(want_message),
            "{}: {message:?} should say {want_message:?}",
            c.name
        );
        if c.channel == Channel::Deployments {
            assert_eq!(
                c.stats.ready(),
                (ready, reason, message),
                "{}: ready() is ready_for(Deployments)",
                c.name
            );
        }
    }
}

#[test]
fn conditions() {
    let t1 = ts("2026-11-26T14:00:00Z");
    let t2 = ts("2026-11-26T14:05:00Z");
    let t3 = ts("2026-11-26T14:10:00Z");
    let t4 = ts("2026-11-26T14:15:00Z");
    let not_read = Stats::default().ready();
    let rejected = Stats {
        delivery_problem: problem(Reason::IntegrationKeyRejected, "rejected"),
        ..read()
    }
    .ready();
    let ready = read().ready();
    // (case, readiness, now, want status, want reason, want lastTransitionTime)
    let steps = [
        ("first: now", not_read, t1, "False", "KeyNotRead", t1),
        (
            "still False, another reason: kept",
            rejected,
            t2,
            "False",
            "IntegrationKeyRejected",
            t1,
        ),
        (
            "flips to True: the new now",
            ready.clone(),
            t3,
            "True",
            "Ready",
            t3,
        ),
        ("stays True: kept", ready, t4, "True", "Ready", t3),
    ];
    let mut since = None;
    for (name, readiness, now, status, reason, transition) in steps {
        let message = readiness.2.clone();
        let c = status::condition("Ready", readiness, &mut since, Some(7), now);
        assert_eq!(c.type_, "Ready", "{name}");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            (status, reason),
            "{name}"
        );
        assert_eq!(c.message, message, "{name}");
        assert_eq!(c.last_transition_time, Time(transition), "{name}");
        assert_eq!(c.observed_generation, Some(7), "{name}");
        assert_eq!(
            since.as_ref().map(|s| (s.0, s.3.clone())),
            Some((status == "True", Time(transition))),
            "{name}: remembered"
        );
    }
}

#[test]
fn status() {
    let now = ts("2026-11-26T14:00:00Z");
    struct Case {
        name: &'static str,
        events: Stats,
        alerts: Stats,
        queued: (usize, usize),
        /// (pending events, Some((sent, failed, pending)) of alerts)
        want_counts: (u64, Option<(u64, u64, u64)>),
        /// The (type, status, reason) of each condition.
        want_conditions: Vec<(&'static str, &'static str, &'static str)>,
    }
    let cases = vec![
        Case {
            name: "alerts disabled: no alert counters, one condition",
            events: Stats {
                generation: Some(3),
                selected: 4,
                sent: 9,
                failed: 1,
                pending: 2,
                ..read()
            },
            alerts: Stats {
                sent: 5,
                ..Stats::default()
            },
            queued: (0, 4),
            want_counts: (2, None),
            want_conditions: vec![("Ready", "True", "Ready")],
        },
        Case {
            name: "pending events: the counter when more than queued",
            events: Stats {
                pending: 5,
                ..read()
            },
            alerts: Stats::default(),
            queued: (3, 0),
            want_counts: (5, None),
            want_conditions: vec![("Ready", "True", "Ready")],
        },
        Case {
            name: "pending events: the queue when more than the counter",
            events: Stats {
                pending: 1,
                ..read()
            },
            alerts: Stats::default(),
            queued: (6, 0),
            want_counts: (6, None),
            want_conditions: vec![("Ready", "True", "Ready")],
        },
        Case {
            name: "alerts enabled: counters and AlertsReady",
            events: read(),
            alerts: Stats {
                enabled: true,
                sent: 2,
                failed: 1,
                pending: 1,
                ..Stats::default()
            },
            queued: (0, 3),
            want_counts: (0, Some((2, 1, 3))),
            want_conditions: vec![
                ("Ready", "True", "Ready"),
                ("AlertsReady", "False", "KeyNotRead"),
            ],
        },
        Case {
            name: "alerts enabled: the spec's problem stops alerts too",
            events: Stats {
                config_problem: problem(Reason::InvalidTemplate, "spec.template does not render"),
                ..read()
            },
            alerts: Stats {
                enabled: true,
                accepted: true,
                pending: 4,
                ..read()
            },
            queued: (0, 1),
            want_counts: (0, Some((0, 0, 4))),
            want_conditions: vec![
                ("Ready", "False", "InvalidTemplate"),
                ("AlertsReady", "False", "InvalidTemplate"),
            ],
        },
    ];
    for c in cases {
        let mut last = Conditions::default();
        let st = status::status(&c.events, &c.alerts, c.queued, &mut last, now);
        let name = c.name;
        assert_eq!(st.observed_generation, c.events.generation, "{name}");
        assert_eq!(
            (st.selected_workloads, st.events_sent, st.events_failed),
            (c.events.selected, c.events.sent, c.events.failed),
            "{name}"
        );
        assert_eq!(st.pending_events, c.want_counts.0, "{name}: pending events");
        let alerts = c.want_counts.1;
        assert_eq!(
            (st.alerts_sent, st.alerts_failed, st.pending_alerts),
            (
                alerts.map(|a| a.0),
                alerts.map(|a| a.1),
                alerts.map(|a| a.2)
            ),
            "{name}: alert counters"
        );
        let conditions: Vec<(&str, &str, &str)> = st
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(conditions, c.want_conditions, "{name}: conditions");
        if let Some(p) = &c.events.config_problem {
            for cond in &st.conditions {
                assert_eq!(cond.message, p.message, "{name}: {} carries it", cond.type_);
            }
        }
        assert!(last.ready.is_some(), "{name}: Ready remembered");
        assert_eq!(
            last.alerts_ready.is_some(),
            c.alerts.enabled,
            "{name}: AlertsReady remembered only with alerts"
        );
    }
}
