//! One event per release (`spec.groupBy: Owner`): a Helm chart of three Deployments
//! (tests/charts/shop), installed and upgraded with the real helm. Each upgrade is one event that
//! names its three workloads; one failing is one event, outcome Failed, naming which; a kill -9 in
//! the middle of a change neither loses a member nor sends the change twice; the longest wait
//! reports what finished and names what did not.

use crate::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/charts/shop");
const MEMBERS: [&str; 3] = ["api", "web", "worker"];

fn grouped(extra: Value) -> Value {
    let mut spec = json!({
        "integrationKeySecretRef": {"name": "ilert"},
        "groupBy": "Owner",
        "groupWindowSeconds": 5
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

/// `name` (kubectl or helm of the control plane) with `args`, awaited: a blocking call would
/// stall the fake ilert on this runtime. Panics with its output unless it succeeds.
async fn tool_run(name: &str, args: &[&str]) {
    let out = tokio::process::Command::new(tool(name))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `helm upgrade --install shop` with these `--set` values.
async fn release(ns: &str, sets: &[String]) {
    let mut args = vec!["upgrade", "--install", "shop", CHART, "-n", ns];
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    tool_run("helm", &args).await;
}

fn images(api: &str, web: &str, worker: &str) -> Vec<String> {
    vec![
        format!("workloads.api.image={api}"),
        format!("workloads.web.image={web}"),
        format!("workloads.worker.image={worker}"),
    ]
}

/// The names and revisions a change's event lists, in order.
fn members(e: &Value) -> Vec<(String, String, String)> {
    e["customDetails"]["workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("no workloads in {e:#}"))
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_string(),
                w["revision"].as_str().unwrap().to_string(),
                w["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all(revision: &str, outcome: &str) -> Vec<(String, String, String)> {
    MEMBERS
        .iter()
        .map(|n| (n.to_string(), revision.to_string(), outcome.to_string()))
        .collect()
}

async fn all_complete(w: &World, revision: &str) {
    for name in MEMBERS {
        wait_revision_complete(&w.deployments, name, revision).await;
    }
}

#[tokio::test]
async fn each_helm_upgrade_is_one_event_naming_its_workloads_and_which_failed() {
    let w = World::new("groups", true, Some(grouped(json!({}))), &[]).await;
    let ns = w.ns.name.clone();

    // The install: three first rollouts, one event.
    release(&ns, &images("nginx:1.25", "nginx:1.25", "busybox:1.36")).await;
    all_complete(&w, "1").await;
    let got = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let install = &got[0];
    eprintln!("the install as ilert received it: {install:#}");
    assert_eq!(members(install), all("1", "Completed"));
    assert_eq!(install["customDetails"]["outcome"], "Completed");
    assert_eq!(
        install["customDetails"]["group"],
        json!({"tool": "helm", "kind": "Release", "name": "shop", "namespace": ns})
    );
    assert_eq!(
        install["summary"],
        "helm release shop rolled out 3 workloads on e2e: api nginx:1.25, web nginx:1.25, worker busybox:1.36"
    );

    // An upgrade of all three: one event, each with its own revision and image change.
    release(&ns, &images("nginx:1.26", "nginx:1.26", "busybox:1.37")).await;
    all_complete(&w, "2").await;
    let got = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    let upgrade = &got[1];
    eprintln!("the upgrade as ilert received it: {upgrade:#}");
    assert_eq!(members(upgrade), all("2", "Completed"));
    let worker = &upgrade["customDetails"]["workloads"][2];
    assert_eq!(
        worker["imageChanges"],
        json!([{"container": "worker", "from": "busybox:1.36", "to": "busybox:1.37"}])
    );
    assert_eq!(worker["previousRevision"], "1");
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(7)).await;

    // One of them fails: one event, outcome Failed, naming which.
    let mut failing = images("nginx:1.27", "nginx:1.27", "busybox:1.38-broken");
    failing.push("workloads.worker.nodeSelector.no-such-node=true".into());
    failing.push("workloads.worker.progressDeadlineSeconds=3".into());
    release(&ns, &failing).await;
    let got = w.ilert.wait_accepted(3, Duration::from_secs(90)).await;
    let failed = &got[2];
    eprintln!("the failed upgrade as ilert received it: {failed:#}");
    assert_eq!(failed["customDetails"]["outcome"], "Failed");
    assert_eq!(
        members(failed),
        vec![
            ("api".into(), "3".into(), "Completed".into()),
            ("web".into(), "3".into(), "Completed".into()),
            ("worker".into(), "3".into(), "Failed".into()),
        ]
    );
    assert!(
        failed["summary"]
            .as_str()
            .unwrap()
            .ends_with("(1 failed: worker)"),
        "{}",
        failed["summary"]
    );

    // A workload no release owns is reported on its own, as without grouping.
    apply(&w.deployments, "solo", &deployment("solo", "nginx:1.25", 1)).await;
    let got = w.ilert.wait_accepted(4, EVENT_WAIT).await;
    assert_eq!(got[3]["customDetails"]["name"], "solo", "{:#}", got[3]);
    assert!(got[3]["customDetails"].get("workloads").is_none());
    assert_no_more_than(&w.ilert, 4, Duration::from_secs(7)).await;
    w.ilert.assert_schema_valid();
    w.assert_key_never_leaked().await;
}

/// The ledger's pending entries that belong to a change.
async fn pending_members(w: &World) -> usize {
    ledger_maps(&w.client, &w.ns.name)
        .await
        .iter()
        .flat_map(|c| c.data.clone().unwrap_or_default().into_values())
        .filter_map(|v| serde_json::from_str::<Value>(&v).ok())
        .filter(|e| e["s"] == "Pending" && e["g"].is_string())
        .count()
}

/// The node every held worker pod may go to once it carries the test's label.
const NODE: &str = "kwok-node-1";

/// Installs the release (one event), then upgrades all three with the worker's pods waiting for
/// a label no node has yet (`hold-<ns>`): api and web roll out, the worker's rollout is held.
/// Returns when the upgrade was started.
async fn install_then_upgrade_holding_the_worker(w: &World) -> std::time::Instant {
    let ns = &w.ns.name;
    release(ns, &images("nginx:1.25", "nginx:1.25", "busybox:1.36")).await;
    all_complete(w, "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    let mut sets = images("nginx:1.26", "nginx:1.26", "busybox:1.37");
    sets.push(format!("workloads.worker.nodeSelector.hold-{ns}=open"));
    let started = std::time::Instant::now();
    release(ns, &sets).await;
    started
}

/// Lets the held worker's pods run (`on`), or takes the label off the node again.
async fn hold_released(ns: &str, on: bool) {
    let label = if on {
        format!("hold-{ns}=open")
    } else {
        format!("hold-{ns}-")
    };
    tool_run("kubectl", &["label", "node", NODE, &label, "--overwrite"]).await;
}

#[tokio::test]
async fn a_kill_in_the_middle_of_a_change_neither_loses_a_member_nor_sends_it_twice() {
    let mut w = World::new("groups-kill", true, Some(grouped(json!({}))), &[]).await;
    // api and web finish; the worker waits for a node.
    install_then_upgrade_holding_the_worker(&w).await;
    wait_revision_complete(&w.deployments, "api", "2").await;
    wait_revision_complete(&w.deployments, "web", "2").await;
    eventually(
        Duration::from_secs(30),
        "api's and web's events pending in the ledger, tagged with their change",
        || async { (pending_members(&w).await == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        w.ilert.accepted_count(),
        1,
        "sent before the change was complete"
    );

    w.controller.kill();
    w.controller.restart();
    w.controller.wait_ready().await;
    // Held past the window after the restart: the worker still rolls out.
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(8)).await;

    hold_released(&w.ns.name, true).await;
    wait_revision_complete(&w.deployments, "worker", "2").await;
    let got = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    eprintln!(
        "the change after the kill as ilert received it: {:#}",
        got[1]
    );
    assert_eq!(members(&got[1]), all("2", "Completed"));
    assert_no_more_than(&w.ilert, 2, Duration::from_secs(8)).await;
    assert_eq!(pending_members(&w).await, 0);
    hold_released(&w.ns.name, false).await;
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn the_longest_wait_reports_what_finished_and_names_what_did_not() {
    let spec = grouped(json!({"groupWindowSeconds": 2, "groupMaxWaitSeconds": 12}));
    let w = World::new("groups-wait", true, Some(spec), &[]).await;
    let ns = w.ns.name.clone();
    let started = install_then_upgrade_holding_the_worker(&w).await;
    let got = w.ilert.wait_accepted(2, Duration::from_secs(40)).await;
    let waited = started.elapsed();
    let capped = &got[1];
    eprintln!("the change at its longest wait, after {waited:?}: {capped:#}");
    assert!(
        waited >= Duration::from_secs(11),
        "sent after {waited:?}, before the longest wait"
    );
    assert_eq!(
        members(capped),
        vec![
            ("api".into(), "2".into(), "Completed".into()),
            ("web".into(), "2".into(), "Completed".into()),
        ]
    );
    let worker = format!("Deployment/{ns}/worker");
    assert_eq!(capped["customDetails"]["unfinished"], json!([worker]));
    assert!(
        capped["summary"]
            .as_str()
            .unwrap()
            .ends_with("(1 not finished: worker)"),
        "{}",
        capped["summary"]
    );

    // The worker finishes later: reported then, on its own.
    hold_released(&ns, true).await;
    wait_revision_complete(&w.deployments, "worker", "2").await;
    let got = w.ilert.wait_accepted(3, EVENT_WAIT).await;
    assert_eq!(got[2]["customDetails"]["name"], "worker", "{:#}", got[2]);
    assert_eq!(got[2]["customDetails"]["revision"], "2");
    assert_no_more_than(&w.ilert, 3, Duration::from_secs(5)).await;
    hold_released(&ns, false).await;
}
