//! The commands a person runs with their own kubeconfig (also as the kubectl plugin
//! `kubectl ilert`): `preview` (what the controller would send for a workload's latest rollout),
//! `test` (a test event for a pipeline, waited for) and `status` (the pipelines at a glance).
//! `preview` and `status` only read; `test` sets one annotation on the pipeline.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher::Event;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::domain::argo;
use crate::domain::history::{ReplicaSetView, RevisionView};
use crate::domain::index::{OwnedCache, resolve_owned};
use crate::domain::keys::TEST_EVENT_ANNOTATION;
use crate::domain::preview::{Preview, preview};
use crate::domain::rollout::{Kind, WorkloadView};
use crate::domain::selection::Selection;
use crate::pipeline::IlertPipeline;

/// A client for the caller's kubeconfig (KUBECONFIG or ~/.kube/config, or in a pod its
/// ServiceAccount), and the namespace of its current context.
pub async fn user_client() -> anyhow::Result<(Client, String)> {
    let config = kube::Config::infer()
        .await
        .context("cannot load a kubeconfig (KUBECONFIG, ~/.kube/config)")?;
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

/// `deploy/web`, `statefulset/db`, `ds/agent`, `rollout/web`: the kind and the name.
pub fn parse_workload(s: &str) -> anyhow::Result<(Kind, String)> {
    let Some((kind, name)) = s.split_once('/') else {
        bail!("{s:?}: name the workload as <kind>/<name>, e.g. deploy/web");
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "deploy" | "deployment" | "deployments" | "deployment.apps" => Kind::Deployment,
        "sts" | "statefulset" | "statefulsets" | "statefulset.apps" => Kind::StatefulSet,
        "ds" | "daemonset" | "daemonsets" | "daemonset.apps" => Kind::DaemonSet,
        "ro" | "rollout" | "rollouts" | "rollout.argoproj.io" => Kind::Rollout,
        other => bail!(
            "{other:?} is not a kind that is reported: deploy, statefulset (sts), daemonset (ds) or rollout (ro)"
        ),
    };
    if name.is_empty() {
        bail!("{s:?}: the workload has no name");
    }
    Ok((kind, name.to_string()))
}

fn not_found(e: kube::Error, what: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!("{what} not found"),
        kube::Error::Api(s) if s.code == 403 => {
            anyhow::anyhow!("{what}: not allowed to read it ({})", s.message)
        }
        e => anyhow::anyhow!("{what}: {e}"),
    }
}

/// Every `K` in namespace `ns` (`what` names them in the error).
async fn list_in<K>(client: &Client, ns: &str, what: &str) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| not_found(e, &format!("{what} in {ns}")))
}

/// The workload's view with its ReplicaSets or ControllerRevisions, read as the controller reads
/// them.
async fn read_workload(
    client: &Client,
    ns: &str,
    kind: Kind,
    name: &str,
) -> anyhow::Result<(WorkloadView, Vec<ReplicaSetView>, Vec<RevisionView>)> {
    let what = format!("{kind} {ns}/{name}");
    let mut w = match kind {
        Kind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map(|d| WorkloadView::from_deployment(&d)),
        Kind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map(|s| WorkloadView::from_stateful_set(&s)),
        Kind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map(|d| WorkloadView::from_daemon_set(&d)),
        Kind::Rollout => Api::<argo::Rollout>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map(|r| WorkloadView::from_rollout(&r)),
    }
    .map_err(|e| not_found(e, &what))?;
    let mut replica_sets = OwnedCache::<ReplicaSetView>::default();
    let mut revisions = OwnedCache::<RevisionView>::default();
    if kind.has_replica_sets() {
        for rs in &list_in::<ReplicaSet>(client, ns, "ReplicaSets").await? {
            replica_sets.apply(Event::Apply(ReplicaSetView::from_replica_set(rs)));
        }
    } else {
        for cr in &list_in::<ControllerRevision>(client, ns, "ControllerRevisions").await? {
            revisions.apply(Event::Apply(RevisionView::from_controller_revision(cr)));
        }
    }
    resolve_owned(&mut w, &replica_sets, &revisions);
    let rs = replica_sets.get(&w.uid).to_vec();
    let cr = revisions.get(&w.uid).to_vec();
    Ok((w, rs, cr))
}

