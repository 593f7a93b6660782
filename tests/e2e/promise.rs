//! The promise under edge paths, on the real control plane: one outcome per rollout (a stale
//! condition never decides it), a baseline from what the status says at first sight, staged and
//! OnDelete StatefulSets reported at their real end, Ready that says only what is known, and
//! instances split by `--pipeline-selector` that never repeat or forget each other's events.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};

use crate::*;

/// A revision that cannot be scheduled: Failed 3 s after it starts. One replica: the rollback
/// that follows changes no replica count, so the Deployment controller carries the deadline over.
fn stuck(name: &str, image: &str) -> Value {
    let mut d = deployment(name, image, 1);
    d["spec"]["progressDeadlineSeconds"] = json!(3);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({"no-such-node": "true"});
    d
}

fn outcomes(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["customDetails"]["revision"].as_str().unwrap_or("").into(),
                e["customDetails"]["outcome"].as_str().unwrap_or("").into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_rollback_after_a_failed_rollout_is_one_rolled_back_event_and_one_resolve() {
    let spec = json!({
        "integrationKeySecretRef": {"name": "ilert"},
        "alerts": {"alertSourceKeySecretRef": {"name": "ilert-alerts"}}
    });
    let w = World::new("staledeadline", true, Some(spec), &[]).await;
    create_secret(
        &w.client,
        &w.ns.name,
        "ilert-alerts",
        "integrationKey",
        "il1api-stale",
    )
    .await;
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 1)).await;
    wait_revision_complete(&w.deployments, "web", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;

    // Revision 2 fails by its progress deadline: a Failed event and an ALERT.
    apply(&w.deployments, "web", &stuck("web", "nginx:1.26-broken")).await;
    w.ilert
        .wait_alerts_accepted(1, Duration::from_secs(90))
        .await;
    w.ilert.wait_accepted(2, EVENT_WAIT).await;

    // The template of revision 1 again: the Deployment controller re-uses its ReplicaSet as
    // revision 3 while the Progressing condition still says revision 2 exceeded its deadline.
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 1)).await;
    wait_revision_complete(&w.deployments, "web", "3").await;
    w.ilert.wait_accepted(3, EVENT_WAIT).await;
    w.ilert.wait_alerts_accepted(2, EVENT_WAIT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = w.ilert.accepted();
    assert_eq!(
        outcomes(&events),
        vec![
            ("1".into(), "Completed".into()),
            ("2".into(), "Failed".into()),
            ("3".into(), "RolledBack".into())
        ],
        "one outcome per revision"
    );
    let alerts: Vec<String> = w
        .ilert
        .alerts_accepted()
        .iter()
        .map(|a| a["eventType"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(alerts, ["ALERT", "RESOLVE"], "no page for the rollback");
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn ready_says_only_what_is_known_about_the_key() {
    let w = World::new("readykey", false, None, &[]).await;
    // No Secret and no rollout yet: not Ready, and it says why.
    let message = w.wait_ready_condition("False", "SecretNotFound").await;
    assert!(message.contains("ilert"), "{message}");
    // The Secret appears: the key was read; nothing was sent.
    create_secret(&w.client, &w.ns.name, "ilert", "integrationKey", &w.key).await;
    let message = w.wait_ready_condition("True", "Ready").await;
    assert!(
        message.contains(&format!("Secret {}/ilert", w.ns.name))
            && message.contains("no event sent yet"),
        "{message}"
    );
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    eventually(
        Duration::from_secs(10),
        "Ready says ilert accepted",
        || async {
            let p = w.pipeline().await.status?;
            let c = p.conditions.iter().find(|c| c.type_ == "Ready")?;
            c.message
                .contains("ilert accepted the last event")
                .then_some(())
        },
    )
    .await;
    // The Secret is deleted while nothing rolls out: the pipeline says so on its own.
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.ns.name);
    secrets
        .delete("ilert", &Default::default())
        .await
        .expect("delete secret");
    w.wait_condition(PIPELINE, "Ready", "False", "SecretNotFound")
        .await;
    w.assert_key_never_leaked().await;
}

/// Labels (or unlabels) every node: pods that select the label can be scheduled.
async fn label_nodes(client: &Client, label: &str, on: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    for n in nodes.list(&Default::default()).await.expect("nodes") {
        let name = n.metadata.name.unwrap_or_default();
        let value = if on { json!("true") } else { Value::Null };
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {label: value}}})),
            )
            .await
            .expect("label node");
    }
}

