//! The kubectl plugin, run as kubectl runs it (`kubectl ilert ...` finds `kubectl-ilert` on the
//! PATH: the same binary under that name) with a developer's identity: a ServiceAccount with only
//! Kubernetes' `view` role in the namespace (`edit` for `test`), which the chart's aggregated
//! roles extend to IlertPipelines.

use std::path::PathBuf;
use std::process::Command;

use crate::*;

/// A directory with `kubectl-ilert`, the controller's binary under the plugin's name.
fn plugin_dir() -> PathBuf {
    let dir = PathBuf::from(REPO).join("target/e2e-logs/plugin-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-ilert");
    if !link.exists() {
        let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ilert-rollout-controller"), &link);
    }
    dir
}

/// A developer in `ns` with Kubernetes' `role` (view or edit) there, and nothing cluster-wide.
async fn developer(client: &Client, ns: &str, role: &str) -> PathBuf {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let name = format!("dev-{role}");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    apply(
        &accounts,
        &name,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    apply(
        &bindings,
        &name,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
        }),
    )
    .await;
    let path = PathBuf::from(REPO).join(format!("target/e2e-logs/{ns}-{name}.kubeconfig"));
    token_kubeconfig(&path, &account_token(ns, &name, "1h"), ns);
    path
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `kubectl ilert <args>` as `kubeconfig`'s identity. Awaited, not blocking: the fake ilert
/// answers on this test's runtime meanwhile.
async fn kubectl_ilert(kubeconfig: &PathBuf, args: &[&str]) -> Out {
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(tool("kubectl"))
        .arg("ilert")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .expect("run kubectl ilert");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until `kubeconfig`'s identity may list IlertPipelines in `ns` (the aggregation of the
/// chart's roles into `view` is done by the controller manager, a moment after install).
async fn wait_may_read_pipelines(kubeconfig: &PathBuf, ns: &str) {
    eventually(
        Duration::from_secs(30),
        "view aggregated to IlertPipelines",
        || async {
            let out = Command::new(tool("kubectl"))
                .args([
                    "auth",
                    "can-i",
                    "list",
                    "ilertpipelines.ilert.com",
                    "-n",
                    ns,
                ])
                .env("KUBECONFIG", kubeconfig)
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .eq("yes")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn kubectl_ilert_preview_prints_exactly_what_the_controller_sent() {
    let spec = json!({
        "integrationKeySecretRef": {"name": "ilert"},
        "template": {
            "summary": "{{ workload.name }} is at revision {{ revision }}",
            "customDetails": {"team": "{{ workload.labels['team'] | default('none') }}"}
        }
    });
    let w = World::new("plugin-preview", true, Some(spec), &[]).await;
    let ns = w.ns.name.clone();
    let dev = developer(&w.client, &ns, "view").await;
    wait_may_read_pipelines(&dev, &ns).await;
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 2)).await;
    wait_revision_complete(&w.deployments, "web", "1").await;
    w.ilert.wait_accepted(1, EVENT_WAIT).await;
    apply(&w.deployments, "web", &deployment("web", "nginx:1.26", 2)).await;
    wait_revision_complete(&w.deployments, "web", "2").await;
    let sent = w.ilert.wait_accepted(2, EVENT_WAIT).await;

    let out = kubectl_ilert(&dev, &["preview", "deploy/web", "--cluster-name", "e2e"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    eprintln!(
        "kubectl ilert preview deploy/web:\n{}{}",
        out.stderr, out.stdout
    );
    let mut preview: Value = serde_json::from_str(&out.stdout).expect("JSON on stdout");
    assert_eq!(preview["integrationKey"], "[redacted]");
    let mut controller = sent[1].clone();
    for v in [&mut preview, &mut controller] {
        v.as_object_mut().unwrap().remove("integrationKey");
    }
    assert_eq!(
        preview, controller,
        "the preview is not what the controller sent"
    );
    assert_eq!(preview["summary"], "web is at revision 2");
    assert!(
        out.stderr
            .contains(&format!("as IlertPipeline {ns}/{PIPELINE} would send it")),
        "{}",
        out.stderr
    );

    // A pipeline whose template does not render: shown as its Ready condition shows it.
    create_pipeline(
        &w.pipelines,
        &ns,
        "broken",
        json!({"integrationKeySecretRef": {"name": "ilert"}, "template": {"summary": "{{ workload.name "}}),
    )
    .await;
    let condition = w
        .wait_condition("broken", "Ready", "False", "InvalidTemplate")
        .await;
    let out = kubectl_ilert(&dev, &["preview", "deploy/web", "--pipeline", "broken"]).await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("Ready=False InvalidTemplate: {condition}")),
        "{}\nvs the condition: {condition}",
        out.stderr
    );

    // A rollout still under way sends nothing yet.
    let mut stuck = deployment("web", "nginx:1.27", 2);
    stuck["spec"]["template"]["spec"]["nodeSelector"] = json!({"no-such-node": "true"});
    apply(&w.deployments, "web", &stuck).await;
    let out = eventually(Duration::from_secs(20), "revision 3 seen", || async {
        let out = kubectl_ilert(&dev, &["preview", "deploy/web"]).await;
        out.stderr.contains("revision 3").then_some(out)
    })
    .await;
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("InProgress: nothing is sent until it finishes"),
        "{}",
        out.stderr
    );

    // Unknown workloads and kinds: a clear error, no panic.
    let out = kubectl_ilert(&dev, &["preview", "deploy/nope"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("Deployment {ns}/nope not found")),
        "{}",
        out.stderr
    );
    let out = kubectl_ilert(&dev, &["preview", "job/x"]).await;
    assert!(
        out.stderr.contains("not a kind that is reported"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&w.key) && !out.stdout.contains(&w.key));
}

#[tokio::test]
async fn kubectl_ilert_test_waits_for_ilerts_answer_and_status_shows_the_pipelines() {
    let w = World::new("plugin-test", true, None, &[]).await;
    let ns = w.ns.name.clone();
    let editor = developer(&w.client, &ns, "edit").await;
    wait_may_read_pipelines(&editor, &ns).await;
    w.wait_ready_condition("True", "Ready").await;

    let out = kubectl_ilert(&editor, &["test", PIPELINE]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("Accepted"), "{}", out.stdout);
    let tests = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(tests[0]["customDetails"]["test"], true, "{}", tests[0]);

    // ilert refuses the key: the answer says so, and the exit code.
    w.ilert.script([Reply::Status(
        401,
        json!({"status": 401, "message": "Unknown integration key", "code": "UNAUTHORIZED"}),
    )]);
    let out = kubectl_ilert(&editor, &["test", &format!("{ns}/{PIPELINE}")]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("Rejected"), "{}", out.stdout);
    assert!(!out.stdout.contains(&w.key), "{}", out.stdout);
    w.ilert.clear_script();
    // A rejected key is not tried again until it changes: a new one.
    create_secret(&w.client, &ns, "ilert", "integrationKey", "ilapi-replaced").await;

    // A deployment, then the status line shows it as the last event.
    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 1)).await;
    wait_revision_complete(&w.deployments, "web", "1").await;
    w.ilert.wait_accepted(2, Duration::from_secs(90)).await;
    let line = eventually(
        Duration::from_secs(30),
        "status shows the last event",
        || async {
            let out = kubectl_ilert(&editor, &["status"]).await;
            let found = out
                .stdout
                .lines()
                .find(|l| {
                    l.contains(PIPELINE)
                        && l.contains(&format!("Deployment/{ns}/web rev 1 Completed"))
                })
                .map(str::to_string);
            found.map(|l| (l, out))
        },
    )
    .await;
    let (line, out) = line;
    eprintln!("kubectl ilert status:\n{}{}", out.stderr, out.stdout);
    assert!(out.stdout.starts_with("NAMESPACE"), "{}", out.stdout);
    assert!(line.starts_with(&ns) && line.contains("True"), "{line}");
    // A developer may not list pipelines across namespaces: the own namespace, said so.
    assert!(out.stderr.contains(&format!("{ns} only")), "{}", out.stderr);
    let out = kubectl_ilert(&editor, &["status", "-n", &ns]).await;
    assert_eq!(out.code, 0);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    // A pipeline no controller serves yet says so.
    create_pipeline(
        &w.pipelines,
        "nobody",
        "orphan",
        json!({"integrationKeySecretRef": {"name": "ilert"}}),
    )
    .await;
    let out = kubectl_ilert(&editor, &["status", "-n", &ns]).await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("orphan") && l.contains("no controller serves it yet")),
        "{}",
        out.stdout
    );
}
