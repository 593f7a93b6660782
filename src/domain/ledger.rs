//! Delivery state: which rollouts each pipeline has reported or still owes, and where each entry
//! is stored. Pure: the book and the decisions over it; `shell::ledger_store` persists it in
//! ConfigMaps the controller owns in its own namespace (it never writes to workloads).
//!
//! One entry per (pipeline, workload UID, revision, outcome), keyed `<uid>.<revision>.<outcome>`
//! in ConfigMap `ilert-ledger-<pipeline uid>-<first hex digit of the workload uid>`: 16 shards per
//! pipeline keep each object small (about 80 KiB at 10,000 workloads). A pending entry carries its
//! event (without the key) so it is delivered even if the workload moves on or is deleted; a sent
//! entry shrinks to a few bytes, and only the newest per workload is kept.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::payload::{AlertEvent, DeploymentEvent};
use crate::domain::rollout::{Finished, Outcome};
use crate::domain::uid::Uid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Pending,
    Sent,
    /// ilert refused it for good; kept so it is not tried again.
    Failed,
    /// Seen, not reported: the first-sight baseline of a workload that has no finish time in its
    /// status (StatefulSet, DaemonSet), or, at revision 0, one first seen mid-rollout.
    Baseline,
}

/// One rollout outcome of one workload, as a pipeline's ledger holds it.
///
/// The book keeps one per workload even at rest (the newest sent entry, or the first-sight
/// baseline), so its size is paid ~10,000 times per pipeline at 10,000 workloads: what only a
/// pending entry or a test event carries sits behind one pointer ([`Carried`]), which keeps an
/// entry at 32 bytes (a B-tree node of the book in jemalloc's 896-byte class rather than 1,280).
/// Stored as it always was: the same fields, flat (`EntryWire`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "EntryWire")]
pub struct Entry {
    pub state: State,
    /// The outcome as reported (RolledBack refines Completed).
    pub reported_outcome: Option<Outcome>,
    /// `Kind/namespace/name`.
    pub workload: Box<str>,
    /// None when it carries nothing (never `Some` of an empty [`Carried`]).
    carried: Option<Box<Carried>>,
}

/// What an entry may carry besides its state.
#[derive(Clone, Debug, Default, PartialEq)]
struct Carried {
    /// The event to send, while pending.
    event: Option<Box<DeploymentEvent>>,
    /// Set for a test event: the annotation value it answers.
    test: Option<Box<str>>,
    /// In an alerts ledger: the alert or resolve to send, while pending.
    alert: Option<Box<AlertEvent>>,
    /// While pending, with `groupBy: Owner`: the change it belongs to (`domain::group`); its
    /// event goes out with the rest of that change.
    group: Option<Box<str>>,
}

impl Entry {
    /// An entry that carries nothing yet.
    pub fn new(state: State, workload: impl Into<Box<str>>) -> Self {
        Entry {
            state,
            reported_outcome: None,
            workload: workload.into(),
            carried: None,
        }
    }

    pub fn with_outcome(mut self, outcome: Option<Outcome>) -> Self {
        self.reported_outcome = outcome;
        self
    }

    pub fn with_event(self, event: Option<DeploymentEvent>) -> Self {
        self.carrying(event.map(Box::new), |c, v| c.event = v)
    }

    pub fn with_alert(self, alert: Option<AlertEvent>) -> Self {
        self.carrying(alert.map(Box::new), |c, v| c.alert = v)
    }

    pub fn with_test(self, value: Option<Box<str>>) -> Self {
        self.carrying(value, |c, v| c.test = v)
    }

    pub fn with_group(self, group: Option<Box<str>>) -> Self {
        self.carrying(group, |c, v| c.group = v)
    }

    pub fn event(&self) -> Option<&DeploymentEvent> {
        self.carried.as_ref()?.event.as_deref()
    }

    pub fn alert(&self) -> Option<&AlertEvent> {
        self.carried.as_ref()?.alert.as_deref()
    }

    /// The annotation value a test event answers (None: not a test event).
    pub fn test(&self) -> Option<&str> {
        self.carried.as_ref()?.test.as_deref()
    }

    pub fn group(&self) -> Option<&str> {
        self.carried.as_ref()?.group.as_deref()
    }

    /// The event, no longer carried.
    pub fn take_event(&mut self) -> Option<DeploymentEvent> {
        self.taking(|c| c.event.take()).map(|e| *e)
    }

