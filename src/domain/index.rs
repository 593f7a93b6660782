//! Pure: the indexes the watches feed. Views of owned objects (ReplicaSets, ControllerRevisions)
//! by their workload, and what they tell of it.

use std::collections::HashMap;

use kube::runtime::watcher::Event;

use crate::domain::history::{ReplicaSetView, RevisionView, resolve_replica_set, resolve_revision};
use crate::domain::rollout::{Kind, WorkloadView};

/// A view of an object that a workload controls: a ReplicaSet, a ControllerRevision.
pub trait OwnedView {
    fn owner(&self) -> Option<&str>;
    fn same(&self, other: &Self) -> bool;
}

impl OwnedView for ReplicaSetView {
    fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
    fn same(&self, other: &Self) -> bool {
        self.uid == other.uid
    }
}

impl OwnedView for RevisionView {
    fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
    fn same(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// What a watch event did to an [`OwnedCache`].
pub enum Applied {
    /// A (re-)list is complete.
    Synced,
    /// The objects of this owner changed.
    Owner(String),
    Nothing,
}

/// Views of owned objects by the UID of the workload that controls them (a few each: a Vec, not
/// a map), kept from a watch so the history of a rollout needs no list.
pub struct OwnedCache<V> {
    pub by_owner: HashMap<String, Vec<V>>,
    pub init: Option<HashMap<String, Vec<V>>>,
}

impl<V> Default for OwnedCache<V> {
    fn default() -> Self {
        OwnedCache {
            by_owner: HashMap::new(),
            init: None,
        }
    }
}

impl<V: OwnedView> OwnedCache<V> {
    pub fn get(&self, owner: &str) -> &[V] {
        self.by_owner.get(owner).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn apply(&mut self, ev: Event<V>) -> Applied {
        match ev {
            Event::Init => {
                self.init = Some(HashMap::new());
                Applied::Nothing
            }
            Event::InitApply(view) => {
                if let Some(m) = self.init.as_mut() {
                    Self::insert(m, view);
                }
                Applied::Nothing
            }
            Event::InitDone => {
                self.by_owner = self.init.take().unwrap_or_default();
                Applied::Synced
            }
            Event::Apply(view) => match view.owner().map(str::to_string) {
                Some(owner) => {
                    Self::insert(&mut self.by_owner, view);
                    Applied::Owner(owner)
                }
                None => Applied::Nothing,
            },
            Event::Delete(view) => {
                let Some(owner) = view.owner().map(str::to_string) else {
                    return Applied::Nothing;
                };
                if let Some(m) = self.by_owner.get_mut(&owner) {
                    m.retain(|v| !v.same(&view));
                    if m.is_empty() {
                        self.by_owner.remove(&owner);
                    }
                }
                Applied::Owner(owner)
            }
        }
    }

    pub fn insert(map: &mut HashMap<String, Vec<V>>, view: V) {
        if let Some(owner) = view.owner() {
            let owned = map.entry(owner.to_string()).or_default();
            match owned.iter_mut().find(|v| v.same(&view)) {
                Some(known) => *known = view,
                None => owned.push(view),
            }
        }
    }
}

/// Sets what the objects a workload owns tell of it (see [`Brain::with_revision`]).
pub fn resolve_owned(
    w: &mut WorkloadView,
    replica_sets: &OwnedCache<ReplicaSetView>,
    revisions: &OwnedCache<RevisionView>,
) {
    if w.kind == Kind::Deployment {
        w.current_replica_set = resolve_replica_set(w, replica_sets.get(&w.uid));
    } else {
        w.controller_revision = resolve_revision(w, revisions.get(&w.uid));
    }
}
