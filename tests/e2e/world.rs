//! One test's world (namespace, key Secret, pipeline, fake ilert, controller) and the helpers
//! every end-to-end suite shares: the main one and the fault-injection one (tests/chaos).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::*;
use ilert_rollout_controller::pipeline::IlertPipeline;

/// The kubectl rollout status rule: the Deployment's current revision is fully rolled out.
pub fn rollout_complete(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return false;
    };
    let progressing_done =
        status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        });
    status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) == spec.replicas.unwrap_or(1)
        && status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
        && status.available_replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
        && progressing_done
}

pub fn revision(d: &Deployment) -> Option<String> {
    d.metadata
        .annotations
        .as_ref()?
        .get("deployment.kubernetes.io/revision")
        .cloned()
}

/// Epoch milliseconds of the Progressing condition's last update: when the rollout finished.
pub fn finish_millis(d: &Deployment) -> i64 {
    let c = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    c.last_update_time.as_ref().unwrap().0.as_millisecond()
}

pub fn deployment(name: &str, image: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "app.kubernetes.io/name": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "env": [{"name": "PASSWORD", "value": "env-secret-value"}]}]}
            }
        }
    })
}

/// A StatefulSet of `replicas` pods at `image`, started in parallel.
pub fn stateful_set(name: &str, image: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "db", "image": image}]}
            }
        }
    })
}

pub async fn apply<K>(api: &Api<K>, name: &str, body: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    apply_as(api, "e2e-tests", name, body).await
}

/// Server-side apply as field manager `manager` (as Helm, Argo CD or Flux would).
pub async fn apply_as<K>(api: &Api<K>, manager: &str, name: &str, body: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

pub async fn wait_revision_complete(api: &Api<Deployment>, name: &str, rev: &str) -> Deployment {
    eventually(
        Duration::from_secs(60),
        &format!("{name} revision {rev} complete"),
        || async {
            let d = api.get(name).await.ok()?;
            (rollout_complete(&d) && revision(&d).as_deref() == Some(rev)).then_some(d)
        },
    )
    .await
}

/// One test's world: a namespace with the key Secret and a pipeline, a fake ilert, a controller.
pub struct World {
    // Dropped first: the controller stops before its namespace and RBAC go away.
    pub controller: Controller,
    pub client: Client,
    pub ns: TestNamespace,
    pub ilert: FakeIlert,
    pub key: String,
    pub deployments: Api<Deployment>,
    pub pipelines: Api<IlertPipeline>,
}

/// How long a test waits for an event that should come promptly.
pub const EVENT_WAIT: Duration = Duration::from_secs(60);

pub const PIPELINE: &str = "production";

impl World {
    /// `secret`: create the key Secret first; `pipeline_spec`: None for the default.
    pub async fn new(
        prefix: &str,
        secret: bool,
        pipeline_spec: Option<Value>,
        extra_args: &[&str],
    ) -> World {
        Self::build(prefix, secret, pipeline_spec, extra_args, &[]).await
    }

    /// As `new`, with extra environment for the controller process.
    pub async fn build(
        prefix: &str,
        secret: bool,
        pipeline_spec: Option<Value>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> World {
        let client = client().await;
        install_crd(&client).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let key = format!("ilapid{:016x}", rand::random::<u64>());
        if secret {
            create_secret(&client, &ns.name, "ilert", "integrationKey", &key).await;
        }
        let ilert = FakeIlert::start().await;
        let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), &ns.name);
        let spec =
            pipeline_spec.unwrap_or_else(|| json!({"integrationKeySecretRef": {"name": "ilert"}}));
        create_pipeline(&pipelines, &ns.name, PIPELINE, spec).await;
        let mut controller = Controller::start(&ns.name, &ilert, extra_args);
        if !env.is_empty() {
            controller.env = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            controller.restart();
        }
        controller.wait_ready().await;
        let deployments = Api::namespaced(client.clone(), &ns.name);
        World {
            client,
            ns,
            ilert,
            controller,
            key,
            deployments,
            pipelines,
        }
    }

    pub async fn pipeline(&self) -> IlertPipeline {
        self.pipelines.get(PIPELINE).await.expect("pipeline")
    }

    /// Waits until the pipeline's Ready condition has `status` and `reason`; returns its message.
    pub async fn wait_ready_condition(&self, status: &str, reason: &str) -> String {
        self.wait_condition(PIPELINE, "Ready", status, reason).await
    }

    /// Waits until condition `type_` of pipeline `name` has `status` and `reason`; returns its
    /// message.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> String {
        eventually(
            Duration::from_secs(60),
            &format!("{name}: {type_}={status} ({reason})"),
            || async {
                let p = self.pipelines.get(name).await.ok()?;
                let c = p
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == type_)?;
                (c.status == status && c.reason == reason).then_some(c.message)
            },
        )
        .await
    }

    /// Kubernetes Events about the pipeline, as "Type Reason: note".
    pub async fn events(&self) -> Vec<String> {
        self.events_about(PIPELINE).await
    }

    /// Kubernetes Events about the object `name` in the test namespace, as "Type Reason: note".
    pub async fn events_about(&self, name: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        let list = api.list(&Default::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                format!(
                    "{} {}: {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits for a Kubernetes Event on the pipeline whose "Type Reason" starts with `prefix`.
    pub async fn wait_event(&self, prefix: &str) -> String {
        eventually(
            Duration::from_secs(10),
            &format!("a {prefix} Event"),
            || async {
                self.events()
                    .await
                    .into_iter()
                    .find(|e| e.starts_with(prefix))
            },
        )
        .await
    }

    /// The key must never show in the controller's logs, the pipeline's status or its Events.
    pub async fn assert_key_never_leaked(&self) {
        let logs = self.controller.logs();
        assert!(!logs.is_empty(), "no controller log to check");
        assert!(
            !logs.contains(&self.key),
            "the integration key appears in the controller log"
        );
        let status = serde_json::to_string(&self.pipeline().await.status).unwrap();
        assert!(
            !status.contains(&self.key),
            "the integration key appears in the status"
        );
        for e in self.events().await {
            assert!(
                !e.contains(&self.key),
                "the integration key appears in an Event: {e}"
            );
        }
    }
}

/// A pipeline created only now in `ns`, over the workloads already there: its key Secret, the
/// default pipeline, a fake ilert and a ready controller (a first sight after the fact).
pub async fn pipeline_over_existing(
    client: &Client,
    ns: &str,
    key: &str,
) -> (Api<IlertPipeline>, FakeIlert, Controller) {
    // Timestamps have whole seconds: the workloads must be older than the pipeline.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_secret(client, ns, "ilert", "integrationKey", key).await;
    let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), ns);
    create_pipeline(
        &pipelines,
        ns,
        PIPELINE,
        json!({"integrationKeySecretRef": {"name": "ilert"}}),
    )
    .await;
    let ilert = FakeIlert::start().await;
    let mut controller = Controller::start(ns, &ilert, &[]);
    controller.wait_ready().await;
    (pipelines, ilert, controller)
}

