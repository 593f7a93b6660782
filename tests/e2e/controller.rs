//! The controller against the real control plane and the fake ilert: exactly one event per
//! finished rollout, failures surfaced, nothing lost.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::support::*;
use crate::*;

#[tokio::test]
async fn a_new_deployment_is_reported_once_with_its_finish_time() {
    let w = World::new("completed", true, None, &[]).await;
    apply(
        &w.deployments,
        "api",
        &deployment("api", "ghcr.io/acme/api:1.0", 3),
    )
    .await;
    let d = wait_revision_complete(&w.deployments, "api", "1").await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;
    let e = &events[0];
    assert_eq!(e["integrationKey"], w.key.as_str());
    assert_eq!(
        e["timestamp"].as_i64(),
        Some(finish_millis(&d)),
        "timestamp is the finish time the Deployment controller wrote"
    );
    let summary = e["summary"].as_str().unwrap();
    assert_eq!(
        summary,
        format!(
            "Deployment {}/api rolled out ghcr.io/acme/api:1.0 (revision 1) on e2e",
            w.ns.name
        )
    );
    let details = &e["customDetails"];
    assert_eq!(details["outcome"], "Completed");
    assert_eq!(details["revision"], "1");
    assert_eq!(details["uid"], d.metadata.uid.as_deref().unwrap());
    assert_eq!(details["images"]["app"], "ghcr.io/acme/api:1.0");
    assert_eq!(details["changedBy"], "e2e-tests");
    assert!(
        !e.to_string().contains("env-secret-value"),
        "an env var value was sent"
    );
    w.ilert.assert_schema_valid();

    let p = w.pipeline().await.status.unwrap();
    assert_eq!(p.events_sent, 1);
    assert_eq!(p.selected_workloads, 1);
    assert_eq!(
        p.last_event.as_ref().map(|l| l.outcome.as_str()),
        Some("Completed")
    );
    w.wait_ready_condition("True", "Ready").await;
    w.wait_event("Normal Delivered").await;
    w.assert_key_never_leaked().await;
    // This control plane streams lists (KEP-3157), so the controller's initial state came as
    // watch events, not pages: the path that keeps its start-up memory low.
    assert!(
        w.controller
            .logs()
            .contains("initial lists: streamed as watch events"),
        "the controller did not stream its initial lists:\n{}",
        w.controller.logs()
    );
}

