//! A property test of the pure decision core: random interleavings of what the workload
//! controllers do (new templates, re-used templates, progress deadlines carried over between
//! revisions, completions, a ReplicaSet cache that lags), what the controller sees and when
//! (watch events, restarts and leader changes that reload the ledger, downtime), a pipeline that
//! appears at some point, and ilert accepting or failing requests. Views start from objects
//! captured from the real control plane (tests/fixtures) and go through the real `finished()` and
//! `ledger::judge`.
//!
//! Asserts: at most one accepted event per (workload, revision), and one outcome per revision;
//! no Failed event for a revision whose own rollout never timed out; every revision that finished
//! after its pipeline existed and was seen finished is reported (for kinds without a finish time
//! in their status: every one seen finished except the first sight's baseline).
//!
//! `PROPTEST_CASES` sets the number of cases (256 by default in `make test`).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use proptest::prelude::*;

use ilert_rollout_controller::domain::history::{ReplicaSetView, resolve_replica_set};
use ilert_rollout_controller::domain::keys::REVISION_ANNOTATION;
use ilert_rollout_controller::domain::ledger::{RolloutKey, Sight, Verdict, judge};
use ilert_rollout_controller::domain::rollout::{Kind, Outcome, WorkloadView};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    /// A new pod template: a new ReplicaSet (or ControllerRevision) at the next revision.
    NewTemplate,
    /// An earlier template again (`kubectl rollout undo`, a Git revert): its ReplicaSet is
    /// re-used at the next revision; the Progressing condition is carried over.
    Revert(usize),
    /// The workload controller has seen the spec (observedGeneration current).
    Observe,
    Complete,
    /// The current rollout exceeds its progress deadline (Deployments).
    Deadline,
    /// The controller sees the current state; `true`: its ReplicaSet cache lags behind.
    Look(bool),
    /// One delivery attempt of the oldest pending event; `true`: ilert accepts it.
    Send(bool),
    /// A restart or a new leader: the state comes from the ledger, then a re-list.
    Restart,
    Down,
    Up,
    CreatePipeline,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::NewTemplate),
        1 => any::<usize>().prop_map(Op::Revert),
        3 => Just(Op::Observe),
        3 => Just(Op::Complete),
        2 => Just(Op::Deadline),
        5 => any::<bool>().prop_map(Op::Look),
        3 => any::<bool>().prop_map(Op::Send),
        1 => Just(Op::Restart),
        1 => Just(Op::Down),
        1 => Just(Op::Up),
        1 => Just(Op::CreatePipeline),
    ]
}

/// The workload as its controller keeps it, in the model's terms.
struct Cluster {
    kind: Kind,
    base: WorkloadView,
    now: i64,
    /// Per template: (name of its ReplicaSet, the revision it serves now).
    sets: Vec<(String, u64)>,
    current: usize,
    revision: u64,
    generation: i64,
    observed: bool,
    complete: bool,
    /// The Progressing condition: reason, the ReplicaSet it names, when it was written.
    condition: (&'static str, usize, i64),
    template_changed_at: i64,
    /// Revisions whose own rollout exceeded its deadline.
    timed_out: BTreeSet<u64>,
    /// When each revision first finished.
    finished_at: BTreeMap<u64, i64>,
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_790_000_000 + seconds).unwrap()
}

