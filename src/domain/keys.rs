//! Every annotation and label key the controller reads or writes, in one list.

// Kubernetes.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// Argo Rollouts numbers a Rollout's revisions (on the Rollout and its ReplicaSets) the same way.
pub const ARGO_REVISION_ANNOTATION: &str = "rollout.argoproj.io/revision";
pub const ARGO_REVISION_HISTORY_ANNOTATION: &str = "rollout.argoproj.io/revision-history";
/// On a Rollout with `spec.workloadRef`: the generation of the Deployment it last read.
pub const ARGO_WORKLOAD_GENERATION: &str = "rollout.argoproj.io/workload-generation";
/// Argo Rollouts' controller: it writes defaults (`resources: {}`) into the pod template of every
/// new revision, a field manager of the template that never chose a change.
pub const ARGO_ROLLOUTS_MANAGER: &str = "rollouts-controller";
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Labels under this prefix go into an event's details.
pub const RECOMMENDED_LABEL_PREFIX: &str = "app.kubernetes.io/";

// Deployment tools.
pub const HELM_RELEASE_NAME: &str = "meta.helm.sh/release-name";
pub const HELM_RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";
/// Argo CD's annotation tracking: `<app>:<group>/<kind>:<namespace>/<name>`, the app written
/// `<namespace>_<app>` when it lives outside Argo CD's own namespace.
pub const ARGOCD_TRACKING_ID: &str = "argocd.argoproj.io/tracking-id";
/// Argo CD's label tracking, when configured with its own label key.
pub const ARGOCD_INSTANCE_LABEL: &str = "argocd.argoproj.io/instance";
/// Flux labels every object it applies with the Kustomization or HelmRelease that applied it.
pub const FLUX_KUSTOMIZATION: (&str, &str) = (
    "kustomize.toolkit.fluxcd.io/name",
    "kustomize.toolkit.fluxcd.io/namespace",
);
pub const FLUX_HELM_RELEASE: (&str, &str) = (
    "helm.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/namespace",
);
/// Where pipelines commonly put the commit a workload was built from, first match wins;
/// looked up in the annotations, then the labels.
pub const COMMIT_KEYS: &[&str] = &[
    "ilert.com/commit",
    "app.kubernetes.io/commit",
    "commit",
    "commit-sha",
    "git-commit",
    "git-sha",
    "git.commit",
    "vcs-ref",
    "org.opencontainers.image.revision",
];

// Ours, on workloads.
/// Every `ilert.com/` annotation of a workload is kept in its compact view.
pub const OUR_PREFIX: &str = "ilert.com/";
pub const IGNORE_ANNOTATION: &str = "ilert.com/ignore";
pub const SUMMARY_ANNOTATION: &str = "ilert.com/summary";
pub const LINKS_ANNOTATION: &str = "ilert.com/links";
pub const DETAILS_ANNOTATION_PREFIX: &str = "ilert.com/details.";
pub const USER_EMAIL_ANNOTATION: &str = "ilert.com/user-email";

// Ours, on pipelines.
/// Annotating a pipeline with a new value of this sends one test event.
pub const TEST_EVENT_ANNOTATION: &str = "ilert.com/test-event";

// Ours, on the ledger ConfigMaps.
/// The `app.kubernetes.io/managed-by` value of every object the controller creates, and the
/// name it records Kubernetes Events under.
pub const CONTROLLER_NAME: &str = "ilert-rollout-controller";
pub const PIPELINE_UID_LABEL: &str = "ilert.com/pipeline-uid";
/// The leader term (the Lease's `leaseTransitions` when it was acquired) of the last write.
pub const EPOCH_ANNOTATION: &str = "ilert.com/ledger-epoch";