    /// The alert, no longer carried.
    pub fn take_alert(&mut self) -> Option<AlertEvent> {
        self.taking(|c| c.alert.take()).map(|a| *a)
    }

    /// Sets one carried field to `value`; nothing is allocated to carry nothing (a ledger of
    /// 10,000 entries read at start sets four absent fields on each).
    fn carrying<T>(mut self, value: Option<T>, put: impl FnOnce(&mut Carried, Option<T>)) -> Self {
        if value.is_none() && self.carried.is_none() {
            return self;
        }
        let mut carried = self.carried.take().unwrap_or_default();
        put(&mut carried, value);
        self.carried = (!carried.is_empty()).then_some(carried);
        self
    }

    fn taking<T>(&mut self, take: impl FnOnce(&mut Carried) -> Option<T>) -> Option<T> {
        let carried = self.carried.as_deref_mut()?;
        let value = take(carried);
        if carried.is_empty() {
            self.carried = None;
        }
        value
    }
}

impl Carried {
    fn is_empty(&self) -> bool {
        self.event.is_none() && self.test.is_none() && self.alert.is_none() && self.group.is_none()
    }
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.carried.as_deref();
        EntryWireRef {
            state: self.state,
            workload: &self.workload,
            event: c.and_then(|c| c.event.as_deref()),
            reported_outcome: self.reported_outcome,
            test: c.and_then(|c| c.test.as_deref()),
            alert: c.and_then(|c| c.alert.as_deref()),
            group: c.and_then(|c| c.group.as_deref()),
        }
        .serialize(serializer)
    }
}

/// An [`Entry`] as stored, to write.
#[derive(Serialize)]
struct EntryWireRef<'a> {
    #[serde(rename = "s")]
    state: State,
    #[serde(rename = "w")]
    workload: &'a str,
    #[serde(rename = "e", skip_serializing_if = "Option::is_none")]
    event: Option<&'a DeploymentEvent>,
    #[serde(rename = "o", skip_serializing_if = "Option::is_none")]
    reported_outcome: Option<Outcome>,
    #[serde(rename = "t", skip_serializing_if = "Option::is_none")]
    test: Option<&'a str>,
    #[serde(rename = "a", skip_serializing_if = "Option::is_none")]
    alert: Option<&'a AlertEvent>,
    #[serde(rename = "g", skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
}

/// An [`Entry`] as stored, read.
#[derive(Deserialize)]
struct EntryWire {
    #[serde(rename = "s")]
    state: State,
    #[serde(rename = "w")]
    workload: Box<str>,
    #[serde(rename = "e", default)]
    event: Option<DeploymentEvent>,
    #[serde(rename = "o", default)]
    reported_outcome: Option<Outcome>,
    #[serde(rename = "t", default)]
    test: Option<Box<str>>,
    #[serde(rename = "a", default)]
    alert: Option<AlertEvent>,
    #[serde(rename = "g", default)]
    group: Option<Box<str>>,
}

impl From<EntryWire> for Entry {
    fn from(w: EntryWire) -> Self {
        Entry::new(w.state, w.workload)
            .with_outcome(w.reported_outcome)
            .with_event(w.event)
            .with_test(w.test)
            .with_alert(w.alert)
            .with_group(w.group)
    }
}

/// Identity of one rollout outcome of one workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RolloutKey {
    pub workload_uid: Uid,
    pub revision: u64,
    pub outcome: Outcome,
}

impl RolloutKey {
    pub fn new(workload_uid: &Uid, finished: &Finished) -> Self {
        RolloutKey {
            workload_uid: workload_uid.clone(),
            revision: finished.revision,
            outcome: finished.outcome,
        }
    }

    /// The key of the test event for an annotation value (any characters; hashed to fit a key).
    pub fn test_event(value: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        RolloutKey {
            workload_uid: Uid::from(format!("test-event-{:016x}", h.finish())),
            revision: 0,
            outcome: Outcome::Completed,
        }
    }

    pub fn data_key(&self) -> String {
        format!(
            "{}.{}.{}",
            self.workload_uid,
            self.revision,
            self.outcome.as_str()
        )
    }

    pub fn parse(key: &str) -> Option<Self> {
        let mut parts = key.rsplitn(3, '.');
        let outcome = Outcome::parse(parts.next()?)?;
        let revision = parts.next()?.parse().ok()?;
        Some(RolloutKey {
            workload_uid: Uid::new(parts.next()?),
            revision,
            outcome,
        })
    }

