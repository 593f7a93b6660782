//! The seven watches and what comes out of them: each object projected to its compact view
//! as it arrives, retried with the controller's backoff.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};

use crate::domain::history::{ReplicaSetView, RevisionView};
use crate::domain::pacing::backoff;
use crate::domain::rollout::{Kind, WorkloadView};
use crate::pipeline::IlertPipeline;
use crate::shell::shared::jitter;

pub(crate) enum Input {
    /// Projected to the compact view as soon as it arrives: full workloads never pile up.
    Workload(Kind, Event<WorkloadView>),
    Pipeline(Box<Event<IlertPipeline>>),
    Namespace(Event<PartialObjectMeta<Namespace>>),
    /// Projected too: what the history of a rollout needs, so no list on the path of an event.
    ReplicaSet(Event<ReplicaSetView>),
    /// StatefulSet and DaemonSet history (and their revision numbers), projected likewise.
    Revision(Event<RevisionView>),
}

/// The watches whose first list must be in before the backlog is decided.
#[derive(Clone, Copy)]
pub(crate) enum Watch {
    Deployments,
    Pipelines,
    Namespaces,
    ReplicaSets,
    StatefulSets,
    DaemonSets,
    Revisions,
}

impl Watch {
    pub(crate) const COUNT: usize = 7;

    pub(crate) fn of(kind: Kind) -> Self {
        match kind {
            Kind::Deployment => Watch::Deployments,
            Kind::StatefulSet => Watch::StatefulSets,
            Kind::DaemonSet => Watch::DaemonSets,
        }
    }
}

/// Retry timing of a failed watch: exponential with jitter, capped at 5 s. kube's default caps at
/// 30 s, which after an API server outage costs up to a minute of blindness (30 s to find it back,
/// 30 s more after the first 403 of its RBAC cache warming up). Seven watches per controller:
/// retrying every few seconds is no burden.
#[derive(Default)]
pub(crate) struct WatchBackoff {
    pub(crate) attempt: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(backoff(self.attempt, Duration::from_secs(5), jitter()))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A watch event with its object projected to the compact view at once.
pub(crate) fn project<K, V>(ev: Event<K>, view: impl Fn(&K) -> V) -> Event<V> {
    match ev {
        Event::Apply(o) => Event::Apply(view(&o)),
        Event::Delete(o) => Event::Delete(view(&o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(view(&o)),
        Event::InitDone => Event::InitDone,
    }
}

/// A cluster-wide watch of `K`, re-established with the controller's backoff.
pub(crate) fn watch_all<K>(
    client: &Client,
    cfg: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    kube::runtime::watcher(Api::all(client.clone()), cfg).backoff(WatchBackoff::default())
}
