//! Pure: which pipeline selects which workload, once its spec has been checked.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::core::{Selector, SelectorExt};

use crate::domain::rollout::{Kind, WorkloadView};
use crate::domain::template::Templates;
use crate::pipeline::{AlertsSpec, IlertPipelineSpec};

use crate::domain::status::{Problem, Reason};

/// What the pipeline selects, once its spec has been checked.
pub struct Selection {
    /// None: the pipeline's own namespace only.
    pub namespaces: Option<Selector>,
    pub workloads: Selector,
    /// `spec.workloads`; absent: every kind.
    pub kinds: Vec<Kind>,
    /// `spec.template`, checked.
    pub templates: Option<Arc<Templates>>,
    /// `spec.alerts`: failed rollouts page.
    pub alerts: Option<AlertsSpec>,
}

impl Selection {
    /// Checks a pipeline's selectors, template and tenancy: `namespace` is the pipeline's,
    /// `trusted` the namespaces whose pipelines may select other namespaces.
    pub fn check(
        spec: &IlertPipelineSpec,
        namespace: &str,
        trusted: &[String],
    ) -> Result<Self, Problem> {
        let namespaces = match &spec.namespace_selector {
            None => None,
            Some(_) if !trusted.iter().any(|t| t == namespace) => {
                return Err(Problem {
                    reason: Reason::NamespaceSelectorNotAllowed,
                    message: format!(
                        "spec.namespaceSelector is only honoured for pipelines in the controller's trusted namespaces ({}); remove it to report this namespace's workloads, or create the pipeline in a trusted namespace",
                        trusted.join(", ")
                    ),
                });
            }
            Some(sel) => Some(Selector::try_from(sel.clone()).map_err(|e| Problem {
                reason: Reason::InvalidSelector,
                message: format!("spec.namespaceSelector is invalid: {e}"),
            })?),
        };
        let workloads = match &spec.selector {
            None => Selector::default(),
            Some(sel) => Selector::try_from(sel.clone()).map_err(|e| Problem {
                reason: Reason::InvalidSelector,
                message: format!("spec.selector is invalid: {e}"),
            })?,
        };
        let templates = match &spec.template {
            None => None,
            Some(t) => Some(Arc::new(Templates::check(t).map_err(|e| Problem {
                reason: Reason::InvalidTemplate,
                message: format!(
                    "spec.template does not render: {e}; no events are sent until it is fixed, then the latest rollout of each workload is"
                ),
            })?)),
        };
        Ok(Selection {
            namespaces,
            workloads,
            kinds: spec.workloads.clone().unwrap_or_else(|| Kind::ALL.to_vec()),
            templates,
            alerts: spec.alerts.clone(),
        })
    }

    /// Whether a workload is selected by a pipeline in `pipeline_namespace`, with `namespaces`
    /// the labels of every namespace.
    pub fn selects(
        &self,
        w: &WorkloadView,
        pipeline_namespace: &str,
        namespaces: &HashMap<String, BTreeMap<String, String>>,
    ) -> bool {
        let ns_ok = match &self.namespaces {
            None => w.namespace == pipeline_namespace,
            Some(ns_sel) => namespaces
                .get(&w.namespace)
                .is_some_and(|labels| ns_sel.matches(labels)),
        };
        ns_ok
            && self.kinds.contains(&w.kind)
            && (self.workloads.selects_all() || self.workloads.matches(&w.labels.to_btree()))
            && !w.ignored()
    }
}
