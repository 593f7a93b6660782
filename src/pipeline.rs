//! The `IlertPipeline` custom resource: where a set of workloads reports its rollouts.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default key inside the Secret that holds the ilert integration key.
pub const DEFAULT_SECRET_KEY: &str = "integrationKey";

/// schemars describes unsigned and small integers as `uint64`, `uint32`, `int8`..., formats the
/// API server does not know (each apply of the CRD warns). It knows int32 and int64 only; the
/// counters never come near i64::MAX, and `minimum: 0` still says they are not negative.
fn api_server_formats(schema: &mut schemars::Schema) {
    let known = match schema.get("format").and_then(|f| f.as_str()) {
        Some("uint64" | "uint" | "uint32") => Some("int64"),
        Some("uint16" | "uint8" | "int16" | "int8") => Some("int32"),
        _ => None,
    };
    if let Some(format) = known {
        schema.insert("format".into(), format.into());
    }
    schemars::transform::transform_subschemas(&mut api_server_formats, schema);
}

/// Reports every finished rollout of the selected workloads to one ilert deployment pipeline.
// Each printcolumn repeats the same keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ilert.com",
    version = "v1alpha1",
    kind = "IlertPipeline",
    namespaced,
    shortname = "ilp",
    category = "ilert",
    status = "IlertPipelineStatus",
    doc = "IlertPipeline reports every finished rollout of the selected workloads to one ilert deployment pipeline as a deployment event.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the pipeline can deliver events"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the pipeline is or is not ready"
    ),
    printcolumn(
        name = "Workloads",
        type_ = "integer",
        json_path = ".status.selectedWorkloads",
        description = "Workloads the pipeline selects"
    ),
    printcolumn(
        name = "Sent",
        type_ = "integer",
        json_path = ".status.eventsSent",
        description = "Events ilert accepted"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.pendingEvents",
        description = "Events waiting to be sent"
    ),
    printcolumn(
        name = "Last Event",
        type_ = "date",
        json_path = ".status.lastEvent.sentAt",
        description = "When ilert last accepted an event"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = api_server_formats)]
pub struct IlertPipelineSpec {
    /// The Secret, in this pipeline's namespace, that holds the ilert deployment pipeline's integration key.
    pub integration_key_secret_ref: SecretKeyRef,

    /// Namespaces whose workloads this pipeline reports, by their labels (`{}` selects every namespace).
    /// Absent: only the pipeline's own namespace. Only pipelines in the controller's trusted namespaces
    /// may set it; elsewhere the pipeline is refused with Ready=False (NamespaceSelectorNotAllowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Workloads to report, by their labels. Absent or `{}`: every workload in the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Kinds of workload to report: Deployment, StatefulSet, DaemonSet, Rollout (Argo Rollouts).
    /// Absent: all four.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub workloads: Option<Vec<Kind>>,

    /// Shapes this pipeline's events: summary, links and custom details as minijinja templates
    /// over the rollout (README, "Templates"). Checked when applied: a template that does not
    /// parse or render makes the pipeline Ready=False (InvalidTemplate) with the error and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<EventTemplate>,

    /// Failed rollouts also page: each opens an ilert alert (one per workload), and the next
    /// successful rollout of that workload resolves it. Absent: no alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,

    /// How rollouts become events. `Workload` (the default): one event per finished rollout.
    /// `Owner`: the rollouts of one owner (Helm release, Argo CD Application, Flux Kustomization
    /// or HelmRelease, as `customDetails.managedBy` names it) that start within
    /// `groupWindowSeconds` of each other are one change, reported as one event once the last of
    /// them finished (or after `groupMaxWaitSeconds`, naming what had not finished). Workloads
    /// without an owner are reported one by one.
    #[serde(default, skip_serializing_if = "GroupBy::is_default")]
    pub group_by: GroupBy,

    /// With `groupBy: Owner`: how far apart, in seconds, the starts of an owner's rollouts may be
    /// and still be one change; the event goes out this long after the last start at the
    /// earliest. Absent: 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub group_window_seconds: Option<u32>,

    /// With `groupBy: Owner`: the longest a change waits for its last rollout, in seconds from its
    /// first start; then it is reported with what finished, naming what did not (those are
    /// reported when they finish). Absent: 900. Never less than the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub group_max_wait_seconds: Option<u32>,

    /// Stops sending while true. Rollouts that finish meanwhile are kept and sent when it is set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// What one event reports (`spec.groupBy`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum GroupBy {
    /// One event per finished rollout of a workload.
    #[default]
    Workload,
    /// One event per change of an owner (Helm release, Argo CD Application, Flux object).
    Owner,
}

impl GroupBy {
    fn is_default(&self) -> bool {
        *self == GroupBy::Workload
    }
}

/// Default of `spec.groupWindowSeconds`.
pub const DEFAULT_GROUP_WINDOW_SECONDS: u32 = 30;
/// Default of `spec.groupMaxWaitSeconds`.
pub const DEFAULT_GROUP_MAX_WAIT_SECONDS: u32 = 900;

/// Where failed rollouts page.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// The Secret, in this pipeline's namespace, that holds the integration key of an ilert alert
    /// source (an API / Events alert source, not the deployment pipeline).
    pub alert_source_key_secret_ref: SecretKeyRef,

    /// Priority of the alerts: HIGH or LOW. Absent: the alert source's own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<AlertPriority>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum AlertPriority {
    High,
    Low,
}

