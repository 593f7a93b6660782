//! Failed rollouts that page (`spec.alerts`): a Failed rollout opens an ilert alert on the Events
//! API with a key stable per workload, the next good rollout resolves it, exactly once each.

use crate::*;

const ALERT_SECRET: &str = "ilert-alerts";

fn spec() -> Value {
    json!({
        "integrationKeySecretRef": {"name": "ilert"},
        "alerts": {"alertSourceKeySecretRef": {"name": ALERT_SECRET}, "priority": "HIGH"}
    })
}

/// A revision that cannot be scheduled: Failed 3 s after it starts.
fn stuck(name: &str, image: &str) -> Value {
    let mut d = deployment(name, image, 2);
    d["spec"]["progressDeadlineSeconds"] = json!(3);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({"no-such-node": "true"});
    d
}

async fn alerts_ready(w: &World, status: &str, reason: &str) -> String {
    w.wait_condition(PIPELINE, "AlertsReady", status, reason)
        .await
}

#[tokio::test]
async fn a_failed_rollout_pages_and_the_next_good_one_resolves() {
    let mut w = World::new("alerts", true, Some(spec()), &[]).await;
    let alert_key = format!("il1api{:016x}", rand::random::<u64>());
    create_secret(
        &w.client,
        &w.ns.name,
        ALERT_SECRET,
        "integrationKey",
        &alert_key,
    )
    .await;
    let workload = format!("Deployment/{}/web", w.ns.name);
    let expected_alert_key = format!("ilert-rollout-controller/e2e/{workload}");

    // A good first rollout: a deployment event, nothing to the Events API.
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 2)).await;
    wait_revision_complete(&w.deployments, "web", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        w.ilert.alerts_received().is_empty(),
        "an alert for a good rollout"
    );

    // Revision 2 cannot be scheduled: Failed, and an ALERT.
    apply(&w.deployments, "web", &stuck("web", "nginx:1.26-broken")).await;
    let alerts = w
        .ilert
        .wait_alerts_accepted(1, Duration::from_secs(90))
        .await;
    let a = &alerts[0];
    eprintln!("ALERT as ilert received it: {a:#}");
    assert_eq!(a["integrationKey"], alert_key.as_str());
    assert_eq!(a["eventType"], "ALERT", "{a}");
    assert_eq!(a["alertKey"], expected_alert_key.as_str(), "{a}");
    assert_eq!(a["priority"], "HIGH", "{a}");
    assert!(
        a["summary"].as_str().unwrap().starts_with(&format!(
            "Rollout failed: {}",
            workload.replacen('/', " ", 1)
        )),
        "{a}"
    );
    assert_eq!(a["labels"]["namespace"], w.ns.name.as_str(), "{a}");
    assert_eq!(a["customDetails"]["outcome"], "Failed", "{a}");
    let details = a["details"].as_str().unwrap();
    assert!(
        details.contains("did not finish rolling out revision 2")
            && details.contains("app=nginx:1.26-broken")
            && details.contains("kubectl rollout status"),
        "{details}"
    );
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    assert_eq!(events[1]["customDetails"]["outcome"], "Failed");

    // Fixed in revision 3: a deployment event, and the RESOLVE of the same alert.
    apply(&w.deployments, "web", &deployment("web", "nginx:1.26", 2)).await;
    wait_revision_complete(&w.deployments, "web", "3").await;
    let alerts = w.ilert.wait_alerts_accepted(2, EVENT_WAIT).await;
    let r = &alerts[1];
    eprintln!("RESOLVE as ilert received it: {r:#}");
    assert_eq!(r["eventType"], "RESOLVE", "{r}");
    assert_eq!(r["alertKey"], expected_alert_key.as_str(), "{r}");
    assert!(r.get("priority").is_none(), "{r}");
    w.ilert.wait_accepted(3, EVENT_WAIT).await;

    // A good rollout after the resolve sends nothing more to the Events API.
    apply(&w.deployments, "web", &deployment("web", "nginx:1.27", 2)).await;
    wait_revision_complete(&w.deployments, "web", "4").await;
    w.ilert.wait_accepted(4, EVENT_WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.ilert.alerts_received().len(), 2);

    alerts_ready(&w, "True", "Ready").await;
    let status = w.pipeline().await.status.unwrap();
    assert_eq!(status.alerts_sent, Some(2), "{status:?}");
    assert_eq!(status.pending_alerts, Some(0), "{status:?}");

    // Restart-safe: nothing is sent again.
    w.controller.restart();
    w.controller.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(w.ilert.alerts_received().len(), 2);
    assert_eq!(w.ilert.accepted_count(), 4);

    // Failing again pages again; deleting the workload then resolves it: no rollout ever will.
    apply(&w.deployments, "web", &stuck("web", "nginx:1.28-broken")).await;
    let alerts = w
        .ilert
        .wait_alerts_accepted(3, Duration::from_secs(90))
        .await;
    assert_eq!(alerts[2]["eventType"], "ALERT", "{}", alerts[2]);
    w.deployments
        .delete("web", &Default::default())
        .await
        .expect("delete");
    let alerts = w.ilert.wait_alerts_accepted(4, EVENT_WAIT).await;
    let r = &alerts[3];
    assert_eq!(r["eventType"], "RESOLVE", "{r}");
    assert_eq!(r["alertKey"], expected_alert_key.as_str(), "{r}");
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Deleted: Deployment {}/web", w.ns.name)),
        "{r}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.ilert.alerts_received().len(), 4);
    w.ilert.assert_schema_valid();
    w.assert_key_never_leaked().await;
    assert!(
        !w.controller.logs().contains(&alert_key),
        "the alert source's key appears in the log"
    );
}

#[tokio::test]
async fn a_rejected_alert_source_key_stops_only_alerts_until_it_is_replaced() {
    let w = World::new("alertkey", true, Some(spec()), &[]).await;
    create_secret(
        &w.client,
        &w.ns.name,
        ALERT_SECRET,
        "integrationKey",
        "il1api-wrong",
    )
    .await;
    w.ilert.script_alerts([Reply::Status(
        401,
        json!({"status": 401, "message": "Unknown integration key il1api-wrong", "code": "UNAUTHORIZED"}),
    )]);
    apply(&w.deployments, "web", &stuck("web", "nginx:1.25-broken")).await;
    let message = alerts_ready(&w, "False", "IntegrationKeyRejected").await;
    assert!(
        message.contains("alert source") && message.contains(ALERT_SECRET),
        "{message}"
    );
    assert!(
        !message.contains("il1api-wrong"),
        "the key in status: {message}"
    );
    // Deployment events are not held up.
    let events = w.ilert.wait_accepted(1, Duration::from_secs(90)).await;
    assert_eq!(events[0]["customDetails"]["outcome"], "Failed");
    w.wait_ready_condition("True", "Ready").await;
    w.wait_event("Warning IntegrationKeyRejected").await;

    // A new key goes out at once, and the alert waiting is delivered, once.
    create_secret(
        &w.client,
        &w.ns.name,
        ALERT_SECRET,
        "integrationKey",
        "il1api-right",
    )
    .await;
    let alerts = w.ilert.wait_alerts_accepted(1, EVENT_WAIT).await;
    assert_eq!(alerts[0]["integrationKey"], "il1api-right");
    assert_eq!(alerts[0]["eventType"], "ALERT");
    alerts_ready(&w, "True", "Ready").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.ilert.alerts_accepted().len(), 1);
    w.ilert.assert_schema_valid();
}
