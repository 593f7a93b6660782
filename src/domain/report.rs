//! Pure: a finished rollout + the pipeline's context -> the ilert deployment event payload.
//! The integration key is not part of it: it is added at the moment of sending, never stored.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::domain::context::{
    argo_details, commit, image_changes, owners, template_context, tool_of_manager,
};
use crate::domain::history::Rollout;
use crate::domain::keys::{CHANGE_CAUSE_ANNOTATION, RECOMMENDED_LABEL_PREFIX};
use crate::domain::pairs::Images;
use crate::domain::payload::{
    DeploymentEvent, MAX_COMBINED, MAX_EVENT_BYTES, MAX_SHAPED_BYTES, MAX_SUMMARY_CHARS,
};
use crate::domain::rollout::Outcome;
use crate::domain::template::{self, Templates};
use crate::domain::text::{on_cluster, truncate};

/// One line a human reads in ilert; a failure or rollback says so in its first words.
pub fn summary(rollout: &Rollout, cluster: &str) -> String {
    let w = &rollout.workload;
    let what = format!("{} {}/{}", w.kind, w.namespace, w.name);
    let images = images_line(&rollout.workload.images);
    let on = on_cluster(cluster);
    let rev = rollout.revision;
    let line = match rollout.outcome {
        Outcome::Completed => format!("{what} rolled out {images} (revision {rev}){on}"),
        Outcome::Failed => {
            format!("Rollout failed: {what} did not roll out {images} (revision {rev}){on}")
        }
        Outcome::RolledBack => {
            format!("Rolled back: {what} returned to {images} (revision {rev}){on}")
        }
        Outcome::Aborted => {
            let why = w
                .argo
                .as_deref()
                .and_then(|a| a.message.as_deref())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            format!("Rollout aborted: {what} did not roll out {images} (revision {rev}){on}{why}")
        }
    };
    truncate(&line, MAX_SUMMARY_CHARS)
}

fn images_line(images: &Images) -> String {
    let mut distinct: Vec<&str> = images.iter().map(|(_, image)| image).collect();
    distinct.sort_unstable();
    distinct.dedup();
    match distinct.len() {
        0 => "no containers".to_string(),
        1..=3 => distinct.join(", "),
        n => format!("{}, {} and {} more", distinct[0], distinct[1], n - 2),
    }
}

/// The event for one finished rollout, shaped by the pipeline's templates (checked when the
/// pipeline was applied) and the workload's `ilert.com/*` annotations. Returns, beside it, one
/// warning per template or annotation that did not render; the event goes out without that part.
pub fn deployment_event(
    rollout: &Rollout,
    cluster: &str,
    templates: Option<&Templates>,
) -> (DeploymentEvent, Vec<String>) {
    let mut event = DeploymentEvent {
        summary: summary(rollout, cluster),
        timestamp: rollout.finished_at.as_millisecond(),
        custom_details: details(rollout, cluster),
        links: Vec::new(),
        user_email: None,
    };
    let mut warnings = Vec::new();
    let shaped = templates.is_some()
        || rollout
            .workload
            .annotations
            .iter()
            .any(|(k, _)| template::shapes(k));
    if !shaped {
        return (event, warnings);
    }
    let plain = event.clone();
    let context = template_context(rollout, cluster, &event.summary);
    if let Some(t) = templates {
        match t.render(&context) {
            Ok(r) => apply(&mut event, r, true),
            Err(e) => warnings.push(e.to_string()),
        }
    }
    let (r, email, annotation_warnings) =
        template::from_annotations(rollout.workload.annotations.iter(), &context);
    // The app team's own summary and links win; its details never replace another's.
    apply(&mut event, r, false);
    event.user_email = email;
    warnings.extend(annotation_warnings);
    let size = serde_json::to_vec(&event).map_or(0, |b| b.len());
    if size > MAX_SHAPED_BYTES {
        warnings.push(format!(
            "templates and annotations made the event {size} bytes (at most {MAX_SHAPED_BYTES}); it was sent without them"
        ));
        return (plain, warnings);
    }
    (event, warnings)
}

