//! `make bench`: the controller on the real local control plane, N Deployments rolling out at
//! once, against the floor of a bare watch. Prints a table and writes target/bench/report.md.
//! N from BENCH_N (comma-separated), default 100,1000,5000.

#[path = "support/peer.rs"]
mod peer;
#[allow(dead_code)]
#[path = "../tests/e2e/support.rs"]
mod support;
#[allow(dead_code)]
#[path = "../tests/e2e/world.rs"]
mod world;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use ilert_rollout_controller::pipeline::IlertPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use support::*;
use world::{get, parse_metrics};

/// Deployments per namespace. The control plane's Deployment and ReplicaSet controllers scan every
/// ReplicaSet and Pod of the namespace on each sync: 10,000 Deployments in one namespace made the
/// control plane, not the tools measured, the bottleneck (it completed about 3.6 rollouts a
/// second). A cluster that size spreads its workloads over namespaces too.
const PER_NAMESPACE: usize = 100;

/// The label every Deployment of one run carries (the home namespace's name), for the bare watch.
const RUN_LABEL: &str = "bench-run";

fn deployment(name: &str, run: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, RUN_LABEL: run}},
        "spec": {
            "replicas": 1,
            // Raised so that the control plane finishes N = 10,000 before any deadline passes.
            "progressDeadlineSeconds": 3600,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": image}]}}
        }
    })
}

/// Applies every Deployment (namespace, name) of run `run` with `image`, 32 requests at a time.
async fn apply_all(client: &kube::Client, names: &[(String, String)], run: &str, image: &str) {
    stream::iter(names.iter().map(|(ns, name)| async move {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(
                name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(deployment(name, run, image)),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {ns}/{name}: {e}"))
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await;
}

fn complete_at(d: &Deployment, revision: &str) -> bool {
    let (Some(spec), Some(status)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return false;
    };
    let rev = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision"));
    rev.map(String::as_str) == Some(revision)
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) == spec.replicas.unwrap_or(1)
        && status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
        && status.available_replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
        && status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        })
}

fn proc_field(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory at its highest since `reset_peak` (or since the start), in MiB.
fn peak_mib(pid: u32) -> f64 {
    proc_field(pid, "VmHWM:") as f64 / 1024.0
}

/// Starts the process's peak resident memory (VmHWM) afresh from what it holds now: the burst's
/// peak is then the burst's, not the start-up's (the initial lists of every watch).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap_or_else(|e| {
        panic!(
            "cannot reset the peak resident memory of process {pid} (/proc/{pid}/clear_refs): {e}"
        )
    });
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// BENCH_PROFILE=1: `perf record` of the controller during the burst, into
/// target/bench/perf-N.data (`perf report -i` it; build with symbols for names, see
/// docs/benchmarks.md). Stopped with SIGINT when dropped, so perf writes its file.
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(pid: u32, n: usize) -> Self {
        if std::env::var("BENCH_PROFILE").map_or(true, |v| v.is_empty() || v == "0") {
            return Profile(None);
        }
        std::fs::create_dir_all(format!("{REPO}/target/bench")).unwrap();
        let out = format!("{REPO}/target/bench/perf-{n}.data");
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-F",
                "199",
                "--call-graph",
                "dwarf,16384",
                "-o",
                &out,
                "-p",
            ])
            .arg(pid.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("BENCH_PROFILE is set but perf does not start: {e}"));
        eprintln!("[bench N={n}] profiling the burst into {out}");
        Profile(Some(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    n: usize,
    ready_s: f64,
    rss_idle_mib: f64,
    /// Of the idle figure: anonymous (heap, stacks) and file-backed (the binary's code).
    rss_idle_anon_mib: f64,
    rss_idle_file_mib: f64,
    /// Peak from the start to the end of the idle window: the initial lists.
    rss_start_peak_mib: f64,
    /// Peak of the burst alone.
    rss_peak_mib: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    cpu_per_1000: f64,
    idle_cpu_per_hour: f64,
    requests: usize,
    /// Requests to the API server per rollout (watches excluded), and by verb and resource.
    kube_per_rollout: f64,
    kube_breakdown: Vec<(String, f64)>,
    delays_ms: Vec<f64>,
    /// The controller's own view (ilert_rollout_delivery_delay_seconds): queued -> ilert's answer,
    /// as bucket upper bounds in ms.
    internal_p50: f64,
    internal_p99: f64,
    peer: Option<PeerRow>,
}

/// kubewatch in the same run, on the same Deployments.
struct PeerRow {
    rss_idle_mib: f64,
    rss_start_peak_mib: f64,
    rss_peak_mib: f64,
    cpu_per_1000: f64,
    kube_per_rollout: f64,
    messages_per_rollout: f64,
    /// Of its messages about the burst, how many say that a rollout finished.
    finished_messages: usize,
    /// Posts it logged as failed during the burst (messages it could not deliver).
    failed_posts: usize,
}

/// Upper bounds (ms) of the buckets holding the 50th and 99th percentile of the controller's
/// delivery-delay histogram.
async fn internal_delay(controller: &Controller) -> (f64, f64) {
    let (_, _, text) = get(&format!("{}/metrics", controller.ops_url())).await;
    let mut buckets: Vec<(f64, f64)> = parse_metrics(&text)
        .into_iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix("ilert_rollout_delivery_delay_seconds_bucket{le=\"")?
                .trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last().map_or(0.0, |b| b.1);
    let at = |p: f64| {
        buckets
            .iter()
            .find(|(_, count)| *count >= p * total)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    };
    (at(0.5), at(0.99))
}

/// The controller's own count of requests to the API server, by `verb resource`, watches excluded
/// (a watch is one long request per connection, not per rollout).
async fn kube_requests(controller: &Controller) -> HashMap<String, f64> {
    let (_, _, text) = get(&format!("{}/metrics", controller.ops_url())).await;
    parse_metrics(&text)
        .into_iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix("ilert_rollout_kube_requests_total{")?;
            let field = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.trim_end_matches('}').strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
            };
            let verb = field("verb")?;
            let resource = field("resource")?;
            (verb != "watch").then(|| (format!("{verb} {resource}"), v))
        })
        .collect()
}

