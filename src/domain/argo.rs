//! Pure: Argo Rollouts' `Rollout` (argoproj.io/v1alpha1), the fields of it rollout detection
//! reads, and when one of its rollouts has ended. The rules follow Argo Rollouts' own
//! (`utils/rollout/rolloututil.go` at v1.10.2: `GetRolloutPhase`, `IsFullyPromoted`): a Rollout
//! is done when its controller has observed the spec, calls it Healthy and the stable ReplicaSet
//! is the current pod hash; pauses (canary pause steps, blue-green pre-promotion) are not an end.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "argoproj.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "argoproj.io/v1alpha1";
pub const KIND: &str = "Rollout";
pub const PLURAL: &str = "rollouts";
/// Argo's `status.message` is kept cut to this many characters (as long as a kept annotation).
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// A Rollout as far as this controller reads it (serde skips every other field).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Rollout {
    pub metadata: ObjectMeta,
    pub spec: Option<RolloutSpec>,
    pub status: Option<RolloutStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub replicas: Option<i32>,
    pub paused: Option<bool>,
    pub selector: Option<LabelSelector>,
    pub template: Option<PodTemplateSpec>,
    pub workload_ref: Option<WorkloadRef>,
    pub strategy: Option<Strategy>,
}

/// `spec.workloadRef`: the Deployment whose template the Rollout runs (Argo scales it down).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    pub kind: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    pub canary: Option<Canary>,
    pub blue_green: Option<BlueGreen>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Canary {
    /// Only how many there are is read.
    pub steps: Option<Vec<serde_json::Value>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreen {
    pub auto_promotion_enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub phase: Option<String>,
    pub message: Option<String>,
    /// A string in Argo Rollouts (the generation, written as a number since v0.10).
    pub observed_generation: Option<String>,
    pub workload_observed_generation: Option<String>,
    pub current_pod_hash: Option<String>,
    #[serde(rename = "stableRS")]
    pub stable_rs: Option<String>,
    pub current_step_index: Option<i32>,
    pub abort: Option<bool>,
    pub aborted_at: Option<Time>,
    pub controller_pause: Option<bool>,
    pub pause_conditions: Option<Vec<serde_json::Value>>,
    pub replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    pub blue_green: Option<BlueGreenStatus>,
    pub conditions: Option<Vec<Condition>>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStatus {
    pub active_selector: Option<String>,
    pub preview_selector: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_update_time: Option<Time>,
    pub last_transition_time: Option<Time>,
}

/// Progressive delivery strategy of a Rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyKind {
    Canary,
    BlueGreen,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Canary => "canary",
            StrategyKind::BlueGreen => "blueGreen",
        }
    }
}

/// What the view of a Rollout keeps beyond what every workload has (boxed in the view: other
/// kinds pay one pointer for it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArgoState {
    pub strategy: Option<StrategyKind>,
    /// Canary: how many steps the strategy has, and the index of the current one.
    pub steps: usize,
    pub step_index: Option<i32>,
    /// `status.phase` and `status.message` as Argo Rollouts computes them.
    pub phase: Option<Box<str>>,
    pub message: Option<String>,
    pub abort: bool,
    pub aborted_at: Option<Timestamp>,
    /// The pod template hash of the desired ReplicaSet and of the stable one.
    pub current_pod_hash: Option<Box<str>>,
    pub stable_pod_hash: Option<Box<str>>,
    /// Pause conditions (pause steps, blue-green pre-promotion) or `spec.paused`.
    pub paused: bool,
    /// `controllerPause` with no pause condition left: a promotion Argo has not acted on yet.
    pub unpausing: bool,
    /// `spec.workloadRef` to a Deployment: its name.
    pub workload_ref: Option<Box<str>>,
    /// With a workloadRef: whether Argo has observed the Deployment's latest generation.
    pub workload_observed: bool,
}

/// The generation Argo Rollouts has observed: a number since v0.10; an older non-numeric hash
/// counts as observed, as `GetRolloutPhase` counts it.
pub fn observed_generation(status: &RolloutStatus, generation: i64) -> i64 {
    match status.observed_generation.as_deref() {
        None => 0,
        Some(g) => g.parse().unwrap_or(generation),
    }
}

impl ArgoState {
    pub fn of(r: &Rollout) -> Self {
        let spec = r.spec.as_ref();
        let status = r.status.as_ref();
        let strategy = spec.and_then(|s| s.strategy.as_ref());
        let kind = strategy.and_then(|s| {
            if s.blue_green.is_some() {
                Some(StrategyKind::BlueGreen)
            } else if s.canary.is_some() {
                Some(StrategyKind::Canary)
            } else {
                None
            }
        });
        let pause_conditions = status
            .and_then(|s| s.pause_conditions.as_ref())
            .is_some_and(|p| !p.is_empty());
        let controller_pause = status.and_then(|s| s.controller_pause).unwrap_or(false);
        let workload_ref = spec
            .and_then(|s| s.workload_ref.as_ref())
            .filter(|w| w.kind.as_deref().unwrap_or("Deployment") == "Deployment")
            .and_then(|w| w.name.as_deref())
            .map(Into::into);
        // Argo writes the Deployment's generation it has seen as an annotation, and the one it
        // has acted on in status (`isWorkloadGenerationObserved`).
        let workload_observed = match r
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::domain::keys::ARGO_WORKLOAD_GENERATION))
        {
            None => true,
            Some(want) => status
                .and_then(|s| s.workload_observed_generation.as_deref())
                .is_none_or(|seen| seen == want),
        };
        ArgoState {
            strategy: kind,
            steps: strategy
                .and_then(|s| s.canary.as_ref())
                .and_then(|c| c.steps.as_ref())
                .map_or(0, Vec::len),
            step_index: status.and_then(|s| s.current_step_index),
            phase: status.and_then(|s| s.phase.as_deref()).map(Into::into),
            // A line of context, not a document.
            message: status
                .and_then(|s| s.message.as_deref())
                .map(|m| crate::domain::text::truncate(m, MAX_MESSAGE_CHARS)),
            abort: status.and_then(|s| s.abort).unwrap_or(false),
            aborted_at: status.and_then(|s| s.aborted_at.as_ref()).map(|t| t.0),
            current_pod_hash: status
                .and_then(|s| s.current_pod_hash.as_deref())
                .map(Into::into),
            stable_pod_hash: status.and_then(|s| s.stable_rs.as_deref()).map(Into::into),
            paused: pause_conditions || spec.and_then(|s| s.paused).unwrap_or(false),
            unpausing: controller_pause && !pause_conditions,
            workload_ref,
            workload_observed,
        }
    }

    /// `IsFullyPromoted`: the stable ReplicaSet is the desired one.
    pub fn fully_promoted(&self) -> bool {
        self.stable_pod_hash.is_some() && self.stable_pod_hash == self.current_pod_hash
    }

    pub fn healthy(&self) -> bool {
        self.phase.as_deref() == Some("Healthy")
    }

    /// Canary steps taken, as `3/3`; None for blue-green or a canary without steps.
    pub fn steps_line(&self) -> Option<String> {
        if self.steps == 0 {
            return None;
        }
        let taken = self
            .step_index
            .map_or(0, |i| usize::try_from(i).unwrap_or(0))
            .min(self.steps);
        Some(format!("{taken}/{}", self.steps))
    }
}
