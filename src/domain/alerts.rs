//! Pure: failed rollouts that page. With `spec.alerts`, a Failed rollout also opens an ilert alert
//! (Events API, `ALERT`) under a key stable per workload, and the next Completed or RolledBack
//! rollout of that workload resolves it (`RESOLVE`). Alerts have a ledger of their own beside the
//! pipeline's ([`ledger_id`]), so they get the same exactly-once rules as deployment events.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::domain::ledger::{Entry, RolloutKey, State};
pub use crate::domain::payload::{AlertEvent, EventType};
use crate::domain::payload::{DeploymentEvent, MAX_SUMMARY_CHARS};
use crate::domain::rollout::{Kind, Outcome};
use crate::domain::text::{WorkloadRef, on_cluster, truncate};
use crate::pipeline::AlertPriority;

/// The alerts ledger of pipeline `uid` (ConfigMaps `ilert-ledger-<uid>-alerts-<shard>`).
pub fn ledger_id(pipeline_uid: &str) -> String {
    format!("{pipeline_uid}{LEDGER_SUFFIX}")
}

pub const LEDGER_SUFFIX: &str = "-alerts";

/// The revision of the key under which a deleted workload's RESOLVE is recorded: after every
/// real revision, so the workload's entries read in order.
pub const GONE_REVISION: u64 = u64::MAX;

/// The pipeline a ledger id belongs to (its own uid, or the uid its alerts ledger is named after).
pub fn pipeline_of(ledger_id: &str) -> &str {
    ledger_id.strip_suffix(LEDGER_SUFFIX).unwrap_or(ledger_id)
}

/// One key per workload and cluster: every failure of the workload lands in the same open alert,
/// and a resolve finds it. Case does not matter to ilert; names are lower case anyway.
pub fn alert_key(cluster: &str, workload: &str) -> String {
    if cluster.is_empty() {
        format!("ilert-rollout-controller/{workload}")
    } else {
        format!("ilert-rollout-controller/{cluster}/{workload}")
    }
}

/// What a newly finished rollout does to the workload's alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Alert,
    Resolve,
}

/// Pure: the action for `key` given the workload's entries in the alerts ledger. A failure opens
/// (or adds to) the alert; a success resolves only an alert that was opened and not resolved
/// since: a workload that never failed sends nothing to the Events API.
pub fn action<'a>(
    key: &RolloutKey,
    known: impl IntoIterator<Item = (&'a RolloutKey, &'a Entry)>,
) -> Option<Action> {
    let mut last_alert = None;
    let mut last_resolve = None;
    for (k, e) in known {
        if k == key {
            return None;
        }
        match k.outcome {
            // An ALERT ilert refused for good opened nothing; a refused RESOLVE closed nothing.
            _ if e.state == State::Failed => {}
            o if o.is_failure() => last_alert = last_alert.max(Some(k.revision)),
            _ => last_resolve = last_resolve.max(Some(k.revision)),
        }
    }
    match key.outcome {
        o if o.is_failure() => Some(Action::Alert),
        _ => match (last_alert, last_resolve) {
            (Some(a), Some(r)) if r >= a => None,
            (Some(_), _) => Some(Action::Resolve),
            (None, _) => None,
        },
    }
}