#[tokio::test]
async fn image_change_scale_and_rollback_are_told_apart() {
    let w = World::new("lifecycle", true, None, &[]).await;
    apply(&w.deployments, "shop", &deployment("shop", "nginx:1.25", 3)).await;
    wait_revision_complete(&w.deployments, "shop", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;

    // Image change: one event for revision 2, with the previous image.
    apply(&w.deployments, "shop", &deployment("shop", "nginx:1.26", 3)).await;
    wait_revision_complete(&w.deployments, "shop", "2").await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let e = &events[1];
    assert_eq!(e["customDetails"]["revision"], "2");
    assert_eq!(e["customDetails"]["outcome"], "Completed");
    assert_eq!(e["customDetails"]["previousImages"]["app"], "nginx:1.25");
    assert_eq!(e["customDetails"]["images"]["app"], "nginx:1.26");

    // Scale 3 -> 5: not a rollout.
    apply(&w.deployments, "shop", &deployment("shop", "nginx:1.26", 5)).await;
    eventually(Duration::from_secs(60), "5 available replicas", || async {
        let d = w.deployments.get("shop").await.ok()?;
        (rollout_complete(&d) && d.status?.available_replicas == Some(5)).then_some(())
    })
    .await;
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(4)).await;

    // Re-applying revision 1's template: a rollback, revision 3.
    apply(&w.deployments, "shop", &deployment("shop", "nginx:1.25", 5)).await;
    wait_revision_complete(&w.deployments, "shop", "3").await;
    let events = w.ilert.wait_accepted(3, EVENT_WAIT).await;
    let e = &events[2];
    assert_eq!(e["customDetails"]["outcome"], "RolledBack", "{e}");
    assert!(
        e["summary"].as_str().unwrap().starts_with("Rolled back: "),
        "{e}"
    );
    assert_eq!(e["customDetails"]["previousImages"]["app"], "nginx:1.26");
    assert_no_more_than(&w.ilert, 3, Duration::from_secs(3)).await;
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_is_reported_failed() {
    let w = World::new("failed", true, None, &[]).await;
    let mut d = deployment("stuck", "ghcr.io/acme/stuck:1.0", 2);
    d["spec"]["progressDeadlineSeconds"] = json!(3);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({"no-such-node": "true"});
    apply(&w.deployments, "stuck", &d).await;
    let events = w.ilert.wait_accepted(1, Duration::from_secs(90)).await;
    assert_eq!(events[0]["customDetails"]["outcome"], "Failed");
    assert!(
        events[0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("Rollout failed: "),
        "{}",
        events[0]
    );
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn deployments_older_than_the_pipeline_are_a_baseline() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "baseline").await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    for name in ["old-a", "old-b"] {
        apply(&deployments, name, &deployment(name, "nginx:1.25", 2)).await;
    }
    for name in ["old-a", "old-b"] {
        wait_revision_complete(&deployments, name, "1").await;
    }
    let (pipelines, ilert, _controller) =
        pipeline_over_existing(&client, &ns.name, "ilapid-baseline").await;
    eventually(Duration::from_secs(10), "2 selected workloads", || async {
        (pipelines
            .get(PIPELINE)
            .await
            .ok()?
            .status?
            .selected_workloads
            == 2)
            .then_some(())
    })
    .await;
    assert_no_more_than(&ilert, 0, Duration::from_secs(3)).await;
    // A later rollout of an old workload is reported.
    apply(&deployments, "old-a", &deployment("old-a", "nginx:1.26", 2)).await;
    let events = ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(events[0]["customDetails"]["revision"], "2");
    assert_no_more_than(&ilert, 1, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_rollout_that_finished_while_the_controller_was_down_is_reported_once() {
    let mut w = World::new("restart", true, None, &[]).await;
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 2)).await;
    wait_revision_complete(&w.deployments, "api", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    // Counters live in status, written within half a second; a kill -9 right after a delivery
    // could lose that write (never the delivery record itself, which precedes it).
    eventually(Duration::from_secs(10), "eventsSent=1", || async {
        (w.pipeline().await.status?.events_sent == 1).then_some(())
    })
    .await;

    w.controller.kill();
    apply(&w.deployments, "api", &deployment("api", "nginx:1.26", 2)).await;
    wait_revision_complete(&w.deployments, "api", "2").await;
    w.controller.restart();
    w.controller.wait_ready().await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    assert_eq!(events[1]["customDetails"]["revision"], "2");
    eventually(Duration::from_secs(10), "eventsSent=2", || async {
        (w.pipeline().await.status?.events_sent == 2).then_some(())
    })
    .await;

    // Once more: nothing new to say.
    w.controller.restart();
    w.controller.wait_ready().await;
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(4)).await;
    assert_eq!(
        w.pipeline().await.status.unwrap().events_sent,
        2,
        "the counter survives restarts"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_delivered_once() {
    let w = World::new("retry500", true, None, &[]).await;
    let err = json!({"status": 500, "message": "internal error", "code": "INTERNAL"});
    w.ilert.script([
        Reply::Status(500, err.clone()),
        Reply::Status(500, err.clone()),
        Reply::Status(500, err),
    ]);
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let received = w.ilert.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 500, 500, 202]
    );
    // Backoff: each retry waits longer than the one before.
    let gaps: Vec<Duration> = received.windows(2).map(|p| p[1].at - p[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(400) && gaps[2] >= gaps[0],
        "gaps {gaps:?}"
    );
    assert_no_more_than(&w.ilert, 4, Duration::from_secs(3)).await;
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn rate_limited_requests_wait_for_retry_after() {
    let w = World::new("retry429", true, None, &[]).await;
    w.ilert.script([Reply::RateLimited {
        retry_after_secs: 3,
    }]);
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let r = w.ilert.received();
    assert_eq!(r.len(), 2);
    assert!(
        r[1].at - r[0].at >= Duration::from_millis(2900),
        "retried after {:?}, before Retry-After",
        r[1].at - r[0].at
    );
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_rejected_key_makes_the_pipeline_not_ready_until_the_key_changes() {
    let w = World::new("unauthorized", true, None, &[]).await;
    w.ilert.script([Reply::Status(
        401,
        json!({"status": 401, "message": "Invalid integration key", "code": "UNAUTHORIZED"}),
    )]);
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    let message = w
        .wait_ready_condition("False", "IntegrationKeyRejected")
        .await;
    assert!(
        message.contains("401") && message.contains("Secret"),
        "{message}"
    );
    w.wait_event("Warning IntegrationKeyRejected").await;
    // Bounded: the same key is not hammered.
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(8)).await;
    assert_eq!(
        w.pipeline().await.status.unwrap().pending_events,
        1,
        "the event waits, it is not lost"
    );
    w.assert_key_never_leaked().await;

    // A new key: delivered at once, Ready again.
    let new_key = "ilapid-rotated-key";
    create_secret(&w.client, &w.ns.name, "ilert", "integrationKey", new_key).await;
    let events = w.ilert.wait_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(events[0]["integrationKey"], new_key);
    w.wait_ready_condition("True", "Ready").await;
}

#[tokio::test]
async fn a_hanging_ilert_times_out_and_is_retried() {
    let w = World::new("hang", true, None, &["--ilert-timeout-seconds", "2"]).await;
    w.ilert.script([Reply::Hang(Duration::from_secs(30))]);
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let r = w.ilert.received();
    assert_eq!(r.len(), 2, "one hung request, one retry");
    assert!(
        r[1].at - r[0].at >= Duration::from_secs(2),
        "retried before the time-out"
    );
    assert!(
        w.controller.logs().contains("timed out"),
        "the time-out is logged"
    );
}

#[tokio::test]
async fn a_missing_secret_holds_events_until_it_exists_and_rotation_needs_no_restart() {
    let w = World::new("secret", false, None, &[]).await;
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    let message = w.wait_ready_condition("False", "SecretNotFound").await;
    assert!(
        message.contains(&format!("Secret {}/ilert not found", w.ns.name)),
        "{message}"
    );
    assert_eq!(w.ilert.received().len(), 0);
    w.wait_event("Warning SecretNotFound").await;

    // Wrong key name inside the Secret.
    create_secret(&w.client, &w.ns.name, "ilert", "otherKey", "x").await;
    w.wait_ready_condition("False", "KeyNotFound").await;

    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.ns.name);
    let first_key = "ilapid-first";
    secrets
        .patch(
            "ilert",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"integrationKey": first_key}})),
        )
        .await
        .unwrap();
    let events = w.ilert.wait_accepted(1, Duration::from_secs(40)).await;
    assert_eq!(events[0]["integrationKey"], first_key);
    w.wait_ready_condition("True", "Ready").await;

    // Rotation: the next event uses the new key, without a restart (the key is read again at
    // most KEY_MAX_AGE after the last read).
    secrets
        .patch(
            "ilert",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"integrationKey": "ilapid-second"}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(ilert_rollout_controller::shell::sender::KEY_MAX_AGE).await;
    apply(&w.deployments, "api", &deployment("api", "nginx:1.26", 1)).await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    assert_eq!(events[1]["integrationKey"], "ilapid-second");
}

