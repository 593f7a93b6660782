//! ilert's answers are untrusted input: a redirect never carries the key elsewhere, a huge error
//! body costs no memory, and no Retry-After holds events back past --retry-max-seconds or stops
//! the controller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;
use crate::*;

const MIB: u64 = 1024 * 1024;

/// A field of /proc/<pid>/status in bytes (VmRSS, VmHWM).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Waits until ilert has been asked at least `n` times (answered or not).
async fn wait_requests(ilert: &FakeIlert, n: usize) {
    eventually(EVENT_WAIT, &format!("{n} requests to ilert"), || async {
        (ilert.received().len() >= n).then_some(())
    })
    .await;
}

/// /healthz answers ok and the process runs.
async fn assert_alive(w: &mut World) {
    assert!(
        w.controller.exited().is_none(),
        "the controller exited; its log:\n{}",
        w.controller.logs()
    );
    let (status, _, body) = get(&format!("{}/healthz", w.controller.ops_url())).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

/// The key in no metric either (World::assert_key_never_leaked checks logs, status, Events).
async fn assert_key_not_in_metrics(w: &World) {
    let (_, _, metrics) = get(&format!("{}/metrics", w.controller.ops_url())).await;
    assert!(
        !metrics.contains(&w.key),
        "the integration key appears in /metrics"
    );
}

/// ilert answers `status` redirecting to a second fake ilert on another port until told to stop.
async fn a_redirect_never_reaches_the_host_it_names(status: u16) {
    let other = FakeIlert::start().await;
    let port = other.url.rsplit(':').next().unwrap().to_string();
    let mut w = World::new(
        &format!("redirect{status}"),
        true,
        None,
        &["--retry-max-seconds", "2"],
    )
    .await;
    w.ilert.script(std::iter::repeat_n(
        Reply::Redirect {
            status,
            location: format!("http://localhost:{port}/api/deployment-events?token=t0ps3cret"),
        },
        1000,
    ));
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    wait_requests(&w.ilert, 1).await;
    // Time for a followed redirect to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stray: Vec<Value> = other.received().into_iter().map(|r| r.body).collect();
    let leaked = stray
        .iter()
        .filter(|b| b["integrationKey"] == w.key.as_str())
        .count();
    eprintln!(
        "{status} to localhost:{port}: the other host got {} requests ({leaked} with the key), {:?}",
        other.requests_total(),
        other.stray()
    );
    assert_eq!(
        other.requests_total(),
        0,
        "the other host was reached: {leaked} requests with the key, and {:?}",
        other.stray()
    );

    let message = w.wait_ready_condition("False", "IlertUnavailable").await;
    eprintln!("while redirected: IlertUnavailable: {message}");
    assert!(
        message.contains(&format!(
            "ilert answered {status} redirecting to localhost:{port}; the controller follows no redirects"
        )),
        "{message}"
    );
    assert!(!message.contains("t0ps3cret"), "{message}");

    w.ilert.clear_script();
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    w.wait_ready_condition("True", "Ready").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let redirected = w
        .ilert
        .received()
        .iter()
        .filter(|r| r.status == status)
        .count();
    eprintln!(
        "{redirected} requests answered {status}, then {} accepted",
        w.ilert.accepted_count()
    );
    assert_eq!(w.ilert.accepted_count(), 1, "delivered exactly once");
    assert_eq!(other.requests_total(), 0, "the other host, ever");
    assert_alive(&mut w).await;
    w.assert_key_never_leaked().await;
    assert_key_not_in_metrics(&w).await;
}

#[tokio::test]
async fn a_307_never_carries_the_key_to_another_host() {
    a_redirect_never_reaches_the_host_it_names(307).await;
}

#[tokio::test]
async fn a_302_is_not_followed_as_a_get_to_another_host() {
    a_redirect_never_reaches_the_host_it_names(302).await;
}

#[tokio::test]
async fn a_50_mb_error_body_costs_no_memory() {
    let w = World::new("bigbody", true, None, &["--retry-max-seconds", "2"]).await;
    let pid = w.controller.pid().expect("controller running");
    // Past start-up: the caches are synced, memory settles.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_before, hwm_before) = (
        proc_status_bytes(pid, "VmRSS"),
        proc_status_bytes(pid, "VmHWM"),
    );
    w.ilert.script([Reply::Body {
        status: 500,
        bytes: 50 * MIB as usize,
    }]);
    // Resident memory sampled every 5 ms while the answer is read.
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(proc_status_bytes(pid, "VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let (rss_after, hwm_after) = (
        proc_status_bytes(pid, "VmRSS"),
        proc_status_bytes(pid, "VmHWM"),
    );
    // A high-water mark that rose was reached in this window; one that did not says nothing.
    let peak = peak
        .load(Ordering::Relaxed)
        .max(if hwm_after > hwm_before { hwm_after } else { 0 });
    eprintln!(
        "RSS with a 50 MB error body: before {} MiB, peak {} MiB, after {} MiB (VmHWM {} -> {} MiB)",
        rss_before / MIB,
        peak / MIB,
        rss_after / MIB,
        hwm_before / MIB,
        hwm_after / MIB
    );
    assert!(rss_before > 0, "no VmRSS for pid {pid}");
    assert!(
        peak < rss_before + 40 * MIB,
        "resident memory rose from {} to {} MiB reading an error body",
        rss_before / MIB,
        peak / MIB
    );
    let answers: Vec<u16> = w.ilert.received().iter().map(|r| r.status).collect();
    assert_eq!(answers, [500, 202], "one error, then delivered once");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.ilert.accepted_count(), 1);
    w.assert_key_never_leaked().await;
}

