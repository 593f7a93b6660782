//! What makes an event useful at 3 a.m.: the context the controller adds on its own (images
//! old -> new, the tool that changed the spec, the owning Helm release, the commit, the duration),
//! a pipeline's templates, and a workload's own `ilert.com/*` annotations.

use crate::*;

/// A Deployment as Helm 3 leaves it (release annotations, managed-by label), with the
/// annotations an app team adds to enrich its own events.
fn helm_deployment(image: &str, cause: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "shop",
            "labels": {"app": "shop", "team": "payments", "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {
                "meta.helm.sh/release-name": "shop",
                "meta.helm.sh/release-namespace": "shop-prod",
                "kubernetes.io/change-cause": cause,
                "ilert.com/commit": "9f8e7d6c5b4a",
                "ilert.com/details.runbook": "https://runbooks.example.com/{{ workload.name }}",
                "ilert.com/links": r#"[{"text": "Logs", "href": "https://logs.example.com/?q={{ workload.name }}"}]"#,
                "ilert.com/user-email": "payments-oncall@example.com",
            },
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [
                    {"name": "app", "image": image},
                    {"name": "proxy", "image": "envoyproxy/envoy:v1.31"}
                ]}
            }
        }
    })
}

fn template_spec(summary: &str) -> Value {
    json!({
        "integrationKeySecretRef": {"name": "ilert"},
        "template": {
            "summary": summary,
            "links": [
                {"text": "Commit {{ commit }}", "href": "{% if commit %}https://git.example.com/shop/commit/{{ commit }}{% endif %}"},
                {"text": "Dashboard", "href": "https://grafana.example.com/d/{{ workload.namespace }}/{{ workload.name }}"},
                {"text": "Never", "href": "{% if false %}https://never.example.com{% endif %}"}
            ],
            "customDetails": {
                "team": "{{ workload.labels['team'] | default('unknown') }}",
                "owner": "{% for o in owners %}{{ o.tool }}:{{ o.name }}{% endfor %}"
            }
        }
    })
}

#[tokio::test]
async fn templates_annotations_and_context_shape_the_event() {
    let summary = "{{ changedVia }} rolled out {{ workload.name }} revision {{ revision }}{% for c in imageChanges %} [{{ c.container }}: {{ c.from }} -> {{ c.to }}]{% endfor %}";
    let w = World::new("shape", true, Some(template_spec(summary)), &[]).await;
    let body = helm_deployment("nginx:1.25", "release 1.25");
    apply_as(&w.deployments, "helm", "shop", &body).await;
    wait_revision_complete(&w.deployments, "shop", "1").await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let e = &events[0];
    assert_eq!(e["summary"], "helm rolled out shop revision 1", "{e}");

    let body = helm_deployment("nginx:1.26", "release 1.26");
    apply_as(&w.deployments, "helm", "shop", &body).await;
    wait_revision_complete(&w.deployments, "shop", "2").await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let e = &events[1];
    eprintln!("deployment event as ilert received it: {e:#}");
    let d = &e["customDetails"];
    // The pipeline's summary template, over the image that changed (the proxy did not).
    assert_eq!(
        e["summary"], "helm rolled out shop revision 2 [app: nginx:1.25 -> nginx:1.26]",
        "{e}"
    );
    // Context the controller adds on its own.
    assert_eq!(
        d["imageChanges"],
        json!([{"container": "app", "from": "nginx:1.25", "to": "nginx:1.26"}]),
        "{e}"
    );
    assert_eq!(d["changedBy"], "helm", "{e}");
    assert_eq!(d["changedVia"], "helm", "{e}");
    assert_eq!(d["changeCause"], "release 1.26", "{e}");
    assert_eq!(d["commit"], "9f8e7d6c5b4a", "{e}");
    assert_eq!(
        d["managedBy"],
        json!([{"tool": "helm", "kind": "Release", "name": "shop", "namespace": "shop-prod"}]),
        "{e}"
    );
    assert!(d["rolloutDurationSeconds"].as_i64().is_some(), "{e}");
    // The pipeline's custom details and links (the one whose href renders empty is left out),
    // then the workload's own link, detail and user.
    assert_eq!(d["team"], "payments", "{e}");
    assert_eq!(d["owner"], "helm:shop", "{e}");
    assert_eq!(d["runbook"], "https://runbooks.example.com/shop", "{e}");
    let links: Vec<(&str, &str)> = e["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| (l["text"].as_str().unwrap(), l["href"].as_str().unwrap()))
        .collect();
    assert_eq!(
        links,
        vec![
            (
                "Commit 9f8e7d6c5b4a",
                "https://git.example.com/shop/commit/9f8e7d6c5b4a"
            ),
            (
                "Dashboard",
                &*format!("https://grafana.example.com/d/{}/shop", w.ns.name)
            ),
            ("Logs", "https://logs.example.com/?q=shop"),
        ],
        "{e}"
    );
    assert_eq!(e["userEmail"], "payments-oncall@example.com", "{e}");
    w.ilert.assert_schema_valid();
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_broken_template_stops_only_its_pipeline_and_a_broken_annotation_only_itself() {
    let w = World::new("badtpl", true, None, &[]).await;
    // A second pipeline, same key, whose summary template does not parse (line 2).
    create_pipeline(
        &w.pipelines,
        &w.ns.name,
        "templated",
        template_spec("Rollout of {{ workload.name }}\n{{ revision "),
    )
    .await;
    let message = w
        .wait_condition("templated", "Ready", "False", "InvalidTemplate")
        .await;
    assert!(
        message.contains("spec.template.summary:2") && message.contains("syntax error"),
        "{message}"
    );
    w.wait_ready_condition("True", "Ready").await;

    // A workload whose own summary annotation is broken: reported by the working pipeline with
    // the default summary, and a Warning Event on the Deployment says what was left out.
    let mut body = deployment("web", "nginx:1.25", 1);
    body["metadata"]["annotations"] = json!({"ilert.com/summary": "{{ oops"});
    apply(&w.deployments, "web", &body).await;
    wait_revision_complete(&w.deployments, "web", "1").await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(
        events[0]["summary"],
        format!(
            "Deployment {}/web rolled out nginx:1.25 (revision 1) on e2e",
            w.ns.name
        )
    );
    let warning = eventually(
        Duration::from_secs(15),
        "a TemplateFailed Event on the Deployment",
        || async {
            w.events_about("web")
                .await
                .into_iter()
                .find(|e| e.starts_with("Warning TemplateFailed"))
        },
    )
    .await;
    assert!(warning.contains("ilert.com/summary"), "{warning}");
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;

    // Fixed: the pipeline becomes Ready and reports the latest rollout it missed, once.
    create_pipeline(
        &w.pipelines,
        &w.ns.name,
        "templated",
        template_spec("Rollout of {{ workload.name }} revision {{ revision }}"),
    )
    .await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    assert_eq!(
        events[1]["summary"], "Rollout of web revision 1",
        "{}",
        events[1]
    );
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(3)).await;
    w.ilert.assert_schema_valid();
}
