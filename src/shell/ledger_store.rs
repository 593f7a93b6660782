//! Persistence of the delivery state ([`crate::domain::ledger::Book`]): ledger ConfigMaps in the
//! controller's own namespace, written by one writer task per ConfigMap with group commit, every
//! write fenced by the leader term and the resourceVersion last seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PostParams,
};
use serde_json::json;
use tracing::warn;

use crate::domain::book::{
    Book, Capacity, Data, Place, StoredPage, Writes, configmap_name, deposed_share, is_pending,
};
use crate::domain::keys::{
    CONTROLLER_NAME, EPOCH_ANNOTATION, MANAGED_BY_LABEL, PIPELINE_UID_LABEL,
};
use crate::domain::ledger::RolloutKey;
use crate::domain::uid::Uid;

/// Writes waiting for one shard (pipeline uid, shard digit): while one patch is on the wire, later
/// writes gather here and go out together in the next patch (group commit). Under a burst this
/// makes one patch per shard per round trip, instead of one per event.
#[derive(Default)]
struct ShardQueue {
    data: Data,
    writing: bool,
}

type Queues = Arc<Mutex<HashMap<(String, Place), ShardQueue>>>;

/// How long a shard's writer gathers before each patch (a commit delay). A rollout writes twice:
/// its pending claim, then, once ilert has answered, what it answered, under the same data key.
/// Sending does not wait for the claim, so when ilert answers within this time (a few ms from
/// the fake of the benchmark, often more from ilert itself) both go out as one patch, holding only
/// the answer. Without it, group commit merged writes only while a patch was on the wire: the
/// faster the API server and the controller, the less they merged (1.28 patches per rollout in a
/// burst of 1,000 on a fast run, against 1.15 on a slower one). It delays no event, only when
/// the claim is on the API server: the window in which a crash could cost an event (the claim
/// not yet stored, and the workload rolled out again before the restart) grows from the claim's
/// round trip to that plus 10 ms.
const GATHER: Duration = Duration::from_millis(10);

fn lock_queues(q: &Queues) -> std::sync::MutexGuard<'_, HashMap<(String, Place), ShardQueue>> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

/// What fences the writes of one instance: its leader term, whether it leads, and the
/// resourceVersion of each ConfigMap as last read or written. Every write is conditional on that
/// resourceVersion, so a write of a deposed leader that does not know it yet fails as soon as
/// the new leader has written; it then sees a newer term and keeps only what ilert answered.
#[derive(Default)]
struct Fence {
    epoch: u64,
    leading: bool,
    versions: HashMap<String, String>,
}

type SharedFence = Arc<Mutex<Fence>>;

fn lock_fence(f: &SharedFence) -> std::sync::MutexGuard<'_, Fence> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the ledger ConfigMaps hold, as read.
struct Stored {
    book: Book,
    versions: HashMap<String, String>,
}

/// The book of the delivery state and its persistence. Every change is made on the book under
/// one lock; the writes it returns go to the shard writers.
pub struct Ledger {
    api: Api<ConfigMap>,
    book: Mutex<Book>,
    queues: Queues,
    fence: SharedFence,
    capacity: Capacity,
    /// Counts failed writes (they are retried).
    write_errors: prometheus_client::metrics::counter::Counter,
}

