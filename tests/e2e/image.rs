//! The image `make image` built, run with podman as a kubelet would run the chart's pod: the pod
//! spec from `helm template`, its securityContext, the in-cluster credentials (a TokenRequest
//! token, ca.crt and namespace under /var/run/secrets/kubernetes.io/serviceaccount/,
//! KUBERNETES_SERVICE_HOST/_PORT), its probes and its grace period. The dashboard's queries are
//! checked against what this container's /metrics really exports.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::*;

/// What `make image` tags (image/build.sh).
const IMAGE: &str = "localhost/ilert-rollout-controller:dev";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        // What makes podman work in this VM: no overlay inside it, runc (crun refuses the hybrid
        // cgroup layout).
        .env("STORAGE_DRIVER", "vfs")
        .arg("--runtime")
        .arg("/usr/sbin/runc")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run podman ({e}): apt-get install podman runc buildah mmdebstrap (.ci/run does), then `make image`")
        })
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

/// The Deployment the chart renders with `values`.
fn chart_deployment(ns: &str, values: &[String]) -> Value {
    let mut args: Vec<String> = vec![
        "template".into(),
        release_name(ns),
        format!("{REPO}/charts/ilert-rollout-controller"),
        "-n".into(),
        ns.into(),
    ];
    for v in values {
        args.extend(["--set".to_string(), v.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = run(&tool("helm"), &args);
    serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find(|d: &Value| d["kind"] == "Deployment")
        .expect("the chart renders a Deployment")
}

/// `podman run` flags for the pod's securityContext; panics on a field this translation does not
/// know, so a new setting in the chart cannot go untested.
fn security_flags(pod: &Value, container: &Value) -> Vec<String> {
    let psc = &pod["securityContext"];
    let sc = &container["securityContext"];
    let known_pod = [
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "fsGroup",
        "seccompProfile",
    ];
    let known = [
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities",
    ];
    for (obj, keys) in [(psc, &known_pod[..]), (sc, &known[..])] {
        for k in obj.as_object().expect("securityContext").keys() {
            assert!(
                keys.contains(&k.as_str()),
                "securityContext.{k} is not translated to podman"
            );
        }
    }
    let uid = sc["runAsUser"]
        .as_i64()
        .or(psc["runAsUser"].as_i64())
        .expect("runAsUser");
    let gid = sc["runAsGroup"]
        .as_i64()
        .or(psc["runAsGroup"].as_i64())
        .expect("runAsGroup");
    assert_eq!((uid, gid), (65532, 65532), "the chart runs as 65532:65532");
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let mut flags = vec![format!("--user={uid}:{gid}")];
    if let Some(fs) = psc["fsGroup"].as_i64() {
        flags.push(format!("--group-add={fs}"));
    }
    // RuntimeDefault is podman's default seccomp profile; no flag needed.
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    // A kubelet mounts no tmpfs at /tmp; podman would with --read-only alone.
    flags.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    flags.push("--security-opt=no-new-privileges".into());
    let drop = sc["capabilities"]["drop"]
        .as_array()
        .expect("capabilities.drop");
    assert_eq!(drop, &vec![json!("ALL")]);
    assert!(sc["capabilities"].get("add").is_none());
    flags.push("--cap-drop=ALL".into());
    flags
}

/// A TokenRequest token of the chart's ServiceAccount, ca.crt and namespace, as the kubelet
/// projects them, in a directory to mount. Returns it and the API server's host and port.
async fn service_account_volume(client: &Client, ns: &str) -> (std::path::PathBuf, String, String) {
    chart_identity(ns);
    let token = chart_token(ns, "1h").trim().to_string();
    let admin = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let admin: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&admin).unwrap()).unwrap();
    let server = admin["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("server");
    let (host, port) = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .rsplit_once(':')
        .expect("the server URL names a port");
    let dir = std::path::PathBuf::from(REPO).join(format!("target/e2e-logs/{ns}-serviceaccount"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    // What the kubelet projects as ca.crt: the namespace's kube-root-ca.crt ConfigMap.
    let roots: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let ca = eventually(Duration::from_secs(30), "kube-root-ca.crt", || async {
        roots
            .get("kube-root-ca.crt")
            .await
            .ok()?
            .data?
            .remove("ca.crt")
    })
    .await;
    std::fs::write(dir.join("ca.crt"), ca).unwrap();
    std::fs::write(dir.join("namespace"), ns).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["token", "ca.crt", "namespace"] {
        // The kubelet's default mode for projected files (0644), readable by the pod's user.
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, host.to_string(), port.to_string())
}

/// `VmRSS` of the container's process, in MiB.
fn container_rss_mib(name: &str) -> f64 {
    let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", name]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Every metric name a PromQL expression names (identifiers followed by `{`, `[`, `)` or space
/// that start with the controller's prefix).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut cur = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            cur.push(c);
        } else {
            if cur.starts_with("ilert_rollout_") || cur.starts_with("process_") {
                names.insert(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    names
}

#[tokio::test]
async fn the_image_runs_as_the_charts_pod_and_reports_a_rollout_once() {
    let info = podman(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
    assert!(
        info.status.success(),
        "the container runtime cannot start here: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let inspect = podman(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert!(
        inspect.status.success(),
        "no image {IMAGE}: run `make image` (make test does): {}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "image").await;
    let ilert = FakeIlert::start().await;
    let port = free_port();
    let (sa_dir, api_host, api_port) = service_account_volume(&client, &ns.name).await;
    let (repository, tag) = IMAGE.rsplit_once(':').unwrap();
    let deploy = chart_deployment(
        &ns.name,
        &[
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            format!("apiUrl={}", ilert.url),
            "clusterName=e2e".into(),
            format!("pipelineSelector=e2e-ns={}", ns.name),
            format!("service.port={port}"),
            "replicaCount=1".into(),
        ],
    );
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], IMAGE);
    let pod_name = format!("{}-image-0", release_name(&ns.name));
    let name = format!("irc-e2e-{}", ns.name);
    let mut run: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        format!("--name={name}"),
        "--network=host".into(),
        "--pull=never".into(),
        "--ulimit=nofile=20000:20000".into(),
        "--ulimit=nproc=4096:4096".into(),
        format!(
            "--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            sa_dir.display()
        ),
        format!("--env=KUBERNETES_SERVICE_HOST={api_host}"),
        format!("--env=KUBERNETES_SERVICE_PORT={api_port}"),
    ];
    run.extend(security_flags(pod, container));
    for e in container["env"].as_array().expect("env") {
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => v.to_string(),
            (None, Some("metadata.namespace")) => ns.name.clone(),
            (None, Some("metadata.name")) => pod_name.clone(),
            other => panic!("env {} not translated: {other:?}", e["name"]),
        };
        run.push(format!("--env={}={value}", e["name"].as_str().unwrap()));
    }
    run.push(IMAGE.into());
    run.extend(
        container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let _ = podman(&["rm", "--force", &name]);
    let started = Instant::now();
    podman_ok(&run);
    let _guard = Container(name.clone());

    // Ready on the chart's probe paths and port.
    let probe = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let ready_path = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let live_path = container["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"],
        "http-metrics"
    );
    assert_eq!(container["ports"][0]["containerPort"], port);
    let logs = || {
        let out = podman(&["logs", &name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = reqwest::get(probe(&ready_path))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            break;
        }
        let state = podman_ok(&["inspect", "--format", "{{.State.Status}}", &name]);
        assert!(
            state == "running",
            "the container is {state}; its log:\n{}",
            logs()
        );
        assert!(
            Instant::now() < deadline,
            "not ready on {ready_path} after 60 s; log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to_ready = started.elapsed();
    assert_eq!(get(&probe(&live_path)).await.0, 200);
    let log = logs();
    assert!(log.contains("\"message\":\"starting\""), "{log}");

    // One rollout of a Deployment created after the pipeline: reported exactly once.
    create_secret(
        &client,
        &ns.name,
        "key",
        "integrationKey",
        "il1dep-image-test",
    )
    .await;
    let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), &ns.name);
    create_pipeline(
        &pipelines,
        &ns.name,
        "image",
        json!({"integrationKeySecretRef": {"name": "key"}}),
    )
    .await;
    eventually(Duration::from_secs(30), "pipeline observed", || async {
        let p = pipelines.get("image").await.ok()?;
        (p.status?.observed_generation == Some(1)).then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    apply(&deployments, "web", &deployment("web", "nginx:1.27", 1)).await;
    wait_revision_complete(&deployments, "web", "1").await;
    let events = ilert.wait_accepted(1, Duration::from_secs(60)).await;
    assert_eq!(events[0]["customDetails"]["name"], "web", "{events:#?}");
    // The sent state recorded (status says 1 sent, none pending) before counting copies.
    eventually(
        Duration::from_secs(30),
        "status: 1 sent, 0 pending",
        || async {
            let s = pipelines.get("image").await.ok()?.status?;
            (s.events_sent == 1 && s.pending_events == 0).then_some(())
        },
    )
    .await;
    let tally = Tally::of(&ilert.received());
    assert!(tally.has(&ns.name, "web", "1"));
    assert!(
        tally.duplicates().is_empty(),
        "reported twice: {:?}",
        tally.duplicates()
    );
    assert_eq!(ilert.requests_total(), 1, "{:#?}", ilert.received());
    ilert.assert_schema_valid();

    // The dashboard names only metrics this container exports.
    let (status, _, metrics) = get(&probe("/metrics")).await;
    assert_eq!(status, 200);
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{REPO}/charts/ilert-rollout-controller/dashboards/ilert-rollout-controller.json"
        ))
        .unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 7);
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {}: {expr} names no metric",
                panel["title"]
            );
            for n in names {
                // OpenMetrics TYPE lines name a counter without _total, a histogram without _bucket.
                let family = n
                    .strip_suffix("_total")
                    .or(n.strip_suffix("_bucket"))
                    .or(n.strip_suffix("_sum"))
                    .or(n.strip_suffix("_count"))
                    .unwrap_or(&n);
                assert!(
                    exported.contains(family),
                    "panel {}: {n} is not exported (exported: {exported:?})",
                    panel["title"]
                );
            }
        }
    }

    // Idle memory, then SIGTERM: a clean exit within the chart's grace period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = container_rss_mib(&name);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let stop = Instant::now();
    podman_ok(&["kill", "--signal", "TERM", &name]);
    let exit = tokio::task::spawn_blocking({
        let name = name.clone();
        move || podman_ok(&["wait", &name])
    })
    .await
    .unwrap();
    let stopped = stop.elapsed();
    assert_eq!(exit, "0", "exit code after SIGTERM; log:\n{}", logs());
    assert!(
        stopped < Duration::from_secs(grace),
        "took {stopped:?} to stop, grace is {grace} s"
    );
    let size = podman_ok(&["image", "inspect", "--format", "{{.Size}}", IMAGE]);
    eprintln!(
        "image {IMAGE}: {:.1} MiB; container start to ready {:.2} s; RSS at idle {rss:.1} MiB; SIGTERM to exit {:.2} s (grace {grace} s)",
        size.parse::<f64>().unwrap_or(0.0) / 1048576.0,
        to_ready.as_secs_f64(),
        stopped.as_secs_f64()
    );
    assert_eq!(
        ilert.requests_total(),
        1,
        "a second request after the first"
    );
}
