//! Pure: the in-memory book of every ledger, and where each entry is stored. Each change returns
//! the ConfigMap writes it needs (`shell::ledger_store` carries them out): 16 shards per ledger,
//! each spilling into further pages before a ConfigMap's 1 MiB limit.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::domain::ledger::{Decision, Entry, RolloutKey, State, Times, decide};
use crate::domain::rollout::Outcome;
use crate::domain::uid::Uid;

/// Every ledger ConfigMap is named `ilert-ledger-<ledger>-<shard>[-p<page>]`.
pub const NAME_PREFIX: &str = "ilert-ledger-";

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
        workload_uid: &'a Uid,
    ) -> impl Iterator<Item = (&'a RolloutKey, &'a Entry)> + 'a {
        let from = RolloutKey {
            workload_uid: workload_uid.clone(),
            revision: 0,
            outcome: Outcome::Completed,
        };
        self.entries
            .get(pipeline)
            .into_iter()
            .flat_map(move |m| m.range(from.clone()..))
            .take_while(move |(k, _)| k.workload_uid == *workload_uid)
    }

    /// The workloads a ledger holds entries for.
    pub fn workloads_of(&self, pipeline: &str) -> Vec<Uid> {
        let mut uids: Vec<Uid> = self
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
                // The keys sort by workload, then revision: the older revisions of this
                // workload are one range, not a scan of the whole ledger.
                let from = RolloutKey {
                    workload_uid: key.workload_uid.clone(),
                    revision: 0,
                    outcome: Outcome::Completed,
                };
                let to = RolloutKey {
                    revision: key.revision,
                    ..from.clone()
                };
                let older: Vec<RolloutKey> = map
                    .range(from..to)
                    .filter(|(_, e)| e.state != State::Pending)
                    .map(|(k, _)| k.clone())
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
    pub fn prune(&mut self, pipeline: &str, alive: &dyn Fn(&Uid) -> bool) -> Writes {
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