/// The alert or resolve for a rollout, from the deployment event the pipeline sends for it (its
/// summary, links and details, templates applied).
pub fn event(
    action: Action,
    deployment: &DeploymentEvent,
    workload: &str,
    cluster: &str,
    priority: Option<AlertPriority>,
) -> AlertEvent {
    let d = &deployment.custom_details;
    let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    let mut labels = BTreeMap::new();
    for k in ["cluster", "namespace", "kind", "name"] {
        if let Some(v) = text(k) {
            labels.insert(k.to_string(), v);
        }
    }
    let mut lines = Vec::new();
    match action {
        Action::Alert if text("outcome").as_deref() == Some(Outcome::Aborted.as_str()) => {
            let why = d
                .get("argoRollout")
                .and_then(|a| a.get("message"))
                .and_then(Value::as_str)
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            lines.push(format!(
                "{workload} aborted its rollout of revision {} and went back to the stable ReplicaSet{why}.",
                text("revision").unwrap_or_default()
            ))
        }
        Action::Alert => lines.push(format!(
            "{workload} did not finish rolling out revision {} within its progress deadline.",
            text("revision").unwrap_or_default()
        )),
        Action::Resolve => lines.push(format!(
            "{workload} rolled out revision {} ({}).",
            text("revision").unwrap_or_default(),
            text("outcome").unwrap_or_default()
        )),
    }
    // container=image, ...
    let images = |k: &str| {
        d.get(k).and_then(Value::as_object).map(|m| {
            m.iter()
                .map(|(c, i)| format!("{c}={}", i.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    if let Some(list) = images("images") {
        lines.push(format!("Images: {list}"));
    }
    if let Some(list) = images("previousImages") {
        lines.push(format!(
            "Previous images (revision {}): {list}",
            text("previousRevision").unwrap_or_default()
        ));
    }
    for (label, k) in [
        ("Changed by", "changedBy"),
        ("Change cause", "changeCause"),
        ("Commit", "commit"),
    ] {
        if let Some(v) = text(k) {
            lines.push(format!("{label}: {v}"));
        }
    }
    if action == Action::Alert {
        let look = match WorkloadRef::parse(workload) {
            // Argo Rollouts' kubectl plugin shows the steps, ReplicaSets and analysis.
            Some(w) if w.kind == Kind::Rollout.as_str() => format!(
                "Look at: kubectl argo rollouts get rollout {} -n {} ; kubectl describe {}",
                w.name,
                w.namespace,
                kubectl_ref(workload)
            ),
            _ => format!(
                "Look at: kubectl rollout status {} ; kubectl describe {}",
                kubectl_ref(workload),
                kubectl_ref(workload)
            ),
        };
        lines.push(look);
    }
    let mut custom_details = d.clone();
    custom_details.insert("source".into(), json!("ilert-rollout-controller"));
    AlertEvent {
        event_type: match action {
            Action::Alert => EventType::Alert,
            Action::Resolve => EventType::Resolve,
        },
        summary: truncate(&deployment.summary, MAX_SUMMARY_CHARS),
        details: Some(lines.join("\n")),
        alert_key: alert_key(cluster, workload),
        priority: match action {
            Action::Alert => priority,
            Action::Resolve => None,
        },
        links: deployment.links.clone(),
        labels,
        custom_details,
    }
}

/// The RESOLVE for a workload that was deleted with its alert open: nothing will ever roll it
/// out again to resolve it.
pub fn gone_event(workload: &str, cluster: &str) -> AlertEvent {
    let WorkloadRef {
        kind,
        namespace,
        name,
    } = WorkloadRef::split(workload);
    let mut labels = BTreeMap::new();
    if !cluster.is_empty() {
        labels.insert("cluster".to_string(), cluster.to_string());
    }
    labels.insert("namespace".to_string(), namespace.to_string());
    labels.insert("kind".to_string(), kind.to_string());
    labels.insert("name".to_string(), name.to_string());
    let on = on_cluster(cluster);
    let mut custom_details = Map::new();
    custom_details.insert("source".into(), json!("ilert-rollout-controller"));
    custom_details.insert("reason".into(), json!("deleted"));
    AlertEvent {
        event_type: EventType::Resolve,
        summary: truncate(
            &format!("Deleted: {kind} {namespace}/{name}{on}; its failed rollout no longer runs"),
            MAX_SUMMARY_CHARS,
        ),
        details: Some(format!(
            "{workload} was deleted while its last rollout had failed; the alert is resolved."
        )),
        alert_key: alert_key(cluster, workload),
        priority: None,
        links: Vec::new(),
        labels,
        custom_details,
    }
}

/// `Kind/namespace/name` -> `-n namespace kind/name`.
fn kubectl_ref(workload: &str) -> String {
    match WorkloadRef::parse(workload) {
        Some(w) => format!(
            "-n {} {}/{}",
            w.namespace,
            w.kind.to_ascii_lowercase(),
            w.name
        ),
        None => workload.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(revision: u64, outcome: Outcome) -> RolloutKey {
        RolloutKey {
            workload_uid: "u".into(),
            revision,
            outcome,
        }
    }

    fn entry(state: State) -> Entry {
        Entry::new(state, "Deployment/ns/web")
    }

    #[test]
    fn a_failure_alerts_and_the_next_success_resolves_once() {
        use Outcome::*;
        let none: Vec<(RolloutKey, Entry)> = vec![];
        let refs = |v: &[(RolloutKey, Entry)]| -> Vec<(RolloutKey, Entry)> { v.to_vec() };
        let act = |k: RolloutKey, v: &[(RolloutKey, Entry)]| {
            let v = refs(v);
            action(&k, v.iter().map(|(k, e)| (k, e)))
        };
        // Never failed: a success sends nothing.
        assert_eq!(act(key(1, Completed), &none), None);
        assert_eq!(act(key(2, Failed), &none), Some(Action::Alert));
        let failed = [(key(2, Failed), entry(State::Sent))];
        assert_eq!(act(key(2, Failed), &failed), None, "known");
        // The same revision recovering, or a later one, resolves.
        assert_eq!(act(key(2, Completed), &failed), Some(Action::Resolve));
        assert_eq!(act(key(3, RolledBack), &failed), Some(Action::Resolve));
        // Resolved: nothing more.
        let resolved = [
            (key(2, Failed), entry(State::Sent)),
            (key(2, Completed), entry(State::Pending)),
        ];
        assert_eq!(act(key(3, Completed), &resolved), None);
        // An ALERT ilert refused opened nothing to resolve.
        let refused = [(key(2, Failed), entry(State::Failed))];
        assert_eq!(act(key(3, Completed), &refused), None);
        // Failing again after a resolve opens the alert again.
        assert_eq!(act(key(4, Failed), &resolved), Some(Action::Alert));
        // A RESOLVE ilert refused closed nothing: the next success tries again.
        let refused_resolve = [
            (key(2, Failed), entry(State::Sent)),
            (key(3, Completed), entry(State::Failed)),
        ];
        assert_eq!(
            act(key(4, Completed), &refused_resolve),
            Some(Action::Resolve)
        );
    }

    #[test]
    fn a_deleted_workload_resolves_its_open_alert_once() {
        let gone = key(GONE_REVISION, Outcome::Completed);
        let open = [(key(2, Outcome::Failed), entry(State::Sent))];
        assert_eq!(
            action(&gone, open.iter().map(|(k, e)| (k, e))),
            Some(Action::Resolve)
        );
        let resolved = [
            (key(2, Outcome::Failed), entry(State::Sent)),
            (gone.clone(), entry(State::Pending)),
        ];
        assert_eq!(action(&gone, resolved.iter().map(|(k, e)| (k, e))), None);
        let e = gone_event("Deployment/shop/web", "prod");
        assert_eq!(
            e.alert_key,
            "ilert-rollout-controller/prod/Deployment/shop/web"
        );
        assert_eq!(e.event_type, EventType::Resolve);
        assert!(
            e.summary
                .starts_with("Deleted: Deployment shop/web on prod")
        );
    }

    #[test]
    fn ledger_ids_map_back_to_their_pipeline() {
        let id = ledger_id("0f1e2d3c-aaaa-bbbb-cccc-0123456789ab");
        assert_eq!(pipeline_of(&id), "0f1e2d3c-aaaa-bbbb-cccc-0123456789ab");
        assert_eq!(pipeline_of("abc"), "abc");
        assert_eq!(
            alert_key("prod-eu", "Deployment/shop/web"),
            "ilert-rollout-controller/prod-eu/Deployment/shop/web"
        );
    }
}
