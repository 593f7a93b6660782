//! Kubernetes Events on pipelines and workloads.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use tracing::{debug, warn};

use crate::domain::rollout::WorkloadView;
use crate::domain::text::{WorkloadRef, truncate};
use crate::shell::shared::Shared;

/// `Kind/namespace/name` -> a reference to that workload.
pub(crate) fn workload_reference(workload: &str) -> Option<ObjectReference> {
    let w = WorkloadRef::parse(workload)?;
    Some(ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(w.kind.into()),
        namespace: Some(w.namespace.into()),
        name: Some(w.name.into()),
        ..Default::default()
    })
}

pub(crate) async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
    related: Option<ObjectReference>,
) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: if type_ == EventType::Normal {
            "Report".into()
        } else {
            "Deliver".into()
        },
        secondary: related,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        debug!(error = %e, "could not record a Kubernetes Event");
    }
}

/// A template or `ilert.com/*` annotation that did not render: the event went out without it;
/// the log and a Warning Event on the workload say which and why.
pub(crate) fn template_warnings(
    shared: &Arc<Shared>,
    view: &WorkloadView,
    pipeline: &str,
    warnings: Vec<String>,
) {
    let note = warnings.join("; ");
    warn!(workload = %view.reference(), pipeline = %pipeline, problem = %note, "part of the event did not render and was left out");
    let Some(reference) = workload_reference(&view.reference()) else {
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        publish(
            &shared.recorder,
            &reference,
            EventType::Warning,
            "TemplateFailed",
            &format!("Reported to ilert without the part that did not render: {note}"),
            None,
        )
        .await;
    });
}