/// The ledger entries the controller keeps in `ns`, as ConfigMap data keys.
async fn ledger_keys(client: &Client, ns: &str) -> Vec<String> {
    ledger_maps(client, ns)
        .await
        .into_iter()
        .flat_map(|c| c.data.unwrap_or_default().into_keys())
        .collect()
}

#[tokio::test]
async fn a_stateful_set_mid_rollout_when_its_pipeline_is_created_is_reported_once() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "midrollout").await;
    let hold = format!("e2e-hold-{}", ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    // Its pods wait for a node label: the rollout is in progress when the pipeline appears.
    let mut sts = stateful_set("db", "postgres:16.3", 2);
    sts["spec"]["template"]["spec"]["nodeSelector"] = json!({&hold: "true"});
    apply(&sets, "db", &sts).await;
    let uid = sets.get("db").await.unwrap().metadata.uid.unwrap();
    let (pipelines, ilert, mut controller) =
        pipeline_over_existing(&client, &ns.name, "ilapid-mid").await;
    // Seen mid-rollout (and so remembered); then the controller is away while it finishes.
    eventually(Duration::from_secs(20), "db selected", || async {
        let s = pipelines.get(PIPELINE).await.ok()?.status?;
        (s.selected_workloads == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "ledger of the pipeline before the kill: {:?} (the workload is {uid})",
        ledger_keys(&client, &ns.name).await
    );
    controller.kill();
    label_nodes(&client, &hold, true).await;
    eventually(Duration::from_secs(90), "db rolled out", || async {
        let st = sets.get("db").await.ok()?.status?;
        (st.ready_replicas? == 2 && st.updated_replicas? == 2).then_some(())
    })
    .await;
    controller.restart();
    controller.wait_ready().await;
    let events = ilert.wait_accepted(1, EVENT_WAIT).await;
    label_nodes(&client, &hold, false).await;
    assert_eq!(events[0]["customDetails"]["kind"], "StatefulSet");
    assert_eq!(events[0]["customDetails"]["revision"], "1");
    assert_no_more_than(&ilert, 1, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn staged_and_on_delete_stateful_sets_are_reported_at_their_real_end() {
    let w = World::new("stagedsts", true, None, &[]).await;
    let sets: Api<StatefulSet> = Api::namespaced(w.client.clone(), &w.ns.name);
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), &w.ns.name);
    let all_updated = |name: &'static str, replicas: i32| {
        let sets = sets.clone();
        async move {
            eventually(
                Duration::from_secs(90),
                &format!("{name}: {replicas} updated and ready"),
                || async {
                    let s = sets.get(name).await.ok()?;
                    let st = s.status?;
                    (st.observed_generation? >= s.metadata.generation?
                        && st.updated_replicas? == replicas
                        && st.ready_replicas? == replicas)
                        .then_some(())
                },
            )
            .await
        }
    };

    // A partition holds one of two replicas back: a staged rollout, not its end.
    let mut staged = stateful_set("staged", "postgres:16.3", 2);
    apply(&sets, "staged", &staged).await;
    all_updated("staged", 2).await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    staged["spec"]["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
    staged["spec"]["template"]["spec"]["containers"][0]["image"] = json!("postgres:16.4");
    apply(&sets, "staged", &staged).await;
    eventually(Duration::from_secs(60), "staged: pod 1 updated", || async {
        let st = sets.get("staged").await.ok()?.status?;
        (st.updated_replicas? == 1 && st.ready_replicas? == 2).then_some(())
    })
    .await;
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(4)).await;
    // The partition lowered: every replica updated, one event for revision 2.
    staged["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(0);
    apply(&sets, "staged", &staged).await;
    all_updated("staged", 2).await;
    let events = w.ilert.wait_accepted(2, EVENT_WAIT).await;
    assert_eq!(events[1]["customDetails"]["revision"], "2", "{}", events[1]);
    assert_eq!(events[1]["customDetails"]["images"]["db"], "postgres:16.4");

    // OnDelete: the new revision reaches the pods only as they are deleted.
    let mut manual = stateful_set("manual", "redis:7.2", 2);
    manual["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
    apply(&sets, "manual", &manual).await;
    all_updated("manual", 2).await;
    w.ilert.wait_accepted(3, EVENT_WAIT).await;
    manual["spec"]["template"]["spec"]["containers"][0]["image"] = json!("redis:7.4");
    apply(&sets, "manual", &manual).await;
    assert_no_more_than(&w.ilert, 3, Duration::from_secs(4)).await;
    for i in 0..2 {
        pods.delete(&format!("manual-{i}"), &Default::default())
            .await
            .expect("delete pod");
    }
    all_updated("manual", 2).await;
    let events = w.ilert.wait_accepted(4, EVENT_WAIT).await;
    assert_eq!(events[3]["customDetails"]["name"], "manual");
    assert_eq!(events[3]["customDetails"]["revision"], "2", "{}", events[3]);
    assert_no_more_than(&w.ilert, 4, Duration::from_secs(3)).await;
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn instances_split_by_pipeline_selector_never_repeat_or_forget_each_other() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "shards").await;
    let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let ilert = FakeIlert::start().await;
    let mut controllers = Vec::new();
    for shard in ["a", "b"] {
        create_secret(
            &client,
            &ns.name,
            &format!("ilert-{shard}"),
            "integrationKey",
            &format!("ilapid-shard-{shard}"),
        )
        .await;
        create_pipeline(
            &pipelines,
            &format!("{}-{shard}", ns.name),
            &format!("team-{shard}"),
            json!({
                "integrationKeySecretRef": {"name": format!("ilert-{shard}")},
                "selector": {"matchLabels": {"team": shard}}
            }),
        )
        .await;
        let lease = format!("ilert-rollout-controller-{shard}");
        let mut c = Controller::start_serving(
            &ns.name,
            &ilert,
            &format!("e2e-ns={}-{shard}", ns.name),
            &["--lease-name", &lease],
            shard,
        );
        c.wait_ready().await;
        controllers.push(c);
    }
    let workload = |name: &str, team: &str, image: &str| {
        let mut d = deployment(name, image, 1);
        d["metadata"]["labels"]["team"] = json!(team);
        d
    };
    apply(&deployments, "api", &workload("api", "a", "nginx:1.25")).await;
    apply(&deployments, "web", &workload("web", "b", "nginx:1.25")).await;
    ilert.wait_accepted(2, EVENT_WAIT).await;
    // Each instance restarts once: neither may forget or repeat the other's deliveries.
    for c in controllers.iter_mut() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.restart();
        c.wait_ready().await;
    }
    apply(&deployments, "api", &workload("api", "a", "nginx:1.26")).await;
    apply(&deployments, "web", &workload("web", "b", "nginx:1.26")).await;
    ilert.wait_accepted(4, EVENT_WAIT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t = accepted_per_rollout(&ilert);
    assert_eq!(t.len(), 4, "{t:?}");
    assert!(t.values().all(|n| *n == 1), "repeated events: {t:?}");

    // Relabelled out of its shard and back: its deliveries are still known.
    for value in [format!("{}-elsewhere", ns.name), format!("{}-a", ns.name)] {
        pipelines
            .patch(
                "team-a",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"e2e-ns": value}}})),
            )
            .await
            .expect("relabel");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_no_more_than(&ilert, 4, Duration::from_secs(5)).await;
    // Deleting a pipeline still removes its delivery state.
    let uid = pipelines.get("team-b").await.unwrap().metadata.uid.unwrap();
    pipelines
        .delete("team-b", &Default::default())
        .await
        .expect("delete pipeline");
    eventually(
        Duration::from_secs(20),
        "team-b's ledger removed",
        || async {
            let left = ledger_maps(&client, &ns.name)
                .await
                .iter()
                .filter(|c| c.metadata.name.as_deref().unwrap_or("").contains(&uid))
                .count();
            (left == 0).then_some(())
        },
    )
    .await;
    let a_uid = pipelines.get("team-a").await.unwrap().metadata.uid.unwrap();
    assert!(
        ledger_maps(&client, &ns.name).await.iter().any(|c| c
            .metadata
            .name
            .as_deref()
            .unwrap_or("")
            .contains(&a_uid)),
        "team-a's ledger is gone"
    );
}