async fn run(n: usize) -> Row {
    let client = client().await;
    install_crd(&client).await;
    // Each N alone: the namespace of the N before is deleted in the background, and its
    // thousands of Deployments and ReplicaSets would still be watched (and deleted under the
    // controller) during this one.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let t = Instant::now();
    eventually(
        Duration::from_secs(1800),
        "the namespaces of earlier benchmark runs gone",
        || async {
            let list = namespaces.list(&Default::default()).await.ok()?;
            let left = list.items.iter().any(|n| {
                // `bench-<N>-<random>`; the peer's own `bench-peer` stays.
                n.metadata.name.as_deref().is_some_and(|s| {
                    s.strip_prefix("bench-")
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                })
            });
            (!left).then_some(())
        },
    )
    .await;
    if t.elapsed() > Duration::from_secs(2) {
        eprintln!(
            "[bench N={n}] waited {:.0} s for the earlier namespaces to be deleted",
            t.elapsed().as_secs_f64()
        );
    }
    // The pipeline's own namespace, and the Deployments' namespaces, PER_NAMESPACE each, which
    // the pipeline selects by label.
    let ns = TestNamespace::new(&client, &format!("bench-{n}")).await;
    let spread: Vec<TestNamespace> = stream::iter(0..n.div_ceil(PER_NAMESPACE))
        .map(|_| {
            let client = client.clone();
            async move { TestNamespace::new(&client, &format!("bench-{n}")).await }
        })
        .buffered(8)
        .collect()
        .await;
    for each in &spread {
        namespaces
            .patch(
                &each.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {RUN_LABEL: ns.name}}})),
            )
            .await
            .unwrap();
    }
    let run_names: Vec<String> = spread.iter().map(|h| h.name.clone()).collect();
    let names: Vec<(String, String)> = (0..n)
        .map(|i| (run_names[i / PER_NAMESPACE].clone(), format!("d{i:05}")))
        .collect();
    let api: Api<Deployment> = Api::all(client.clone());
    let of_run = kube::api::ListParams::default().labels(&format!("{RUN_LABEL}={}", ns.name));
    let t = Instant::now();
    apply_all(&client, &names, &ns.name, "nginx:1.25").await;
    eventually(
        // The control plane rolls out about 15-25 Deployments a second on 2 cores.
        Duration::from_secs(300 + n as u64 / 5),
        &format!("{n} Deployments complete"),
        || async {
            let list = api.list(&of_run).await.ok()?;
            (list.items.iter().filter(|d| complete_at(d, "1")).count() == n).then_some(())
        },
    )
    .await;
    eprintln!(
        "[bench N={n}] {n} Deployments rolled out in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    create_secret(&client, &ns.name, "ilert", "integrationKey", "ilapid-bench").await;
    let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), &ns.name);
    let body = json!({
        "apiVersion": "ilert.com/v1alpha1", "kind": "IlertPipeline",
        "metadata": {"name": "bench", "labels": {"e2e-ns": ns.name}},
        "spec": {
            "integrationKeySecretRef": {"name": "ilert"},
            "namespaceSelector": {"matchLabels": {RUN_LABEL: ns.name}},
        },
    });
    pipelines
        .patch(
            "bench",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    let ilert = FakeIlert::start().await;
    // The peer runs beside it, on the same Deployments (BENCH_PEER=0 leaves it out).
    let peer = if std::env::var("BENCH_PEER").is_ok_and(|v| v == "0") {
        None
    } else {
        Some(peer::Peer::start(&client, n).await)
    };
    // Pacing lifted: the measure is the controller, not ilert's quota. It logs as the chart
    // ships it: the e2e tests' debug lines (one per watch event of a rollout under way) are not
    // what a cluster pays for.
    let mut controller =
        Controller::start_as_shipped(&ns.name, &ilert, &["--rate-limit-per-minute", "1000000"]);
    let started = Instant::now();
    controller.wait_ready().await;
    let ready_s = started.elapsed().as_secs_f64();
    let pid = controller.pid().expect("pid");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle_mib = proc_field(pid, "VmRSS:") as f64 / 1024.0;
    let rss_idle_anon_mib = proc_field(pid, "RssAnon:") as f64 / 1024.0;
    let rss_idle_file_mib = proc_field(pid, "RssFile:") as f64 / 1024.0;
    let peer_rss_idle = peer
        .as_ref()
        .map(|p| proc_field(p.pid, "VmRSS:") as f64 / 1024.0);
    let idle_window = Duration::from_secs(20);
    let c0 = cpu_seconds(pid);
    tokio::time::sleep(idle_window).await;
    let idle_cpu_per_hour = (cpu_seconds(pid) - c0) * 3600.0 / idle_window.as_secs_f64();

    // The floor: a bare watch records when the API server shows each rollout complete.
    let floor: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let floor = floor.clone();
        let cfg = watcher::Config::default().labels(&format!("{RUN_LABEL}={}", ns.name));
        let stream = watcher(api.clone(), cfg)
            .applied_objects()
            .default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(d)) = stream.try_next().await {
                if complete_at(&d, "2") {
                    floor
                        .lock()
                        .unwrap()
                        .entry(d.metadata.name.clone().unwrap())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start_peak_mib = peak_mib(pid);
    let peer_start_peak = peer.as_ref().map(|p| peak_mib(p.pid));
    reset_peak(pid);
    if let Some(p) = &peer {
        reset_peak(p.pid);
    }
    let kube_before = kube_requests(&controller).await;
    let c1 = cpu_seconds(pid);
    let peer_before = peer.as_ref().map(|p| {
        (
            cpu_seconds(p.pid),
            p.messages(&run_names).0,
            peer::audit_requests(false),
            p.failed_posts().0,
        )
    });
    let profile = Profile::start(pid, n);
    let t = Instant::now();
    apply_all(&client, &names, &ns.name, "nginx:1.26").await;
    let arrivals = eventually(
        // Rolling out again is slower than the first roll-out (old and new pods of every
        // Deployment at once): at N = 10,000 the control plane completed about 16 a second
        // spread over namespaces, 3.6 a second in one namespace.
        Duration::from_secs(300 + n as u64 / 2),
        &format!("{n} events"),
        || async {
            // Cheap check first: copying every body ten times a second would load the machine
            // (and the fake's own timestamps) at N = 10,000.
            if ilert.accepted_count() < n {
                return None;
            }
            let seen: HashMap<String, Instant> = Tally::of(&ilert.received())
                .copies
                .into_iter()
                .filter(|((_, _, revision), _)| revision == "2")
                .map(|((_, name, _), at)| (name, at[0]))
                .collect();
            (seen.len() == n).then_some(seen)
        },
    )
    .await;
    eprintln!(
        "[bench N={n}] all {n} events arrived {:.1} s after the first patch",
        t.elapsed().as_secs_f64()
    );
    let cpu_per_1000 = (cpu_seconds(pid) - c1) * 1000.0 / n as f64;
    drop(profile);
    let rss_peak_mib = peak_mib(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();
    let floor = floor.lock().unwrap().clone();
    let mut delays: Vec<f64> = arrivals
        .iter()
        .filter_map(|(name, at)| {
            floor
                .get(name)
                .map(|f| at.saturating_duration_since(*f).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "[bench N={n}] {} of {n} rollouts seen by both the bare watch and ilert",
        delays.len()
    );
    let requests = ilert.received().len();
    // Status and Event writes trail the deliveries by up to a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kube_after = kube_requests(&controller).await;
    let mut kube_breakdown: Vec<(String, f64)> = kube_after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - kube_before.get(k).unwrap_or(&0.0)) / n as f64,
            )
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    kube_breakdown.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let kube_per_rollout = kube_breakdown.iter().map(|(_, v)| v).sum();
    let (internal_p50, internal_p99) = internal_delay(&controller).await;
    drop(controller);
    let peer = match (peer, peer_before, peer_rss_idle.zip(peer_start_peak)) {
        (Some(p), Some((cpu0, m0, a0, f0)), Some((rss_idle_mib, rss_start_peak_mib))) => {
            // kubewatch posts one message at a time: it is done when it has been quiet a while.
            p.settle(Duration::from_secs(5), Duration::from_secs(600))
                .await;
            let (m1, finished) = p.messages(&run_names);
            let (failed, first_failure) = p.failed_posts();
            let row = PeerRow {
                rss_idle_mib,
                rss_start_peak_mib,
                rss_peak_mib: peak_mib(p.pid),
                cpu_per_1000: (cpu_seconds(p.pid) - cpu0) * 1000.0 / n as f64,
                kube_per_rollout: (peer::audit_requests(false) - a0) as f64 / n as f64,
                messages_per_rollout: (m1 - m0) as f64 / n as f64,
                finished_messages: finished,
                failed_posts: failed - f0,
            };
            if let Some(e) = first_failure.filter(|_| failed > f0) {
                eprintln!(
                    "[bench N={n}] kubewatch: {} posts failed during the burst; the first: {e}",
                    failed - f0
                );
            }
            eprintln!(
                "[bench N={n}] kubewatch: {} messages about the burst, {finished} saying a rollout finished",
                m1 - m0
            );
            Some(row)
        }
        _ => None,
    };
    Row {
        n,
        ready_s,
        rss_idle_mib,
        rss_idle_anon_mib,
        rss_idle_file_mib,
        rss_start_peak_mib,
        rss_peak_mib,
        p50: percentile(&delays, 50.0),
        p95: percentile(&delays, 95.0),
        p99: percentile(&delays, 99.0),
        max: delays.last().copied().unwrap_or(f64::NAN),
        cpu_per_1000,
        idle_cpu_per_hour,
        requests,
        kube_per_rollout,
        kube_breakdown,
        delays_ms: delays,
        internal_p50,
        internal_p99,
        peer,
    }
}

#[tokio::main]
async fn main() {
    let ns: Vec<usize> = std::env::var("BENCH_N")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut rows = Vec::new();
    for n in ns {
        rows.push(run(n).await);
        // Written after every N: a later N that fails still leaves the earlier rows.
        write_report(&rows);
    }
}

/// Prints the table and writes report.md and results.json to target/bench/.
fn write_report(rows: &[Row]) {
    let mut table = String::from(
        "| N | ready (s) | RSS idle (MiB) | of it anonymous / file-backed (MiB) | RSS peak of start-up / of the burst (MiB) | added delay p50 / p95 / p99 / max (ms) | inside the controller p50 / p99 (ms, bucket bound) | CPU s per 1,000 rollouts | idle CPU s per hour | requests to ilert | API requests per rollout |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        table.push_str(&format!(
            "| {} | {:.2} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} / {:.0} / {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.1} | {} | {:.2} |\n",
            r.n,
            r.ready_s,
            r.rss_idle_mib,
            r.rss_idle_anon_mib,
            r.rss_idle_file_mib,
            r.rss_start_peak_mib,
            r.rss_peak_mib,
            r.p50,
            r.p95,
            r.p99,
            r.max,
            r.internal_p50,
            r.internal_p99,
            r.cpu_per_1000,
            r.idle_cpu_per_hour,
            r.requests,
            r.kube_per_rollout
        ));
    }
    let mut cost = String::from(
        "API requests per rollout, by verb and resource (watches excluded):\n\n| N | requests |\n| --- | --- |\n",
    );
    for r in rows {
        let parts: Vec<String> = r
            .kube_breakdown
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        cost.push_str(&format!("| {} | {} |\n", r.n, parts.join(", ")));
    }
    let machine = format!(
        "{} cores, {} MiB RAM, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        proc_meminfo_mib(),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    let mut side = String::from(
        "Side by side with kubewatch (same control plane, same Deployments, same run; kubewatch posting every Deployment change to a local webhook):\n\n| N | tool | RSS idle / start-up peak / burst peak (MiB) | CPU s per 1,000 rollouts | API requests per rollout | messages per rollout | messages saying a rollout finished | posts that failed |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut targets = String::new();
    for r in rows {
        let Some(p) = &r.peer else { continue };
        side.push_str(&format!(
            "| {} | this controller | {:.1} / {:.1} / {:.1} | {:.2} | {:.2} | {:.2} | {} of {} | retried until answered |\n| {} | kubewatch | {:.1} / {:.1} / {:.1} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            r.n, r.rss_idle_mib, r.rss_start_peak_mib, r.rss_peak_mib, r.cpu_per_1000, r.kube_per_rollout,
            r.requests as f64 / r.n as f64, r.requests, r.requests,
            r.n, p.rss_idle_mib, p.rss_start_peak_mib, p.rss_peak_mib, p.cpu_per_1000, p.kube_per_rollout,
            p.messages_per_rollout, p.finished_messages, p.failed_posts,
        ));
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        targets.push_str(&format!(
            "| {} | CPU at most half of kubewatch's | {:.2} vs {:.2} (ratio {:.2}) | {} |\n| {} | peak memory of the burst at most a fifth of kubewatch's | {:.1} vs {:.1} MiB (ratio {:.2}) | {} |\n| {} | (not a target) peak memory of start-up against kubewatch's | {:.1} vs {:.1} MiB (ratio {:.2}) | |\n",
            r.n, r.cpu_per_1000, p.cpu_per_1000, r.cpu_per_1000 / p.cpu_per_1000,
            met(r.cpu_per_1000 <= p.cpu_per_1000 / 2.0),
            r.n, r.rss_peak_mib, p.rss_peak_mib, r.rss_peak_mib / p.rss_peak_mib,
            met(r.rss_peak_mib <= p.rss_peak_mib / 5.0),
            r.n, r.rss_start_peak_mib, p.rss_start_peak_mib, r.rss_start_peak_mib / p.rss_start_peak_mib,
        ));
    }
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    for r in rows {
        if r.n == 1000 {
            targets.push_str(&format!(
                "| 1000 | API requests per rollout in a burst at most 1.2 | {:.2} | {} |\n",
                r.kube_per_rollout,
                met(r.kube_per_rollout <= 1.2)
            ));
        }
        if r.n >= 10_000 {
            targets.push_str(&format!(
                "| {n} | resident at steady state at most 32 MiB | {:.1} | {} |\n| {n} | peak of the burst at most 48 MiB | {:.1} | {} |\n| {n} | (not a target) peak of start-up | {:.1} | |\n| {n} | ready within 5 s | {:.2} s | {} |\n",
                r.rss_idle_mib, met(r.rss_idle_mib <= 32.0),
                r.rss_peak_mib, met(r.rss_peak_mib <= 48.0),
                r.rss_start_peak_mib,
                r.ready_s, met(r.ready_s <= 5.0),
                n = r.n,
            ));
        }
    }
    let targets = if targets.is_empty() {
        String::new()
    } else {
        format!("Targets:\n\n| N | target | measured | |\n| --- | --- | --- | --- |\n{targets}")
    };
    let report = format!(
        "# Benchmark: rollouts to ilert events\n\nMachine: {machine}. Control plane: the local one of tests/cluster (kwok nodes).\nAdded delay: when the fake ilert received a rollout's event minus when a bare watch in the benchmark saw the rollout complete.\n\n{table}\n{cost}\n{side}\n{targets}\n![latency distribution and memory](bench.png)\n"
    );
    std::fs::create_dir_all(format!("{REPO}/target/bench")).unwrap();
    std::fs::write(format!("{REPO}/target/bench/report.md"), &report).unwrap();
    let results = json!({
        "machine": machine,
        "rows": rows.iter().map(|r| json!({
            "n": r.n, "ready_s": r.ready_s, "rss_idle_mib": r.rss_idle_mib,
            "rss_idle_anon_mib": r.rss_idle_anon_mib, "rss_idle_file_mib": r.rss_idle_file_mib,
            "rss_start_peak_mib": r.rss_start_peak_mib,
            "rss_peak_mib": r.rss_peak_mib, "p50": r.p50, "p95": r.p95, "p99": r.p99, "max": r.max,
            "kube_per_rollout": r.kube_per_rollout, "delays_ms": r.delays_ms,
            "internal_p50_ms": r.internal_p50, "internal_p99_ms": r.internal_p99,
            "cpu_per_1000": r.cpu_per_1000,
            "peer": r.peer.as_ref().map(|p| json!({
                "rss_idle_mib": p.rss_idle_mib, "rss_start_peak_mib": p.rss_start_peak_mib,
                "rss_peak_mib": p.rss_peak_mib,
                "cpu_per_1000": p.cpu_per_1000, "kube_per_rollout": p.kube_per_rollout,
                "messages_per_rollout": p.messages_per_rollout,
            })),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        format!("{REPO}/target/bench/results.json"),
        serde_json::to_string(&results).unwrap(),
    )
    .unwrap();
    println!("{report}");
}

fn proc_meminfo_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}
