//! Pure: the two things a pipeline sends, deployment events and alerts, and what differs
//! between them: the key's Secret, what one request carries.

use crate::domain::alerts;
use crate::domain::group::{self, Closing};
use crate::domain::ledger::Entry;
use crate::domain::payload::DeploymentEvent;
use crate::domain::report;
use crate::pipeline::{IlertPipelineSpec, SecretKeyRef};

/// One request: how many of the waiting events it covers, its body, and what did not render of
/// the templates of a change's event.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    pub take: usize,
    pub body: serde_json::Value,
    pub warnings: Vec<String>,
}

/// What the entries of one queue send: a deployment event, or an alert. It is taken out of each
/// entry as the entry is queued, so a queued entry always has one and a batch has a body for each
/// of its entries.
pub trait Payload: Clone + Send + Sync + 'static {
    const CHANNEL: Channel;
    /// The payload of a pending entry, taken out of it; None: it has nothing to send.
    fn take_from(entry: &mut Entry) -> Option<Self>;
    /// How many of `waiting` (oldest first) go out in one request, and its body. `group`: they
    /// are the members of one closed change (`spec.groupBy: Owner`).
    fn request(waiting: &[Self], group: Option<&Closing>, cluster: &str, key: &str) -> Request;
    fn alert_type(&self) -> Option<alerts::EventType> {
        None
    }
}

impl Payload for DeploymentEvent {
    const CHANNEL: Channel = Channel::Deployments;
    fn take_from(entry: &mut Entry) -> Option<Self> {
        entry.take_event()
    }
    fn request(waiting: &[Self], group: Option<&Closing>, cluster: &str, key: &str) -> Request {
        let take = report::combinable(waiting, cluster).min(waiting.len());
        let (event, warnings) = match (&waiting[..take], group) {
            ([], _) => return Request::default(),
            (members, Some(closing)) => group::event(members, *closing, cluster),
            (events, None) => (report::combine(events, cluster), Vec::new()),
        };
        Request {
            take,
            body: report::body(&event, key),
            warnings,
        }
    }
}

/// Never combined: each has its workload's alert key.
impl Payload for alerts::AlertEvent {
    const CHANNEL: Channel = Channel::Alerts;
    fn take_from(entry: &mut Entry) -> Option<Self> {
        entry.take_alert()
    }
    fn request(waiting: &[Self], _group: Option<&Closing>, _cluster: &str, key: &str) -> Request {
        match waiting.first() {
            Some(alert) => Request {
                take: 1,
                body: report::body(alert, key),
                warnings: Vec::new(),
            },
            None => Request::default(),
        }
    }
    fn alert_type(&self) -> Option<alerts::EventType> {
        Some(self.event_type)
    }
}

/// What a sender delivers: deployment events to the pipeline's key, or alerts and resolves to the
/// alert source's key (`spec.alerts`; never combined: each has its workload's alert key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Deployments,
    Alerts,
}

impl Channel {
    /// The Secret reference of the key, and the field that names it; None: nothing to send to.
    pub fn secret_ref(self, spec: &IlertPipelineSpec) -> Option<(&SecretKeyRef, &'static str)> {
        match self {
            Channel::Deployments => Some((
                &spec.integration_key_secret_ref,
                "spec.integrationKeySecretRef",
            )),
            Channel::Alerts => spec.alerts.as_ref().map(|a| {
                (
                    &a.alert_source_key_secret_ref,
                    "spec.alerts.alertSourceKeySecretRef",
                )
            }),
        }
    }

    /// What ilert calls the thing the key belongs to.
    pub fn key_owner(self) -> &'static str {
        match self {
            Channel::Deployments => "an ilert deployment pipeline",
            Channel::Alerts => "an ilert alert source (API / Events integration)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::report;
    use jiff::Timestamp;

    fn event(value: &str) -> DeploymentEvent {
        report::test_event("shop/p", "prod", value, Timestamp::now())
    }

    #[test]
    fn a_request_covers_exactly_the_entries_it_names() {
        let events: Vec<DeploymentEvent> = (0..3).map(|i| event(&i.to_string())).collect();
        let Request { take, body, .. } = DeploymentEvent::request(&events, None, "prod", "key");
        assert_eq!(take, 3);
        assert_eq!(body["integrationKey"], "key");
        assert!(
            body["summary"].as_str().is_some_and(|s| s.contains('3')),
            "{body}"
        );
        let Request { take, body, .. } =
            DeploymentEvent::request(&events[..1], None, "prod", "key");
        assert_eq!(take, 1);
        assert_eq!(body["summary"], events[0].summary.as_str());
        assert_eq!(
            DeploymentEvent::request(&[], None, "prod", "key"),
            Request::default()
        );
    }
}