    pub fn shard(&self) -> char {
        self.workload_uid
            .first_char()
            .filter(char::is_ascii_hexdigit)
            .unwrap_or('0')
            .to_ascii_lowercase()
    }
}

/// Whether a finished rollout is to be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Report,
    /// Already pending, sent or failed.
    Known,
    /// A newer revision of the workload is already known.
    Superseded,
    /// Finished before the pipeline existed: the first-sight baseline.
    Baseline,
}

/// When a rollout finished, and when its workload and the pipeline were created (API server
/// timestamps, whole seconds).
#[derive(Clone, Copy, Debug)]
pub struct Times {
    /// The finish time the workload's status gives (a Deployment's Progressing condition); None
    /// where the status gives none (StatefulSet, DaemonSet).
    pub finished: Option<Timestamp>,
    pub workload_created: Option<Timestamp>,
    pub pipeline_created: Timestamp,
}

/// The key under which a workload first seen mid-rollout is remembered (revision 0 is never a
/// real revision): its next finished rollout is reported, not taken for the baseline.
pub fn seen_mid_rollout(workload_uid: &Uid) -> RolloutKey {
    RolloutKey {
        workload_uid: workload_uid.clone(),
        revision: 0,
        outcome: Outcome::Completed,
    }
}

/// Pure: what to do with `key` given what the pipeline already knows of that workload.
/// One rollout, one outcome: a revision with any entry is known, whatever its outcome.
/// First sight (no entry yet): a workload created since the pipeline is always reported
/// (timestamps have whole seconds: in doubt, report rather than lose); an older one whose rollout
/// is finished when first seen is the baseline, unless its status says it finished after the
/// pipeline was created (a rollout that ended while the controller was down).
pub fn decide<'a>(
    known: impl IntoIterator<Item = &'a RolloutKey>,
    key: &RolloutKey,
    times: Times,
) -> Decision {
    let mut any = false;
    for k in known
        .into_iter()
        .filter(|k| k.workload_uid == key.workload_uid)
    {
        any = true;
        if k.revision == key.revision {
            return Decision::Known;
        }
        if k.revision > key.revision {
            return Decision::Superseded;
        }
    }
    let older_workload = times
        .workload_created
        .is_some_and(|c| c < times.pipeline_created);
    let finished_since = times.finished.is_some_and(|f| f > times.pipeline_created);
    if !any && older_workload && !finished_since {
        Decision::Baseline
    } else {
        Decision::Report
    }
}

/// One sight of a workload's current state, as a pipeline sees it.
#[derive(Clone, Copy, Debug)]
pub struct Sight<'a> {
    pub workload_uid: &'a Uid,
    /// The finished rollout the object shows; None while it rolls out (or is held).
    pub finished: Option<Finished>,
    pub workload_created: Option<Timestamp>,
    pub pipeline_created: Timestamp,
}

/// What a pipeline does with one sight of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Report this rollout: claim it pending.
    Report(RolloutKey),
    /// Record this key as seen but not reported: the first sight of a workload older than the
    /// pipeline, finished (the baseline) or (revision 0) mid-rollout. Later sights, after a
    /// restart as well, are decided against this record, never against write times.
    Remember(RolloutKey),
    /// Known, superseded, or still rolling out.
    Nothing,
}

/// Pure: the verdict for one sight, given the keys the pipeline's ledger holds for the workload.
pub fn judge<'a>(known: impl IntoIterator<Item = &'a RolloutKey>, sight: &Sight) -> Verdict {
    let known: Vec<&RolloutKey> = known
        .into_iter()
        .filter(|k| k.workload_uid == *sight.workload_uid)
        .collect();
    let older_workload = sight
        .workload_created
        .is_some_and(|c| c < sight.pipeline_created);
    let Some(finished) = sight.finished else {
        return if older_workload && known.is_empty() {
            Verdict::Remember(seen_mid_rollout(sight.workload_uid))
        } else {
            Verdict::Nothing
        };
    };
    let key = RolloutKey::new(sight.workload_uid, &finished);
    let times = Times {
        finished: finished.finished_at,
        workload_created: sight.workload_created,
        pipeline_created: sight.pipeline_created,
    };
    match decide(known, &key, times) {
        Decision::Report => Verdict::Report(key),
        Decision::Baseline => Verdict::Remember(key),
        Decision::Known | Decision::Superseded => Verdict::Nothing,
    }
}

#[cfg(test)]
mod tests;
