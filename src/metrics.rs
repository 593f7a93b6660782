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
pub struct KubeRequestLabels {
    /// get, list, watch, create, patch, update, delete.
    pub verb: String,
    /// The resource, with its subresource: `deployments`, `ilertpipelines/status`.
    pub resource: String,
}

/// VmRSS of this process from /proc/self/status, in bytes.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss_bytes(&status)
}

/// Pure: the VmRSS line of a /proc/PID/status text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Pure: the verb and resource of a request to the Kubernetes API, from its method and URI.
pub fn kube_request_labels(method: &str, path: &str, query: Option<&str>) -> KubeRequestLabels {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or_default(),
        Some(&"apis") => segments.get(3..).unwrap_or_default(),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [] => "other".to_string(),
        [r] | [r, _] => r.to_string(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
    };
    let named = rest.len() >= 2;
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match method {
        "GET" if watch => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if named => "delete",
        "DELETE" => "deletecollection",
        _ => "other",
    };
    KubeRequestLabels {
        verb: verb.to_string(),
        resource,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// sender, alert_sender, status.
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// workload (one per pipeline), namespace (its labels changed: one per pipeline for each of
    /// its workloads), pipeline (new, or its spec or labels changed: one per workload), resync
    /// (after a re-list or a new lease: every pair).
    pub trigger: String,
}

/// What failed, as `ilert_rollout_reconcile_errors_total{error}` counts it (every failure is
/// retried; the label says where to look).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A watch failed and is re-established with backoff.
    Watch,
    /// Reading or writing the ledger ConfigMaps.
    Ledger,
    /// Reading the Lease for the leader term.
    Lease,
    /// Writing a pipeline's status.
    Status,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Watch => "watch",
            Failure::Ledger => "ledger",
            Failure::Lease => "lease",
            Failure::Status => "status",
        }
    }
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
    pub delivery_delay: Histogram,
    pub pending: Family<PipelineLabels, Gauge>,
    /// Bytes of delivery state a pipeline keeps in its ConfigMaps.
    pub ledger_bytes: Family<PipelineLabels, Gauge>,
    /// Pending events the full ledger could not store: they wait in memory only.
    pub ledger_unstored: Family<PipelineLabels, Gauge>,
    /// 1 while a pipeline's Ready condition is True (as last decided for its status), else 0.
    pub pipeline_ready: Family<PipelineLabels, Gauge>,
    pub rate_limit_waits: Counter,
    pub reconciles: Counter,
    pub decisions: Family<DecisionLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub watched_workloads: Gauge,
    pub leader: Gauge,
    /// Resident memory of the process, read from /proc at each scrape (Linux; 0 elsewhere).
    pub resident_memory: Gauge,
    pub kube_requests: Family<KubeRequestLabels, Counter>,
    pub task_restarts: Family<TaskLabels, Counter>,
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
        let delivery_delay = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "delivery_delay_seconds",
            "From a finished rollout seen (or a pending one reloaded) to ilert accepting its event",
            delivery_delay.clone(),
        );
        let pending = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "pending_events",
            "Rollouts waiting to be sent, per pipeline",
            pending.clone(),
        );
        let ledger_bytes = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "ledger_bytes",
            "Bytes of delivery state a pipeline keeps in its ConfigMaps",
            ledger_bytes.clone(),
        );
        let ledger_unstored = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "ledger_unstored_events",
            "Pending events a full ledger could not store; they wait in memory only",
            ledger_unstored.clone(),
        );
        let pipeline_ready = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "pipeline_ready",
            "1 while a pipeline's Ready condition is True, else 0 (alerts: not Ready for 10 minutes)",
            pipeline_ready.clone(),
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
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Workload and pipeline pairs decided, by what made them due (trigger)",
            decisions.clone(),
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
        let resident_memory = Gauge::default();
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the controller process (VmRSS), read at each scrape",
            resident_memory.clone(),
        );
        let kube_requests = Family::<KubeRequestLabels, Counter>::default();
        registry.register(
            "kube_requests",
            "Requests to the Kubernetes API server, by verb and resource (a watch counts once per connection)",
            kube_requests.clone(),
        );
        let task_restarts = Family::<TaskLabels, Counter>::default();
        registry.register(
            "task_restarts",
            "Pipeline tasks (senders, status writers) started again after they failed, by task",
            task_restarts.clone(),
        );
        Metrics {
            registry,
            task_restarts,
            kube_requests,
            events,
            requests,
            send_duration,
            delivery_delay,
            pending,
            ledger_bytes,
            ledger_unstored,
            pipeline_ready,
            rate_limit_waits,
            reconciles,
            decisions,
            reconcile_errors,
            reconcile_duration,
            watched_workloads,
            leader,
            resident_memory,
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

    /// Counts one request to the Kubernetes API server.
    pub fn kube_request(&self, method: &str, path: &str, query: Option<&str>) {
        self.kube_requests
            .get_or_create(&kube_request_labels(method, path, query))
            .inc();
    }

    /// Counts one pipeline task started again after it failed.
    pub fn task_restart(&self, task: &str) {
        self.task_restarts
            .get_or_create(&TaskLabels { task: task.into() })
            .inc();
    }

    /// Counts `n` workload and pipeline pairs decided because of `trigger`.
    pub fn decided(&self, trigger: &str, n: usize) {
        self.decisions
            .get_or_create(&DecisionLabels {
                trigger: trigger.into(),
            })
            .inc_by(n as u64);
    }

    pub fn error(&self, failure: Failure) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: failure.label().into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        self.resident_memory.set(resident_bytes().unwrap_or(0));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resident_memory_from_proc_status() {
        let status =
            "Name:\tilert-rollout-c\nVmHWM:\t   30000 kB\nVmRSS:\t   18724 kB\nThreads:\t5\n";
        assert_eq!(vm_rss_bytes(status), Some(18724 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn names_the_verb_and_resource_of_every_request_the_controller_makes() {
        let cases = [
            (
                "GET",
                "/apis/apps/v1/deployments",
                Some("watch=true&timeoutSeconds=290&allowWatchBookmarks=true"),
                "watch",
                "deployments",
            ),
            (
                "GET",
                "/apis/apps/v1/deployments",
                Some("limit=500"),
                "list",
                "deployments",
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/team-a/replicasets",
                Some("labelSelector=app%3Dweb"),
                "list",
                "replicasets",
            ),
            (
                "GET",
                "/api/v1/namespaces",
                Some("watch=true"),
                "watch",
                "namespaces",
            ),
            (
                "GET",
                "/api/v1/namespaces/team-a",
                None,
                "get",
                "namespaces",
            ),
            (
                "GET",
                "/api/v1/namespaces/team-a/secrets/ilert",
                None,
                "get",
                "secrets",
            ),
            (
                "PATCH",
                "/apis/ilert.com/v1alpha1/namespaces/team-a/ilertpipelines/p/status",
                Some("fieldManager=x"),
                "patch",
                "ilertpipelines/status",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/ops/configmaps/ilert-ledger-1-a",
                None,
                "patch",
                "configmaps",
            ),
            (
                "POST",
                "/api/v1/namespaces/ops/configmaps",
                None,
                "create",
                "configmaps",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/team-a/events",
                None,
                "create",
                "events",
            ),
            (
                "PATCH",
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/l",
                None,
                "patch",
                "leases",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/ops/configmaps/c",
                None,
                "delete",
                "configmaps",
            ),
            (
                "GET",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ilertpipelines.ilert.com",
                None,
                "get",
                "customresourcedefinitions",
            ),
            ("GET", "/version", None, "list", "other"),
        ];
        for (method, path, query, verb, resource) in cases {
            let l = kube_request_labels(method, path, query);
            assert_eq!(
                (l.verb.as_str(), l.resource.as_str()),
                (verb, resource),
                "{method} {path}"
            );
        }
    }
}
