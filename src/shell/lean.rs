//! What the watches deserialize: each kind with the metadata the views read, and nothing more.
//!
//! A profile of a 1,000-rollout burst (docs/benchmarks.md) put a tenth of the controller's CPU in
//! deserializing `metadata.managedFields`: every watch event carries the field sets of every
//! manager, and only one fact of them is read (which manager last changed the pod template, and
//! when). [`Lean`] reads an object with a metadata of its own ([`LeanMeta`]): managedFields kept
//! as manager, time and subresource, with `fieldsV1` reduced to whether it touches
//! `spec.template`; of the pod template of a Deployment or ReplicaSet, only each container's
//! name and image; every other field the views never read is skipped, not built. The views are
//! then made from ordinary k8s-openapi objects, so the pure core does not know.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetSpec, DaemonSetStatus, Deployment, DeploymentSpec,
    DeploymentStatus, ReplicaSet, ReplicaSetSpec, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, LabelSelector, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::Resource;

use crate::domain::argo;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};

/// Argo Rollouts' Rollout, a kind of its own (no k8s-openapi type): argoproj.io/v1alpha1.
impl Resource for argo::Rollout {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        argo::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        argo::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        argo::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        argo::PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl LeanShape for argo::Rollout {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            metadata: LeanMeta,
            spec: Option<Spec>,
            status: Option<argo::RolloutStatus>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            replicas: Option<i32>,
            paused: Option<bool>,
            selector: Option<LabelSelector>,
            template: Option<LeanTemplate>,
            workload_ref: Option<argo::WorkloadRef>,
            strategy: Option<argo::Strategy>,
        }
        let s = Shape::deserialize(d)?;
        Ok(argo::Rollout {
            metadata: s.metadata.into(),
            spec: s.spec.map(|spec| argo::RolloutSpec {
                replicas: spec.replicas,
                paused: spec.paused,
                selector: spec.selector,
                template: spec.template.map(Into::into),
                workload_ref: spec.workload_ref,
                strategy: spec.strategy,
            }),
            status: s.status,
        })
    }
}

/// An object of kind `K` as the watch delivers it, read by [`LeanShape`].
#[derive(Clone, Debug)]
pub(crate) struct Lean<K>(pub(crate) K);

impl<K: Resource> Resource for Lean<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// How one kind is read lean.
pub(crate) trait LeanShape: Sized {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

impl<'de, K: LeanShape> Deserialize<'de> for Lean<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::read(d).map(Lean)
    }
}

/// The metadata fields the views and the watcher (resourceVersion) read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    managed_fields: Option<Vec<LeanManagedFields>>,
}

#[derive(Deserialize)]
struct LeanManagedFields {
    manager: Option<String>,
    operation: Option<String>,
    subresource: Option<String>,
    time: Option<Time>,
    #[serde(rename = "fieldsV1", default, deserialize_with = "touches_template")]
    template: bool,
}

/// Whether a managedFields entry's field set holds `f:spec.f:template`, read without building it.
fn touches_template<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    struct Fields {
        #[serde(rename = "f:spec")]
        spec: Option<Spec>,
    }
    #[derive(Deserialize)]
    struct Spec {
        #[serde(rename = "f:template")]
        template: Option<IgnoredAny>,
    }
    Ok(Option::<Fields>::deserialize(d)?
        .and_then(|f| f.spec)
        .is_some_and(|s| s.template.is_some()))
}