/// A 429 with `Retry-After: raw`, under `--retry-max-seconds 5`: how long until the event is
/// delivered after the 429, with the controller alive and the event sent once.
async fn delivered_after_429(prefix: &str, raw: impl Fn() -> String, within: Duration) {
    let mut w = World::new(prefix, true, None, &["--retry-max-seconds", "5"]).await;
    let raw = raw();
    w.ilert.script([Reply::RetryAfter { raw: raw.clone() }]);
    apply(&w.deployments, "api", &deployment("api", "nginx:1.25", 1)).await;
    wait_requests(&w.ilert, 1).await;
    let limited_at = w.ilert.received()[0].at;
    let waited = eventually(
        within,
        &format!("delivered after Retry-After: {raw}"),
        || async {
            let received = w.ilert.received();
            let accepted = received.iter().find(|r| r.status == 202)?;
            Some(accepted.at - limited_at)
        },
    )
    .await;
    eprintln!("Retry-After: {raw} -> delivered {waited:?} after the 429");
    assert_alive(&mut w).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.ilert.accepted_count(), 1, "delivered once");
    assert_alive(&mut w).await;
    let logs = w.controller.logs();
    assert!(!logs.contains("panicked"), "a panic in the log");
    w.assert_key_never_leaked().await;
}

#[tokio::test]
async fn retry_after_of_a_day_waits_no_longer_than_retry_max_seconds() {
    delivered_after_429("retry-day", || "86400".into(), Duration::from_secs(20)).await;
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    // Three seconds from now; ilert's advice for an unreadable value would be 10-30 s.
    let date = || {
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
        jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&at)
            .unwrap()
    };
    delivered_after_429("retry-date", date, Duration::from_secs(9)).await;
}

#[tokio::test]
async fn retry_after_past_u64_is_a_long_wait_capped() {
    delivered_after_429(
        "retry-huge",
        || "99999999999999999999999".into(),
        Duration::from_secs(9),
    )
    .await;
}

#[tokio::test]
async fn retry_after_of_u64_max_neither_panics_nor_stops_delivery() {
    delivered_after_429(
        "retry-max",
        || u64::MAX.to_string(),
        Duration::from_secs(20),
    )
    .await;
}
