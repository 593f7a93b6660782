//! The eight watches (Rollouts only while Argo Rollouts' CRD is installed) and what comes out of
//! them: each object projected to its compact view as it arrives, retried with the controller's
//! backoff.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tracing::{info, warn};

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
    Rollouts,
}

impl Watch {
    pub(crate) const COUNT: usize = 8;

    pub(crate) fn of(kind: Kind) -> Self {
        match kind {
            Kind::Deployment => Watch::Deployments,
            Kind::StatefulSet => Watch::StatefulSets,
            Kind::DaemonSet => Watch::DaemonSets,
            Kind::Rollout => Watch::Rollouts,
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

/// How long [`initial_lists`] waits for the API server to stream an empty list.
const STREAMING_PROBE: Duration = Duration::from_secs(3);

/// The watches' configuration for their initial state (and every relist): streamed where the API
/// server can, else in pages.
///
/// A paged list brings 500 objects in one response, read whole and decoded whole before the first
/// becomes a view: with several large kinds listing at once that was the controller's highest
/// resident memory, a third above its steady state at 10,000 Deployments. A streaming list
/// (KEP-3157 `sendInitialEvents`, served by the API server's watch cache) brings the same
/// objects as watch events on the watch itself, one at a time, ended by a bookmark. Servers that
/// do not serve it refuse the parameter (or ignore it, and never send the bookmark), so one
/// watch of Namespaces that selects nothing asks, once at start: the initial-events-end bookmark
/// within [`STREAMING_PROBE`] means streamed lists, anything else means pages.
pub(crate) async fn initial_lists(client: &Client) -> watcher::Config {
    use futures::StreamExt;
    let probe = watcher::Config::default()
        .streaming_lists()
        .labels("ilert.com/streaming-list-probe");
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let answer = tokio::time::timeout(
        STREAMING_PROBE,
        kube::runtime::watcher(api, probe)
            .take(2)
            .collect::<Vec<_>>(),
    )
    .await;
    match answer.as_deref() {
        Ok([Ok(Event::Init), Ok(Event::InitDone)]) => {
            info!("initial lists: streamed as watch events");
            watcher::Config::default().streaming_lists()
        }
        Ok([.., Err(e)]) | Ok([Err(e), ..]) => {
            info!(answer = %e, "initial lists: in pages of 500 (the API server does not stream lists)");
            paged()
        }
        _ => {
            info!(
                waited = ?STREAMING_PROBE,
                "initial lists: in pages of 500 (no end of a streamed list came)"
            );
            paged()
        }
    }
}

fn paged() -> watcher::Config {
    watcher::Config::default().page_size(500)
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

/// Whether the API server serves resource `plural` of `api_version` (discovery; no RBAC needed).
async fn served(client: &Client, api_version: &str, plural: &str) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A kind [`watch_optional`] can follow: one of a static type (a CRD's), read as the watch
/// delivers it.
pub(crate) trait Optional:
    Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static
{
}

impl<K> Optional for K where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static
{
}

/// A cluster-wide watch of a kind that may not be installed (a CRD such as Argo Rollouts'):
/// discovery is asked every `every`. While the kind is not served the watch stands as a complete,
/// empty list, so readiness does not wait for it and nothing retries in a loop; once it is
/// served the watch starts, and should it go away again the list empties. No restart needed.
pub(crate) fn watch_optional<K>(
    client: &Client,
    cfg: watcher::Config,
    every: Duration,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Optional,
{
    let (tx, rx) = futures::channel::mpsc::channel(64);
    tokio::spawn(follow_optional::<K>(client.clone(), cfg, every, tx));
    rx
}

/// Whether a watch failed because the controller may not list or watch the kind (its RBAC).
fn forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

/// What [`follow_optional`] last told the decision loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Nothing yet: the controller waits for the first answer.
    Unknown,
    /// An empty, complete list: the kind is not served.
    Absent,
    /// An empty, complete list: served, but the controller may not read it.
    Forbidden,
    /// The watch's own lists.
    Watching,
}

async fn follow_optional<K>(
    client: Client,
    cfg: watcher::Config,
    every: Duration,
    mut tx: futures::channel::mpsc::Sender<Result<Event<K>, watcher::Error>>,
) where
    K: Optional,
{
    use futures::{SinkExt, StreamExt};
    let (api_version, plural) = (K::api_version(&()), K::plural(&()));
    let kind = K::kind(&());
    let mut standing = Standing::Unknown;
    let mut attempt = 0;
    // An empty, complete list, so that readiness and every other kind go on without this one.
    macro_rules! list_nothing {
        () => {
            for ev in [Event::Init, Event::InitDone] {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        };
    }
    loop {
        match served(&client, &api_version, &plural).await {
            Err(e) => {
                // Not known yet: the watch stays unlisted (and the controller unready) only at
                // start; afterwards the last answer holds.
                attempt += 1;
                warn!(error = %e, kind = %kind, "cannot ask discovery whether the kind is served; retrying");
                tokio::time::sleep(backoff(attempt, every, jitter())).await;
                continue;
            }
            Ok(false) => {
                attempt = 0;
                if standing != Standing::Absent {
                    info!(kind = %kind, api_version = %api_version, every_seconds = every.as_secs(), "kind not served (CRD not installed): not watched; discovery asks again periodically");
                    list_nothing!();
                    standing = Standing::Absent;
                }
                tokio::time::sleep(every).await;
            }
            Ok(true) => {
                attempt = 0;
                if standing != Standing::Forbidden {
                    info!(kind = %kind, api_version = %api_version, "kind served: watching it");
                }
                let mut events = watch_all::<K>(&client, cfg.clone()).boxed();
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Err(e)) if forbidden(&e) => {
                                if standing != Standing::Forbidden {
                                    warn!(kind = %kind, api_version = %api_version, error = %e, "not allowed to list or watch it: grant the controller's ClusterRole get, list and watch on {plural} of {api_version} (the chart does); until then these are not reported, everything else is; tried again periodically");
                                    list_nothing!();
                                    standing = Standing::Forbidden;
                                }
                                tokio::time::sleep(every).await;
                                break;
                            }
                            Some(ev) => {
                                if matches!(ev, Ok(Event::InitDone)) {
                                    if standing == Standing::Forbidden {
                                        info!(kind = %kind, "allowed to watch it now: watching it");
                                    }
                                    standing = Standing::Watching;
                                }
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                            }
                            None => break,
                        },
                        _ = tick.tick() => {
                            if let Ok(false) = served(&client, &api_version, &plural).await {
                                info!(kind = %kind, "kind no longer served (CRD removed): watch stopped");
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}
