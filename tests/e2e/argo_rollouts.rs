//! Argo Rollouts for the tests: its CRDs (from its Go module's `manifests/crds/`) and its real
//! controller, `rollouts-controller` built from the module (tests/cluster/build.sh), run out of
//! cluster in one test namespace (`--namespaced`), so tests in parallel do not share it. kwok
//! makes its pods ready; every status the tests see is what Argo Rollouts writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use crate::support::{REPO, eventually, free_port, run, tool};

/// Where up.sh linked Argo Rollouts' CRDs: beside the control plane's kubeconfig.
fn crds_dir() -> PathBuf {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    Path::new(&kubeconfig)
        .parent()
        .unwrap()
        .join("argo-rollouts-crds")
}

pub fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

pub fn rollouts(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &rollout_resource())
}

/// Applies Argo Rollouts' CRDs (idempotent: server-side apply) and waits until they are served.
pub fn install_crds() {
    let dir = crds_dir();
    assert!(
        dir.join("rollout-crd.yaml").exists(),
        "Argo Rollouts' CRDs are missing in {} (tests/cluster/build.sh builds them; restart the control plane with make cluster-down cluster-up)",
        dir.display()
    );
    kubectl_on_crds(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "e2e-argo-rollouts",
    ]);
}

/// kubectl with `args` and `-f` for each CRD file (kubectl does not read a directory through a
/// symbolic link).
fn kubectl_on_crds(args: &[&str]) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(crd_files().into_iter().flat_map(|f| ["-f".to_string(), f]));
    run(
        &tool("kubectl"),
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

/// Waits until the API server serves Rollouts (the CRD is Established).
pub async fn wait_served(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(
        Duration::from_secs(60),
        "Argo Rollouts' CRD Established",
        || async {
            let crd = crds.get("rollouts.argoproj.io").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// Removes Argo Rollouts' CRDs (and with them every Rollout) and waits until they are gone.
pub fn uninstall_crds() {
    kubectl_on_crds(&["delete", "--wait", "--timeout", "60s"]);
}

/// Each CRD file.
fn crd_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(crds_dir())
        .expect("Argo Rollouts' CRDs")
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

/// The real Argo Rollouts controller, watching one namespace; killed when dropped.
pub struct ArgoRollouts {
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<String>,
}

impl ArgoRollouts {
    /// Installs the CRDs and starts the controller for `ns` (as the cluster admin).
    pub async fn start(client: &Client, ns: &str) -> Self {
        install_crds();
        wait_served(client).await;
        let args = vec![
            "--namespaced".to_string(),
            "--namespace".into(),
            ns.into(),
            "--leader-elect=false".into(),
            "--metricsPort".into(),
            free_port().to_string(),
            "--healthzPort".into(),
            free_port().to_string(),
            "--loglevel".into(),
            "info".into(),
        ];
        let dir = PathBuf::from(REPO).join("target/e2e-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = ArgoRollouts {
            child: None,
            log: dir.join(format!("{ns}-argo-rollouts.log")),
            args,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let bin = tool("rollouts-controller");
        assert!(
            Path::new(&bin).exists(),
            "{bin} is missing: tests/cluster/build.sh builds Argo Rollouts; restart the control plane (make cluster-down cluster-up)"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        self.child = Some(child);
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ArgoRollouts {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Rollout of `replicas` pods at `image` with `strategy` (`{"canary": ...}` or
/// `{"blueGreen": ...}`).
pub fn rollout(name: &str, image: &str, replicas: i32, strategy: Value) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name, "labels": {"app": name, "app.kubernetes.io/name": name}},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            },
            "strategy": strategy
        }
    })
}

/// The canary of the acceptance scenarios: half, a 2-second pause, all.
pub fn canary_steps() -> Value {
    json!({"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "2s"}}, {"setWeight": 100}]}})
}

/// Blue-green with an active Service and automatic promotion.
pub fn blue_green(active_service: &str) -> Value {
    json!({"blueGreen": {"activeService": active_service, "autoPromotionEnabled": true}})
}

/// A ClusterIP Service selecting `app=<app>` (blue-green needs one; Argo rewrites its selector).
pub fn service(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]}
    })
}

pub fn revision(r: &DynamicObject) -> Option<String> {
    r.metadata
        .annotations
        .as_ref()?
        .get("rollout.argoproj.io/revision")
        .cloned()
}

fn status<'a>(r: &'a DynamicObject, field: &str) -> Option<&'a Value> {
    r.data.get("status")?.get(field)
}

/// Argo Rollouts' own rule of done: spec observed, phase Healthy, stable = current pod hash.
pub fn healthy(r: &DynamicObject) -> bool {
    let generation = r.metadata.generation.unwrap_or(0).to_string();
    status(r, "observedGeneration").and_then(Value::as_str) == Some(generation.as_str())
        && status(r, "phase").and_then(Value::as_str) == Some("Healthy")
        && status(r, "stableRS").is_some()
        && status(r, "stableRS") == status(r, "currentPodHash")
}

/// Waits until Argo Rollouts reports revision `rev` of `name` Healthy and fully promoted.
pub async fn wait_healthy(api: &Api<DynamicObject>, name: &str, rev: &str) -> DynamicObject {
    eventually(
        Duration::from_secs(90),
        &format!("Rollout {name} revision {rev} Healthy"),
        || async {
            let r = api.get(name).await.ok()?;
            (healthy(&r) && revision(&r).as_deref() == Some(rev)).then_some(r)
        },
    )
    .await
}

/// Waits until `name` has `field` of its status equal to `want`.
pub async fn wait_status(
    api: &Api<DynamicObject>,
    name: &str,
    field: &str,
    want: Value,
) -> DynamicObject {
    eventually(
        Duration::from_secs(90),
        &format!("Rollout {name} status.{field} = {want}"),
        || async {
            let r = api.get(name).await.ok()?;
            (status(&r, field) == Some(&want)).then_some(r)
        },
    )
    .await
}

/// `kubectl argo rollouts abort`: what the plugin writes (status.abort through the status
/// subresource).
pub async fn abort(api: &Api<DynamicObject>, name: &str) {
    use kube::api::{Patch, PatchParams};
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"abort": true}})),
    )
    .await
    .unwrap_or_else(|e| panic!("abort {name}: {e}"));
}