impl From<LeanMeta> for ObjectMeta {
    fn from(m: LeanMeta) -> Self {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            generation: m.generation,
            labels: m.labels,
            annotations: m.annotations,
            owner_references: m.owner_references,
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            managed_fields: m.managed_fields.map(|entries| {
                entries
                    .into_iter()
                    .map(|e| ManagedFieldsEntry {
                        manager: e.manager,
                        operation: e.operation,
                        subresource: e.subresource,
                        time: e.time,
                        // The one fact read of a field set, in the shape it had.
                        fields_v1: e
                            .template
                            .then(|| FieldsV1(serde_json::json!({"f:spec": {"f:template": {}}}))),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        }
    }
}

/// Kinds of `metadata`, `spec` and `status`.
macro_rules! spec_status {
    ($kind:ty, $spec:ty, $status:ty) => {
        impl LeanShape for $kind {
            fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                struct Shape {
                    metadata: LeanMeta,
                    spec: Option<$spec>,
                    status: Option<$status>,
                }
                let s = Shape::deserialize(d)?;
                Ok(Self {
                    metadata: s.metadata.into(),
                    spec: s.spec,
                    status: s.status,
                })
            }
        }
    };
}

// A DaemonSet's view digests its whole pod template, and a StatefulSet's is read whole too.
spec_status!(StatefulSet, StatefulSetSpec, StatefulSetStatus);
spec_status!(DaemonSet, DaemonSetSpec, DaemonSetStatus);

/// A pod template as far as the Deployment and ReplicaSet views read it: the name and image of
/// each container. The rest of the pod spec (env, probes, resources, volumes) is skipped.
#[derive(Deserialize)]
struct LeanTemplate {
    spec: Option<LeanPodSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanPodSpec {
    #[serde(default)]
    containers: Vec<LeanContainer>,
    init_containers: Option<Vec<LeanContainer>>,
}

#[derive(Deserialize)]
struct LeanContainer {
    name: String,
    image: Option<String>,
}

impl From<LeanTemplate> for PodTemplateSpec {
    fn from(t: LeanTemplate) -> Self {
        let container = |c: LeanContainer| Container {
            name: c.name,
            image: c.image,
            ..Default::default()
        };
        PodTemplateSpec {
            metadata: None,
            spec: t.spec.map(|s| PodSpec {
                containers: s.containers.into_iter().map(container).collect(),
                init_containers: s
                    .init_containers
                    .map(|cs| cs.into_iter().map(container).collect()),
                ..Default::default()
            }),
        }
    }
}

impl LeanShape for Deployment {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            metadata: LeanMeta,
            spec: Option<Spec>,
            status: Option<DeploymentStatus>,
        }
        #[derive(Deserialize)]
        struct Spec {
            replicas: Option<i32>,
            paused: Option<bool>,
            selector: Option<LabelSelector>,
            template: Option<LeanTemplate>,
        }
        let s = Shape::deserialize(d)?;
        Ok(Deployment {
            metadata: s.metadata.into(),
            spec: s.spec.map(|spec| DeploymentSpec {
                replicas: spec.replicas,
                paused: spec.paused,
                selector: spec.selector.unwrap_or_default(),
                template: spec.template.map(Into::into).unwrap_or_default(),
                ..Default::default()
            }),
            status: s.status,
        })
    }
}

/// A ReplicaSet as its view reads it: which workload controls it, its revision annotations, when
/// it was made and its images. Its status, labels and managedFields are skipped: most of a
/// burst's ReplicaSet events are status updates, and none of them changes the view.
impl LeanShape for ReplicaSet {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            metadata: Meta,
            spec: Option<Spec>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            annotations: Option<BTreeMap<String, String>>,
            owner_references: Option<Vec<OwnerReference>>,
            creation_timestamp: Option<Time>,
        }
        #[derive(Deserialize)]
        struct Spec {
            template: Option<LeanTemplate>,
        }
        let s = Shape::deserialize(d)?;
        let m = s.metadata;
        Ok(ReplicaSet {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                annotations: m.annotations,
                owner_references: m.owner_references,
                creation_timestamp: m.creation_timestamp,
                ..Default::default()
            },
            spec: s.spec.map(|spec| ReplicaSetSpec {
                template: spec.template.map(Into::into),
                ..Default::default()
            }),
            status: None,
        })
    }
}

impl LeanShape for ControllerRevision {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            metadata: LeanMeta,
            data: Option<RawExtension>,
            revision: i64,
        }
        let s = Shape::deserialize(d)?;
        Ok(ControllerRevision {
            metadata: s.metadata.into(),
            data: s.data,
            revision: s.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::history::{ReplicaSetView, RevisionView};
    use crate::domain::rollout::WorkloadView;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The view of `item` (from fixture `name`) read lean; asserts that read whole it is the
    /// same, and so is the resourceVersion the watcher resumes from.
    fn same_view<K, V>(item: &str, name: &str, view: fn(&K) -> V) -> V
    where
        K: LeanShape + Resource + serde::de::DeserializeOwned,
        V: PartialEq + std::fmt::Debug,
    {
        let whole: K = serde_json::from_str(item).unwrap();
        let lean: Lean<K> = serde_json::from_str(item).unwrap();
        assert_eq!(
            whole.meta().resource_version,
            lean.0.meta().resource_version,
            "{name}"
        );
        let v = view(&lean.0);
        assert_eq!(view(&whole), v, "{name}");
        v
    }

    /// Every fixture captured from the cluster gives the same view read lean as read whole.
    #[test]
    fn lean_objects_give_the_views_whole_objects_give() {
        let (mut seen, mut managers, mut rollouts) = (0, 0, 0);
        for entry in
            std::fs::read_dir(format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"))).unwrap()
        {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.ends_with(".json") {
                continue;
            }
            let text = fixture(&name);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let items: Vec<serde_json::Value> = match v.get("items") {
                Some(items) => items.as_array().unwrap().clone(),
                None => vec![v.clone()],
            };
            for item in items {
                let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or("");
                // A list's items carry no kind: the list's own names it.
                let kind = if kind.is_empty() {
                    v.get("kind")
                        .and_then(|k| k.as_str())
                        .unwrap_or("")
                        .trim_end_matches("List")
                } else {
                    kind
                };
                let s = item.to_string();
                match kind {
                    "Deployment" => {
                        let view = same_view(&s, &name, WorkloadView::from_deployment);
                        managers += usize::from(view.template_manager.is_some());
                    }
                    "StatefulSet" => {
                        same_view(&s, &name, WorkloadView::from_stateful_set);
                    }
                    "DaemonSet" => {
                        same_view(&s, &name, WorkloadView::from_daemon_set);
                    }
                    "ReplicaSet" => {
                        same_view(&s, &name, ReplicaSetView::from_replica_set);
                    }
                    "ControllerRevision" => {
                        same_view(&s, &name, RevisionView::from_controller_revision);
                    }
                    "Rollout" => {
                        let view = same_view(&s, &name, WorkloadView::from_rollout);
                        managers += usize::from(view.template_manager.is_some());
                        rollouts += 1;
                    }
                    _ => continue,
                }
                seen += 1;
            }
        }
        assert!(seen >= 10, "only {seen} captured objects compared");
        assert!(rollouts >= 5, "only {rollouts} Rollouts compared");
        assert!(
            managers >= 5,
            "only {managers} Deployments name who changed the template"
        );
    }
}
