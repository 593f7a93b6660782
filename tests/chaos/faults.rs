use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use rand::Rng;

use crate::long;
use crate::support::*;
use crate::world::*;

const LIFTED: &[&str] = &["--rate-limit-per-minute", "100000"];

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

/// Applies `names` with `image`, a few at a time.
async fn apply_all(w: &World, names: &[String], image: &str) {
    apply_many(w.deployments.clone(), names.to_vec(), image).await
}

async fn apply_many(
    api: kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    names: Vec<String>,
    image: &str,
) {
    let image = image.to_string();
    stream::iter(names.into_iter().map(|n| {
        let (api, image) = (api.clone(), image.clone());
        async move { apply(&api, &n, &deployment(&n, &image, 1)).await }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
}

/// Waits until ilert accepted every (name, revision), or fails naming what is missing.
async fn wait_all(w: &World, expected: &[(String, &str)], timeout: Duration) -> Tally {
    let deadline = Instant::now() + timeout;
    loop {
        let tally = Tally::of(&w.ilert.received());
        let missing: Vec<&(String, &str)> = expected
            .iter()
            .filter(|(n, r)| !tally.has(&w.ns.name, n, r))
            .collect();
        if missing.is_empty() {
            return tally;
        }
        if Instant::now() >= deadline {
            let mut states = Vec::new();
            for (n, _) in &missing {
                let d = w.deployments.get(n).await.ok();
                states.push(format!(
                    "{n}: revision {:?}, complete {}",
                    d.as_ref().and_then(revision),
                    d.as_ref().is_some_and(rollout_complete)
                ));
            }
            panic!(
                "after {timeout:?}, {} of {} rollouts never reached ilert: {missing:?}; in the API: {states:?}; controller log {}",
                missing.len(),
                expected.len(),
                w.controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_no_panic(c: &Controller) {
    let logs = c.logs();
    assert!(
        !logs.contains("panicked"),
        "the controller panicked: see {}",
        c.log.display()
    );
}

/// Stops a control-plane component of this suite's instance for `down`, then starts it again.
async fn restart_component(name: &str, down: Duration) {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let dir = Path::new(&kubeconfig).parent().expect("cluster dir");
    let status = tokio::process::Command::new(format!("{REPO}/tests/cluster/restart.sh"))
        .args([name, &down.as_secs().to_string()])
        .env("CLUSTER_DIR", dir)
        .status()
        .await
        .expect("run restart.sh");
    assert!(status.success(), "restart.sh {name} failed");
}

async fn wait_api_server(w: &World) {
    eventually(
        Duration::from_secs(90),
        "the API server answering again",
        || async { w.client.apiserver_version().await.ok() },
    )
    .await;
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_nothing_and_repeats_only_inside_the_window() {
    let (n, max_kills) = if long() { (100, 25) } else { (25, 5) };
    let mut w = World::new("kill9", true, None, LIFTED).await;
    // Requests take a moment, so kills also land between ilert's 202 and the sent write.
    w.ilert.set_delay(Duration::from_millis(40));
    let names = names("k", n);
    let expected: Vec<(String, &str)> = names
        .iter()
        .flat_map(|n| [(n.clone(), "1"), (n.clone(), "2")])
        .collect();

    // The driver: every Deployment is created (revision 1) and, once ilert has that one, gets a
    // new image (revision 2): 2 x n rollouts while the controller is being killed.
    let driver = {
        let (deployments, ilert, ns, names) = (
            w.deployments.clone(),
            w.ilert.clone(),
            w.ns.name.clone(),
            names.clone(),
        );
        tokio::spawn(async move {
            let mut updated = std::collections::HashSet::new();
            // Spread over the run, so the kills land among rollouts at every stage.
            for n in &names {
                apply(&deployments, n, &deployment(n, "nginx:1.25", 1)).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            while updated.len() < names.len() {
                let tally = Tally::of(&ilert.received());
                for n in &names {
                    if !updated.contains(n) && tally.has(&ns, n, "1") {
                        apply(&deployments, n, &deployment(n, "nginx:1.26", 1)).await;
                        updated.insert(n.clone());
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut kills = Vec::new();
    while kills.len() < max_kills && !driver.is_finished() {
        let wait = rand::rng().random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        kills.push(Instant::now());
        w.controller.kill();
        let down = rand::rng().random_range(0..800);
        tokio::time::sleep(Duration::from_millis(down)).await;
        w.controller.restart();
    }
    eventually(Duration::from_secs(300), "the driver to finish", || async {
        driver.is_finished().then_some(())
    })
    .await;
    let tally = wait_all(&w, &expected, Duration::from_secs(120)).await;
    eprintln!(
        "kill -9 {} times during {} rollouts; {} requests reached ilert",
        kills.len(),
        expected.len(),
        w.ilert.received().len()
    );
    tally.assert_duplicates_only_from(&kills, KILL_WINDOW);
    assert!(
        kills.len() >= 3,
        "only {} kills landed during the run",
        kills.len()
    );
    assert_no_panic(&w.controller);
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn api_server_down_20s_then_etcd_restart_loses_nothing_and_the_controller_stays_up() {
    let mut w = World::new("outage", true, None, LIFTED).await;
    let first = names("a", 5);
    apply_all(&w, &first, "nginx:1.25").await;
    let mut expected: Vec<(String, &str)> = first.iter().map(|n| (n.clone(), "1")).collect();
    wait_all(&w, &expected, Duration::from_secs(60)).await;

    // New images go out, and the API server stops for 20 s while they roll out.
    apply_all(&w, &first, "nginx:1.26").await;
    expected.extend(first.iter().map(|n| (n.clone(), "2")));
    let stopped = Instant::now();
    restart_component("kube-apiserver", Duration::from_secs(20)).await;
    assert!(
        w.controller.exited().is_none(),
        "the controller exited while the API server was down"
    );
    wait_api_server(&w).await;
    // The rest of the control plane does not always find its watches again soon after a 20 s
    // outage on this setup (seen: kube-controller-manager's ReplicaSets never saw their pods turn
    // ready within 2 minutes), which would stall the rollouts themselves. Restarting those
    // components stands for a control plane that recovers; the controller under test is left alone.
    for component in ["kube-controller-manager", "kube-scheduler", "kwok"] {
        restart_component(component, Duration::ZERO).await;
    }
    eprintln!(
        "API server back {:.1} s after it stopped",
        stopped.elapsed().as_secs_f64()
    );
    wait_all(&w, &expected, Duration::from_secs(120)).await;

    // etcd restarts under a running API server; rollouts right after it are reported too.
    restart_component("etcd", Duration::from_secs(3)).await;
    let second = names("b", 5);
    eventually(
        Duration::from_secs(60),
        "writes accepted after the etcd restart",
        || async {
            w.deployments
                .patch(
                    &second[0],
                    &kube::api::PatchParams::apply("chaos").force(),
                    &kube::api::Patch::Apply(deployment(&second[0], "nginx:1.25", 1)),
                )
                .await
                .ok()
        },
    )
    .await;
    apply_all(&w, &second, "nginx:1.25").await;
    expected.extend(second.iter().map(|n| (n.clone(), "1")));
    let tally = wait_all(&w, &expected, Duration::from_secs(120)).await;

    assert!(w.controller.exited().is_none(), "the controller exited");
    // Nothing was killed: no rollout may arrive twice.
    tally.assert_duplicates_only_from(&[], KILL_WINDOW);
    assert_no_panic(&w.controller);
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn ilert_refusing_connections_delays_delivery_paced_and_bounded() {
    let (outage, n) = if long() {
        (Duration::from_secs(120), 60)
    } else {
        (Duration::from_secs(20), 15)
    };
    // ilert's real limit (10 a minute) applies here; retries capped at 5 s so the backlog goes
    // soon after ilert is back.
    let w = World::new("refused", true, None, &["--retry-max-seconds", "5"]).await;
    w.ilert.refuse_connections(true);
    let started = Instant::now();
    let names = names("r", n);
    apply_all(&w, &names, "nginx:1.25").await;
    let message = w.wait_ready_condition("False", "IlertUnavailable").await;
    assert!(message.contains("wait and are retried"), "{message}");
    let pid = w.controller.pid().expect("pid");
    let mut peak_rss_kib = 0;
    while started.elapsed() < outage {
        peak_rss_kib = peak_rss_kib.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        w.ilert.received().len(),
        0,
        "nothing can arrive while refused"
    );
    w.ilert.refuse_connections(false);
    let reopened = Instant::now();
    let expected: Vec<(String, &str)> = names.iter().map(|n| (n.clone(), "1")).collect();
    let tally = wait_all(&w, &expected, Duration::from_secs(120)).await;
    eprintln!(
        "{n} rollouts waited out a {outage:?} outage; all delivered {:.1} s after ilert came back in {} requests; controller RSS peak {} KiB",
        reopened.elapsed().as_secs_f64(),
        w.ilert.received().len(),
        peak_rss_kib
    );
    tally.assert_duplicates_only_from(&[], KILL_WINDOW);
    // Paced: never more than 10 requests in any 60 s.
    let times: Vec<Instant> = w.ilert.received().iter().map(|r| r.at).collect();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(60))
            .count();
        assert!(in_window <= 10, "{in_window} requests within 60 s");
    }
    assert!(
        peak_rss_kib < 64 * 1024,
        "RSS {peak_rss_kib} KiB during the outage"
    );
    w.wait_ready_condition("True", "Ready").await;
    w.ilert.assert_schema_valid();
}

#[tokio::test]
async fn graceful_failover_during_a_burst_neither_loses_nor_repeats() {
    let n = if long() { 200 } else { 40 };
    let mut w = World::new("handover", true, None, LIFTED).await;
    let mut b = Controller::start_named(&w.ns.name, &w.ilert, LIFTED, "b");
    b.wait_ready().await;
    w.ilert.set_delay(Duration::from_millis(50));
    let first = eventually(Duration::from_secs(20), "a leader", || async {
        leader_of(&[&w.controller, &b]).await
    })
    .await;
    let names = names("h", n);
    let burst = {
        let (deployments, names) = (w.deployments.clone(), names.clone());
        tokio::spawn(async move {
            apply_many(deployments, names, "nginx:1.25").await;
        })
    };
    w.ilert.wait_accepted(n / 4, Duration::from_secs(120)).await;
    // A rolling update of the controller: SIGTERM to the leader, which then comes back as standby.
    let took = if first == 0 {
        w.controller.terminate().await
    } else {
        b.terminate().await
    };
    eprintln!(
        "leader stopped in {took:?} with {} of {n} delivered",
        w.ilert.accepted().len()
    );
    if first == 0 {
        w.controller.restart()
    } else {
        b.restart()
    }
    burst.await.unwrap();
    let expected: Vec<(String, &str)> = names.iter().map(|n| (n.clone(), "1")).collect();
    let tally = wait_all(&w, &expected, Duration::from_secs(180)).await;
    tally.assert_duplicates_only_from(&[], KILL_WINDOW);
    assert_no_panic(&w.controller);
    assert_no_panic(&b);
    w.ilert.assert_schema_valid();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
