//! Argo Rollouts: every finished Rollout reported once, like a Deployment, against the real
//! Argo Rollouts controller (built from its Go module, run in the test's namespace). Canary steps
//! and pauses are not ends; a promotion continues the same rollout; an abort is reported like a
//! failure (and pages with `spec.alerts`); an undo is a rollback; a Rollout that runs a
//! Deployment through `spec.workloadRef` reports as the Rollout only.

use crate::argo_rollouts::*;
use crate::*;

/// The controller asks discovery every second, so the Rollout watch starts promptly once a test
/// has installed the CRDs.
const ARGS: &[&str] = &["--discovery-interval-seconds", "1"];

async fn world(
    prefix: &str,
    spec: Option<Value>,
) -> (World, ArgoRollouts, Api<kube::api::DynamicObject>) {
    let w = World::new(prefix, true, spec, ARGS).await;
    let argo = ArgoRollouts::start(&w.client, &w.ns.name).await;
    let api = rollouts(&w.client, &w.ns.name);
    (w, argo, api)
}

fn details(e: &Value) -> &Value {
    &e["customDetails"]
}

#[tokio::test]
async fn a_canary_is_reported_once_after_its_last_step_and_an_undo_as_a_rollback() {
    let (mut w, argo, api) = world("argo-canary", None).await;
    let ns = w.ns.name.clone();
    apply(
        &api,
        "web",
        &rollout("web", "nginx:1.25", 2, canary_steps()),
    )
    .await;
    wait_healthy(&api, "web", "1").await;
    let first = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(
        first[0]["summary"],
        format!("Rollout {ns}/web rolled out nginx:1.25 (revision 1) on e2e").as_str(),
        "{:#}",
        first[0]
    );
    assert_eq!(details(&first[0])["kind"], "Rollout");
    assert_eq!(details(&first[0])["outcome"], "Completed");

    // Revision 2 goes through setWeight 50, a pause and setWeight 100. A kill -9 of the
    // controller while it runs: the rollout is still reported once, after its last step.
    let mut steps = canary_steps();
    steps["canary"]["steps"][1]["pause"]["duration"] = json!("6s");
    apply(&api, "web", &rollout("web", "nginx:1.26", 2, steps)).await;
    wait_status(&api, "web", "phase", json!("Paused")).await;
    assert_eq!(w.ilert.accepted_count(), 1, "an event for a canary step");
    w.controller.kill();
    w.controller.restart();
    w.controller.wait_ready().await;
    let r = wait_healthy(&api, "web", "2").await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let e = &events[1];
    eprintln!("Rollout event as ilert received it: {e:#}");
    assert_eq!(
        e["summary"],
        format!("Rollout {ns}/web rolled out nginx:1.26 (revision 2) on e2e").as_str()
    );
    let d = details(e);
    assert_eq!(d["revision"], "2");
    assert_eq!(d["previousRevision"], "1");
    assert_eq!(d["argoRollout"]["strategy"], "canary", "{d}");
    assert_eq!(d["argoRollout"]["steps"], "3/3", "{d}");
    // Who changed the template: the tests' apply, not Argo's defaults written after it.
    assert_eq!(d["changedBy"], "e2e-tests", "{d}");
    assert_eq!(
        d["imageChanges"],
        json!([{"container": "app", "from": "nginx:1.25", "to": "nginx:1.26"}])
    );
    // ilert correlates by when Argo says it finished, not by when the controller sent it.
    let progressing = r.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    let finished: jiff::Timestamp = progressing["lastUpdateTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(e["timestamp"].as_i64(), Some(finished.as_millisecond()));
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(3)).await;

    // `preview` (as the admin here) prints what was sent, key aside.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ilert-rollout-controller"))
        .args(["preview", "rollout/web", "-n", &ns, "--cluster-name", "e2e"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut preview: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut sent = e.clone();
    for v in [&mut preview, &mut sent] {
        v.as_object_mut().unwrap().remove("integrationKey");
    }
    assert_eq!(preview, sent, "preview rollout/web is not what was sent");

    // An undo (what `kubectl argo rollouts undo` writes: the template of revision 1 again) is a
    // new revision that re-uses revision 1's ReplicaSet: RolledBack.
    apply(
        &api,
        "web",
        &rollout("web", "nginx:1.25", 2, canary_steps()),
    )
    .await;
    wait_healthy(&api, "web", "3").await;
    let events = w.ilert.wait_accepted(3, EVENT_WAIT).await;
    let e = &events[2];
    assert_eq!(details(e)["outcome"], "RolledBack", "{e:#}");
    assert_eq!(details(e)["rolledBackToRevisionsOf"], json!(["1"]), "{e:#}");
    assert!(
        e["summary"].as_str().unwrap().starts_with(&format!(
            "Rolled back: Rollout {ns}/web returned to nginx:1.25"
        )),
        "{e:#}"
    );

    // Restart-safe: nothing again.
    w.controller.graceful_restart().await;
    w.controller.wait_ready().await;
    assert_no_more_than(&w.ilert, 3, Duration::from_secs(4)).await;
    w.ilert.assert_schema_valid();
    w.assert_key_never_leaked().await;
    drop(argo);
}

#[tokio::test]
async fn a_blue_green_rollout_with_auto_promotion_is_one_event() {
    let (w, _argo, api) = world("argo-bluegreen", None).await;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(w.client.clone(), &w.ns.name);
    apply(&services, "web-active", &service("web-active", "web")).await;
    apply(
        &api,
        "web",
        &rollout("web", "nginx:1.25", 2, blue_green("web-active")),
    )
    .await;
    wait_healthy(&api, "web", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    apply(
        &api,
        "web",
        &rollout("web", "nginx:1.26", 2, blue_green("web-active")),
    )
    .await;
    wait_healthy(&api, "web", "2").await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let d = details(&events[1]);
    assert_eq!(d["outcome"], "Completed", "{d}");
    assert_eq!(d["revision"], "2", "{d}");
    assert_eq!(d["argoRollout"]["strategy"], "blueGreen", "{d}");
    assert_eq!(d["images"], json!({"app": "nginx:1.26"}), "{d}");
    // The old ReplicaSet stays up for Argo's scale-down delay: no event for that either.
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(5)).await;
    w.ilert.assert_schema_valid();
}

const ALERT_SECRET: &str = "ilert-alerts";

#[tokio::test]
async fn an_aborted_canary_is_reported_and_pages_and_the_fixed_revision_resolves() {
    let spec = json!({
        "integrationKeySecretRef": {"name": "ilert"},
        "alerts": {"alertSourceKeySecretRef": {"name": ALERT_SECRET}}
    });
    let (w, _argo, api) = world("argo-abort", Some(spec)).await;
    create_secret(
        &w.client,
        &w.ns.name,
        ALERT_SECRET,
        "integrationKey",
        "il1api-argo",
    )
    .await;
    let ns = w.ns.name.clone();
    // Paused after half, until promoted or aborted.
    let held = json!({"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}});
    apply(&api, "web", &rollout("web", "nginx:1.25", 2, held.clone())).await;
    wait_healthy(&api, "web", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;

    apply(
        &api,
        "web",
        &rollout("web", "nginx:1.26-bad", 2, held.clone()),
    )
    .await;
    wait_status(&api, "web", "phase", json!("Paused")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.ilert.accepted_count(), 1, "an event for a pause");
    abort(&api, "web").await;
    wait_status(&api, "web", "phase", json!("Degraded")).await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let e = &events[1];
    eprintln!("Aborted Rollout as ilert received it: {e:#}");
    assert_eq!(details(e)["outcome"], "Aborted", "{e:#}");
    assert_eq!(details(e)["revision"], "2", "{e:#}");
    let summary = e["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "Rollout aborted: Rollout {ns}/web did not roll out nginx:1.26-bad (revision 2) on e2e: RolloutAborted"
        )),
        "{summary}"
    );
    let alerts = w.ilert.wait_alerts_accepted(1, EVENT_WAIT).await;
    let a = &alerts[0];
    eprintln!("ALERT for the abort: {a:#}");
    assert_eq!(a["eventType"], "ALERT", "{a}");
    assert_eq!(
        a["alertKey"],
        format!("ilert-rollout-controller/e2e/Rollout/{ns}/web").as_str()
    );
    let text = a["details"].as_str().unwrap();
    assert!(
        text.contains("aborted its rollout of revision 2")
            && text.contains("kubectl argo rollouts get rollout web"),
        "{text}"
    );

    // A fixed revision: Completed, and the RESOLVE of the same alert.
    let quick = json!({"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]}});
    apply(&api, "web", &rollout("web", "nginx:1.26", 2, quick)).await;
    wait_healthy(&api, "web", "3").await;
    let events = w.ilert.wait_accepted(3, EVENT_WAIT).await;
    assert_eq!(details(&events[2])["outcome"], "Completed");
    assert_eq!(details(&events[2])["revision"], "3");
    let alerts = w.ilert.wait_alerts_accepted(2, EVENT_WAIT).await;
    assert_eq!(alerts[1]["eventType"], "RESOLVE", "{}", alerts[1]);
    assert_eq!(alerts[1]["alertKey"], alerts[0]["alertKey"]);
    assert_no_more_than(&w.ilert, 3, Duration::from_secs(3)).await;
    assert_eq!(w.ilert.alerts_received().len(), 2);
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn a_rollout_with_a_workload_ref_reports_as_the_rollout_and_never_as_its_deployment() {
    let (w, _argo, api) = world("argo-ref", None).await;
    let ns = w.ns.name.clone();
    let mut r = rollout("web", "unused", 2, canary_steps());
    let spec = r["spec"].as_object_mut().unwrap();
    spec.remove("template");
    spec.insert(
        "workloadRef".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "scaleDown": "onsuccess"}),
    );
    // The Rollout first, as Argo's migration guide has it: the Deployment is the Rollout's from
    // its first sight.
    apply(&api, "web", &r).await;
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 2)).await;
    wait_healthy(&api, "web", "1").await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let d = details(&events[0]);
    assert_eq!(d["kind"], "Rollout", "{d}");
    assert_eq!(d["images"], json!({"app": "nginx:1.25"}), "{d}");
    assert_eq!(d["argoRollout"]["workloadRef"], "Deployment/web", "{d}");
    // Argo scales the Deployment to zero: not a rollout of its own.
    eventually(
        Duration::from_secs(60),
        "the Deployment scaled to 0",
        || async {
            let d = w.deployments.get("web").await.ok()?;
            (d.spec?.replicas == Some(0)).then_some(())
        },
    )
    .await;
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;

    // A new image in the Deployment is the Rollout's revision 2, and only that.
    apply(&w.deployments, "web", &{
        let mut d = deployment("web", "nginx:1.26", 2);
        d["spec"]["replicas"] = json!(0);
        d
    })
    .await;
    wait_healthy(&api, "web", "2").await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let d = details(&events[1]);
    assert_eq!(
        events[1]["summary"],
        format!("Rollout {ns}/web rolled out nginx:1.26 (revision 2) on e2e").as_str(),
        "{d}"
    );
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(3)).await;
    assert!(
        w.ilert
            .accepted()
            .iter()
            .all(|e| e["customDetails"]["kind"] == "Rollout"),
        "an event for the Deployment a Rollout runs"
    );
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_is_reported_failed_once() {
    let (w, _argo, api) = world("argo-deadline", None).await;
    let ns = w.ns.name.clone();
    let body = |image: &str, schedulable: bool| {
        let mut r = rollout("web", image, 2, canary_steps());
        r["spec"]["progressDeadlineSeconds"] = json!(5);
        if !schedulable {
            r["spec"]["template"]["spec"]["nodeSelector"] = json!({"no-such-node": "true"});
        }
        r
    };
    apply(&api, "web", &body("nginx:1.25", true)).await;
    wait_healthy(&api, "web", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    apply(&api, "web", &body("nginx:1.26", false)).await;
    let events = w.ilert.wait_accepted(2, Duration::from_secs(90)).await;
    let e = &events[1];
    eprintln!("Failed Rollout as ilert received it: {e:#}");
    assert_eq!(details(e)["outcome"], "Failed", "{e:#}");
    assert_eq!(details(e)["revision"], "2", "{e:#}");
    assert!(
        e["summary"].as_str().unwrap().starts_with(&format!(
            "Rollout failed: Rollout {ns}/web did not roll out nginx:1.26"
        )),
        "{e:#}"
    );
    let r = api.get("web").await.unwrap();
    assert_eq!(
        r.data["status"]["phase"], "Degraded",
        "{:#}",
        r.data["status"]
    );
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(4)).await;
}

/// An identity with the chart's rights minus `argoproj.io` (a chart from before Rollouts were
/// read, on a cluster with Argo Rollouts): cluster-wide ClusterRole and binding of its own
/// (removed when dropped), and the release's Role in `ns`.
struct WithoutRollouts {
    client: Client,
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl WithoutRollouts {
    async fn new(client: &Client, ns: &str) -> Self {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
        let release = release_name(ns);
        let chart_role = release_account(&release);
        let name = format!("{ns}-no-rollouts");
        let roles: Api<ClusterRole> = Api::all(client.clone());
        let mut rules = roles
            .get(&chart_role)
            .await
            .expect("the chart's ClusterRole")
            .rules
            .unwrap();
        rules.retain(|r| !r.api_groups.iter().flatten().any(|g| g == "argoproj.io"));
        assert!(rules.len() >= 5, "{rules:?}");
        apply(&roles, &name, &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})).await;
        let subject = json!([{"kind": "ServiceAccount", "name": "no-rollouts", "namespace": ns}]);
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        apply(&accounts, "no-rollouts", &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "no-rollouts"}})).await;
        let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
        apply(&bindings, &name, &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}, "subjects": subject})).await;
        let local: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
        apply(&local, "no-rollouts", &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "no-rollouts"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": chart_role}, "subjects": subject})).await;
        let kubeconfig =
            std::path::PathBuf::from(REPO).join(format!("target/e2e-logs/{name}.kubeconfig"));
        token_kubeconfig(&kubeconfig, &account_token(ns, "no-rollouts", "1h"), ns);
        WithoutRollouts {
            client: client.clone(),
            name,
            kubeconfig,
        }
    }
}