impl Ledger {
    /// Loads every ledger ConfigMap of `namespace`.
    pub async fn load(
        client: kube::Client,
        namespace: &str,
        capacity: Capacity,
        write_errors: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let stored = fetch(&api, capacity).await?;
        Ok(Ledger {
            api,
            book: Mutex::new(stored.book),
            queues: Arc::default(),
            fence: Arc::new(Mutex::new(Fence {
                versions: stored.versions,
                ..Fence::default()
            })),
            capacity,
            write_errors,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the book under its lock.
    pub fn read<R>(&self, f: impl FnOnce(&Book) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the book in memory only (a claim: persisted when its event is recorded).
    pub fn read_mut<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        f(&mut self.lock())
    }

    /// Changes the book under its lock and hands the writes the change needs to the shard
    /// writers. A failed patch is retried with backoff until it succeeds (newer writes to the
    /// same data key win).
    pub fn change<R>(&self, pipeline: &str, f: impl FnOnce(&mut Book) -> (R, Writes)) -> R {
        let (r, writes) = f(&mut self.lock());
        self.enqueue(pipeline, writes);
        r
    }

    /// Records `entries` (all of one pipeline) in memory at once and hands them to the shard
    /// writers (see [`Book::record`]).
    pub fn record(&self, pipeline: &str, entries: &[(RolloutKey, crate::domain::ledger::Entry)]) {
        self.change(pipeline, |b| ((), b.record(pipeline, entries)));
    }

    /// This instance leads (or no longer does) in term `epoch`. While it does not, its writes
    /// keep only what ilert answered.
    pub fn set_term(&self, leading: bool, epoch: Option<u64>) {
        let mut f = lock_fence(&self.fence);
        f.leading = leading;
        if let Some(e) = epoch {
            f.epoch = e;
        }
    }

    /// Reads the persisted state again (a replica that just became leader: the old leader wrote it).
    pub async fn reload(&self) -> Result<(), kube::Error> {
        let stored = fetch(&self.api, self.capacity).await?;
        *self.lock() = stored.book;
        lock_fence(&self.fence).versions = stored.versions;
        Ok(())
    }

    /// Takes over what the store says ilert answered for entries still pending here (see
    /// [`Book::take_answered`]). Returns the keys per ledger, to drop from the queues.
    pub async fn catch_up(&self) -> Result<HashMap<String, Vec<RolloutKey>>, kube::Error> {
        let stored = fetch(&self.api, self.capacity).await?.book;
        Ok(self.lock().take_answered(stored))
    }

    /// Drops sent and failed entries of workloads that no longer exist.
    pub fn prune(&self, pipeline: &str, alive: &dyn Fn(&Uid) -> bool) -> usize {
        self.change(pipeline, |b| {
            let writes = b.prune(pipeline, alive);
            (writes.values().map(serde_json::Map::len).sum(), writes)
        })
    }

    /// A workload was deleted: its delivered entries go at once, without waiting for a re-list.
    pub fn forget_workload(&self, pipeline: &str, workload_uid: &Uid) -> usize {
        self.prune(pipeline, &|w| w != workload_uid)
    }

    fn enqueue(&self, pipeline: &str, writes: Writes) {
        let mut start = Vec::new();
        {
            let mut queues = lock_queues(&self.queues);
            for (place, data) in writes {
                let q = queues.entry((pipeline.to_string(), place)).or_default();
                q.data.extend(data);
                if !q.writing {
                    q.writing = true;
                    start.push(place);
                }
            }
        }
        for place in start {
            tokio::spawn(write_shard(
                self.api.clone(),
                self.queues.clone(),
                self.fence.clone(),
                self.write_errors.clone(),
                pipeline.to_string(),
                place,
            ));
        }
    }

    /// Waits (at most `limit`) until every handed-over write is on the API server: before exit.
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !lock_queues(&self.queues).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deletes every ConfigMap of a pipeline that is gone.
    pub async fn forget_pipeline(&self, pipeline: &str) -> Result<(), kube::Error> {
        self.lock().forget(pipeline);
        // Writes still waiting would create the ConfigMaps again.
        for ((p, _), q) in lock_queues(&self.queues).iter_mut() {
            if p == pipeline {
                q.data.clear();
            }
        }
        let lp = ListParams::default().labels(&format!("{PIPELINE_UID_LABEL}={pipeline}"));
        for cm in self.api.list(&lp).await? {
            if let Some(name) = cm.metadata.name {
                match self.api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Every ledger ConfigMap, as a book and the resourceVersion of each.
async fn fetch(api: &Api<ConfigMap>, capacity: Capacity) -> Result<Stored, kube::Error> {
    let lp = ListParams::default().labels(&format!(
        "{MANAGED_BY_LABEL}={CONTROLLER_NAME},{PIPELINE_UID_LABEL}"
    ));
    let list = api.list(&lp).await?;
    let mut versions = HashMap::new();
    for cm in &list {
        if let (Some(name), Some(rv)) = (&cm.metadata.name, &cm.metadata.resource_version) {
            versions.insert(name.clone(), rv.clone());
        }
    }
    let empty = BTreeMap::new();
    let pages = list.iter().filter_map(|cm| {
        let ledger = cm.metadata.labels.as_ref()?.get(PIPELINE_UID_LABEL)?;
        Some(StoredPage {
            name: cm.metadata.name.as_deref().unwrap_or_default(),
            ledger,
            data: cm.data.as_ref().unwrap_or(&empty),
        })
    });
    Ok(Stored {
        book: Book::from_pages(capacity, pages),
        versions,
    })
}

/// The writer of one shard: patches whatever gathered while the previous patch was on the wire,
/// until nothing waits. Retries with backoff; never gives up (the state must get out).
async fn write_shard(
    api: Api<ConfigMap>,
    queues: Queues,
    fence: SharedFence,
    errors: prometheus_client::metrics::counter::Counter,
    pipeline: String,
    place: Place,
) {
    let id = (pipeline.clone(), place);
    let mut attempt = 0;
    loop {
        tokio::time::sleep(GATHER).await;
        let data = {
            let mut queues = lock_queues(&queues);
            let Some(q) = queues.get_mut(&id) else { return };
            if q.data.is_empty() {
                queues.remove(&id);
                return;
            }
            std::mem::take(&mut q.data)
        };
        match patch_shard(&api, &fence, &pipeline, place, data.clone()).await {
            Ok(()) => attempt = 0,
            Err(e) => {
                attempt += 1;
                errors.inc();
                warn!(error = %e, attempt, "could not write the delivery state; retrying (a crash before it is written may repeat or, if the workload also moves on, miss these events)");
                {
                    let mut queues = lock_queues(&queues);
                    let q = queues.entry(id.clone()).or_default();
                    let newer = std::mem::replace(&mut q.data, data);
                    q.data.extend(newer);
                }
                let jitter = rand::random::<f64>();
                tokio::time::sleep(crate::domain::pacing::backoff(
                    attempt,
                    Duration::from_secs(5),
                    jitter,
                ))
                .await;
            }
        }
    }
}

/// Writes `data` into one shard ConfigMap, conditional on the resourceVersion last seen. A
/// conflict means another writer came between: a newer leader (then only what ilert answered is
/// written, and the rest dropped), or our own write that timed out but landed (then again).
async fn patch_shard(
    api: &Api<ConfigMap>,
    fence: &SharedFence,
    pipeline: &str,
    place: Place,
    mut data: Data,
) -> Result<(), kube::Error> {
    let name = configmap_name(pipeline, place);
    let mut deposed = false;
    {
        let f = lock_fence(fence);
        if !f.leading {
            deposed = true;
        }
    }
    loop {
        if deposed {
            data = deposed_share(&data);
            if data.is_empty() {
                return Ok(());
            }
        }
        let (epoch, version) = {
            let f = lock_fence(fence);
            (f.epoch, f.versions.get(&name).cloned())
        };
        // `managedFields: [{}]` resets the shard's field ownership (the API server then keeps
        // none for it). Left alone, it lists every data key the controller ever wrote there (a
        // shard of 300 entries carries ~15 KiB of it): stored, counted against the object's
        // size, and sent back with every answer, even one asked for as metadata. Nothing reads
        // the ownership of a shard: the controller is its only writer.
        let mut patch = json!({ "data": data, "metadata": { "managedFields": [{}] } });
        if let Some(rv) = &version {
            patch["metadata"]["resourceVersion"] = json!(rv);
        }
        if !deposed {
            patch["metadata"]["annotations"] = json!({ EPOCH_ANNOTATION: epoch.to_string() });
        }
        // The answer is only read for its resourceVersion: asked for as metadata, the API server
        // does not send the whole shard back (it grows with the workloads: 30 KiB at 5,000).
        let result = match &version {
            Some(_) => {
                api.patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
            None => create_shard(api, &name, pipeline, epoch, &data)
                .await
                .map(|cm| PartialObjectMeta {
                    types: None,
                    metadata: cm.metadata,
                    _phantom: std::marker::PhantomData,
                }),
        };
        match result {
            Ok(cm) => {
                if let Some(rv) = cm.metadata.resource_version {
                    lock_fence(fence).versions.insert(name.clone(), rv);
                }
                return Ok(());
            }
            // Gone (a pipeline forgotten and back, deleted by hand): create it again.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                lock_fence(fence).versions.remove(&name);
            }
            // Too large for one object after all: what ilert answered must still get out, and
            // must not wait behind pending events that cannot be stored.
            Err(kube::Error::Api(s)) if (s.code == 422 || s.code == 413) && !deposed => {
                tracing::error!(ledger = %name, error = %s.message, "the delivery state does not fit its ConfigMap: pending events of this write stay in memory only");
                data.retain(|_, v| !is_pending(v));
                if data.is_empty() {
                    return Ok(());
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let current = api.get(&name).await?;
                let theirs = current
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(EPOCH_ANNOTATION))
                    .and_then(|e| e.parse::<u64>().ok())
                    .unwrap_or(0);
                if theirs > epoch && !deposed {
                    warn!(ledger = %name, epoch, newer = theirs, "a newer leader writes the delivery state: keeping only what ilert answered");
                    deposed = true;
                }
                if let Some(rv) = current.metadata.resource_version {
                    lock_fence(fence).versions.insert(name.clone(), rv);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn create_shard(
    api: &Api<ConfigMap>,
    name: &str,
    pipeline: &str,
    epoch: u64,
    data: &Data,
) -> Result<ConfigMap, kube::Error> {
    let values: BTreeMap<String, String> = data
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), CONTROLLER_NAME.to_string()),
                (PIPELINE_UID_LABEL.to_string(), pipeline.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                EPOCH_ANNOTATION.to_string(),
                epoch.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(values),
        ..Default::default()
    };
    // Created meanwhile by another write: a 409, read again and patched by the caller.
    api.create(&PostParams::default(), &cm).await
}
