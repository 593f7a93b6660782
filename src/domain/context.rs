//! Pure: what a finished rollout tells the person on call beyond the object's own fields: which
//! images changed, which tool changed the spec, which Helm release, Argo CD application or Flux
//! object owns the workload, the commit it was built from. Also the context templates render over
//! (README, "Template context"), built from the same facts so the two never disagree.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::domain::history::Rollout;
use crate::domain::keys::{
    ARGOCD_INSTANCE_LABEL, ARGOCD_TRACKING_ID, CHANGE_CAUSE_ANNOTATION, COMMIT_KEYS,
    FLUX_HELM_RELEASE, FLUX_KUSTOMIZATION, HELM_RELEASE_NAME, HELM_RELEASE_NAMESPACE,
    INSTANCE_LABEL, MANAGED_BY_LABEL,
};
use crate::domain::pairs::{Images, Pairs};

/// Helm 3 stamps every object it installs with its release.
/// An object of a deployment tool that owns the workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Owner {
    /// helm, argocd or flux.
    pub tool: &'static str,
    /// Release (Helm), Application (Argo CD), Kustomization or HelmRelease (Flux).
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The owners the workload's labels and annotations name, most specific first: a Flux
/// HelmRelease also leaves Helm's release annotations, and both are worth knowing.
pub fn owners(labels: &Pairs, annotations: &Pairs) -> Vec<Owner> {
    let mut out = Vec::new();
    for (kind, (name, namespace)) in [
        ("Kustomization", FLUX_KUSTOMIZATION),
        ("HelmRelease", FLUX_HELM_RELEASE),
    ] {
        if let Some(n) = labels.get(name) {
            out.push(Owner {
                tool: "flux",
                kind,
                name: n.to_string(),
                namespace: labels.get(namespace).map(str::to_string),
            });
        }
    }
    if let Some(id) = annotations.get(ARGOCD_TRACKING_ID) {
        let app = id.split(':').next().unwrap_or(id);
        let (namespace, name) = match app.split_once('_') {
            Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
            None => (None, app.to_string()),
        };
        out.push(Owner {
            tool: "argocd",
            kind: "Application",
            name,
            namespace,
        });
    } else if let Some(app) = labels.get(ARGOCD_INSTANCE_LABEL) {
        out.push(Owner {
            tool: "argocd",
            kind: "Application",
            name: app.to_string(),
            namespace: None,
        });
    }
    let helm = match annotations.get(HELM_RELEASE_NAME) {
        Some(name) => Some((
            name,
            annotations.get(HELM_RELEASE_NAMESPACE).map(str::to_string),
        )),
        // Helm 2 and charts that only label: managed-by=Helm names the release as instance.
        None if labels.get(MANAGED_BY_LABEL) == Some("Helm") => {
            labels.get(INSTANCE_LABEL).map(|name| (name, None))
        }
        None => None,
    };
    if let Some((name, namespace)) = helm {
        out.push(Owner {
            tool: "helm",
            kind: "Release",
            name: name.to_string(),
            namespace,
        });
    }
    out
}

/// The tool behind a field manager name: helm, argocd, flux, kubectl, or the name itself.
pub fn tool_of_manager(manager: &str) -> String {
    let m = manager.to_ascii_lowercase();
    let tool = if m == "helm-controller" || m == "kustomize-controller" || m.starts_with("flux") {
        "flux"
    } else if m.starts_with("helm") {
        "helm"
    } else if m.starts_with("argocd") || m.starts_with("argo-cd") {
        "argocd"
    } else if m.starts_with("kubectl") {
        "kubectl"
    } else {
        return manager.to_string();
    };
    tool.to_string()
}

/// The commit the workload names in a common annotation or label.
pub fn commit(labels: &Pairs, annotations: &Pairs) -> Option<String> {
    COMMIT_KEYS
        .iter()
        .find_map(|k| annotations.get(k).or_else(|| labels.get(k)))
        .map(str::to_string)
}

/// One container whose image changed; `from` absent for a new container, `to` for a removed one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageChange {
    pub container: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Containers whose image differs between the previous and the current revision, by name.
/// Empty when the previous images are unknown (a first rollout).
pub fn image_changes(previous: &Images, current: &Images) -> Vec<ImageChange> {
    if previous.is_empty() {
        return Vec::new();
    }
    let mut names: Vec<&str> = previous
        .iter()
        .chain(current.iter())
        .map(|(k, _)| k)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|c| {
            let (from, to) = (previous.get(c), current.get(c));
            (from != to).then(|| ImageChange {
                container: c.to_string(),
                from: from.map(str::to_string),
                to: to.map(str::to_string),
            })
        })
        .collect()
}