/// Applies a pipeline in `api`'s namespace, labelled for the test controller whose namespace is
/// `served_by` (its `--pipeline-selector`).
pub async fn create_pipeline(api: &Api<IlertPipeline>, served_by: &str, name: &str, spec: Value) {
    let body = json!({
        "apiVersion": "ilert.com/v1alpha1",
        "kind": "IlertPipeline",
        "metadata": {"name": name, "labels": {"e2e-ns": served_by}},
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply("e2e-tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply pipeline");
}

/// The ledger ConfigMaps the controller keeps in `ns`.
pub async fn ledger_maps(client: &Client, ns: &str) -> Vec<ConfigMap> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .expect("configmaps")
        .items
        .into_iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with(ilert_rollout_controller::domain::book::NAME_PREFIX)
        })
        .collect()
}

/// Per (integration key, workload, revision): how many events ilert accepted.
pub fn accepted_per_rollout(ilert: &FakeIlert) -> BTreeMap<(String, String, String), usize> {
    let mut t = BTreeMap::new();
    for e in ilert.accepted() {
        *t.entry((
            e["integrationKey"].as_str().unwrap_or("").to_string(),
            e["customDetails"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            e["customDetails"]["revision"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ))
        .or_default() += 1;
    }
    t
}

/// Asserts that nothing more than `n` events arrives within `wait`.
pub async fn assert_no_more_than(ilert: &FakeIlert, n: usize, wait: Duration) {
    tokio::time::sleep(wait).await;
    let got = ilert.received();
    assert!(
        got.len() <= n,
        "expected at most {n} requests, got {}: {:#?}",
        got.len(),
        got.iter().map(|r| &r.body["summary"]).collect::<Vec<_>>()
    );
}

/// GET `url`: status, content type, body.
pub async fn get(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ct, r.text().await.unwrap())
}

/// Parses OpenMetrics text into `name{labels}` -> value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Which of the controllers holds the lease, by its own metric.
pub async fn leader_of(controllers: &[&Controller]) -> Option<usize> {
    for (i, c) in controllers.iter().enumerate() {
        let (_, _, text) = get(&format!("{}/metrics", c.ops_url())).await;
        if parse_metrics(&text).get("ilert_rollout_leader") == Some(&1.0) {
            return Some(i);
        }
    }
    None
}
