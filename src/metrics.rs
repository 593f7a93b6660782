//! Prometheus metrics in OpenMetrics format. Labels never carry the integration key.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Completed, Failed, RolledBack.
    pub outcome: String,
    /// sent, failed.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// accepted, rate_limited, unavailable, key_rejected, event_rejected.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// namespace/name of the IlertPipeline.
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

pub struct Metrics {
    registry: Registry,
    /// Rollouts reported (or given up), by outcome and result.
    pub events: Family<EventLabels, Counter>,
    /// Requests to ilert, by result.
    pub requests: Family<RequestLabels, Counter>,
    pub send_duration: Histogram,
    pub pending: Family<PipelineLabels, Gauge>,
    pub rate_limit_waits: Counter,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub watched_workloads: Gauge,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ilert_rollout");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Rollouts reported to ilert or given up, by outcome and result",
            events.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests to ilert's deployment events API, by result",
            requests.clone(),
        );
        let send_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "send_duration_seconds",
            "Time of one request to ilert",
            send_duration.clone(),
        );
        let pending = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "pending_events",
            "Rollouts waiting to be sent, per pipeline",
            pending.clone(),
        );
        let rate_limit_waits = Counter::default();
        registry.register(
            "rate_limit_waits",
            "Times a send waited for the per-key budget or a 429",
            rate_limit_waits.clone(),
        );
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Workload changes decided against the pipelines",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Errors while deciding or recording rollouts, by kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.00001, 4.0, 10));
        registry.register(
            "reconcile_duration_seconds",
            "Time to decide one workload change",
            reconcile_duration.clone(),
        );
        let watched_workloads = Gauge::default();
        registry.register(
            "watched_workloads",
            "Workloads in the controller's cache",
            watched_workloads.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease and sends",
            leader.clone(),
        );
        Metrics {
            registry,
            events,
            requests,
            send_duration,
            pending,
            rate_limit_waits,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            watched_workloads,
            leader,
        }
    }
}

impl Metrics {
    pub fn event(&self, outcome: &str, result: &str) -> Counter {
        self.events
            .get_or_create(&EventLabels {
                outcome: outcome.into(),
                result: result.into(),
            })
            .clone()
    }

    pub fn request(&self, result: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn error(&self, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: error.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