/// `a -> b, c -> d` for a summary line.
pub fn image_changes_line(changes: &[ImageChange]) -> String {
    changes
        .iter()
        .map(|c| match (&c.from, &c.to) {
            (Some(f), Some(t)) => format!("{}: {f} -> {t}", c.container),
            (None, Some(t)) => format!("{}: added {t}", c.container),
            (Some(f), None) => format!("{}: removed {f}", c.container),
            (None, None) => c.container.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What templates see (documented in README, "Template context"). `summary` is the summary the
/// controller would send without a template.
pub fn template_context(rollout: &Rollout, cluster: &str, summary: &str) -> Value {
    let w = &rollout.workload;
    let h = &rollout.history;
    json!({
        "cluster": cluster,
        "summary": summary,
        "outcome": rollout.outcome.as_str(),
        "revision": rollout.revision.to_string(),
        "previousRevision": h.previous_revision.map(|r| r.to_string()),
        "workload": {
            "kind": w.kind.as_str(),
            "namespace": w.namespace,
            "name": w.name,
            "uid": w.uid,
            "labels": w.labels,
            "annotations": w.annotations,
        },
        "images": w.images,
        "previousImages": h.previous_images,
        "imageChanges": image_changes(&h.previous_images, &w.images),
        "changedBy": w.template_manager,
        "changedVia": w.template_manager.as_deref().map(tool_of_manager),
        "changeCause": w.annotations.get(CHANGE_CAUSE_ANNOTATION),
        "commit": commit(&w.labels, &w.annotations),
        "owners": owners(&w.labels, &w.annotations),
        "startedAt": rollout.started_at.map(|t| t.to_string()),
        "finishedAt": rollout.finished_at.to_string(),
        "durationSeconds": rollout.duration_seconds(),
        "argoRollout": argo_details(rollout),
        "replicas": {
            "desired": w.spec_replicas,
            "updated": w.updated_replicas,
            "ready": w.ready_replicas,
            "available": w.available_replicas,
        },
    })
}

/// What an Argo Rollouts Rollout adds: its strategy, the canary steps taken, and Argo's message
/// (why it was aborted or failed). Also the template context's `argoRollout`.
pub fn argo_details(rollout: &Rollout) -> Option<Value> {
    let a = rollout.workload.argo.as_deref()?;
    let mut d = Map::new();
    if let Some(s) = a.strategy {
        d.insert("strategy".into(), json!(s.as_str()));
    }
    if let Some(steps) = a.steps_line() {
        d.insert("steps".into(), json!(steps));
    }
    if let Some(m) = a.message.as_deref().filter(|m| !m.is_empty()) {
        d.insert(
            "message".into(),
            json!(crate::domain::text::truncate(m, 512)),
        );
    }
    if let Some(w) = &a.workload_ref {
        d.insert("workloadRef".into(), json!(format!("Deployment/{w}")));
    }
    Some(Value::Object(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs<V: From<&'static str>>(v: &[(&'static str, &'static str)]) -> Pairs<V> {
        v.iter().copied().collect()
    }

    #[test]
    fn owners_come_from_the_standard_labels_and_annotations() {
        // As Flux's helm-controller leaves them on a Deployment of a HelmRelease.
        let labels = pairs(&[
            ("helm.toolkit.fluxcd.io/name", "shop"),
            ("helm.toolkit.fluxcd.io/namespace", "flux-system"),
            ("app.kubernetes.io/managed-by", "Helm"),
        ]);
        let annotations = pairs(&[
            (HELM_RELEASE_NAME, "shop"),
            (HELM_RELEASE_NAMESPACE, "shop"),
        ]);
        let o = owners(&labels, &annotations);
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!(
            (o[0].tool, o[0].kind, o[0].name.as_str()),
            ("flux", "HelmRelease", "shop")
        );
        assert_eq!(o[0].namespace.as_deref(), Some("flux-system"));
        assert_eq!((o[1].tool, o[1].kind), ("helm", "Release"));
        let argo = owners(
            &Pairs::default(),
            &pairs(&[(ARGOCD_TRACKING_ID, "team-a_shop:apps/Deployment:shop/web")]),
        );
        assert_eq!(argo[0].name, "shop");
        assert_eq!(argo[0].namespace.as_deref(), Some("team-a"));
        assert!(owners(&Pairs::default(), &Pairs::default()).is_empty());
    }

    #[test]
    fn managers_map_to_their_tools() {
        for (manager, tool) in [
            ("helm", "helm"),
            ("argocd-controller", "argocd"),
            ("argocd-application-controller", "argocd"),
            ("kustomize-controller", "flux"),
            ("helm-controller", "flux"),
            ("kubectl-set", "kubectl"),
            ("kubectl-client-side-apply", "kubectl"),
            (
                "terraform-provider-kubernetes",
                "terraform-provider-kubernetes",
            ),
        ] {
            assert_eq!(tool_of_manager(manager), tool, "{manager}");
        }
    }

    #[test]
    fn image_changes_name_each_container() {
        let prev: Images = pairs(&[
            ("web", "nginx:1.25"),
            ("sidecar", "envoy:1"),
            ("old", "x:1"),
        ]);
        let cur: Images = pairs(&[
            ("web", "nginx:1.26"),
            ("sidecar", "envoy:1"),
            ("new", "y:2"),
        ]);
        let c = image_changes(&prev, &cur);
        assert_eq!(
            image_changes_line(&c),
            "new: added y:2, old: removed x:1, web: nginx:1.25 -> nginx:1.26"
        );
        assert!(image_changes(&Images::default(), &cur).is_empty());
    }

    #[test]
    fn the_commit_comes_from_annotations_before_labels() {
        let labels = pairs(&[("commit", "label-sha")]);
        assert_eq!(
            commit(&labels, &Pairs::default()).as_deref(),
            Some("label-sha")
        );
        let annotations = pairs(&[("ilert.com/commit", "0a1b2c")]);
        assert_eq!(commit(&labels, &annotations).as_deref(), Some("0a1b2c"));
    }
}