/// `preview`: prints the request body for the workload's latest rollout (key redacted) on
/// stdout, and notes on stderr. Exit code 0 when there is a body, 2 when the rollout has not
/// finished, 3 when the pipeline would send nothing for it (invalid, or it does not select it).
pub async fn run_preview(
    workload: &str,
    namespace: Option<&str>,
    pipeline: Option<&str>,
    cluster: &str,
) -> anyhow::Result<u8> {
    let (kind, name) = parse_workload(workload)?;
    let (client, default_ns) = user_client().await?;
    let ns = namespace.unwrap_or(&default_ns).to_string();
    let (w, replica_sets, revisions) = read_workload(&client, &ns, kind, &name).await?;
    // The namespace's labels decide a namespaceSelector; a developer who may not read the
    // Namespace object gets the pipeline's own-namespace answer.
    let labels = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    let namespaces: HashMap<String, BTreeMap<String, String>> = [(ns.clone(), labels)].into();
    let pipelines: Vec<IlertPipeline> = match pipeline {
        Some(p) => {
            let (pns, pname) = p.split_once('/').unwrap_or((ns.as_str(), p));
            let got = Api::<IlertPipeline>::namespaced(client.clone(), pns)
                .get(pname)
                .await
                .map_err(|e| not_found(e, &format!("IlertPipeline {pns}/{pname}")))?;
            vec![got]
        }
        None => {
            let mut list = list_in::<IlertPipeline>(&client, &ns, "IlertPipelines").await?;
            list.sort_by_key(|p| p.name_any());
            list
        }
    };
    let explicit = pipeline.is_some();
    let checked: Vec<(String, Result<Selection, _>)> = pipelines
        .iter()
        .map(|p| {
            let pns = p.namespace().unwrap_or_default();
            // Whether this namespace is trusted is the controller's setting: assumed here.
            let trusted = [pns.clone()];
            (
                format!("{pns}/{}", p.name_any()),
                Selection::check(&p.spec, &pns, &trusted),
            )
        })
        .collect();
    let chosen = checked.iter().find(|(id, sel)| {
        let pns = id.split('/').next().unwrap_or_default();
        match sel {
            Ok(s) => s.selects(&w, pns, &namespaces),
            Err(_) => explicit,
        }
    });
    let templates = match chosen {
        Some((id, Ok(sel))) => {
            eprintln!("# as IlertPipeline {id} would send it");
            Ok(sel.templates.as_deref())
        }
        Some((id, Err(problem))) => {
            eprintln!("# IlertPipeline {id}");
            Err(problem.clone())
        }
        None if explicit => {
            eprintln!(
                "# IlertPipeline {} does not select {}: it would send nothing for it",
                checked[0].0,
                w.reference()
            );
            return Ok(3);
        }
        None => {
            eprintln!(
                "# no IlertPipeline in {ns} selects {}: shown without a pipeline's templates",
                w.reference()
            );
            Ok(None)
        }
    };
    match preview(
        &w,
        &replica_sets,
        &revisions,
        templates,
        cluster,
        jiff::Timestamp::now(),
    ) {
        Preview::Send { body, warnings } => {
            for warning in warnings {
                eprintln!("# warning: {warning}");
            }
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(0)
        }
        Preview::Unfinished { revision, progress } => {
            eprintln!(
                "# {} revision {} is {progress:?}: nothing is sent until it finishes",
                w.reference(),
                revision.map_or_else(|| "?".to_string(), |r| r.to_string())
            );
            Ok(2)
        }
        Preview::Invalid(problem) => {
            eprintln!(
                "# Ready=False {}: {}",
                problem.reason.as_str(),
                problem.message
            );
            Ok(3)
        }
    }
}

