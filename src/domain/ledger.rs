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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "s")]
    pub state: State,
    /// `Kind/namespace/name`.
    #[serde(rename = "w")]
    pub workload: Box<str>,
    /// The event to send, while pending.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<DeploymentEvent>>,
    /// The outcome as reported (RolledBack refines Completed).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub reported_outcome: Option<Outcome>,
    /// Set for a test event: the annotation value it answers.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Box<str>>,
    /// In an alerts ledger: the alert or resolve to send, while pending.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Box<AlertEvent>>,
    /// While pending, with `groupBy: Owner`: the change it belongs to (`domain::group`); its
    /// event goes out with the rest of that change.
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Box<str>>,
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
