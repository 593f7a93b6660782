//! Operations: metrics agree with what ilert received, probes, leader election and failover.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;
use crate::*;

#[tokio::test]
async fn metrics_agree_with_what_ilert_received() {
    let w = World::new("metrics", true, None, &[]).await;
    let url = w.controller.ops_url();
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    assert_eq!(get(&format!("{url}/readyz")).await.0, 200);
    w.ilert.script([Reply::Status(
        503,
        json!({"status": 503, "message": "maintenance", "code": "UNAVAILABLE"}),
    )]);
    for name in ["a", "b"] {
        apply(&w.deployments, name, &deployment(name, "nginx:1.25", 1)).await;
    }
    w.ilert.wait_accepted(2, Duration::from_secs(60)).await;
    let received = w.ilert.received();
    let accepted = received.iter().filter(|r| r.status == 202).count() as f64;
    let unavailable = received.iter().filter(|r| r.status == 503).count() as f64;
    let named = w
        .ilert
        .accepted()
        .iter()
        .map(|e| {
            e["customDetails"]
                .get("rollouts")
                .and_then(|r| r.as_array())
                .map_or(1, Vec::len)
        })
        .sum::<usize>() as f64;

    let (status, content_type, text) = get(&format!("{url}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "not OpenMetrics: {text}"
    );
    assert!(!text.contains(&w.key), "the key appears in metrics");
    let m = parse_metrics(&text);
    let v = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in:\n{text}"))
    };
    assert_eq!(
        v(r#"ilert_rollout_requests_total{result="accepted"}"#),
        accepted
    );
    assert_eq!(
        v(r#"ilert_rollout_requests_total{result="unavailable"}"#),
        unavailable
    );
    assert_eq!(
        v(r#"ilert_rollout_events_total{outcome="Completed",result="sent"}"#),
        named
    );
    assert_eq!(
        v("ilert_rollout_send_duration_seconds_count"),
        accepted + unavailable
    );
    assert_eq!(v("ilert_rollout_leader"), 1.0);
    assert!(v("ilert_rollout_watched_workloads") >= 2.0);
    assert!(v("ilert_rollout_reconciles_total") >= 2.0);
    let pending_key = format!(
        r#"ilert_rollout_pending_events{{pipeline="{}/{PIPELINE}"}}"#,
        w.ns.name
    );
    eventually(Duration::from_secs(5), "pending gauge at 0", || async {
        let m = parse_metrics(&get(&format!("{url}/metrics")).await.2);
        (m.get(&pending_key) == Some(&0.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_replicas_one_sends_and_the_standby_takes_over_without_loss() {
    // Events the dead leader may have had on the wire wait out its ilert time-out (+1 s) after
    // the takeover: 2 s here, so the takeover, lease expiry included, stays within 10 s whether
    // or not the kill left such events (with the default 10 s it took 15 s when it did).
    let args = [
        "--rate-limit-per-minute",
        "1000",
        "--ilert-timeout-seconds",
        "2",
    ];
    let mut w = World::new("failover", true, None, &args).await;
    let mut b = Controller::start_named(&w.ns.name, &w.ilert, &args, "b");
    b.wait_ready().await;
    // A slow ilert keeps requests in flight while the leader dies.
    w.ilert.set_delay(Duration::from_millis(150));
    let first = eventually(Duration::from_secs(20), "a leader", || async {
        leader_of(&[&w.controller, &b]).await
    })
    .await;

    let names: Vec<String> = (0..12).map(|i| format!("burst-{i:02}")).collect();
    for n in &names {
        apply(&w.deployments, n, &deployment(n, "nginx:1.25", 1)).await;
    }
    w.ilert.wait_accepted(3, Duration::from_secs(60)).await;
    let killed_at = Instant::now();
    if first == 0 {
        w.controller.kill()
    } else {
        b.kill()
    }
    let survivor: &Controller = if first == 0 { &b } else { &w.controller };
    eventually(Duration::from_secs(90), "all 12 rollouts named", || async {
        let text: String = w.ilert.accepted().iter().map(|e| e.to_string()).collect();
        names
            .iter()
            .all(|n| text.contains(&format!("\"name\":\"{n}\"")))
            .then_some(())
    })
    .await;
    assert_eq!(
        leader_of(&[survivor]).await,
        Some(0),
        "the standby leads now"
    );
    let after_kill = w
        .ilert
        .received()
        .into_iter()
        .find(|r| r.at > killed_at + Duration::from_millis(200));
    if let Some(r) = after_kill {
        assert!(
            r.at - killed_at < Duration::from_secs(10),
            "takeover took {:?}",
            r.at - killed_at
        );
    }
    // DESIGN: only a kill between ilert's 202 and the ledger write may repeat an event.
    let tally = Tally::of(&w.ilert.received());
    tally.assert_duplicates_only_from(&[killed_at], KILL_WINDOW);
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn sigterm_finishes_and_releases_the_lease_for_an_immediate_takeover() {
    let mut w = World::new("sigterm", true, None, &[]).await;
    let mut b = Controller::start_named(&w.ns.name, &w.ilert, &[], "b");
    b.wait_ready().await;
    let first = eventually(Duration::from_secs(20), "a leader", || async {
        leader_of(&[&w.controller, &b]).await
    })
    .await;
    let took = if first == 0 {
        w.controller.terminate().await
    } else {
        b.terminate().await
    };
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    let survivor: &Controller = if first == 0 { &b } else { &w.controller };
    let stopped = if first == 0 { &w.controller } else { &b };
    assert!(
        stopped.logs().contains("lease released"),
        "the stopping leader released its lease"
    );
    let started = Instant::now();
    eventually(Duration::from_secs(10), "the standby leads", || async {
        leader_of(&[survivor]).await
    })
    .await;
    let takeover = started.elapsed();
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    w.ilert.wait_accepted(1, Duration::from_secs(60)).await;
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(2)).await;
    println!("SIGTERM exit {took:?}, standby took over {takeover:?} after");
}

#[tokio::test]
async fn an_egress_proxy_from_the_environment_is_honoured() {
    // ilert's address does not resolve: the event can only arrive through the proxy, which the
    // fake plays (a proxied plain-HTTP request carries the absolute URL; the path routes as usual).
    let proxy = FakeIlert::start().await;
    let env = [
        ("HTTP_PROXY", proxy.url.as_str()),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
    ];
    let w = World::build(
        "proxy",
        true,
        None,
        &["--api-url", "http://ilert.invalid"],
        &env,
    )
    .await;
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    let events = proxy.wait_accepted(1, Duration::from_secs(60)).await;
    assert_eq!(events[0]["customDetails"]["name"], "api");
    assert!(w.ilert.received().is_empty());
}

async fn annotate_test_event(w: &World, value: &str) {
    let patch = json!({"metadata": {"annotations": {"ilert.com/test-event": value}}});
    w.pipelines
        .patch(
            PIPELINE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("annotate pipeline");
}

async fn test_event_result(
    w: &World,
    value: &str,
) -> ilert_rollout_controller::pipeline::TestEventStatus {
    eventually(
        Duration::from_secs(30),
        &format!("test event {value} answered"),
        || async {
            let t = w.pipeline().await.status?.test_event?;
            (t.value == value).then_some(t)
        },
    )
    .await
}

#[tokio::test]
async fn a_test_event_is_sent_once_per_annotation_value_and_its_answer_recorded() {
    // Without leader election, as a single-replica install would run.
    let mut w = World::new("testevent", true, None, &["--leader-elect=false"]).await;
    annotate_test_event(&w, "1").await;
    let events = w.ilert.wait_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(events[0]["customDetails"]["test"], true);
    assert!(
        events[0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("Test event from ilert-rollout-controller")
    );
    let t = test_event_result(&w, "1").await;
    assert_eq!(t.result, "Accepted");
    w.wait_event("Normal TestEventDelivered").await;
    // The same value again, or a restart: nothing more.
    annotate_test_event(&w, "1").await;
    w.controller.restart();
    w.controller.wait_ready().await;
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;
    assert_eq!(
        w.pipeline().await.status.unwrap().events_sent,
        0,
        "a test event is not a rollout"
    );

    // A new value while ilert refuses the key: the answer is recorded.
    w.ilert.script([Reply::Status(
        401,
        json!({"status": 401, "message": "Invalid integration key", "code": "UNAUTHORIZED"}),
    )]);
    annotate_test_event(&w, "2").await;
    let t = test_event_result(&w, "2").await;
    assert_eq!(t.result, "Rejected");
    assert!(
        t.message.contains("401") && t.message.contains("Invalid integration key"),
        "{}",
        t.message
    );
    w.ilert.assert_schema_valid();
    w.assert_key_never_leaked().await;
}

/// The controller's own status writes come back as watch events of the pipeline: they change
/// nothing it selects, so they must not decide every workload again.
#[tokio::test]
async fn status_writes_do_not_decide_every_workload_again() {
    const N: usize = 20;
    let w = World::new("statuswrites", true, None, &["--rate-limit-per-minute=100"]).await;
    let names: Vec<String> = (0..N).map(|i| format!("svc-{i:02}")).collect();
    for n in &names {
        apply(&w.deployments, n, &deployment(n, "nginx:1.25", 1)).await;
    }
    eventually(
        Duration::from_secs(120),
        &format!("{N} sent, 0 pending"),
        || async {
            let s = w.pipeline().await.status?;
            (s.events_sent == N as u64 && s.pending_events == 0).then_some(())
        },
    )
    .await;
    let url = w.controller.ops_url();
    let decisions = || async {
        let m = parse_metrics(&get(&format!("{url}/metrics")).await.2);
        m.get(r#"ilert_rollout_decisions_total{trigger="pipeline"}"#)
            .copied()
            .unwrap_or(0.0)
    };
    // The status writes after the last delivery come back first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = decisions().await;
    let values = ["1", "2", "3"];
    for value in values {
        // Each writes status at least once: pending, then ilert's answer.
        annotate_test_event(&w, value).await;
        assert_eq!(test_event_result(&w, value).await.result, "Accepted");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = decisions().await - before;
    eprintln!("decisions during {} test events: {grown}", values.len());
    assert!(
        grown < N as f64,
        "{} test events and their status writes decided {grown} workload/pipeline pairs; deciding the pipeline again once decides every watched workload, at least {N}",
        values.len()
    );
    let tests = w
        .ilert
        .accepted()
        .iter()
        .filter(|e| e["customDetails"]["test"] == true)
        .count();
    assert_eq!(tests, values.len(), "each test event was sent once");
}