impl Cluster {
    fn new(kind: Kind) -> Self {
        let base = match kind {
            Kind::Deployment => {
                WorkloadView::from_deployment(&fixture::<Deployment>("deployment-complete.json"))
            }
            _ => WorkloadView::from_stateful_set(&fixture::<StatefulSet>(
                "statefulset-complete.json",
            )),
        };
        let mut c = Cluster {
            kind,
            base,
            now: 0,
            sets: vec![("web-0".into(), 1)],
            current: 0,
            revision: 1,
            generation: 1,
            observed: true,
            complete: true,
            condition: ("NewReplicaSetAvailable", 0, 0),
            template_changed_at: 0,
            timed_out: BTreeSet::new(),
            finished_at: BTreeMap::new(),
        };
        c.finished_at.insert(1, 0);
        c
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::NewTemplate => {
                self.sets
                    .push((format!("web-{}", self.sets.len()), self.revision + 1));
                self.start(self.sets.len() - 1);
            }
            Op::Revert(i) if self.sets.len() > 1 => {
                let mut j = i % self.sets.len();
                if j == self.current {
                    j = (j + 1) % self.sets.len();
                }
                self.sets[j].1 = self.revision + 1;
                self.start(j);
            }
            Op::Observe => self.observed = true,
            Op::Complete if self.observed => {
                self.complete = true;
                self.condition = ("NewReplicaSetAvailable", self.current, self.now);
                self.finished_at.entry(self.revision).or_insert(self.now);
            }
            Op::Deadline
                if self.kind == Kind::Deployment
                    && self.observed
                    && !self.complete
                    && self.condition.0 != "ProgressDeadlineExceeded" =>
            {
                self.condition = ("ProgressDeadlineExceeded", self.current, self.now);
                self.timed_out.insert(self.revision);
                self.finished_at.entry(self.revision).or_insert(self.now);
            }
            _ => {}
        }
    }

    fn start(&mut self, set: usize) {
        // Re-using the ReplicaSet that timed out: the Deployment controller keeps the condition
        // (its reason and ReplicaSet are unchanged), and so the new revision has timed out too.
        if self.condition.0 == "ProgressDeadlineExceeded" && self.condition.1 == set {
            self.timed_out.insert(self.revision + 1);
            self.finished_at
                .entry(self.revision + 1)
                .or_insert(self.condition.2);
        }
        self.revision += 1;
        self.generation += 1;
        self.current = set;
        self.observed = false;
        self.complete = false;
        self.template_changed_at = self.now;
    }

    /// The compact view the controller would build from the object now.
    fn view(&self, cache_lags: bool) -> WorkloadView {
        let mut w = self.base.clone();
        let spec = w.spec_replicas;
        w.generation = self.generation;
        w.observed_generation = if self.observed {
            self.generation
        } else {
            self.generation - 1
        };
        (
            w.replicas,
            w.updated_replicas,
            w.available_replicas,
            w.ready_replicas,
        ) = if self.complete {
            (spec, spec, spec, spec)
        } else {
            (spec + 1, 1, spec, spec)
        };
        w.template_changed_at = Some(ts(self.template_changed_at));
        w.created_at = Some(ts(0));
        match self.kind {
            Kind::Deployment => {
                w.annotations = w
                    .annotations
                    .iter()
                    .map(|(k, v)| {
                        let v = if k == REVISION_ANNOTATION {
                            self.revision.to_string()
                        } else {
                            v.to_string()
                        };
                        (k.to_string(), v)
                    })
                    .collect();
                let (reason, named, at) = self.condition;
                w.progressing_reason = Some(reason.into());
                w.progressing_replica_set = Some(self.sets[named].0.as_str().into());
                w.progressing_updated = Some(ts(at));
                let sets: Vec<ReplicaSetView> = self
                    .sets
                    .iter()
                    .map(|(name, revision)| ReplicaSetView {
                        name: name.as_str().into(),
                        owner: Some(w.uid.clone()),
                        revision: Some(*revision),
                        ..Default::default()
                    })
                    .collect();
                w.current_replica_set = if cache_lags {
                    None
                } else {
                    resolve_replica_set(&w, &sets).map(|rs| rs.name.clone())
                };
            }
            _ => {
                w.controller_revision = Some(self.revision);
                w.partition = Some(0);
            }
        }
        w
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stored {
    Pending,
    Sent,
    Seen,
}

/// The controller, its ledger (claims are persisted with the claim) and what ilert accepted.
struct Controller {
    up: bool,
    pipeline_created: Option<i64>,
    ledger: BTreeMap<RolloutKey, Stored>,
    accepted: Vec<RolloutKey>,
    /// Revisions seen finished while serving the pipeline.
    seen_finished: BTreeSet<u64>,
    /// The first sight: the revision and whether it was finished.
    first_sight: Option<(u64, bool)>,
}

impl Controller {
    fn look(&mut self, cluster: &Cluster, cache_lags: bool) {
        let (true, Some(created)) = (self.up, self.pipeline_created) else {
            return;
        };
        let w = cluster.view(cache_lags);
        let finished = w.finished();
        if self.first_sight.is_none() {
            self.first_sight = Some((cluster.revision, finished.is_some()));
        }
        if let Some(f) = finished {
            self.seen_finished.insert(f.revision);
        }
        let sight = Sight {
            workload_uid: &w.uid,
            finished,
            workload_created: w.created_at,
            pipeline_created: ts(created),
        };
        match judge(self.ledger.keys(), &sight) {
            Verdict::Report(k) => {
                self.ledger.insert(k, Stored::Pending);
            }
            Verdict::Remember(k) => {
                self.ledger.insert(k, Stored::Seen);
            }
            Verdict::Nothing => {}
        }
    }

    fn send(&mut self, accept: bool) {
        if !self.up || !accept {
            return;
        }
        let Some(key) = self
            .ledger
            .iter()
            .find(|(_, s)| **s == Stored::Pending)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        self.accepted.push(key.clone());
        // As `Ledger::record` does: a delivered entry drops older delivered or seen ones.
        self.ledger
            .retain(|k, s| k.revision >= key.revision || *s == Stored::Pending);
        self.ledger.insert(key, Stored::Sent);
    }
}

fn run(kind: Kind, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut cluster = Cluster::new(kind);
    let mut c = Controller {
        up: true,
        pipeline_created: None,
        ledger: BTreeMap::new(),
        accepted: Vec::new(),
        seen_finished: BTreeSet::new(),
        first_sight: None,
    };
    for op in ops {
        cluster.now += 1;
        match op {
            Op::Look(lags) => c.look(&cluster, *lags),
            Op::Send(accept) => c.send(*accept),
            // The ledger is what survives; a re-list looks at everything again.
            Op::Restart => c.look(&cluster, false),
            Op::Down => c.up = false,
            Op::Up => {
                c.up = true;
                c.look(&cluster, false);
            }
            Op::CreatePipeline if c.pipeline_created.is_none() => {
                c.pipeline_created = Some(cluster.now);
                c.look(&cluster, false);
            }
            other => cluster.apply(other),
        }
    }
    if c.pipeline_created.is_none() {
        return Ok(());
    }
    // In the end the controller is up and ilert accepts everything that waits.
    c.up = true;
    c.look(&cluster, false);
    for _ in 0..c.ledger.len() {
        c.send(true);
    }

    let mut revisions = BTreeSet::new();
    for k in &c.accepted {
        prop_assert!(
            revisions.insert(k.revision),
            "revision {} accepted twice: {:?}",
            k.revision,
            c.accepted
        );
        if k.outcome == Outcome::Failed {
            prop_assert!(
                cluster.timed_out.contains(&k.revision),
                "revision {} reported Failed, but only an earlier revision timed out: {:?}",
                k.revision,
                c.accepted
            );
        }
    }
    let mut per_revision = BTreeSet::new();
    for k in c.ledger.keys().filter(|k| k.revision > 0) {
        prop_assert!(
            per_revision.insert(k.revision),
            "two outcomes for revision {}: {:?}",
            k.revision,
            c.ledger
        );
    }
    let created = c.pipeline_created.unwrap_or(0);
    for revision in &c.seen_finished {
        // The baseline: finished at first sight and, where the status gives a finish time,
        // finished before the pipeline existed.
        let stamped_after = kind == Kind::Deployment
            && cluster
                .finished_at
                .get(revision)
                .is_some_and(|f| *f > created);
        let baseline = c.first_sight == Some((*revision, true)) && !stamped_after;
        if !baseline {
            prop_assert!(
                revisions.contains(revision),
                "revision {revision} finished after the pipeline existed and was seen, but never reported: accepted {:?}, first sight {:?}",
                c.accepted,
                c.first_sight
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn deployments_one_event_per_revision_none_lost(ops in prop::collection::vec(op(), 1..60)) {
        run(Kind::Deployment, &ops)?;
    }

    #[test]
    fn stateful_sets_one_event_per_revision_none_lost(ops in prop::collection::vec(op(), 1..60)) {
        run(Kind::StatefulSet, &ops)?;
    }
}
