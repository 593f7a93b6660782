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
    let entry = |state| Entry {
        state,
        workload: "Deployment/shop/web".into(),
        event: None,
        reported_outcome: None,
        test: None,
        alert: None,
        group: None,
    };
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
