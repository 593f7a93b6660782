//! Pure: which pipeline selects which workload, once its spec has been checked.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::domain::group;
use crate::domain::rollout::{Kind, WorkloadView};
use crate::domain::status::{Problem, Reason};
use crate::domain::template::Templates;
use crate::pipeline::{AlertsSpec, IlertPipelineSpec};

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
    /// `spec.groupBy: Owner`: how rollouts of one owner become one change.
    pub group: Option<group::Policy>,
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
                        if trusted.is_empty() {
                            "none are configured".to_string()
                        } else {
                            trusted.join(", ")
                        }
                    ),
                });
            }
            Some(sel) => Some(selector(sel, "spec.namespaceSelector")?),
        };
        let workloads = match &spec.selector {
            None => Selector::default(),
            Some(sel) => selector(sel, "spec.selector")?,
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
            group: group::Policy::of(spec),
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
            None => *w.namespace == *pipeline_namespace,
            Some(ns_sel) => namespaces
                .get(&*w.namespace)
                .is_some_and(|labels| ns_sel.matches(labels)),
        };
        ns_ok
            && self.kinds.contains(&w.kind)
            && (self.workloads.selects_all() || self.workloads.matches(&w.labels.to_btree()))
            && !w.ignored()
    }
}

/// A label selector as the API server would accept it: the rules of its own validation
/// (`ValidateLabelSelector`), which kube's parser does not all apply. `In: []` would otherwise
/// select nothing while the pipeline said Ready.
fn selector(sel: &LabelSelector, field: &str) -> Result<Selector, Problem> {
    let invalid = |what: String| Problem {
        reason: Reason::InvalidSelector,
        message: format!("{field} is invalid: {what}"),
    };
    for (key, value) in sel.match_labels.iter().flatten() {
        label_key(key).map_err(|e| invalid(format!("matchLabels key {key:?} {e}")))?;
        label_value(value)
            .map_err(|e| invalid(format!("matchLabels[{key:?}] value {value:?} {e}")))?;
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("matchExpressions[{i}]");
        label_key(&e.key).map_err(|why| invalid(format!("{at}.key {:?} {why}", e.key)))?;
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(invalid(format!(
                    "{at}: operator {} needs at least one value",
                    e.operator
                )));
            }
            "In" | "NotIn" => {
                for v in values {
                    label_value(v).map_err(|why| invalid(format!("{at} value {v:?} {why}")))?;
                }
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(invalid(format!(
                    "{at}: operator {} takes no values",
                    e.operator
                )));
            }
            _ => {}
        }
    }
    Selector::try_from(sel.clone()).map_err(|e| invalid(e.to_string()))
}

/// A label name or value part: at most 63 characters, alphanumeric at both ends, `-`, `_` and
/// `.` between.
fn label_name(s: &str) -> bool {
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && ends(s.chars().next())
        && ends(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `[prefix/]name`: the prefix a DNS subdomain of at most 253 characters.
fn label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let subdomain = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if !subdomain {
            return Err(
                "has a prefix that is not a DNS subdomain (lower case, digits, '-' and '.')",
            );
        }
    }
    if !label_name(name) {
        return Err(
            "is not a label name (at most 63 characters: letters, digits, '-', '_', '.', beginning and ending with a letter or digit)",
        );
    }
    Ok(())
}

fn label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || label_name(value) {
        Ok(())
    } else {
        Err(
            "is not a label value (empty, or at most 63 characters: letters, digits, '-', '_', '.', beginning and ending with a letter or digit)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(selector: serde_json::Value) -> Result<Selection, Problem> {
        let spec: IlertPipelineSpec = serde_json::from_value(json!({
            "integrationKeySecretRef": {"name": "ilert"},
            "selector": selector,
        }))
        .unwrap();
        Selection::check(&spec, "shop", &[])
    }

    /// What the API server refuses in a label selector is refused here too, with the place.
    #[test]
    fn selectors_the_api_server_would_refuse_are_invalid() {
        let cases = [
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": []}]}),
                "matchExpressions[0]: operator In needs at least one value",
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn"}]}),
                "operator NotIn needs at least one value",
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["a"]}]}),
                "operator Exists takes no values",
            ),
            (
                json!({"matchLabels": {"bad key!": "x"}}),
                "matchLabels key \"bad key!\" is not a label name",
            ),
            (
                json!({"matchLabels": {"Example.com/app": "x"}}),
                "is not a DNS subdomain",
            ),
            (
                json!({"matchLabels": {"app": "not ok"}}),
                "value \"not ok\" is not a label value",
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["-x"]}]}),
                "value \"-x\" is not a label value",
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "Matches", "values": ["x"]}]}),
                "spec.selector is invalid",
            ),
        ];
        for (selector, expect) in cases {
            let Err(p) = check(selector.clone()) else {
                panic!("{selector} was taken as valid");
            };
            assert_eq!(p.reason, Reason::InvalidSelector, "{selector}");
            assert!(
                p.message.starts_with("spec.selector is invalid: "),
                "{}",
                p.message
            );
            assert!(p.message.contains(expect), "{selector}: {}", p.message);
        }
        for ok in [
            json!({"matchLabels": {"app.kubernetes.io/name": "web", "tier": ""}}),
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b.c"]}]}),
            json!({"matchExpressions": [{"key": "example.com/tier", "operator": "DoesNotExist"}]}),
        ] {
            assert!(check(ok.clone()).is_ok(), "{ok}");
        }
    }
}
