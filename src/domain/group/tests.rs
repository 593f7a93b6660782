use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use serde_json::json;
use tokio::time::Instant;

use super::*;
use crate::domain::history::{History, ReplicaSetView, Rollout, resolve_replica_set};
use crate::domain::rollout::WorkloadView;

const SHOP: &str = "helm/Release/shop/shop";

fn u(uid: &str) -> Uid {
    Uid::new(uid)
}

fn policy(window: u64, max_wait: u64) -> Policy {
    Policy {
        window: Duration::from_secs(window),
        max_wait: Duration::from_secs(max_wait),
    }
}

fn groups(window: u64, max_wait: u64) -> Groups {
    let mut g = Groups::default();
    g.set_policy(Some(policy(window, max_wait)));
    g
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn the_policy_comes_from_the_spec_and_the_wait_is_never_shorter_than_the_window() {
    let spec = |v: serde_json::Value| -> IlertPipelineSpec {
        let mut base = json!({"integrationKeySecretRef": {"name": "ilert"}});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    };
    assert_eq!(Policy::of(&spec(json!({}))), None);
    assert_eq!(Policy::of(&spec(json!({"groupBy": "Workload"}))), None);
    assert_eq!(
        Policy::of(&spec(json!({"groupBy": "Owner"}))),
        Some(policy(30, 900))
    );
    assert_eq!(
        Policy::of(&spec(
            json!({"groupBy": "Owner", "groupWindowSeconds": 60, "groupMaxWaitSeconds": 10})
        )),
        Some(policy(60, 60))
    );
}

#[test]
fn a_change_goes_once_its_last_rollout_is_queued_and_the_window_since_the_last_start_passed() {
    let t0 = Instant::now();
    let mut g = groups(30, 900);
    g.rolling(SHOP, &u("u-api"), "Deployment/shop/api", t0, 1);
    g.rolling(SHOP, &u("u-web"), "Deployment/shop/web", t0 + s(1), 2);
    g.rolling(SHOP, &u("u-worker"), "Deployment/shop/worker", t0 + s(2), 3);
    // Seen again while rolling out: still the same change, its last start unchanged.
    g.rolling(SHOP, &u("u-api"), "Deployment/shop/api", t0 + s(10), 4);
    let api = g.finished(SHOP, &u("u-api"), t0 + s(5), 5).unwrap();
    assert_eq!(api, format!("{SHOP}@1"));
    g.queued(&api, &u("u-api"));
    let web = g.finished(SHOP, &u("u-web"), t0 + s(6), 6).unwrap();
    g.queued(&web, &u("u-web"));
    assert_eq!(web, api);
    // Far past the window, one member still rolls out: held.
    assert!(g.holds(&api, t0 + s(120)));
    assert_eq!(g.next_close(t0 + s(120)), Some(t0 + s(900)));
    let worker = g.finished(SHOP, &u("u-worker"), t0 + s(200), 7).unwrap();
    assert_eq!(worker, api);
    // Its event is being built: held past the longest wait, though not for ever.
    assert!(g.holds(&api, t0 + s(950)));
    assert!(!g.holds(&api, t0 + s(960)));
    assert_eq!(g.next_close(t0 + s(200)), Some(t0 + s(960)));
    g.queued(&api, &u("u-worker"));
    // Nothing rolls out, the last start was long ago: it goes.
    assert!(!g.holds(&api, t0 + s(200)));
    assert!(g.open_ids(t0 + s(200)).is_empty());
    assert!(g.unfinished(&api).is_empty());
    g.sent(&api);
    assert!(!g.holds(&api, t0 + s(200)));
    assert_eq!(g.len(), 0);
}

#[test]
fn a_change_of_fast_rollouts_waits_the_window_after_its_last_start() {
    let t0 = Instant::now();
    let mut g = groups(30, 900);
    // Never seen rolling out (both finished between two sights).
    let a = g.finished(SHOP, &u("u-api"), t0, 1).unwrap();
    g.queued(&a, &u("u-api"));
    assert!(g.holds(&a, t0 + s(29)));
    assert_eq!(g.next_close(t0 + s(1)), Some(t0 + s(30)));
    let b = g.finished(SHOP, &u("u-web"), t0 + s(20), 2).unwrap();
    g.queued(&b, &u("u-web"));
    assert_eq!(a, b, "started within the window: one change");
    assert!(g.holds(&a, t0 + s(49)));
    assert_eq!(g.next_close(t0 + s(21)), Some(t0 + s(50)));
    assert!(!g.holds(&a, t0 + s(50)));
    // Past the window: a change of its own.
    let c = g.finished(SHOP, &u("u-worker"), t0 + s(51), 3).unwrap();
    assert_ne!(c, a);
    // Another owner is another change.
    let other = g.finished(
        "argocd/Application/argocd/billing",
        &u("u-b"),
        t0 + s(51),
        4,
    );
    assert_ne!(other.as_deref(), Some(c.as_str()));
}

#[test]
fn the_longest_wait_closes_a_change_and_names_what_did_not_finish() {
    let t0 = Instant::now();
    let mut g = groups(30, 600);
    g.rolling(SHOP, &u("u-api"), "Deployment/shop/api", t0, 1);
    g.rolling(SHOP, &u("u-worker"), "Deployment/shop/worker", t0, 1);
    let id = g.finished(SHOP, &u("u-api"), t0 + s(10), 2).unwrap();
    g.queued(&id, &u("u-api"));
    assert!(g.holds(&id, t0 + s(599)));
    assert!(!g.holds(&id, t0 + s(600)));
    assert_eq!(
        g.unfinished(&id),
        vec!["Deployment/shop/worker".to_string()]
    );
    // A rollout starting after the cap does not join the closed change.
    g.rolling(SHOP, &u("u-web"), "Deployment/shop/web", t0 + s(601), 3);
    let later = g.finished(SHOP, &u("u-worker"), t0 + s(700), 4).unwrap();
    assert_ne!(
        later, id,
        "what finished after the longest wait is reported apart"
    );
    g.queued(&later, &u("u-worker"));
    assert!(g.unfinished(&id).is_empty());
    assert!(g.holds(&later, t0 + s(700)), "web still rolls out in it");
}

#[test]
fn a_reloaded_member_opens_its_change_again_and_rollouts_still_under_way_join_it() {
    let t0 = Instant::now();
    let mut g = groups(30, 900);
    let id = format!("{SHOP}@1796196607000");
    g.reopen(&id, t0);
    assert!(
        g.holds(&id, t0 + s(29)),
        "siblings not seen yet may still come"
    );
    g.rolling(SHOP, &u("u-worker"), "Deployment/shop/worker", t0 + s(2), 5);
    assert_eq!(
        g.finished(SHOP, &u("u-worker"), t0 + s(40), 6),
        Some(id.clone())
    );
    g.queued(&id, &u("u-worker"));
    assert!(g.holds(&id, t0 + s(31)));
    assert!(!g.holds(&id, t0 + s(32)));
    // An older change reloaded beside it does not take its place.
    let mut g = groups(30, 900);
    let newer = format!("{SHOP}@2000");
    g.reopen(&newer, t0);
    g.reopen(&format!("{SHOP}@1000"), t0);
    assert_eq!(g.finished(SHOP, &u("u-api"), t0, 7), Some(newer));
}

#[test]
fn a_member_that_stops_rolling_out_without_an_event_holds_nothing() {
    let t0 = Instant::now();
    let mut g = groups(5, 900);
    g.rolling(SHOP, &u("u-api"), "Deployment/shop/api", t0, 1);
    let id = g.finished(SHOP, &u("u-web"), t0, 2).unwrap();
    g.queued(&id, &u("u-web"));
    assert!(g.holds(&id, t0 + s(100)));
    assert!(g.stopped(&u("u-api")));
    assert!(!g.stopped(&u("u-api")));
    assert!(!g.holds(&id, t0 + s(100)));
}

#[test]
fn without_a_policy_nothing_is_grouped_or_held() {
    let t0 = Instant::now();
    let mut g = groups(30, 900);
    g.rolling(SHOP, &u("u-api"), "Deployment/shop/api", t0, 1);
    let id = g.finished(SHOP, &u("u-web"), t0, 2).unwrap();
    g.set_policy(None);
    assert!(!g.holds(&id, t0));
    assert_eq!(g.finished(SHOP, &u("u-api"), t0, 3), None);
    g.reopen(&id, t0);
    assert!(!g.holds(&id, t0));
    assert_eq!(g.next_close(t0), None);
}

#[test]
fn closed_changes_are_forgotten() {
    let t0 = Instant::now();
    let mut g = groups(1, 10);
    for i in 0..100u64 {
        let at = t0 + s(i * 20);
        let id = g.finished(SHOP, &u("u-api"), at, i as i64).unwrap();
        g.queued(&id, &u("u-api"));
    }
    assert!(g.len() <= 2, "{}", g.len());
}

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The event a member sent on its own, from a Deployment and its ReplicaSets as captured.
fn member(deployment: &str, replica_sets: &str) -> DeploymentEvent {
    let mut w = WorkloadView::from_deployment(&fixture::<Deployment>(deployment));
    let rs: k8s_openapi::List<ReplicaSet> = fixture(replica_sets);
    // As the controller keeps it: with the ReplicaSet of its current revision.
    let views: Vec<ReplicaSetView> = rs
        .items
        .iter()
        .map(ReplicaSetView::from_replica_set)
        .collect();
    w.current_replica_set = resolve_replica_set(&w, &views).map(|r| r.name.clone());
    let done = w.finished().unwrap();
    let history = History::from_replica_sets(&w, done.revision, &rs.items);
    let rollout = Rollout::new(&w, done, history, jiff::Timestamp::now());
    report::deployment_event(&rollout, "prod-eu", None).0
}

#[test]
fn a_change_of_one_finished_rollout_is_that_rollouts_event() {
    let one = member("deployment-helm-api.json", "replicasets-helm.json");
    let (e, warnings) = event(std::slice::from_ref(&one), Closing::default(), "prod-eu");
    assert_eq!(e, one);
    assert!(warnings.is_empty());
}

#[test]
fn the_event_of_a_change_names_each_workload_its_worst_outcome_and_what_did_not_finish() {
    let members = [
        member("deployment-helm-api.json", "replicasets-helm.json"),
        member("deployment-helm-web.json", "replicasets-helm.json"),
        member(
            "deployment-helm-worker-failed.json",
            "replicasets-helm.json",
        ),
    ];
    let (e, warnings) = event(&members, Closing::default(), "prod-eu");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        e.summary,
        "helm release shop rolled out 3 workloads on prod-eu: api nginx:1.26, web nginx:1.26, worker busybox:1.37 (1 failed: worker)"
    );
    let d = &e.custom_details;
    assert_eq!(d["outcome"], "Failed");
    assert_eq!(d["cluster"], "prod-eu");
    assert_eq!(d["group"]["tool"], "helm");
    assert_eq!(d["group"]["name"], "shop");
    let workloads = d["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 3);
    for (w, m) in workloads.iter().zip(&members) {
        assert_eq!(w["name"], m.custom_details["name"]);
        assert_eq!(w["revision"], m.custom_details["revision"]);
        assert_eq!(w["outcome"], m.custom_details["outcome"]);
        assert!(w.get("cluster").is_none() && w.get("managedBy").is_none());
    }
    assert_eq!(workloads[2]["outcome"], "Failed");
    assert_eq!(
        e.timestamp,
        members.iter().map(|m| m.timestamp).max().unwrap()
    );
    // Closed at its longest wait, with a member still rolling out.
    let unfinished = vec!["Deployment/shop/worker".to_string()];
    let (e, _) = event(
        &members[..2],
        Closing {
            unfinished: &unfinished,
            templates: None,
        },
        "",
    );
    assert_eq!(
        e.summary,
        "helm release shop rolled out 3 workloads: api nginx:1.26, web nginx:1.26 (1 not finished: worker)"
    );
    assert_eq!(e.custom_details["outcome"], "Completed");
    assert_eq!(e.custom_details["unfinished"], json!(unfinished));
    assert!(e.custom_details.get("cluster").is_none());
}

#[test]
fn templates_render_over_the_list_of_a_changes_workloads() {
    let members = [
        member("deployment-helm-api.json", "replicasets-helm.json"),
        member("deployment-helm-web.json", "replicasets-helm.json"),
    ];
    let spec = crate::pipeline::EventTemplate {
        summary: Some(
            "{{ group.name }}: {% for w in workloads %}{{ w.name }}@{{ w.revision }} {% endfor %}({{ outcome }})".into(),
        ),
        custom_details: [("count".to_string(), "{{ workloads | length }}".to_string())].into(),
        ..Default::default()
    };
    let t = Templates::check(&spec).unwrap();
    let (e, warnings) = event(
        &members,
        Closing {
            unfinished: &[],
            templates: Some(&t),
        },
        "prod-eu",
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(e.summary, "shop: api@2 web@2 (Completed)");
    assert_eq!(e.custom_details["count"], "2");
}
