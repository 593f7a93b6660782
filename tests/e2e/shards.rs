//! A cluster split across two releases of the chart by `--pipeline-selector` (docs/scaling.md):
//! two ServiceAccounts, two Leases, each serving half of the pipelines, in one namespace and in
//! namespaces of their own. Both run through bursts of rollouts, each is restarted mid-burst
//! (SIGTERM): nothing lost, nothing doubled, and neither writes the other's ledger. Between the
//! releases of one namespace a pipeline also moves from one shard to the other.

use std::time::Duration;

use ilert_rollout_controller::domain::keys::PIPELINE_UID_LABEL;
use ilert_rollout_controller::pipeline::IlertPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::support::*;
use crate::*;

const PER_SHARD: usize = 8;

/// The ledger ConfigMaps in `ns`, as (name, the pipeline uid its label names).
async fn ledgers(client: &Client, ns: &str) -> Vec<(String, String)> {
    ledger_maps(client, ns)
        .await
        .into_iter()
        .filter_map(|c| {
            let uid = c.metadata.labels.as_ref()?.get(PIPELINE_UID_LABEL)?.clone();
            Some((c.metadata.name?, uid))
        })
        .collect()
}

fn workload(name: &str, team: &str, image: &str) -> serde_json::Value {
    let mut d = deployment(name, image, 1);
    d["metadata"]["labels"]["team"] = json!(team);
    d
}

/// Rolls out every workload of both teams to `image` at once; restarts each controller (SIGTERM,
/// as a rolling update of its pod does) while the rollouts run; waits for `expect` accepted
/// events in all. (kill -9 may repeat an event ilert accepted just before it, by design: the
/// fault-injection suite bounds that.)
async fn burst(
    deployments: &Api<Deployment>,
    controllers: &mut [Controller],
    ilert: &FakeIlert,
    image: &str,
    expect: usize,
) {
    for team in ["a", "b"] {
        for i in 0..PER_SHARD {
            let name = format!("{team}{i}");
            apply(deployments, &name, &workload(&name, team, image)).await;
        }
    }
    for c in controllers.iter_mut() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.graceful_restart().await;
        c.wait_ready().await;
    }
    ilert.wait_accepted(expect, EVENT_WAIT * 2).await;
}

