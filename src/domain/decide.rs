//! Pure: what one workload, as last seen, owes one pipeline. Events in (the workload's view, the
//! pipeline, the book of what was already recorded), intents out ([`Owed`]): what to remember,
//! what to report, which alert to open or resolve. [`owe`] also books them, so that a rollout is
//! claimed once however often it is seen again before its event is built.

use jiff::Timestamp;

use crate::domain::alerts;
use crate::domain::book::{Book, Writes};
use crate::domain::history::{History, Rollout};
use crate::domain::ledger::{Decision, Entry, RolloutKey, Sight, State, Times, Verdict, judge};
use crate::domain::report;
use crate::domain::rollout::{Finished, Progress, WorkloadView};
use crate::domain::template::Templates;
use crate::pipeline::AlertPriority;

/// What decide needs to know of the pipeline.
pub struct Pipeline<'a> {
    pub uid: &'a str,
    pub created: Timestamp,
    /// `spec.alerts`: its priority when set.
    pub alerts: Option<Option<AlertPriority>>,
}

/// What a selected workload owes its pipeline now.
#[derive(Debug, PartialEq)]
pub struct Owed {
    /// Seen, not reported: the first-sight baseline or a rollout under way, recorded as such.
    pub remembered: Option<RolloutKey>,
    /// A rollout is under way: have a key ready for when it finishes.
    pub warm: bool,
    /// The rollout that finished, when it owes something (`report` or `alert`).
    pub finished: Option<(RolloutKey, Finished)>,
    /// A deployment event is owed (claimed in the pipeline's ledger).
    pub report: bool,
    /// An alert or resolve is owed (claimed in the pipeline's alerts ledger), and its priority.
    pub alert: Option<(alerts::Action, Option<AlertPriority>)>,
}

/// Decides what `w` owes pipeline `p`, given what `book` recorded.
pub fn owed(w: &WorkloadView, p: &Pipeline, book: &Book) -> Owed {
    let sight = Sight {
        workload_uid: &w.uid,
        finished: w.finished(),
        workload_created: w.created_at,
        pipeline_created: p.created,
    };
    let known = book.of_workload(p.uid, &w.uid).map(|(k, _)| k);
    let (report, remembered) = match judge(known, &sight) {
        Verdict::Report(_) => (true, None),
        Verdict::Remember(key) => (false, Some(key)),
        Verdict::Nothing => (false, None),
    };
    let nothing = Owed {
        remembered,
        warm: false,
        finished: None,
        report: false,
        alert: None,
    };
    let Some(finished) = sight.finished else {
        return Owed {
            warm: w.progress() == Progress::InProgress,
            ..nothing
        };
    };
    let key = RolloutKey::new(&w.uid, &finished);
    let times = Times {
        finished: finished.finished_at,
        workload_created: w.created_at,
        pipeline_created: p.created,
    };
    // Alerts decide on their own ledger: a crash between the two claims loses neither.
    let alerts_ledger = alerts::ledger_id(p.uid);
    let alert = p.alerts.and_then(|priority| {
        // A failure from before the pipeline, or older than one already known, pages no one.
        let stale = key.outcome.is_failure()
            && matches!(
                book.decide(&alerts_ledger, &key, times),
                Decision::Baseline | Decision::Superseded
            );
        if stale {
            return None;
        }
        let action = alerts::action(&key, book.of_workload(&alerts_ledger, &w.uid))?;
        Some((action, priority))
    });
    if !report && alert.is_none() {
        return nothing;
    }
    Owed {
        finished: Some((key, finished)),
        report,
        alert,
        ..nothing
    }
}

/// [`owed`], booked: the remembered entry recorded (its writes returned), the report and the
/// alert claimed in memory until their events are built.
pub fn owe(book: &mut Book, w: &WorkloadView, p: &Pipeline) -> (Owed, Writes) {
    let owed = owed(w, p, book);
    let writes = match &owed.remembered {
        Some(key) => book.record(p.uid, &[(key.clone(), entry(w, State::Baseline))]),
        None => Writes::new(),
    };
    if let Some((key, _)) = &owed.finished {
        if owed.report {
            book.claim(p.uid, key.clone(), entry(w, State::Pending));
        }
        if owed.alert.is_some() {
            book.claim(
                &alerts::ledger_id(p.uid),
                key.clone(),
                entry(w, State::Pending),
            );
        }
    }
    (owed, writes)
}

/// The entry of a workload with nothing to send (yet).
fn entry(w: &WorkloadView, state: State) -> Entry {
    Entry::new(state, w.reference())
}

/// What one finished rollout sends, once its history is known: the pending ledger entries that
/// carry its deployment event and its alert, and what did not render.
#[derive(Debug)]
pub struct Pending {
    /// For the pipeline's ledger, when a deployment event is owed.
    pub event: Option<Entry>,
    /// For the alerts ledger, when an alert or resolve is owed.
    pub alert: Option<Entry>,
    /// A template or `ilert.com/*` annotation that did not render (the event went without it).
    pub warnings: Vec<String>,
}

/// How a pipeline shapes its events: the cluster's name and the pipeline's checked templates.
#[derive(Clone, Copy)]
pub struct Shaping<'a> {
    pub cluster: &'a str,
    pub templates: Option<&'a Templates>,
}

/// Builds what [`Owed`] names for rollout `finished` of `w`, with its `history`; `now` stands in
/// for a missing finish time.
pub fn pending(
    w: &WorkloadView,
    finished: Finished,
    history: History,
    now: Timestamp,
    shaping: Shaping,
    report: bool,
    alert: Option<(alerts::Action, Option<AlertPriority>)>,
) -> Pending {
    let Shaping { cluster, templates } = shaping;
    let rollout = Rollout::new(w, finished, history, now);
    let (event, warnings) = report::deployment_event(&rollout, cluster, templates);
    let entry = |event: Option<_>, alert: Option<_>| {
        Entry::new(State::Pending, w.reference())
            .with_outcome(Some(rollout.outcome))
            .with_event(event)
            .with_alert(alert)
    };
    let alert = alert.map(|(action, priority)| {
        let alert = alerts::event(action, &event, &w.reference(), cluster, priority);
        entry(None, Some(alert))
    });
    Pending {
        event: report.then(|| entry(Some(event), None)),
        alert,
        warnings,
    }
}
