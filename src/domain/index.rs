//! Pure: the indexes the watches feed. Views of owned objects (ReplicaSets, ControllerRevisions)
//! by their workload, and what they tell of it.

use std::collections::HashMap;

use kube::runtime::watcher::Event;

use crate::domain::history::{ReplicaSetView, RevisionView, resolve_replica_set, resolve_revision};
use crate::domain::rollout::WorkloadView;
use crate::domain::uid::Uid;

/// A view of an object that a workload controls: a ReplicaSet, a ControllerRevision.
pub trait OwnedView {
    fn owner(&self) -> Option<&Uid>;
    fn same(&self, other: &Self) -> bool;
}

impl OwnedView for ReplicaSetView {
    fn owner(&self) -> Option<&Uid> {
        self.owner.as_ref()
    }
    fn same(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl OwnedView for RevisionView {
    fn owner(&self) -> Option<&Uid> {
        self.owner.as_ref()
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
    Owner(Uid),
    Nothing,
}

/// A watch's re-list in progress. kube's watcher sends `Init`, the listed objects
/// (`InitApply`), then `InitDone`: only then does the new list replace what was known, so
/// objects deleted while the watch was away are seen gone. The one place that buffer swap is
/// written (kube-runtime's `Writer::apply_watcher_event` does the same for its stores).
pub struct Relist<T> {
    fresh: Option<T>,
}

impl<T> Default for Relist<T> {
    fn default() -> Self {
        Relist { fresh: None }
    }
}

/// One watch event, after [`Relist::step`].
pub enum Step<T, V> {
    /// An object of the list in progress (None: the list starts); add it with [`Relist::add`].
    Listing(Option<V>),
    /// The list is complete: everything that exists now.
    Listed(T),
    Applied(V),
    Deleted(V),
}

impl<T: Default> Relist<T> {
    pub fn step<V>(&mut self, ev: Event<V>) -> Step<T, V> {
        match ev {
            Event::Init => {
                self.fresh = Some(T::default());
                Step::Listing(None)
            }
            Event::InitApply(v) => Step::Listing(Some(v)),
            Event::InitDone => Step::Listed(self.fresh.take().unwrap_or_default()),
            Event::Apply(v) => Step::Applied(v),
            Event::Delete(v) => Step::Deleted(v),
        }
    }

    /// Adds to the list in progress (nothing happens outside one).
    pub fn add(&mut self, f: impl FnOnce(&mut T)) {
        if let Some(t) = self.fresh.as_mut() {
            f(t);
        }
    }
}

/// Views of owned objects by the UID of the workload that controls them (a few each: a Vec, not
/// a map), kept from a watch so the history of a rollout needs no list.
pub struct OwnedCache<V> {
    by_owner: HashMap<Uid, Vec<V>>,
    relist: Relist<HashMap<Uid, Vec<V>>>,
}

impl<V> Default for OwnedCache<V> {
    fn default() -> Self {
        OwnedCache {
            by_owner: HashMap::new(),
            relist: Relist::default(),
        }
    }
}

impl<V: OwnedView> OwnedCache<V> {
    pub fn get(&self, owner: &Uid) -> &[V] {
        self.by_owner.get(owner).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn apply(&mut self, ev: Event<V>) -> Applied {
        match self.relist.step(ev) {
            Step::Listing(None) => Applied::Nothing,
            Step::Listing(Some(view)) => {
                self.relist.add(|m| Self::insert(m, view));
                Applied::Nothing
            }
            Step::Listed(fresh) => {
                self.by_owner = fresh;
                Applied::Synced
            }
            Step::Applied(view) => match view.owner().cloned() {
                Some(owner) => {
                    Self::insert(&mut self.by_owner, view);
                    Applied::Owner(owner)
                }
                None => Applied::Nothing,
            },
            Step::Deleted(view) => {
                let Some(owner) = view.owner().cloned() else {
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

    pub fn insert(map: &mut HashMap<Uid, Vec<V>>, view: V) {
        if let Some(owner) = view.owner() {
            let owned = map.entry(owner.clone()).or_default();
            match owned.iter_mut().find(|v| v.same(&view)) {
                Some(known) => *known = view,
                None => {
                    // Exactly as many as there are: a Vec's first growth makes room for four, and
                    // most workloads have one or two (each view ~150 bytes).
                    owned.reserve_exact(1);
                    owned.push(view);
                }
            }
        }
    }
}

/// The Deployments that Rollouts run through `spec.workloadRef`: Argo Rollouts scales such a
/// Deployment down and rolls out its template as the Rollout, so the Rollout reports the rollout
/// and the Deployment reports nothing of its own.
#[derive(Default)]
pub struct WorkloadRefs {
    /// Rollout UID -> `namespace/name` of the Deployment it references.
    by_rollout: HashMap<Uid, String>,
    /// `namespace/name` -> how many Rollouts reference it.
    referenced: HashMap<String, usize>,
}

impl WorkloadRefs {
    fn key(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    /// Records what the Rollout `w` references now (None: nothing, or it is gone). Returns the
    /// Deployments whose standing changed (`namespace/name`).
    pub fn set(&mut self, rollout_uid: &Uid, w: Option<&WorkloadView>) -> Vec<String> {
        let now = w.and_then(|w| {
            let name = w.argo.as_deref()?.workload_ref.as_deref()?;
            Some(Self::key(&w.namespace, name))
        });
        let before = match &now {
            Some(k) => self.by_rollout.insert(rollout_uid.clone(), k.clone()),
            None => self.by_rollout.remove(rollout_uid),
        };
        if before == now {
            return Vec::new();
        }
        let mut changed = Vec::new();
        if let Some(b) = before {
            if let Some(n) = self.referenced.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.referenced.remove(&b);
                }
            }
            changed.push(b);
        }
        if let Some(k) = now {
            *self.referenced.entry(k.clone()).or_default() += 1;
            changed.push(k);
        }
        changed
    }

    /// Whether a Rollout runs this Deployment (`w` of another kind: never).
    pub fn runs(&self, w: &WorkloadView) -> bool {
        w.kind == crate::pipeline::Kind::Deployment
            && self
                .referenced
                .contains_key(&Self::key(&w.namespace, &w.name))
    }
}

/// Sets what the objects a workload owns tell of it (see [`Brain::with_revision`]).
pub fn resolve_owned(
    w: &mut WorkloadView,
    replica_sets: &OwnedCache<ReplicaSetView>,
    revisions: &OwnedCache<RevisionView>,
) {
    if w.kind.has_replica_sets() {
        let current = resolve_replica_set(w, replica_sets.get(&w.uid));
        w.current_replica_set = current.map(|rs| rs.name.clone());
        // A Rollout with `spec.workloadRef` has no template of its own: its ReplicaSet's images.
        if w.argo.as_deref().is_some_and(|a| a.workload_ref.is_some())
            && let Some(rs) = current
        {
            w.images = rs.images.clone();
        }
    } else {
        w.controller_revision = resolve_revision(w, revisions.get(&w.uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, owner: &str) -> ReplicaSetView {
        ReplicaSetView {
            name: name.into(),
            owner: Some(owner.into()),
            ..ReplicaSetView::default()
        }
    }

    /// A re-list replaces what was known only once it is complete: what was deleted while the
    /// watch was away is gone after it, and nothing is gone during it.
    #[test]
    fn a_relist_replaces_the_cache_only_when_complete() {
        let mut cache = OwnedCache::<ReplicaSetView>::default();
        assert!(matches!(
            cache.apply(Event::Apply(rs("a", "w1"))),
            Applied::Owner(o) if o == *"w1"
        ));
        assert!(matches!(
            cache.apply(Event::Apply(rs("b", "w2"))),
            Applied::Owner(_)
        ));
        assert!(matches!(cache.apply(Event::Init), Applied::Nothing));
        assert!(matches!(
            cache.apply(Event::InitApply(rs("a", "w1"))),
            Applied::Nothing
        ));
        // Mid-list, the old state still answers.
        assert_eq!(cache.get(&Uid::new("w2")).len(), 1);
        assert!(matches!(cache.apply(Event::InitDone), Applied::Synced));
        assert_eq!(cache.get(&Uid::new("w1")).len(), 1);
        assert!(cache.get(&Uid::new("w2")).is_empty(), "deleted while away");
        // An object seen again replaces its older view, a delete removes it.
        cache.apply(Event::Apply(rs("a", "w1")));
        assert_eq!(cache.get(&Uid::new("w1")).len(), 1);
        cache.apply(Event::Delete(rs("a", "w1")));
        assert!(cache.get(&Uid::new("w1")).is_empty());
    }

    #[test]
    fn a_deployment_is_run_by_a_rollout_while_one_references_it() {
        use crate::domain::argo::ArgoState;
        use crate::pipeline::Kind;
        let view = |kind, name: &str, reference: Option<&str>| {
            let mut w = match kind {
                Kind::Rollout => WorkloadView::from_rollout(&Default::default()),
                _ => WorkloadView::from_deployment(&Default::default()),
            };
            w.namespace = "shop".into();
            w.name = name.into();
            if let Some(a) = w.argo.as_deref_mut() {
                *a = ArgoState {
                    workload_ref: reference.map(Into::into),
                    ..ArgoState::default()
                };
            }
            w
        };
        let web = view(Kind::Deployment, "web", None);
        let mut refs = WorkloadRefs::default();
        assert!(!refs.runs(&web));
        let a = view(Kind::Rollout, "web-rollout", Some("web"));
        assert_eq!(
            refs.set(&Uid::new("a"), Some(&a)),
            vec!["shop/web".to_string()]
        );
        assert!(refs.runs(&web));
        // Seen again unchanged: nothing to re-decide.
        assert!(refs.set(&Uid::new("a"), Some(&a)).is_empty());
        let b = view(Kind::Rollout, "web-too", Some("web"));
        refs.set(&Uid::new("b"), Some(&b));
        refs.set(&Uid::new("a"), None);
        assert!(refs.runs(&web), "still referenced by b");
        assert_eq!(
            refs.set(&Uid::new("b"), Some(&view(Kind::Rollout, "web-too", None))),
            vec!["shop/web".to_string()]
        );
        assert!(!refs.runs(&web));
        // A Rollout is never taken for the Deployment it names.
        refs.set(
            &Uid::new("c"),
            Some(&view(Kind::Rollout, "web", Some("web"))),
        );
        assert!(!refs.runs(&view(Kind::Rollout, "web", Some("web"))));
    }

    #[test]
    fn objects_listed_before_a_list_starts_are_not_taken_for_it() {
        let mut r = Relist::<Vec<u8>>::default();
        assert!(matches!(
            r.step(Event::InitApply(1)),
            Step::Listing(Some(1))
        ));
        r.add(|v| v.push(1));
        assert!(matches!(r.step(Event::<u8>::Init), Step::Listing(None)));
        r.add(|v| v.push(2));
        match r.step(Event::<u8>::InitDone) {
            Step::Listed(v) => assert_eq!(v, vec![2]),
            _ => panic!("InitDone must complete the list"),
        }
    }
}
