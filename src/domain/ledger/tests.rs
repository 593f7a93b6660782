//! Unit tests of `domain::ledger`.

use super::*;
use crate::domain::book::{Data, configmap_name, deposed_share, page_of_name, place};
use serde_json::json;

fn key(uid: &str, revision: u64, outcome: Outcome) -> RolloutKey {
    RolloutKey {
        workload_uid: uid.into(),
        revision,
        outcome,
    }
}

#[test]
fn keys_round_trip_through_configmap_data_keys() {
    let k = key("7b1c1f6e-0d3a-4a51-9a07-0c2d1b9f3e11", 12, Outcome::Failed);
    assert_eq!(RolloutKey::parse(&k.data_key()), Some(k.clone()));
    assert_eq!(k.shard(), '7');
}

#[test]
fn decides_once_per_rollout_with_a_first_sight_baseline() {
    let created: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
    let before: Timestamp = "2026-11-26T09:00:00Z".parse().unwrap();
    let after: Timestamp = "2026-11-26T11:00:00Z".parse().unwrap();
    let old = |finished| Times {
        finished: Some(finished),
        workload_created: Some(before),
        pipeline_created: created,
    };
    let new = |finished| Times {
        finished: Some(finished),
        workload_created: Some(created),
        pipeline_created: created,
    };
    let r1 = key("a", 1, Outcome::Completed);
    let r2 = key("a", 2, Outcome::Completed);
    let f2 = key("a", 2, Outcome::Failed);
    assert_eq!(decide([], &r1, old(before)), Decision::Baseline);
    assert_eq!(decide([], &r1, old(created)), Decision::Baseline);
    assert_eq!(decide([], &r1, old(after)), Decision::Report);
    // A workload created with (or after) the pipeline is new: reported even within the same second.
    assert_eq!(decide([], &r1, new(created)), Decision::Report);
    assert_eq!(decide([&r1], &r1, old(after)), Decision::Known);
    assert_eq!(decide([&r1], &r2, old(after)), Decision::Report);
    // Known workload: a later rollout is reported even if its finish time looks early.
    assert_eq!(decide([&r1], &r2, old(before)), Decision::Report);
    assert_eq!(decide([&r2], &r1, old(after)), Decision::Superseded);
    // One rollout, one outcome: revision 2 failed, then recovered: not reported again.
    assert_eq!(decide([&f2], &r2, old(after)), Decision::Known);
    assert_eq!(
        decide([&key("b", 9, Outcome::Completed)], &r1, old(before)),
        Decision::Baseline
    );
}

#[test]
fn entries_spill_to_the_next_page_before_a_configmap_is_full() {
    let limit = 1000;
    // Stays where it is while it fits.
    assert_eq!(place(&[900, 0], Some((0, 400)), 450, limit), Some(0));
    // Grown past its page: the first page with room.
    assert_eq!(place(&[900, 0], Some((0, 100)), 300, limit), Some(1));
    assert_eq!(place(&[950, 200], None, 100, limit), Some(1));
    assert_eq!(place(&[0, 0], None, 100, limit), Some(0));
    // Every page full: none.
    assert_eq!(place(&[950, 990], None, 100, limit), None);
    assert_eq!(configmap_name("u", ('a', 0)), "ilert-ledger-u-a");
    assert_eq!(
        configmap_name("u-alerts", ('a', 2)),
        "ilert-ledger-u-alerts-a-p2"
    );
    assert_eq!(page_of_name("ilert-ledger-u-alerts-a-p2"), 2);
    assert_eq!(page_of_name("ilert-ledger-0f3e-7b1c-alerts-a"), 0);
    assert_eq!(page_of_name("ilert-ledger-0f3e-7b1c-a"), 0);
}

