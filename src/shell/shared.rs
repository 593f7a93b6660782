//! What every task of one controller instance shares: its settings, readiness, the clients
//! and the ledger.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;
use tokio::sync::watch;

use crate::domain::pacing::Budget;
use crate::metrics::Metrics;
use crate::shell::ilert::{IlertClient, IntegrationKey};
use crate::shell::ledger_store::Ledger;

/// Settings of one controller instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The controller's own namespace: delivery state lives here.
    pub namespace: String,
    /// Namespaces whose pipelines may use `namespaceSelector`.
    pub trusted_namespaces: Vec<String>,
    pub cluster_name: String,
    pub rate_limit_per_minute: u32,
    /// The same for alert source keys (`spec.alerts`).
    pub alert_rate_limit_per_minute: u32,
    /// Serve only pipelines with these labels (splits a cluster, or isolates tests).
    pub pipeline_selector: Option<String>,
    /// Longest wait between retries of an unavailable ilert.
    pub retry_cap: Duration,
    /// Time-out of one request to ilert.
    pub ilert_timeout: Duration,
    /// How often discovery is asked whether an optional kind (Argo Rollouts) is served.
    pub discovery_interval: Duration,
    /// The Lease of leader election in `namespace`; None: no election, always leading.
    pub lease: Option<String>,
    /// How much delivery state one pipeline may keep in ConfigMaps.
    pub ledger_capacity: crate::domain::book::Capacity,
    pub instance: String,
}

/// Whether the caches are synced and the backlog decided.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ilert_timeout: Duration,
    /// Set on SIGTERM: senders finish the request in flight and stop.
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) client: Client,
    pub(crate) ilert: IlertClient,
    pub(crate) cfg: Config,
    pub(crate) ledger: Ledger,
    pub(crate) budgets: Mutex<HashMap<IntegrationKey, Budget>>,
    pub(crate) recorder: Recorder,
    /// Bounds the ReplicaSet lists of a burst of finished rollouts.
    pub(crate) history_lists: tokio::sync::Semaphore,
}

pub(crate) fn jitter() -> f64 {
    rand::random()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
