//! Delivery state: which rollouts each pipeline has reported or still owes, and where each entry
//! is stored. Pure: the book and the decisions over it; `shell::ledger_store` persists it in
//! ConfigMaps the controller owns in its own namespace (it never writes to workloads).
//!
//! One entry per (pipeline, workload UID, revision, outcome), keyed `<uid>.<revision>.<outcome>`
//! in ConfigMap `ilert-ledger-<pipeline uid>-<first hex digit of the workload uid>`: 16 shards per
//! pipeline keep each object small (about 80 KiB at 10,000 workloads). A pending entry carries its
//! event (without the key) so it is delivered even if the workload moves on or is deleted; a sent
//! entry shrinks to a few bytes, and only the newest per workload is kept.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::payload::{AlertEvent, DeploymentEvent};
use crate::domain::rollout::{Finished, Outcome};

pub const NAME_PREFIX: &str = "ilert-ledger-";

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
    pub workload: String,
    /// The event to send, while pending.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub event: Option<DeploymentEvent>,
    /// The outcome as reported (RolledBack refines Completed).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub reported_outcome: Option<Outcome>,
    /// Set for a test event: the annotation value it answers.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// In an alerts ledger: the alert or resolve to send, while pending.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertEvent>,
}

/// Identity of one rollout outcome of one workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RolloutKey {
    pub workload_uid: String,
    pub revision: u64,
    pub outcome: Outcome,
}

impl RolloutKey {
    pub fn new(workload_uid: &str, finished: &Finished) -> Self {
        RolloutKey {
            workload_uid: workload_uid.to_string(),
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
            workload_uid: format!("test-event-{:016x}", h.finish()),
            revision: 0,
            outcome: Outcome::Completed,
        }
    }

    fn data_key(&self) -> String {
        format!(
            "{}.{}.{}",
            self.workload_uid,
            self.revision,
            self.outcome.as_str()
        )
    }

    fn parse(key: &str) -> Option<Self> {
        let mut parts = key.rsplitn(3, '.');
        let outcome = match parts.next()? {
            "Completed" => Outcome::Completed,
            "Failed" => Outcome::Failed,
            "RolledBack" => Outcome::RolledBack,
            _ => return None,
        };
        let revision = parts.next()?.parse().ok()?;
        Some(RolloutKey {
            workload_uid: parts.next()?.to_string(),
            revision,
            outcome,
        })
    }