#[tokio::test]
async fn thirty_rollouts_at_once_stay_within_the_rate_limit_and_are_all_named() {
    let w = World::new("burst", true, None, &[]).await;
    let names: Vec<String> = (0..30).map(|i| format!("svc-{i:02}")).collect();
    for n in &names {
        apply(&w.deployments, n, &deployment(n, "nginx:1.25", 1)).await;
    }
    eventually(
        Duration::from_secs(120),
        "all 30 rollouts named",
        || async {
            let text = w
                .ilert
                .accepted()
                .iter()
                .map(|e| e.to_string())
                .collect::<String>();
            names
                .iter()
                .all(|n| text.contains(&format!("\"name\":\"{n}\"")))
                .then_some(())
        },
    )
    .await;
    let received = w.ilert.received();
    for (i, r) in received.iter().enumerate() {
        let in_minute = received[i..]
            .iter()
            .filter(|s| s.at - r.at < Duration::from_secs(60))
            .count();
        assert!(in_minute <= 10, "{in_minute} requests within one minute");
    }
    // Each rollout named exactly once.
    let text = w
        .ilert
        .accepted()
        .iter()
        .map(|e| e.to_string())
        .collect::<String>();
    for n in &names {
        assert_eq!(
            text.matches(&format!("\"name\":\"{n}\"")).count(),
            1,
            "{n} reported more than once"
        );
    }
    assert!(
        received.len() < 30,
        "events were combined: {} requests",
        received.len()
    );
    w.ilert.assert_schema_valid();
    eventually(
        Duration::from_secs(10),
        "status: 30 sent, 0 pending",
        || async {
            let s = w.pipeline().await.status?;
            (s.events_sent == 30 && s.pending_events == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn only_trusted_namespaces_may_select_other_namespaces() {
    // The controller trusts only its own namespace; this pipeline lives in another one.
    let w = World::new("tenant", true, None, &[]).await;
    let client = w.client.clone();
    let other = TestNamespace::new(&client, "tenant-other").await;
    create_secret(
        &client,
        &other.name,
        "ilert",
        "integrationKey",
        "ilapid-tenant",
    )
    .await;
    let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), &other.name);
    // Served by the test's controller, which trusts only its own namespace.
    let spec = json!({"integrationKeySecretRef": {"name": "ilert"}, "namespaceSelector": {}});
    create_pipeline(&pipelines, &w.ns.name, "greedy", spec).await;
    let message = eventually(
        Duration::from_secs(30),
        "NamespaceSelectorNotAllowed",
        || async {
            let c = pipelines
                .get("greedy")
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.status == "False" && c.reason == "NamespaceSelectorNotAllowed").then_some(c.message)
        },
    )
    .await;
    assert!(message.contains(&w.ns.name), "{message}");
    // Rollouts in the trusted pipeline's namespace go to its own pipeline only.
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert!(events.iter().all(|e| e["integrationKey"] == w.key.as_str()));
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;
    assert_eq!(
        pipelines
            .get("greedy")
            .await
            .unwrap()
            .status
            .unwrap()
            .selected_workloads,
        0
    );
}

#[tokio::test]
async fn a_trusted_pipeline_reports_the_namespaces_it_selects() {
    let w = World::new(
        "clusterwide",
        true,
        Some(json!({
            "integrationKeySecretRef": {"name": "ilert"},
            "namespaceSelector": {"matchLabels": {"team": "payments"}},
        })),
        &[],
    )
    .await;
    let client = w.client.clone();
    let team = TestNamespace::new(&client, "payments").await;
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nsapi
        .patch(
            &team.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "payments"}}})),
        )
        .await
        .unwrap();
    let unrelated = TestNamespace::new(&client, "unrelated").await;
    let team_deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &team.name);
    let other_deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &unrelated.name);
    apply(
        &other_deployments,
        "ignored",
        &deployment("ignored", "nginx:1.25", 1),
    )
    .await;
    apply(
        &team_deployments,
        "pay",
        &deployment("pay", "nginx:1.25", 1),
    )
    .await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(events[0]["customDetails"]["namespace"], team.name.as_str());
    wait_revision_complete(&other_deployments, "ignored", "1").await;
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn the_ignore_annotation_excludes_a_workload() {
    let w = World::new("ignore", true, None, &[]).await;
    let mut d = deployment("quiet", "nginx:1.25", 1);
    d["metadata"]["annotations"] = json!({"ilert.com/ignore": "true"});
    apply(&w.deployments, "quiet", &d).await;
    wait_revision_complete(&w.deployments, "quiet", "1").await;
    apply(&w.deployments, "loud", &deployment("loud", "nginx:1.25", 1)).await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(events[0]["customDetails"]["name"], "loud");
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;
}