#[test]
fn a_deposed_leader_writes_only_what_ilert_answered() {
    let entry = |state| Entry::new(state, "Deployment/shop/web");
    let value = |e: &Entry| json!(serde_json::to_string(e).unwrap());
    let data: Data = [
        ("a.1.Completed".to_string(), value(&entry(State::Pending))),
        ("b.1.Completed".to_string(), value(&entry(State::Sent))),
        ("c.1.Completed".to_string(), value(&entry(State::Failed))),
        ("d.1.Completed".to_string(), serde_json::Value::Null),
    ]
    .into_iter()
    .collect();
    let kept: Vec<String> = deposed_share(&data).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kept, ["b.1.Completed", "c.1.Completed"]);
}

#[test]
fn baseline_from_what_the_status_says_at_first_sight() {
    let created: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
    let before: Timestamp = "2026-11-26T09:00:00Z".parse().unwrap();
    // A StatefulSet older than the pipeline, no finish time in its status.
    let set = Times {
        finished: None,
        workload_created: Some(before),
        pipeline_created: created,
    };
    let r1 = key("s", 1, Outcome::Completed);
    // Finished when first seen: the baseline (the caller records it).
    assert_eq!(decide([], &r1, set), Decision::Baseline);
    // First seen mid-rollout: remembered at revision 0, so its end is reported, however
    // long ago its template changed.
    let seen = seen_mid_rollout(&Uid::new("s"));
    assert_eq!(decide([&seen], &r1, set), Decision::Report);
    // After a recorded baseline, the next revision is reported.
    assert_eq!(
        decide([&r1], &key("s", 2, Outcome::Completed), set),
        Decision::Report
    );
}

#[test]
fn an_entry_at_rest_is_32_bytes_and_carries_nothing() {
    assert_eq!(std::mem::size_of::<Entry>(), 32);
    let bare = Entry::new(State::Sent, "Deployment/shop/web");
    // Nothing carried is one state, however it was reached.
    assert_eq!(bare.clone().with_event(None).with_group(None), bare);
    let mut e = bare.clone().with_alert(Some(AlertEvent {
        event_type: crate::domain::payload::EventType::Alert,
        summary: "web failed".into(),
        details: None,
        alert_key: "k".into(),
        priority: None,
        links: Vec::new(),
        labels: Default::default(),
        custom_details: Default::default(),
    }));
    assert_ne!(e, bare);
    assert!(e.take_alert().is_some());
    assert_eq!(e, bare);
}

/// Ledgers written before entries kept their rare fields apart read back the same, and are
/// written the same: the stored form did not change.
#[test]
fn an_entry_is_stored_as_it_always_was() {
    let stored = [
        r#"{"s":"Sent","w":"Deployment/shop/web"}"#,
        r#"{"s":"Baseline","w":"StatefulSet/shop/db","o":"Completed"}"#,
        r#"{"s":"Pending","w":"Deployment/shop/web","e":{"summary":"web rolled out","timestamp":1764806400000,"customDetails":{"revision":2}},"o":"RolledBack","g":"Deployment/shop/web@2"}"#,
        r#"{"s":"Pending","w":"IlertPipeline/shop/main","e":{"summary":"test","timestamp":1},"t":"2026-12-04T19:00:00Z"}"#,
        r#"{"s":"Pending","w":"Deployment/shop/web","a":{"eventType":"RESOLVE","summary":"web recovered","alertKey":"e2e/Deployment/shop/web"}}"#,
    ];
    for text in stored {
        let entry: Entry = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&entry).unwrap(), text);
    }
    let pending: Entry = serde_json::from_str(stored[2]).unwrap();
    assert_eq!(pending.reported_outcome, Some(Outcome::RolledBack));
    assert_eq!(pending.group(), Some("Deployment/shop/web@2"));
    assert_eq!(pending.event().map(|e| e.timestamp), Some(1764806400000));
    assert_eq!((pending.test(), pending.alert()), (None, None));
    let test: Entry = serde_json::from_str(stored[3]).unwrap();
    assert_eq!(test.test(), Some("2026-12-04T19:00:00Z"));
    let resolve: Entry = serde_json::from_str(stored[4]).unwrap();
    assert_eq!(
        resolve.alert().map(|a| a.summary.as_str()),
        Some("web recovered")
    );
}
