//! What goes to ilert: the bodies of its two endpoints, without the integration key (it is
//! added at the moment of sending, never stored), and the limits every payload keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pipeline::AlertPriority;

/// ilert's own GitHub action cuts the summary at 1024 characters.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// ... and keeps the whole message under 256 KiB.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// At most this many rollouts go into one combined event.
pub const MAX_COMBINED: usize = 100;
/// An event shaped by templates and annotations larger than this goes out without them: a
/// pending event sits in a ledger ConfigMap (1 MiB for a shard), and a page should be short.
pub const MAX_SHAPED_BYTES: usize = 32 * 1024;

/// The body of `POST /api/deployment-events`, without the integration key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentEvent {
    pub summary: String,
    /// Epoch milliseconds of when the rollout finished.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub custom_details: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<EventLink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventLink {
    pub href: String,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Alert,
    Resolve,
}

/// The body of `POST /api/events`, without the integration key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertEvent {
    pub event_type: EventType,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    pub alert_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<AlertPriority>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<EventLink>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub custom_details: Map<String, Value>,
}