/// Templates for the events of a pipeline.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTemplate {
    /// Replaces the summary (cut to 1,024 characters once rendered). `{{ summary }}` is the
    /// summary the controller would send without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub summary: Option<String>,

    /// Links added to every event; a link whose href renders empty is left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub links: Vec<LinkTemplate>,

    /// Custom details added to every event: name -> template, rendered as a string. A name the
    /// controller also sets (e.g. `namespace`) replaces its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 50))]
    pub custom_details: BTreeMap<String, String>,
}

/// A link of an event; both fields are templates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkTemplate {
    /// The link's text; empty: the href.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub text: String,
    /// The URL.
    #[schemars(length(min = 1, max = 4096))]
    pub href: String,
}

/// A key in a Secret of the pipeline's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the pipeline's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Key in the Secret's data whose value is the integration key.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_secret_key() -> String {
    DEFAULT_SECRET_KEY.to_string()
}

/// What the controller observed and did; written by the controller only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = api_server_formats)]
pub struct IlertPipelineStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: whether events can be delivered, with the reason when they cannot
    /// (SecretNotFound, KeyNotFound, IntegrationKeyRejected, EventRejected, IlertUnavailable,
    /// NamespaceSelectorNotAllowed, InvalidSelector, InvalidTemplate, Suspended). With
    /// `spec.alerts`, `AlertsReady` says the same of the alert source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// How many workloads the pipeline currently selects.
    #[serde(default)]
    pub selected_workloads: u64,

    /// Deployment events ilert accepted (a combined event counts once).
    #[serde(default)]
    pub events_sent: u64,

    /// Rollouts ilert refused for good (400, or the key was rejected) and that were given up.
    #[serde(default)]
    pub events_failed: u64,

    /// Rollouts waiting to be sent.
    #[serde(default)]
    pub pending_events: u64,

    /// The last rollout ilert accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,

    /// With `spec.alerts`: alerts and resolves ilert accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_sent: Option<u64>,

    /// With `spec.alerts`: alerts and resolves ilert refused for good (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_failed: Option<u64>,

    /// With `spec.alerts`: alerts and resolves waiting to be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_alerts: Option<u64>,

    /// The outcome of the last test event (annotation `ilert.com/test-event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_event: Option<TestEventStatus>,
}

/// Annotating a pipeline with `ilert.com/test-event=<any new value>` sends one test event through
/// the real delivery path; each value is sent once.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestEventStatus {
    /// The annotation value that was sent.
    pub value: String,
    /// Accepted, or Rejected (with ilert's error in message).
    pub result: String,
    pub message: String,
    /// When ilert answered (RFC 3339).
    pub at: String,
}

/// The last rollout ilert accepted for this pipeline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastEvent {
    /// `Kind/namespace/name` of the workload.
    pub workload: String,
    /// The workload's revision that rolled out.
    pub revision: String,
    /// Completed, Failed or RolledBack.
    pub outcome: String,
    /// When ilert accepted it (RFC 3339).
    pub sent_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::Value;

    /// The formats the API server recognises in a CRD schema, by type (apiextensions-apiserver,
    /// `GetUnrecognizedFormats`); any other makes every apply print `unrecognized format`.
    fn recognised(type_: Option<&str>, format: &str) -> bool {
        const STRING_FORMATS: [&str; 23] = [
            "bsonobjectid",
            "uri",
            "email",
            "hostname",
            "ipv4",
            "ipv6",
            "cidr",
            "mac",
            "uuid",
            "uuid3",
            "uuid4",
            "uuid5",
            "isbn",
            "isbn10",
            "isbn13",
            "creditcard",
            "ssn",
            "hexcolor",
            "rgbcolor",
            "byte",
            "password",
            "date",
            "duration",
        ];
        match type_ {
            // The API server drops dashes before it looks a string format up: date-time.
            None | Some("string") => {
                let f = format.replace('-', "");
                f == "datetime" || STRING_FORMATS.contains(&f.as_str())
            }
            Some("integer") => ["int32", "int64"].contains(&format),
            Some("number") => ["float", "double"].contains(&format),
            _ => false,
        }
    }

    fn unrecognised_formats(path: &str, schema: &Value, out: &mut Vec<String>) {
        match schema {
            Value::Object(m) => {
                if let Some(f) = m.get("format").and_then(Value::as_str)
                    && !recognised(m.get("type").and_then(Value::as_str), f)
                {
                    out.push(format!("{path}: {f}"));
                }
                for (k, v) in m {
                    unrecognised_formats(&format!("{path}.{k}"), v, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    unrecognised_formats(&format!("{path}[{i}]"), v, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_crd_uses_only_formats_the_api_server_knows() {
        let crd = serde_json::to_value(IlertPipeline::crd()).unwrap();
        let mut found = Vec::new();
        for (i, v) in crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            unrecognised_formats(&format!("versions[{i}]"), &v["schema"], &mut found);
        }
        assert!(
            found.is_empty(),
            "formats the API server does not know: {found:#?}"
        );
        // The counters are still told apart from strings and bounded below.
        let status =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(status["properties"]["eventsSent"]["format"], "int64");
        assert_eq!(status["properties"]["alertsSent"]["format"], "int64");
    }
}

/// The kinds of workload whose rollouts are reported.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// Argo Rollouts' `Rollout` (argoproj.io/v1alpha1), watched once its CRD is installed.
    Rollout,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Rollout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Rollout => "Rollout",
        }
    }

    /// Kinds whose history is in ReplicaSets (the others keep ControllerRevisions).
    pub fn has_replica_sets(self) -> bool {
        matches!(self, Kind::Deployment | Kind::Rollout)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
