//! Argo Rollouts' CRD arriving after the controller started, and leaving again: on this suite's
//! own control plane, which starts without it (the main suite's installs it for good).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use crate::argo_rollouts::*;
use crate::support::*;
use crate::world::*;

fn count(logs: &str, what: &str) -> usize {
    logs.matches(what).count()
}

#[tokio::test]
async fn argo_rollouts_installed_later_is_watched_without_a_restart_and_its_removal_is_quiet() {
    let admin = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    if crds
        .get_opt("rollouts.argoproj.io")
        .await
        .unwrap()
        .is_some()
    {
        uninstall_crds();
    }
    let mut w = World::new(
        "crd-appears",
        true,
        None,
        &["--discovery-interval-seconds", "1"],
    )
    .await;
    // Ready without it, and quiet: said once, no watch retried in a loop.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logs = w.controller.logs();
    assert_eq!(count(&logs, "kind not served"), 1, "{logs}");
    assert_eq!(count(&logs, "watch failed"), 0, "{logs}");

    // The CRD appears: the watch starts in the same process.
    let argo = ArgoRollouts::start(&w.client, &w.ns.name).await;
    eventually(
        Duration::from_secs(30),
        "the Rollout watch started",
        || async {
            w.controller
                .logs()
                .contains("kind served: watching it")
                .then_some(())
        },
    )
    .await;
    let api = rollouts(&w.client, &w.ns.name);
    apply(
        &api,
        "web",
        &rollout("web", "nginx:1.25", 1, canary_steps()),
    )
    .await;
    wait_healthy(&api, "web", "1").await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(
        events[0]["customDetails"]["kind"], "Rollout",
        "{:#}",
        events[0]
    );
    assert!(w.controller.exited().is_none(), "the controller exited");
    assert_eq!(
        count(&w.controller.logs(), "\"message\":\"starting\""),
        1,
        "restarted"
    );

    // The CRD goes (and every Rollout with it): the watch stops, the controller stays up.
    drop(argo);
    uninstall_crds();
    eventually(
        Duration::from_secs(30),
        "the Rollout watch stopped",
        || async {
            w.controller
                .logs()
                .contains("kind no longer served")
                .then_some(())
        },
    )
    .await;
    let failed = count(&w.controller.logs(), "watch failed");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let logs = w.controller.logs();
    assert_eq!(
        count(&logs, "watch failed"),
        failed,
        "retrying a watch of a kind that is gone: {logs}"
    );
    assert!(
        failed <= 5,
        "{failed} watch errors around the removal: {logs}"
    );
    // Other kinds go on as before.
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    wait_revision_complete(&w.deployments, "api", "1").await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    assert_eq!(events[1]["customDetails"]["kind"], "Deployment");
    assert!(w.controller.exited().is_none(), "the controller exited");
    assert_eq!(w.ilert.accepted_count(), 2);
    w.ilert.assert_schema_valid();
}