/// Applies what templates rendered: `replace_details` lets them replace the controller's details.
pub fn apply(event: &mut DeploymentEvent, r: template::Rendered, replace_details: bool) {
    if let Some(s) = r.summary.filter(|s| !s.is_empty()) {
        event.summary = truncate(&s, MAX_SUMMARY_CHARS);
    }
    event.links.extend(r.links);
    for (k, v) in r.details {
        if replace_details || !event.custom_details.contains_key(&k) {
            event.custom_details.insert(k, json!(v));
        }
    }
}

fn details(rollout: &Rollout, cluster: &str) -> Map<String, Value> {
    let w = &rollout.workload;
    let mut d = Map::new();
    if !cluster.is_empty() {
        d.insert("cluster".into(), json!(cluster));
    }
    d.insert("namespace".into(), json!(w.namespace));
    d.insert("kind".into(), json!(w.kind.as_str()));
    d.insert("name".into(), json!(w.name));
    d.insert("uid".into(), json!(w.uid));
    d.insert("revision".into(), json!(rollout.revision.to_string()));
    d.insert("outcome".into(), json!(rollout.outcome.as_str()));
    d.insert("images".into(), json!(w.images));
    if !rollout.history.previous_images.is_empty() {
        d.insert(
            "previousImages".into(),
            json!(rollout.history.previous_images),
        );
    }
    if let Some(prev) = rollout.history.previous_revision {
        d.insert("previousRevision".into(), json!(prev.to_string()));
    }
    if !rollout.history.rolled_back_from.is_empty() {
        let revs: Vec<String> = rollout
            .history
            .rolled_back_from
            .iter()
            .map(u64::to_string)
            .collect();
        d.insert("rolledBackToRevisionsOf".into(), json!(revs));
    }
    d.insert(
        "replicas".into(),
        json!({"desired": w.spec_replicas, "updated": w.updated_replicas, "ready": w.ready_replicas, "available": w.available_replicas}),
    );
    if let Some(argo) = argo_details(rollout) {
        d.insert("argoRollout".into(), argo);
    }
    if let Some(secs) = rollout.duration_seconds() {
        d.insert("rolloutDurationSeconds".into(), json!(secs));
    }
    d.insert("finishedAt".into(), json!(rollout.finished_at.to_string()));
    if let Some(cause) = w.annotations.get(CHANGE_CAUSE_ANNOTATION) {
        d.insert("changeCause".into(), json!(cause));
    }
    if let Some(manager) = &w.template_manager {
        d.insert("changedBy".into(), json!(manager));
        d.insert("changedVia".into(), json!(tool_of_manager(manager)));
    }
    let changes = image_changes(&rollout.history.previous_images, &w.images);
    if !changes.is_empty() {
        d.insert("imageChanges".into(), json!(changes));
    }
    let owners = owners(&w.labels, &w.annotations);
    if !owners.is_empty() {
        d.insert("managedBy".into(), json!(owners));
    }
    if let Some(commit) = commit(&w.labels, &w.annotations) {
        d.insert("commit".into(), json!(commit));
    }
    let app_labels: BTreeMap<&str, &str> = w
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with(RECOMMENDED_LABEL_PREFIX))
        .collect();
    if !app_labels.is_empty() {
        d.insert("labels".into(), json!(app_labels));
    }
    d
}

/// A clearly marked test event for a pipeline (annotation `ilert.com/test-event`).
pub fn test_event(
    pipeline: &str,
    cluster: &str,
    value: &str,
    now: jiff::Timestamp,
) -> DeploymentEvent {
    let on = on_cluster(cluster);
    let mut d = Map::new();
    d.insert("test".into(), json!(true));
    d.insert("pipeline".into(), json!(pipeline));
    d.insert("value".into(), json!(value));
    if !cluster.is_empty() {
        d.insert("cluster".into(), json!(cluster));
    }
    DeploymentEvent {
        summary: truncate(
            &format!(
                "Test event from ilert-rollout-controller{on}: IlertPipeline {pipeline} reaches ilert (not a deployment)"
            ),
            MAX_SUMMARY_CHARS,
        ),
        timestamp: now.as_millisecond(),
        custom_details: d,
        links: Vec::new(),
        user_email: None,
    }
}

