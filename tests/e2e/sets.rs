//! StatefulSets and DaemonSets: one event per revision of the pod template, by the rules of
//! `kubectl rollout status`, with history from their ControllerRevisions; scaling is no rollout.

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};

use crate::*;

fn daemon_set(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "agent", "image": image}]}
            }
        }
    })
}

/// `kubectl rollout status` for a StatefulSet with `replicas` ready at `image`.
async fn wait_stateful_set(api: &Api<StatefulSet>, name: &str, image: &str, replicas: i32) {
    eventually(
        Duration::from_secs(90),
        &format!("{name} at {image} with {replicas} ready"),
        || async {
            let s = api.get(name).await.ok()?;
            let spec = s.spec?;
            let st = s.status?;
            (st.observed_generation? >= s.metadata.generation?
                && spec.template.spec?.containers[0].image.as_deref() == Some(image)
                && st.ready_replicas? == replicas
                && st.updated_replicas? == replicas
                && st.update_revision == st.current_revision)
                .then_some(())
        },
    )
    .await;
}

async fn wait_daemon_set(api: &Api<DaemonSet>, name: &str, generation: i64) {
    eventually(
        Duration::from_secs(90),
        &format!("{name} generation {generation} rolled out"),
        || async {
            let d = api.get(name).await.ok()?;
            let st = d.status?;
            (d.metadata.generation? == generation
                && st.observed_generation? == generation
                && st.desired_number_scheduled > 0
                && st.updated_number_scheduled? == st.desired_number_scheduled
                && st.number_available? == st.desired_number_scheduled)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn stateful_set_rollouts_scale_and_rollback_are_told_apart() {
    let mut w = World::new("sts", true, None, &[]).await;
    let api: Api<StatefulSet> = Api::namespaced(w.client.clone(), &w.ns.name);
    apply(&api, "db", &stateful_set("db", "postgres:16.3", 2)).await;
    wait_stateful_set(&api, "db", "postgres:16.3", 2).await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let e = &events[0];
    assert_eq!(
        e["summary"],
        format!(
            "StatefulSet {}/db rolled out postgres:16.3 (revision 1) on e2e",
            w.ns.name
        )
    );
    assert_eq!(e["customDetails"]["kind"], "StatefulSet");
    assert_eq!(e["customDetails"]["revision"], "1");
    assert_eq!(e["customDetails"]["outcome"], "Completed");

    // Scale 2 -> 3: not a rollout.
    apply(&api, "db", &stateful_set("db", "postgres:16.3", 3)).await;
    wait_stateful_set(&api, "db", "postgres:16.3", 3).await;
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(4)).await;

    // Image change: revision 2, with the previous image from the ControllerRevisions.
    apply(&api, "db", &stateful_set("db", "postgres:16.4", 3)).await;
    wait_stateful_set(&api, "db", "postgres:16.4", 3).await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let e = &events[1];
    assert_eq!(e["customDetails"]["revision"], "2", "{e}");
    assert_eq!(e["customDetails"]["outcome"], "Completed", "{e}");
    assert_eq!(e["customDetails"]["previousImages"]["db"], "postgres:16.3");
    assert_eq!(e["customDetails"]["images"]["db"], "postgres:16.4");

    // Back to the first template: its ControllerRevision comes back as revision 3, a rollback.
    apply(&api, "db", &stateful_set("db", "postgres:16.3", 3)).await;
    wait_stateful_set(&api, "db", "postgres:16.3", 3).await;
    let events = w.ilert.wait_accepted(3, EVENT_WAIT).await;
    let e = &events[2];
    assert_eq!(e["customDetails"]["revision"], "3", "{e}");
    assert_eq!(e["customDetails"]["outcome"], "RolledBack", "{e}");
    assert_eq!(e["customDetails"]["previousImages"]["db"], "postgres:16.4");
    assert_no_more_than(&w.ilert, 3, Duration::from_secs(3)).await;
    w.ilert.assert_schema_valid();

    // Restart-safe: a new controller process reports nothing again.
    w.controller.restart();
    w.controller.wait_ready().await;
    assert_no_more_than(&w.ilert, 3, Duration::from_secs(4)).await;
}

#[tokio::test]
async fn daemon_set_rollouts_are_reported_once_per_revision() {
    let w = World::new("ds", true, None, &[]).await;
    let api: Api<DaemonSet> = Api::namespaced(w.client.clone(), &w.ns.name);
    apply(
        &api,
        "agent",
        &daemon_set("agent", "ghcr.io/acme/agent:2.0"),
    )
    .await;
    wait_daemon_set(&api, "agent", 1).await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(events[0]["customDetails"]["kind"], "DaemonSet");
    assert_eq!(events[0]["customDetails"]["revision"], "1");

    apply(
        &api,
        "agent",
        &daemon_set("agent", "ghcr.io/acme/agent:2.1"),
    )
    .await;
    wait_daemon_set(&api, "agent", 2).await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let e = &events[1];
    assert_eq!(e["customDetails"]["revision"], "2", "{e}");
    assert_eq!(
        e["customDetails"]["images"]["agent"],
        "ghcr.io/acme/agent:2.1"
    );
    assert_eq!(
        e["customDetails"]["previousImages"]["agent"],
        "ghcr.io/acme/agent:2.0"
    );
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(4)).await;
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn spec_workloads_limits_the_kinds_reported() {
    let spec = json!({"integrationKeySecretRef": {"name": "ilert"}, "workloads": ["StatefulSet"]});
    let w = World::new("kinds", true, Some(spec), &[]).await;
    let sts: Api<StatefulSet> = Api::namespaced(w.client.clone(), &w.ns.name);
    let ds: Api<DaemonSet> = Api::namespaced(w.client.clone(), &w.ns.name);
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 1)).await;
    apply(&ds, "agent", &daemon_set("agent", "ghcr.io/acme/agent:2.0")).await;
    apply(&sts, "db", &stateful_set("db", "postgres:16.3", 1)).await;
    wait_revision_complete(&w.deployments, "web", "1").await;
    wait_daemon_set(&ds, "agent", 1).await;
    wait_stateful_set(&sts, "db", "postgres:16.3", 1).await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(events[0]["customDetails"]["kind"], "StatefulSet");
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(4)).await;
    assert_eq!(w.pipeline().await.status.unwrap().selected_workloads, 1);
}