impl Drop for WithoutRollouts {
    fn drop(&mut self) {
        let kubectl = tool("kubectl");
        let _ = std::process::Command::new(kubectl)
            .args([
                "delete",
                "clusterrole,clusterrolebinding",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
        let _ = &self.client;
    }
}

/// A controller that may not read Rollouts on a cluster that has them (RBAC from an older chart)
/// is ready, says once what to grant, and reports every other kind.
#[tokio::test]
async fn without_the_right_to_read_rollouts_the_rest_is_reported_and_the_log_says_what_to_grant() {
    let (mut w, _argo, api) = world("argo-rbac", None).await;
    let ns = w.ns.name.clone();
    let identity = WithoutRollouts::new(&w.client, &ns).await;
    // The chart identity's controller makes way for one without the right.
    w.controller = Controller::start_serving_as(
        &ns,
        &w.ilert,
        &format!("e2e-ns={ns}"),
        ARGS,
        "no-rollouts",
        identity.kubeconfig.clone(),
    );
    w.controller.wait_ready().await;
    apply(
        &api,
        "shop",
        &rollout("shop", "nginx:1.25", 1, canary_steps()),
    )
    .await;
    wait_healthy(&api, "shop", "1").await;
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 1)).await;
    wait_revision_complete(&w.deployments, "web", "1").await;
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(
        events[0]["customDetails"]["kind"], "Deployment",
        "{:#}",
        events[0]
    );
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(4)).await;
    let logs = w.controller.logs();
    let warned = logs.matches("not allowed to list or watch it").count();
    assert_eq!(warned, 1, "said once, not at every retry: {logs}");
    assert!(
        logs.contains("grant the controller's ClusterRole get, list and watch on rollouts of argoproj.io/v1alpha1"),
        "{logs}"
    );
}