/// One event that names every rollout in `events`, for when more wait than the rate budget allows.
/// `events` must not be empty; its order is kept.
pub fn combine(events: &[DeploymentEvent], cluster: &str) -> DeploymentEvent {
    debug_assert!(!events.is_empty());
    if events.len() == 1 {
        return events[0].clone();
    }
    let on = on_cluster(cluster);
    let failures = events
        .iter()
        .filter(|e| {
            e.custom_details.get("outcome").and_then(Value::as_str)
                != Some(Outcome::Completed.as_str())
        })
        .count();
    let head = if failures > 0 {
        format!(
            "{} rollouts{on} ({failures} failed or rolled back): ",
            events.len()
        )
    } else {
        format!("{} rollouts{on}: ", events.len())
    };
    let body: Vec<String> = events
        .iter()
        .map(|e| strip_cluster(&e.summary, &on))
        .collect();
    let mut custom = Map::new();
    if !cluster.is_empty() {
        custom.insert("cluster".into(), json!(cluster));
    }
    custom.insert("combined".into(), json!(events.len()));
    custom.insert(
        "rollouts".into(),
        Value::Array(
            events
                .iter()
                .map(|e| Value::Object(e.custom_details.clone()))
                .collect(),
        ),
    );
    DeploymentEvent {
        summary: truncate(&(head + &body.join("; ")), MAX_SUMMARY_CHARS),
        // The latest finish: the moment the batch of changes was all in place.
        timestamp: events.iter().map(|e| e.timestamp).max().unwrap_or_default(),
        custom_details: custom,
        links: Vec::new(),
        user_email: None,
    }
}

fn strip_cluster(summary: &str, on: &str) -> String {
    if !on.is_empty()
        && let Some(s) = summary.strip_suffix(on)
    {
        return s.to_string();
    }
    summary.to_string()
}

/// The serialized request body, with the key, as ilert receives it.
pub fn body(event: &impl Serialize, integration_key: &str) -> Value {
    let mut v = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("integrationKey".into(), json!(integration_key));
    }
    v
}