#[test]
fn the_committed_crd_matches_the_rust_types() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ilert-rollout-controller"))
        .args(["crds"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(format!("{REPO}/crds/ilert.com_ilertpipelines.yaml")).unwrap();
    assert_eq!(
        printed, committed,
        "crds/ drifted from the Rust types: run `make crds` and commit"
    );
}

/// Deliveries in quick succession share one Kubernetes Event: the first after a quiet spell has
/// its own, the others within 30 s are named in one digest Event, not one Event (one API request)
/// each.
#[tokio::test]
async fn deliveries_in_quick_succession_share_one_digest_event() {
    let w = World::new("digest", true, None, &["--rate-limit-per-minute", "1000"]).await;
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        apply(&w.deployments, name, &deployment(name, "nginx:1.25", 1)).await;
        // One at a time: each its own delivery, not one combined event.
        w.ilert.wait_accepted(i + 1, EVENT_WAIT).await;
    }
    assert_eq!(w.ilert.received().len(), 4, "four separate deliveries");
    let delivered = || async {
        w.events()
            .await
            .into_iter()
            .filter(|e| e.starts_with("Normal Delivered"))
            .collect::<Vec<_>>()
    };
    let first = delivered().await;
    assert_eq!(first.len(), 1, "only the first delivery at once: {first:?}");
    let all = eventually(
        Duration::from_secs(45),
        "the digest Event of the other three deliveries",
        || async {
            let all = delivered().await;
            (all.len() >= 2).then_some(all)
        },
    )
    .await;
    assert_eq!(all.len(), 2, "{all:?}");
    let digest = all.iter().find(|e| *e != &first[0]).unwrap();
    assert!(
        digest.contains("3 deliveries to ilert since the last Event: Reported Deployment/"),
        "{digest}"
    );
    for name in ["b", "c", "d"] {
        assert!(
            digest.contains(&format!("/{name} revision 1 (Completed)")),
            "{digest}"
        );
    }
    w.assert_key_never_leaked().await;
}