    fn shard(&self) -> char {
        self.workload_uid
            .chars()
            .next()
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
pub fn seen_mid_rollout(workload_uid: &str) -> RolloutKey {
    RolloutKey {
        workload_uid: workload_uid.to_string(),
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
    pub workload_uid: &'a str,
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
        .filter(|k| k.workload_uid == sight.workload_uid)
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

/// How much one ledger may hold: a ConfigMap is limited to 1 MiB, and a pending entry carries its
/// event (up to 32 KiB shaped), so each shard spills into further pages before that limit.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Bytes of data one ConfigMap holds at most.
    pub page_bytes: usize,
    /// Pages per shard (16 shards per ledger).
    pub pages: u8,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            page_bytes: 768 * 1024,
            pages: 4,
        }
    }
}

/// Pure: the page for an entry of `size` bytes, given the bytes on each page of its shard and
/// where it is now (page, size). It stays where it is while it fits, else takes the first page
/// with room; None: every page is full.
pub fn place(
    pages: &[usize],
    current: Option<(u8, usize)>,
    size: usize,
    limit: usize,
) -> Option<u8> {
    if let Some((page, old)) = current
        && pages
            .get(usize::from(page))
            .is_some_and(|b| b.saturating_sub(old) + size <= limit)
    {
        return Some(page);
    }
    pages
        .iter()
        .position(|b| b + size <= limit)
        .and_then(|p| u8::try_from(p).ok())
}

/// The bytes an entry takes in its ConfigMap.
fn stored_size(key: &RolloutKey, value: &str) -> usize {
    key.data_key().len() + value.len() + 8
}

/// Where each ledger's entries are stored and how full each page is.
#[derive(Default)]
struct Occupancy {
    bytes: HashMap<(String, Place), usize>,
    /// Entries stored on a page other than 0.
    spilled: HashMap<(String, RolloutKey), u8>,
    /// Pending entries no page had room for: they wait in memory only until there is.
    unstored: HashMap<String, BTreeMap<RolloutKey, ()>>,
}

impl Occupancy {
    fn page_of(&self, ledger: &str, key: &RolloutKey) -> u8 {
        self.spilled
            .get(&(ledger.to_string(), key.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// Takes a stored entry off its page; returns the place it had.
    fn remove(&mut self, ledger: &str, key: &RolloutKey, entry: &Entry) -> Place {
        let page = self
            .spilled
            .remove(&(ledger.to_string(), key.clone()))
            .unwrap_or(0);
        let place = (key.shard(), page);
        let size = stored_size(key, &serde_json::to_string(entry).unwrap_or_default());
        if let Some(b) = self.bytes.get_mut(&(ledger.to_string(), place)) {
            *b = b.saturating_sub(size);
        }
        place
    }

    fn add(&mut self, ledger: &str, key: &RolloutKey, page: u8, size: usize) {
        *self
            .bytes
            .entry((ledger.to_string(), (key.shard(), page)))
            .or_default() += size;
        if page > 0 {
            self.spilled.insert((ledger.to_string(), key.clone()), page);
        }
    }

    fn pages(&self, ledger: &str, shard: char, n: u8) -> Vec<usize> {
        (0..n)
            .map(|p| {
                self.bytes
                    .get(&(ledger.to_string(), (shard, p)))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn forget(&mut self, ledger: &str) {
        self.bytes.retain(|(l, _), _| l != ledger);
        self.spilled.retain(|(l, _), _| l != ledger);
        self.unstored.remove(ledger);
    }
}

/// The ConfigMap name of a place of a ledger.
pub fn configmap_name(ledger: &str, (shard, page): Place) -> String {
    if page == 0 {
        format!("{NAME_PREFIX}{ledger}-{shard}")
    } else {
        format!("{NAME_PREFIX}{ledger}-{shard}-p{page}")
    }
}

/// The page a ConfigMap name stands for.
pub fn page_of_name(name: &str) -> u8 {
    name.rsplit_once("-p")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// Pure: the part of a write a deposed leader may still make. What ilert answered (sent, refused
/// for good) and what was seen is a fact, whoever records it; a pending claim is the new leader's
/// to make, and a late one must never land over its state.
pub fn deposed_share(data: &Data) -> Data {
    data.iter()
        .filter(|(_, v)| !is_pending(v) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether a ConfigMap value holds a pending entry.
pub fn is_pending(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .and_then(|s| serde_json::from_str::<Entry>(s).ok())
        .is_some_and(|e| e.state == State::Pending)
}

/// The bytes of one ledger ConfigMap's data: data key -> entry JSON (null: delete the key).
pub type Data = serde_json::Map<String, serde_json::Value>;

/// A ConfigMap of a ledger: its shard (a hex digit) and page (0, then spill pages 1..).
pub type Place = (char, u8);

/// What one change of the book must write, per ConfigMap of its ledger.
pub type Writes = BTreeMap<Place, Data>;

/// One ledger ConfigMap as read: its name, the ledger it belongs to, its data.
pub struct StoredPage<'a> {
    pub name: &'a str,
    pub ledger: &'a str,
    pub data: &'a BTreeMap<String, String>,
}

/// The in-memory book of every ledger: its entries and where each is stored. Every change
/// returns the ConfigMap writes it needs; the shell carries them out (`shell::ledger_store`).
pub struct Book {
    entries: HashMap<String, BTreeMap<RolloutKey, Entry>>,
    occupancy: Occupancy,
    capacity: Capacity,
}

impl Book {
    /// The book of what the ConfigMaps hold.
    pub fn from_pages<'a>(
        capacity: Capacity,
        pages: impl IntoIterator<Item = StoredPage<'a>>,
    ) -> Self {
        let mut entries: HashMap<String, BTreeMap<RolloutKey, Entry>> = HashMap::new();
        let mut occupancy = Occupancy::default();
        for page in pages {
            let n = page_of_name(page.name);
            let map = entries.entry(page.ledger.to_string()).or_default();
            for (k, v) in page.data {
                if let (Some(key), Ok(entry)) =
                    (RolloutKey::parse(k), serde_json::from_str::<Entry>(v))
                {
                    occupancy.add(page.ledger, &key, n, stored_size(&key, v));
                    map.insert(key, entry);
                }
            }
        }
        Book {
            entries,
            occupancy,
            capacity,
        }
    }

    /// How many pending entries of a ledger wait in memory only: its pages are full.
    pub fn unstored(&self, ledger: &str) -> usize {
        self.occupancy.unstored.get(ledger).map_or(0, BTreeMap::len)
    }

    /// Bytes a ledger holds in its ConfigMaps.
    pub fn stored_bytes(&self, ledger: &str) -> usize {
        "0123456789abcdef"
            .chars()
            .flat_map(|shard| self.occupancy.pages(ledger, shard, self.capacity.pages))
            .sum()
    }

    /// What a ledger may hold at most.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity.page_bytes * 16 * usize::from(self.capacity.pages)
    }

    /// Takes over what `stored` (the ConfigMaps read again) says ilert answered for entries
    /// still pending here: a previous leader's requests that were on the wire when it lost the
    /// lease. Returns the keys per ledger, to drop from the queues.
    pub fn take_answered(&mut self, stored: Book) -> HashMap<String, Vec<RolloutKey>> {
        let mut done: HashMap<String, Vec<RolloutKey>> = HashMap::new();
        for (pipeline, entries) in stored.entries {
            let Some(mine) = self.entries.get_mut(&pipeline) else {
                continue;
            };
            for (key, entry) in entries {
                if matches!(entry.state, State::Sent | State::Failed)
                    && mine.get(&key).is_some_and(|e| e.state == State::Pending)
                {
                    mine.insert(key.clone(), entry);
                    done.entry(pipeline.clone()).or_default().push(key);
                }
            }
        }
        done
    }

    /// Ledgers the book holds state for.
    pub fn pipelines(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The pending entries of a ledger (to resume delivery after a restart).
    pub fn pending(&self, pipeline: &str) -> Vec<(RolloutKey, Entry)> {
        self.entries
            .get(pipeline)
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| e.state == State::Pending)
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn decide(&self, pipeline: &str, key: &RolloutKey, times: Times) -> Decision {
        decide(
            self.of_workload(pipeline, &key.workload_uid)
                .map(|(k, _)| k),
            key,
            times,
        )
    }

    /// Every entry a ledger holds for one workload, oldest revision first.
    pub fn of_workload<'a>(
        &'a self,
        pipeline: &str,
        workload_uid: &'a str,
    ) -> impl Iterator<Item = (&'a RolloutKey, &'a Entry)> + 'a {
        let from = RolloutKey {
            workload_uid: workload_uid.to_string(),
            revision: 0,
            outcome: Outcome::Completed,
        };
        self.entries
            .get(pipeline)
            .into_iter()
            .flat_map(move |m| m.range(from.clone()..))
            .take_while(move |(k, _)| k.workload_uid == workload_uid)
    }

    /// The workloads a ledger holds entries for.
    pub fn workloads_of(&self, pipeline: &str) -> Vec<String> {
        let mut uids: Vec<String> = self
            .entries
            .get(pipeline)
            .into_iter()
            .flat_map(|m| m.keys().map(|k| k.workload_uid.clone()))
            .collect();
        uids.dedup();
        uids
    }

    pub fn contains(&self, pipeline: &str, key: &RolloutKey) -> bool {
        self.entries
            .get(pipeline)
            .is_some_and(|m| m.contains_key(key))
    }

    /// Claims `key` in memory (so it is not enqueued twice); persisted by [`Book::record`].
    pub fn claim(&mut self, pipeline: &str, key: RolloutKey, entry: Entry) {
        self.entries
            .entry(pipeline.to_string())
            .or_default()
            .insert(key, entry);
    }

    /// Forgets an in-memory claim that never got persisted (the event could not be built).
    pub fn release(&mut self, pipeline: &str, key: &RolloutKey) {
        if let Some(m) = self.entries.get_mut(pipeline) {
            m.remove(key);
        }
    }

    /// Records `entries` (all of one ledger); for sent ones, drops older entries of the same
    /// workload. A pending entry no page has room for waits in memory only ([`Book::unstored`])
    /// and is stored once there is.
    pub fn record(&mut self, pipeline: &str, entries: &[(RolloutKey, Entry)]) -> Writes {
        let mut writes = Writes::new();
        let capacity = self.capacity;
        let occ = &mut self.occupancy;
        let map = self.entries.entry(pipeline.to_string()).or_default();
        for (key, entry) in entries {
            // Only a delivered entry stands for the workload's history: one ilert refused
            // (Failed) must not drop the record of an alert that is still open.
            if entry.state == State::Sent {
                let older: Vec<RolloutKey> = map
                    .keys()
                    .filter(|k| k.workload_uid == key.workload_uid && k.revision < key.revision)
                    .filter(|k| map.get(*k).is_some_and(|e| e.state != State::Pending))
                    .cloned()
                    .collect();
                for k in older {
                    if let Some(old) = map.remove(&k) {
                        let at = occ.remove(pipeline, &k, &old);
                        writes
                            .entry(at)
                            .or_default()
                            .insert(k.data_key(), serde_json::Value::Null);
                    }
                }
            }
            store(capacity, occ, &mut writes, pipeline, map, key, entry);
            map.insert(key.clone(), entry.clone());
        }
        // Room made (a delivered entry replaces a pending one and drops older ones): what
        // waited in memory only is stored now, shard by shard until one is full again.
        let freed = entries.iter().any(|(_, e)| e.state != State::Pending);
        let waiting: Vec<RolloutKey> = occ
            .unstored
            .get(pipeline)
            .filter(|_| freed)
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default();
        let mut full: Vec<char> = Vec::new();
        for key in &waiting {
            if full.contains(&key.shard()) {
                continue;
            }
            match map.get(key).cloned() {
                Some(entry) if entry.state == State::Pending => {
                    store(capacity, occ, &mut writes, pipeline, map, key, &entry);
                    if occ
                        .unstored
                        .get(pipeline)
                        .is_some_and(|u| u.contains_key(key))
                    {
                        full.push(key.shard());
                    }
                }
                _ => {
                    if let Some(u) = occ.unstored.get_mut(pipeline) {
                        u.remove(key);
                    }
                }
            }
        }
        writes
    }

    /// Drops sent and failed entries of workloads that are not `alive`.
    pub fn prune(&mut self, pipeline: &str, alive: &dyn Fn(&str) -> bool) -> Writes {
        let mut writes = Writes::new();
        let occ = &mut self.occupancy;
        let Some(map) = self.entries.get_mut(pipeline) else {
            return writes;
        };
        map.retain(|k, e| {
            let keep = e.state == State::Pending || alive(&k.workload_uid);
            if !keep {
                let at = occ.remove(pipeline, k, e);
                writes
                    .entry(at)
                    .or_default()
                    .insert(k.data_key(), serde_json::Value::Null);
            }
            keep
        });
        writes
    }

    /// Forgets a ledger whose pipeline is gone.
    pub fn forget(&mut self, pipeline: &str) {
        self.entries.remove(pipeline);
        self.occupancy.forget(pipeline);
    }
}

/// Places one entry on a page of its shard (moving it if it no longer fits where it is) and
/// adds the write; a pending entry without room is left unstored.
fn store(
    capacity: Capacity,
    occ: &mut Occupancy,
    writes: &mut Writes,
    ledger: &str,
    map: &BTreeMap<RolloutKey, Entry>,
    key: &RolloutKey,
    entry: &Entry,
) {
    let value = serde_json::to_string(entry).unwrap_or_default();
    let size = stored_size(key, &value);
    let unstored = occ
        .unstored
        .get(ledger)
        .is_some_and(|u| u.contains_key(key));
    let current = map.get(key).filter(|_| !unstored).map(|old| {
        let old_size = stored_size(key, &serde_json::to_string(old).unwrap_or_default());
        (occ.page_of(ledger, key), old_size)
    });
    let pages = occ.pages(ledger, key.shard(), capacity.pages);
    // What is not pending is small and must be stored: past the limit if need be.
    let page = place(&pages, current, size, capacity.page_bytes)
        .or_else(|| (entry.state != State::Pending).then(|| current.map_or(0, |(p, _)| p)));
    let Some(page) = page else {
        // An older copy must not stay behind to be read back in its place.
        if current.is_some()
            && let Some(old) = map.get(key)
        {
            let was = occ.remove(ledger, key, old);
            writes
                .entry(was)
                .or_default()
                .insert(key.data_key(), serde_json::Value::Null);
        }
        occ.unstored
            .entry(ledger.to_string())
            .or_default()
            .insert(key.clone(), ());
        return;
    };
    if current.is_some()
        && let Some(old) = map.get(key)
    {
        let was = occ.remove(ledger, key, old);
        if was.1 != page {
            writes
                .entry(was)
                .or_default()
                .insert(key.data_key(), serde_json::Value::Null);
        }
    }
    if let Some(u) = occ.unstored.get_mut(ledger) {
        u.remove(key);
        if u.is_empty() {
            occ.unstored.remove(ledger);
        }
    }
    occ.add(ledger, key, page, size);
    writes
        .entry((key.shard(), page))
        .or_default()
        .insert(key.data_key(), json!(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str, revision: u64, outcome: Outcome) -> RolloutKey {
        RolloutKey {
            workload_uid: uid.into(),
            revision,
            outcome,
        }
    }

    #[test]
    fn keys_round_trip_through_configmap_data_keys() {
        let k = key("7b1c1f6e-0d3a-4a51-9a07-0c2d1b9f3e11", 12, Outcome::Failed);
        assert_eq!(RolloutKey::parse(&k.data_key()), Some(k.clone()));
        assert_eq!(k.shard(), '7');
    }

    #[test]
    fn decides_once_per_rollout_with_a_first_sight_baseline() {
        let created: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let before: Timestamp = "2026-11-26T09:00:00Z".parse().unwrap();
        let after: Timestamp = "2026-11-26T11:00:00Z".parse().unwrap();
        let old = |finished| Times {
            finished: Some(finished),
            workload_created: Some(before),
            pipeline_created: created,
        };
        let new = |finished| Times {
            finished: Some(finished),
            workload_created: Some(created),
            pipeline_created: created,
        };
        let r1 = key("a", 1, Outcome::Completed);
        let r2 = key("a", 2, Outcome::Completed);
        let f2 = key("a", 2, Outcome::Failed);
        assert_eq!(decide([], &r1, old(before)), Decision::Baseline);
        assert_eq!(decide([], &r1, old(created)), Decision::Baseline);
        assert_eq!(decide([], &r1, old(after)), Decision::Report);
        // A workload created with (or after) the pipeline is new: reported even within the same second.
        assert_eq!(decide([], &r1, new(created)), Decision::Report);
        assert_eq!(decide([&r1], &r1, old(after)), Decision::Known);
        assert_eq!(decide([&r1], &r2, old(after)), Decision::Report);
        // Known workload: a later rollout is reported even if its finish time looks early.
        assert_eq!(decide([&r1], &r2, old(before)), Decision::Report);
        assert_eq!(decide([&r2], &r1, old(after)), Decision::Superseded);
        // One rollout, one outcome: revision 2 failed, then recovered: not reported again.
        assert_eq!(decide([&f2], &r2, old(after)), Decision::Known);
        assert_eq!(
            decide([&key("b", 9, Outcome::Completed)], &r1, old(before)),
            Decision::Baseline
        );
    }

    #[test]
    fn entries_spill_to_the_next_page_before_a_configmap_is_full() {
        let limit = 1000;
        // Stays where it is while it fits.
        assert_eq!(place(&[900, 0], Some((0, 400)), 450, limit), Some(0));
        // Grown past its page: the first page with room.
        assert_eq!(place(&[900, 0], Some((0, 100)), 300, limit), Some(1));
        assert_eq!(place(&[950, 200], None, 100, limit), Some(1));
        assert_eq!(place(&[0, 0], None, 100, limit), Some(0));
        // Every page full: none.
        assert_eq!(place(&[950, 990], None, 100, limit), None);
        assert_eq!(configmap_name("u", ('a', 0)), "ilert-ledger-u-a");
        assert_eq!(
            configmap_name("u-alerts", ('a', 2)),
            "ilert-ledger-u-alerts-a-p2"
        );
        assert_eq!(page_of_name("ilert-ledger-u-alerts-a-p2"), 2);
        assert_eq!(page_of_name("ilert-ledger-0f3e-7b1c-alerts-a"), 0);
        assert_eq!(page_of_name("ilert-ledger-0f3e-7b1c-a"), 0);
    }

    #[test]
    fn a_deposed_leader_writes_only_what_ilert_answered() {
        let entry = |state| Entry {
            state,
            workload: "Deployment/shop/web".into(),
            event: None,
            reported_outcome: None,
            test: None,
            alert: None,
        };
        let value = |e: &Entry| json!(serde_json::to_string(e).unwrap());
        let data: Data = [
            ("a.1.Completed".to_string(), value(&entry(State::Pending))),
            ("b.1.Completed".to_string(), value(&entry(State::Sent))),
            ("c.1.Completed".to_string(), value(&entry(State::Failed))),
            ("d.1.Completed".to_string(), serde_json::Value::Null),
        ]
        .into_iter()
        .collect();
        let kept: Vec<String> = deposed_share(&data).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kept, ["b.1.Completed", "c.1.Completed"]);
    }

    #[test]
    fn baseline_from_what_the_status_says_at_first_sight() {
        let created: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let before: Timestamp = "2026-11-26T09:00:00Z".parse().unwrap();
        // A StatefulSet older than the pipeline, no finish time in its status.
        let set = Times {
            finished: None,
            workload_created: Some(before),
            pipeline_created: created,
        };
        let r1 = key("s", 1, Outcome::Completed);
        // Finished when first seen: the baseline (the caller records it).
        assert_eq!(decide([], &r1, set), Decision::Baseline);
        // First seen mid-rollout: remembered at revision 0, so its end is reported, however
        // long ago its template changed.
        let seen = seen_mid_rollout("s");
        assert_eq!(decide([&seen], &r1, set), Decision::Report);
        // After a recorded baseline, the next revision is reported.
        assert_eq!(
            decide([&r1], &key("s", 2, Outcome::Completed), set),
            Decision::Report
        );
    }
}