/// How many of `events` fit into one combined event within ilert's size limit.
pub fn combinable(events: &[DeploymentEvent], cluster: &str) -> usize {
    let mut n = events.len().min(MAX_COMBINED);
    while n > 1
        && serde_json::to_vec(&combine(&events[..n], cluster)).map_or(0, |b| b.len())
            > MAX_EVENT_BYTES - 1024
    {
        n /= 2;
    }
    n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::history::History;
    use crate::domain::rollout::WorkloadView;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn rollout(deployment: &str, replica_sets: &str) -> Rollout {
        let w = WorkloadView::from_deployment(&fixture::<Deployment>(deployment));
        let done = w.finished().unwrap();
        let rs: k8s_openapi::List<ReplicaSet> = fixture(replica_sets);
        let history = History::from_replica_sets(&w, done.revision, &rs.items);
        Rollout::new(&w, done, history, jiff::Timestamp::now())
    }

    #[test]
    fn summaries_put_the_outcome_first_when_it_is_not_a_plain_success() {
        let r = rollout("deployment-rev2-complete.json", "replicasets-rev2.json");
        assert_eq!(
            summary(&r, "prod-eu"),
            "Deployment fixtures/shop rolled out ghcr.io/acme/log-shipper:3.1, ghcr.io/acme/shop-migrate:1.25, nginx:1.26 (revision 2) on prod-eu"
        );
        let r = rollout("deployment-rolledback.json", "replicasets-rolledback.json");
        assert!(
            summary(&r, "").starts_with("Rolled back: Deployment fixtures/shop"),
            "{}",
            summary(&r, "")
        );
    }

    #[test]
    fn payload_has_details_and_never_secrets() {
        let r = rollout("deployment-rev2-complete.json", "replicasets-rev2.json");
        let (e, warnings) = deployment_event(&r, "prod-eu", None);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(e.timestamp, r.finished_at.as_millisecond());
        let d = &e.custom_details;
        assert_eq!(d["revision"], "2");
        assert_eq!(d["outcome"], "Completed");
        assert_eq!(d["previousImages"]["web"], "nginx:1.25");
        assert_eq!(d["images"]["web"], "nginx:1.26");
        assert_eq!(d["changeCause"], "release 1.26");
        assert_eq!(d["changedBy"], "kubectl-set");
        assert_eq!(d["labels"]["app.kubernetes.io/part-of"], "webshop");
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            !text.contains("do-not-send") && !text.contains("last-applied"),
            "{text}"
        );
    }

    #[test]
    fn gitops_owners_tools_commits_and_image_changes_come_from_the_real_objects() {
        // Applied server-side by Flux's kustomize-controller, the commit in an OCI annotation.
        let r = rollout("deployment-flux-rev2.json", "replicasets-flux.json");
        let (e, _) = deployment_event(&r, "", None);
        let d = &e.custom_details;
        assert_eq!(d["changedBy"], "kustomize-controller");
        assert_eq!(d["changedVia"], "flux");
        assert_eq!(d["commit"], "2222222bbbbbbb");
        assert_eq!(
            d["managedBy"],
            json!([{"tool": "flux", "kind": "Kustomization", "name": "apps", "namespace": "flux-system"}])
        );
        // Only the container whose image changed.
        assert_eq!(
            d["imageChanges"],
            json!([{"container": "cart", "from": "ghcr.io/acme/cart:1.0", "to": "ghcr.io/acme/cart:1.1"}])
        );
        // Applied by Argo CD, tracked by annotation, app in another namespace.
        let w = WorkloadView::from_deployment(&fixture::<Deployment>("deployment-argocd.json"));
        let done = w.finished().unwrap();
        let r = Rollout::new(&w, done, History::default(), jiff::Timestamp::now());
        let (e, _) = deployment_event(&r, "", None);
        let d = &e.custom_details;
        assert_eq!(d["changedVia"], "argocd");
        assert_eq!(
            d["managedBy"],
            json!([{"tool": "argocd", "kind": "Application", "name": "billing", "namespace": "team-a"}])
        );
        assert!(
            d.get("imageChanges").is_none(),
            "a first rollout changes no image"
        );
    }

    #[test]
    fn a_template_renders_over_a_real_rollout() {
        let r = rollout("deployment-flux-rev2.json", "replicasets-flux.json");
        let spec = crate::pipeline::EventTemplate {
            summary: Some(
                "{{ owners[0].name }}@{{ commit[:7] }}: {% for c in imageChanges %}{{ c.from }} -> {{ c.to }}{% endfor %} in {{ durationSeconds }}s".into(),
            ),
            ..Default::default()
        };
        let t = Templates::check(&spec).unwrap();
        let (e, warnings) = deployment_event(&r, "prod", Some(&t));
        assert!(warnings.is_empty(), "{warnings:?}");
        let secs = r.duration_seconds().unwrap();
        assert_eq!(
            e.summary,
            format!("apps@2222222: ghcr.io/acme/cart:1.0 -> ghcr.io/acme/cart:1.1 in {secs}s")
        );
    }

    #[test]
    fn an_oversized_shaped_event_goes_out_plain_with_a_warning() {
        let r = rollout("deployment-rev2-complete.json", "replicasets-rev2.json");
        let spec = crate::pipeline::EventTemplate {
            summary: Some("shaped".into()),
            custom_details: (0..20)
                .map(|i| (format!("d{i}"), "{{ 'x' * 4000 }}".to_string()))
                .collect(),
            ..Default::default()
        };
        let t = Templates::check(&spec).unwrap();
        let (e, warnings) = deployment_event(&r, "", Some(&t));
        assert_eq!(e, deployment_event(&r, "", None).0);
        assert!(warnings[0].contains("sent without them"), "{warnings:?}");
    }

    #[test]
    fn combined_events_name_every_rollout_within_limits() {
        let (one, _) = deployment_event(
            &rollout("deployment-rev2-complete.json", "replicasets-rev2.json"),
            "prod-eu",
            None,
        );
        let many: Vec<DeploymentEvent> = (0..30).map(|_| one.clone()).collect();
        let c = combine(&many, "prod-eu");
        assert!(c.summary.starts_with("30 rollouts on prod-eu: "));
        assert!(c.summary.chars().count() <= MAX_SUMMARY_CHARS);
        assert_eq!(c.custom_details["rollouts"].as_array().unwrap().len(), 30);
        assert_eq!(combinable(&many, "prod-eu"), 30);
        let long = "x".repeat(5000);
        assert_eq!(
            truncate(&long, MAX_SUMMARY_CHARS).chars().count(),
            MAX_SUMMARY_CHARS
        );
    }
}
