//! Pure: what a pipeline's status says. Its problems, its readiness per channel, its conditions
//! (transition times kept while readiness stays the same; `now` comes in as a parameter).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::domain::channel::Channel;
use crate::pipeline::{IlertPipelineStatus, LastEvent, TestEventStatus};

/// Why a pipeline is (not) Ready: the `reason` of its conditions and Kubernetes Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Ready,
    KeyNotRead,
    Suspended,
    LedgerFull,
    // The pipeline's spec.
    InvalidSelector,
    InvalidTemplate,
    NamespaceSelectorNotAllowed,
    // Reading the key from its Secret.
    SecretNotFound,
    KeyNotFound,
    SecretForbidden,
    SecretUnavailable,
    // ilert's answers.
    IntegrationKeyRejected,
    IlertUnavailable,
    EventRejected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::KeyNotRead => "KeyNotRead",
            Reason::Suspended => "Suspended",
            Reason::LedgerFull => "LedgerFull",
            Reason::InvalidSelector => "InvalidSelector",
            Reason::InvalidTemplate => "InvalidTemplate",
            Reason::NamespaceSelectorNotAllowed => "NamespaceSelectorNotAllowed",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::KeyNotFound => "KeyNotFound",
            Reason::SecretForbidden => "SecretForbidden",
            Reason::SecretUnavailable => "SecretUnavailable",
            Reason::IntegrationKeyRejected => "IntegrationKeyRejected",
            Reason::IlertUnavailable => "IlertUnavailable",
            Reason::EventRejected => "EventRejected",
        }
    }

    /// A problem reading the key from its Secret: a successful read clears it.
    pub fn is_secret_problem(self) -> bool {
        matches!(
            self,
            Reason::SecretNotFound
                | Reason::KeyNotFound
                | Reason::SecretForbidden
                | Reason::SecretUnavailable
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem that makes a pipeline not Ready: a reason for the condition and a message that says
/// what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

/// Whether a channel is ready, why, and what to do about it.
pub type Readiness = (bool, Reason, String);

#[derive(Default)]
pub struct Stats {
    pub generation: Option<i64>,
    pub selected: u64,
    pub sent: u64,
    pub failed: u64,
    pub pending: u64,
    pub last_event: Option<LastEvent>,
    pub test_event: Option<TestEventStatus>,
    pub config_problem: Option<Problem>,
    pub delivery_problem: Option<Problem>,
    pub suspended: bool,
    /// Alert stats only: `spec.alerts` is set.
    pub enabled: bool,
    /// The Secret the key was last read from (`namespace/name key k`); None until it was.
    pub key_read_from: Option<String>,
    /// ilert accepted an event (or test event) of this channel since the key was read, or the
    /// status says the last one went out.
    pub accepted: bool,
    /// Pending events the full ledger could not store (in memory only).
    pub unstored: usize,
    pub dirty: bool,
}

impl Stats {
    pub fn ready(&self) -> Readiness {
        self.ready_for(Channel::Deployments)
    }

    pub fn ready_for(&self, channel: Channel) -> Readiness {
        let (ready, reason, mut message) = self.readiness(channel);
        if self.unstored == 0 {
            return (ready, reason, message);
        }
        let full = format!(
            "the delivery state is full: {} pending events wait in memory only (lost if the controller restarts before they are sent and their workloads move on)",
            self.unstored
        );
        if !ready {
            message = format!("{message}; {full}");
            return (false, reason, message);
        }
        (
            false,
            Reason::LedgerFull,
            format!("{full}; they are stored once delivered events make room"),
        )
    }

    pub fn readiness(&self, channel: Channel) -> Readiness {
        let (key, event) = match channel {
            Channel::Deployments => ("Integration key", "event"),
            Channel::Alerts => ("Alert source key", "alert"),
        };
        if let Some(p) = &self.config_problem {
            return (false, p.reason, p.message.clone());
        }
        if self.suspended {
            return (
                false,
                Reason::Suspended,
                "spec.suspend is true: rollouts are recorded and sent once it is false".into(),
            );
        }
        if let Some(p) = &self.delivery_problem {
            return (false, p.reason, p.message.clone());
        }
        // Only what is known: the key was read; whether ilert has taken an event with it yet.
        let Some(from) = &self.key_read_from else {
            return (
                false,
                Reason::KeyNotRead,
                format!("{key} not read from its Secret yet"),
            );
        };
        let message = if self.accepted {
            format!("{key} read from Secret {from}; ilert accepted the last {event}")
        } else {
            format!("{key} read from Secret {from}; no {event} sent yet")
        };
        (true, Reason::Ready, message)
    }

    /// Whether readiness is known: the key was read (or could not be), or something else
    /// already makes the pipeline not ready.
    pub fn ready_known(&self) -> bool {
        self.key_read_from.is_some()
            || self.config_problem.is_some()
            || self.delivery_problem.is_some()
            || self.suspended
    }
}

/// A condition's readiness, and since when it has been so.
pub type Since = Option<(bool, Reason, String, Time)>;

/// The condition for `ready`, keeping its transition time while readiness stays the same.
pub fn condition(
    type_: &str,
    (ready, reason, message): Readiness,
    last: &mut Since,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = match last {
        Some((r, _, _, t)) if *r == ready => t.clone(),
        _ => Time(now),
    };
    *last = Some((ready, reason, message.clone(), since.clone()));
    Condition {
        type_: type_.into(),
        status: if ready { "True" } else { "False" }.into(),
        reason: reason.as_str().into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// The conditions last written, so that their transition times carry over.
#[derive(Default)]
pub struct Conditions {
    pub ready: Since,
    pub alerts_ready: Since,
}

/// The status of a pipeline from its counters (`s`, deployment events; `a`, alerts) and what its
/// queues hold now (`queued`: events, alerts).
pub fn status(
    s: &Stats,
    a: &Stats,
    queued: (usize, usize),
    last: &mut Conditions,
    now: Timestamp,
) -> IlertPipelineStatus {
    let mut conditions = vec![condition(
        "Ready",
        s.ready(),
        &mut last.ready,
        s.generation,
        now,
    )];
    let alerts = a.enabled.then(|| {
        let mut ready = a.ready_for(Channel::Alerts);
        // A problem of the pipeline's spec stops alerts too.
        if let Some(p) = &s.config_problem {
            ready = (false, p.reason, p.message.clone());
        }
        conditions.push(condition(
            "AlertsReady",
            ready,
            &mut last.alerts_ready,
            s.generation,
            now,
        ));
        (a.sent, a.failed, a.pending.max(queued.1 as u64))
    });
    IlertPipelineStatus {
        observed_generation: s.generation,
        conditions,
        selected_workloads: s.selected,
        events_sent: s.sent,
        events_failed: s.failed,
        pending_events: s.pending.max(queued.0 as u64),
        last_event: s.last_event.clone(),
        test_event: s.test_event.clone(),
        alerts_sent: alerts.map(|a| a.0),
        alerts_failed: alerts.map(|a| a.1),
        pending_alerts: alerts.map(|a| a.2),
    }
}