/// Pending entries in the ledger ConfigMaps of `ns`, and the largest ConfigMap's data in bytes.
async fn stored_pending(client: &Client, ns: &str) -> (usize, usize, usize) {
    let maps = ledger_maps(client, ns).await;
    let pending = maps
        .iter()
        .flat_map(|c| c.data.iter().flatten())
        .filter(|(_, v)| v.contains("\"s\":\"Pending\""))
        .count();
    let largest = maps
        .iter()
        .map(|c| {
            c.data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    (pending, largest, maps.len())
}

/// A pipeline whose events are shaped to about 30 KiB each, suspended.
fn big_events_suspended() -> Value {
    let detail = "{% for i in range(600) %}{{ workload.name }}{% endfor %}";
    let details: serde_json::Map<String, Value> =
        (0..7).map(|i| (format!("d{i}"), json!(detail))).collect();
    json!({
        "integrationKeySecretRef": {"name": "ilert"},
        "suspend": true,
        "template": {"customDetails": details}
    })
}

async fn unsuspend(w: &World) {
    w.pipelines
        .patch(
            PIPELINE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .expect("unsuspend");
}

async fn wait_all_named(w: &World, names: &[String]) -> Tally {
    eventually(
        Duration::from_secs(240),
        &format!("all {} rollouts named", names.len()),
        || async {
            let t = Tally::of(&w.ilert.received());
            names.iter().all(|n| t.has(&w.ns.name, n, "1")).then_some(t)
        },
    )
    .await
}

/// The data keys a ConfigMap's managedFields name as owned (`f:data.f:<key>`, not the map
/// itself, `.`), over all managers.
fn owned_data_keys(cm: &ConfigMap) -> Vec<String> {
    cm.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.fields_v1.as_ref()?.0.get("f:data")?.as_object())
        .flat_map(|data| {
            data.keys()
                .filter_map(|k| k.strip_prefix("f:").map(String::from))
        })
        .collect()
}

#[tokio::test]
async fn a_ledger_shard_names_as_owned_only_what_its_last_write_changed() {
    // 48 workloads in 16 shards: some shard holds at least three entries.
    let w = World::new(
        "ownership",
        true,
        None,
        &["--rate-limit-per-minute", "1000"],
    )
    .await;
    let names: Vec<String> = (0..48).map(|i| format!("own-{i:02}")).collect();
    for n in &names {
        apply(&w.deployments, n, &deployment(n, "nginx:1.25", 1)).await;
    }
    wait_all_named(&w, &names).await;
    let settled = || async {
        let (pending, _, _) = stored_pending(&w.client, &w.ns.name).await;
        (pending == 0).then_some(())
    };
    eventually(Duration::from_secs(20), "no pending entry", settled).await;
    let fullest = ledger_maps(&w.client, &w.ns.name)
        .await
        .into_iter()
        .max_by_key(|c| c.data.as_ref().map_or(0, |d| d.len()))
        .expect("ledger shards");
    let shard = fullest.metadata.name.clone().unwrap();
    let uid = fullest
        .data
        .as_ref()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let uid = uid.split('.').next().unwrap().to_string();
    let name = w
        .deployments
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|d| d.metadata.uid.as_deref() == Some(&uid))
        .and_then(|d| d.metadata.name)
        .expect("the workload of a ledger key");
    // One more rollout: its pending and sent writes are the shard's last.
    apply(&w.deployments, &name, &deployment(&name, "nginx:1.26", 1)).await;
    let events = w.ilert.wait_accepted(names.len() + 1, EVENT_WAIT).await;
    assert_eq!(
        events.last().unwrap()["customDetails"]["name"],
        name.as_str()
    );
    eventually(Duration::from_secs(20), "no pending entry", settled).await;
    let api: Api<ConfigMap> = Api::namespaced(w.client.clone(), &w.ns.name);
    let cm = api.get(&shard).await.unwrap();
    let held = cm.data.as_ref().map_or(0, |d| d.len());
    let owned = owned_data_keys(&cm);
    eprintln!("shard {shard}: {held} entries, managedFields name {owned:?}");
    assert!(held >= 3, "{shard} holds {held} entries");
    // What the API server stores, counts against the object's size and sends back with every
    // answer must not grow with the entries: only the last write's own keys.
    assert!(
        owned.len() <= 2 && owned.iter().all(|k| k.starts_with(&uid)),
        "{shard} holds {held} entries and its managedFields name {owned:?}"
    );
}

#[tokio::test]
async fn pending_events_past_one_configmap_are_all_kept_and_a_full_ledger_says_so() {
    // 600 events of ~30 KiB while suspended: ~18 MB, more than 1 MiB in every shard.
    let mut w = World::new(
        "ledgerpages",
        true,
        Some(big_events_suspended()),
        &["--rate-limit-per-minute", "1000"],
    )
    .await;
    let names: Vec<String> = (0..600).map(|i| format!("big-{i:03}")).collect();
    for n in &names {
        apply(&w.deployments, n, &deployment(n, "nginx:1.25", 0)).await;
    }
    let (pending, largest, maps) = eventually(
        Duration::from_secs(180),
        "600 pending events in the ledger",
        || async {
            let s = stored_pending(&w.client, &w.ns.name).await;
            (s.0 == names.len()).then_some(s)
        },
    )
    .await;
    eprintln!(
        "ledger while suspended: {pending} pending events in {maps} ConfigMaps, the largest holding {largest} bytes"
    );
    assert!(largest < 1024 * 1024, "a ConfigMap of {largest} bytes");
    // A restart while they wait loses none of them.
    w.controller.restart();
    w.controller.wait_ready().await;
    unsuspend(&w).await;
    let tally = wait_all_named(&w, &names).await;
    assert!(tally.duplicates().is_empty(), "{:?}", tally.duplicates());
    w.ilert.assert_schema_valid();

    // A ledger too small for what waits: Ready says so, the metric counts them, none is lost.
    let mut small = World::new(
        "ledgerfull",
        true,
        Some(big_events_suspended()),
        &[
            "--rate-limit-per-minute",
            "1000",
            "--ledger-page-kib",
            "40",
            "--ledger-pages",
            "1",
        ],
    )
    .await;
    let names: Vec<String> = (0..60).map(|i| format!("full-{i:02}")).collect();
    for n in &names {
        apply(&small.deployments, n, &deployment(n, "nginx:1.25", 0)).await;
    }
    let message = eventually(
        Duration::from_secs(90),
        "the full ledger in Ready",
        || async {
            let p = small.pipeline().await.status?;
            let c = p.conditions.iter().find(|c| c.type_ == "Ready")?;
            (c.status == "False" && c.message.contains("delivery state is full"))
                .then(|| c.message.clone())
        },
    )
    .await;
    eprintln!("Ready with a full ledger: {message}");
    let metrics = parse_metrics(
        &get(&format!("{}/metrics", small.controller.ops_url()))
            .await
            .2,
    );
    let unstored = metrics
        .iter()
        .find(|(k, _)| k.starts_with("ilert_rollout_ledger_unstored_events"))
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    assert!(unstored > 0.0, "{metrics:?}");
    unsuspend(&small).await;
    let tally = wait_all_named(&small, &names).await;
    assert!(tally.duplicates().is_empty(), "{:?}", tally.duplicates());
    small.wait_ready_condition("True", "Ready").await;
    small.controller.kill();
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_mid_request_records_it_and_is_never_repeated() {
    let args = ["--rate-limit-per-minute", "1000"];
    let w = World::new("leaselost", true, None, &args).await;
    let mut b = Controller::start_named(&w.ns.name, &w.ilert, &args, "b");
    b.wait_ready().await;
    let first = eventually(Duration::from_secs(20), "a leader", || async {
        leader_of(&[&w.controller, &b]).await
    })
    .await;
    let (leader, standby) = if first == 0 {
        (&w.controller, &b)
    } else {
        (&b, &w.controller)
    };
    // ilert answers after 2 s: requests are on the wire when the leader stops.
    w.ilert.set_delay(Duration::from_secs(2));
    let names: Vec<String> = (0..8).map(|i| format!("web-{i}")).collect();
    for n in &names {
        apply(&w.deployments, n, &deployment(n, "nginx:1.25", 1)).await;
    }
    for n in &names {
        wait_revision_complete(&w.deployments, n, "1").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Frozen (a long GC pause, a node under pressure): the lease expires and the standby takes
    // over while the frozen leader's requests are answered.
    let pid = leader.pid().expect("leader pid").to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
    };
    signal("-STOP");
    eventually(Duration::from_secs(15), "the standby leads", || async {
        leader_of(&[standby]).await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal("-CONT");
    wait_all_named(&w, &names).await;
    // Past the standby's catch-up: whatever it inherited would have gone out by now.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let t = Tally::of(&w.ilert.received());
    assert_eq!(t.copies.len(), names.len());
    assert!(
        t.duplicates().is_empty(),
        "repeated after the lease was lost: {:?}",
        t.duplicates()
    );
    w.ilert.assert_schema_valid();
}