/// `test`: sets `ilert.com/test-event` on the pipeline to a new value and waits for the
/// controller's answer in status. Exit code 0 when ilert accepted the test event.
pub async fn run_test(
    pipeline: &str,
    namespace: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<u8> {
    let (client, default_ns) = user_client().await?;
    let (ns, name) = match pipeline.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (
            namespace.unwrap_or(&default_ns).to_string(),
            pipeline.to_string(),
        ),
    };
    let api = Api::<IlertPipeline>::namespaced(client, &ns);
    let value = format!("kubectl-ilert-{}", jiff::Timestamp::now().as_millisecond());
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {TEST_EVENT_ANNOTATION: value}}})),
    )
    .await
    .map_err(|e| not_found(e, &format!("IlertPipeline {ns}/{name}")))?;
    eprintln!(
        "# test event {value} requested on IlertPipeline {ns}/{name}; waiting for ilert's answer"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let p = api
            .get(&name)
            .await
            .map_err(|e| not_found(e, &format!("IlertPipeline {ns}/{name}")))?;
        if let Some(t) = p
            .status
            .as_ref()
            .and_then(|s| s.test_event.as_ref())
            .filter(|t| t.value == value)
        {
            println!("{}: {} (at {})", t.result, t.message, t.at);
            return Ok(if t.result == "Accepted" { 0 } else { 1 });
        }
        if tokio::time::Instant::now() >= deadline {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| format!("Ready={} {}: {}", c.status, c.reason, c.message))
                .unwrap_or_else(|| "no Ready condition: no controller serves it yet".into());
            println!(
                "no answer within {} s; is a controller running that serves this pipeline (its --pipeline-selector)? {ready}",
                timeout.as_secs()
            );
            return Ok(1);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `status`: one line per pipeline, across namespaces (the current one when listing across
/// namespaces is not allowed, or `namespace` when given).
pub async fn run_status(namespace: Option<&str>) -> anyhow::Result<u8> {
    let (client, default_ns) = user_client().await?;
    let (pipelines, scope) = match namespace {
        Some(ns) => (
            list_in::<IlertPipeline>(&client, ns, "IlertPipelines").await?,
            ns.to_string(),
        ),
        None => match Api::<IlertPipeline>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => (list.items, "all namespaces".to_string()),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                eprintln!(
                    "# not allowed to list IlertPipelines across namespaces: {default_ns} only"
                );
                (
                    list_in::<IlertPipeline>(&client, &default_ns, "IlertPipelines").await?,
                    default_ns.clone(),
                )
            }
            Err(e) => return Err(not_found(e, "IlertPipelines")),
        },
    };
    if pipelines.is_empty() {
        println!("No IlertPipelines in {scope}.");
        return Ok(0);
    }
    print!("{}", status_table(&pipelines));
    Ok(0)
}

/// The table `status` prints: namespace, name, readiness and why, selected, pending, sent,
/// failed, and the last event ilert accepted.
pub fn status_table(pipelines: &[IlertPipeline]) -> String {
    let mut rows: Vec<[String; 8]> = vec![
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "SELECTED",
            "PENDING",
            "SENT",
            "FAILED",
            "LAST EVENT",
        ]
        .map(String::from),
    ];
    let mut sorted: Vec<&IlertPipeline> = pipelines.iter().collect();
    sorted.sort_by_key(|p| (p.namespace(), p.name_any()));
    for p in sorted {
        let s = p.status.clone().unwrap_or_default();
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| match c.status.as_str() {
                "True" => "True".to_string(),
                other => format!("{other} ({})", c.reason),
            })
            .unwrap_or_else(|| "Unknown (no controller serves it yet)".into());
        let last = s
            .last_event
            .as_ref()
            .map(|e| {
                format!(
                    "{} rev {} {} at {}",
                    e.workload, e.revision, e.outcome, e.sent_at
                )
            })
            .unwrap_or_else(|| "-".into());
        rows.push([
            p.namespace().unwrap_or_default(),
            p.name_any(),
            ready,
            s.selected_workloads.to_string(),
            s.pending_events.to_string(),
            s.events_sent.to_string(),
            s.events_failed.to_string(),
            last,
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 7 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_named_as_kubectl_names_them() {
        assert_eq!(
            parse_workload("deploy/web").unwrap(),
            (Kind::Deployment, "web".into())
        );
        assert_eq!(parse_workload("sts/db").unwrap().0, Kind::StatefulSet);
        assert_eq!(
            parse_workload("daemonset.apps/agent").unwrap().0,
            Kind::DaemonSet
        );
        assert_eq!(parse_workload("Rollout/web").unwrap().0, Kind::Rollout);
        let e = parse_workload("job/x").unwrap_err().to_string();
        assert!(e.contains("not a kind that is reported"), "{e}");
        assert!(parse_workload("web").is_err());
        assert!(parse_workload("deploy/").is_err());
    }
}