async fn split_cluster(separate_namespaces: bool) {
    let client = client().await;
    install_crd(&client).await;
    // Workloads and pipelines live here; so do both releases unless they have their own.
    let home = TestNamespace::new(&client, "split").await;
    let own: Vec<TestNamespace> = if separate_namespaces {
        vec![
            TestNamespace::new(&client, "shard-a").await,
            TestNamespace::new(&client, "shard-b").await,
        ]
    } else {
        Vec::new()
    };
    let controller_ns =
        |shard: usize| -> String { own.get(shard).map_or(home.name.clone(), |n| n.name.clone()) };
    let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), &home.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &home.name);
    let ilert = FakeIlert::start().await;
    let served_by = |shard: &str| format!("{}-{shard}", home.name);
    let mut controllers = Vec::new();
    for (i, shard) in ["a", "b"].into_iter().enumerate() {
        let key = format!("ilapid-split-{shard}");
        create_secret(
            &client,
            &home.name,
            &format!("ilert-{shard}"),
            "integrationKey",
            &key,
        )
        .await;
        create_pipeline(
            &pipelines,
            &served_by(shard),
            &format!("team-{shard}"),
            json!({
                "integrationKeySecretRef": {"name": format!("ilert-{shard}")},
                "selector": {"matchLabels": {"team": shard}}
            }),
        )
        .await;
        let ns = controller_ns(i);
        // A release of its own: its own ServiceAccount, RBAC and Lease.
        let release = format!("irc-{shard}-{}", &home.name[home.name.len() - 8..]);
        let identity = release_identity(&ns, &release);
        let lease = format!("{release}-lease");
        let mut c = Controller::start_serving_as(
            &ns,
            &ilert,
            &format!("e2e-ns={}", served_by(shard)),
            &["--lease-name", &lease, "--rate-limit-per-minute", "1000"],
            shard,
            identity,
        );
        c.wait_ready().await;
        controllers.push(c);
    }
    let uid = |name: &'static str| {
        let pipelines = pipelines.clone();
        async move {
            pipelines
                .get(name)
                .await
                .expect("pipeline")
                .metadata
                .uid
                .expect("uid")
        }
    };
    let (uid_a, uid_b) = (uid("team-a").await, uid("team-b").await);

    // Two bursts, each controller killed and restarted in the middle of each.
    burst(
        &deployments,
        &mut controllers,
        &ilert,
        "nginx:1.25",
        2 * PER_SHARD,
    )
    .await;
    burst(
        &deployments,
        &mut controllers,
        &ilert,
        "nginx:1.26",
        4 * PER_SHARD,
    )
    .await;
    assert_no_more_than(&ilert, 4 * PER_SHARD, Duration::from_secs(5)).await;
    let t = accepted_per_rollout(&ilert);
    assert_eq!(t.len(), 4 * PER_SHARD, "one event per rollout: {t:?}");
    assert!(t.values().all(|n| *n == 1), "repeated events: {t:?}");
    for (key, name, _) in t.keys() {
        let team = &name[..1];
        assert_eq!(
            key,
            &format!("ilapid-split-{team}"),
            "{name} sent with {key}"
        );
    }

    // Neither writes the other's ledger: each pipeline's ConfigMaps are in its shard's namespace.
    for (i, (mine, theirs)) in [(&uid_a, &uid_b), (&uid_b, &uid_a)].into_iter().enumerate() {
        let held = ledgers(&client, &controller_ns(i)).await;
        assert!(
            held.iter().any(|(_, u)| u == mine),
            "shard {i} keeps no ledger of its own pipeline: {held:?}"
        );
        if separate_namespaces {
            assert!(
                held.iter().all(|(_, u)| u != theirs),
                "shard {i}'s namespace holds the other shard's ledger: {held:?}"
            );
        }
    }

    if separate_namespaces {
        // A pipeline moves only between releases that share a namespace, and so its ledger
        // (docs/scaling.md): a release in another namespace has no record of what was sent.
        ilert.assert_schema_valid();
        return;
    }
    // team-a moves to shard b: its deliveries so far are neither repeated nor forgotten, and its
    // next rollouts are reported once, by shard b.
    pipelines
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"e2e-ns": served_by("b")}}})),
        )
        .await
        .expect("relabel team-a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_no_more_than(&ilert, 4 * PER_SHARD, Duration::from_secs(5)).await;
    for i in 0..PER_SHARD {
        let name = format!("a{i}");
        apply(&deployments, &name, &workload(&name, "a", "nginx:1.27")).await;
    }
    ilert.wait_accepted(5 * PER_SHARD, EVENT_WAIT * 2).await;
    assert_no_more_than(&ilert, 5 * PER_SHARD, Duration::from_secs(5)).await;
    let t = accepted_per_rollout(&ilert);
    assert!(t.values().all(|n| *n == 1), "repeated events: {t:?}");
    for i in 0..PER_SHARD {
        let k = (
            "ilapid-split-a".to_string(),
            format!("a{i}"),
            "3".to_string(),
        );
        assert_eq!(t.get(&k), Some(&1), "a{i} revision 3 after the move: {t:?}");
    }
    let b_logs = controllers[1].logs();
    assert!(
        b_logs.contains("team-a"),
        "shard b never served team-a after the move"
    );
    ilert.assert_schema_valid();
}

#[tokio::test]
async fn two_releases_in_one_namespace_split_the_pipelines_exactly() {
    split_cluster(false).await;
}

#[tokio::test]
async fn two_releases_in_namespaces_of_their_own_split_the_pipelines_exactly() {
    split_cluster(true).await;
}
