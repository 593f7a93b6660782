//! Pure: a pipeline's `spec.template` and a workload's `ilert.com/*` annotations shape its events.
//!
//! Templates are minijinja, rendered over [`crate::context::template_context`]. A pipeline's
//! templates are checked when the pipeline is applied (parsed, and rendered once over a sample
//! context, which also catches unknown filters): a broken one makes that pipeline Ready=False and
//! touches no other. A workload's annotations are rendered when its rollout is reported; one that
//! fails is left out and named in a warning, and the event goes out without it.

use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_json::Value;

use crate::pipeline::{EventTemplate, LinkTemplate};
use crate::report::{EventLink, truncate};

pub const SUMMARY_ANNOTATION: &str = "ilert.com/summary";
pub const LINKS_ANNOTATION: &str = "ilert.com/links";
pub const DETAILS_ANNOTATION_PREFIX: &str = "ilert.com/details.";
pub const USER_EMAIL_ANNOTATION: &str = "ilert.com/user-email";

/// Whether a workload annotation shapes its events (and so needs the template context).
pub fn shapes(key: &str) -> bool {
    key == SUMMARY_ANNOTATION
        || key == LINKS_ANNOTATION
        || key == USER_EMAIL_ANNOTATION
        || key.starts_with(DETAILS_ANNOTATION_PREFIX)
}

/// Instructions one render may run: enough for any sensible template, and a loop of loops that
/// an annotation could hold ends with an error instead of holding up delivery.
const FUEL: u64 = 50_000;
/// A rendered custom detail, link text or href is cut to this many characters.
const MAX_RENDERED_CHARS: usize = 4096;
/// At most this many links come from a workload's `ilert.com/links`.
const MAX_ANNOTATED_LINKS: usize = 20;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // `{{ workload.labels["team"] }}` on a workload without that label renders empty.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        env
    })
}

/// Renders one template. The error names the template and the line, as minijinja reports it.
pub fn render(name: &str, source: &str, context: &Value) -> Result<String, String> {
    env()
        .render_named_str(name, source, minijinja::value::Serde(context))
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            let mut msg = e.to_string();
            // minijinja names the template in its message; add the line when it does not.
            if let Some(line) = e.line()
                && !msg.contains(&format!("{name}:{line}"))
            {
                msg = format!("{msg} (in {name}:{line})");
            }
            msg
        })
}

/// A pipeline's templates, once checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Templates {
    summary: Option<String>,
    links: Vec<LinkTemplate>,
    details: Vec<(String, String)>,
}

/// What templates and annotations put into an event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rendered {
    pub summary: Option<String>,
    pub links: Vec<EventLink>,
    pub details: Vec<(String, String)>,
}

impl Templates {
    /// Parses and renders every template once over a sample rollout.
    pub fn check(spec: &EventTemplate) -> Result<Self, String> {
        let t = Templates {
            summary: spec.summary.clone(),
            links: spec.links.clone(),
            details: spec
                .custom_details
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        t.render(&sample_context())?;
        Ok(t)
    }

    pub fn render(&self, context: &Value) -> Result<Rendered, String> {
        let mut out = Rendered::default();
        if let Some(src) = &self.summary {
            out.summary = Some(render("spec.template.summary", src, context)?);
        }
        for (i, link) in self.links.iter().enumerate() {
            let href = render(
                &format!("spec.template.links[{i}].href"),
                &link.href,
                context,
            )?;
            let text = render(
                &format!("spec.template.links[{i}].text"),
                &link.text,
                context,
            )?;
            // `{% if commit %}...{% endif %}` leaves a link out where it has nothing to point to.
            if !href.is_empty() {
                out.links.push(EventLink {
                    href: truncate(&href, MAX_RENDERED_CHARS),
                    text: truncate(
                        if text.is_empty() { &href } else { &text },
                        MAX_RENDERED_CHARS,
                    ),
                });
            }
        }
        for (key, src) in &self.details {
            let value = render(&format!("spec.template.customDetails.{key}"), src, context)?;
            out.details
                .push((key.clone(), truncate(&value, MAX_RENDERED_CHARS)));
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
struct AnnotatedLink {
    href: String,
    #[serde(default)]
    text: String,
}

/// Renders a workload's `ilert.com/*` annotations. Returns what rendered and, for each
/// annotation that did not, a warning naming it; nothing in it ever fails the event.
pub fn from_annotations<'a>(
    annotations: impl Iterator<Item = (&'a str, &'a str)>,
    context: &Value,
) -> (Rendered, Option<String>, Vec<String>) {
    let mut out = Rendered::default();
    let mut email = None;
    let mut warnings = Vec::new();
    for (key, value) in annotations {
        if key == SUMMARY_ANNOTATION {
            match render(key, value, context) {
                Ok(s) if !s.is_empty() => out.summary = Some(s),
                Ok(_) => {}
                Err(e) => warnings.push(e),
            }
        } else if key == LINKS_ANNOTATION {
            match serde_json::from_str::<Vec<AnnotatedLink>>(value) {
                Ok(links) => {
                    if links.len() > MAX_ANNOTATED_LINKS {
                        warnings.push(format!(
                            "{key} holds {} links; the first {MAX_ANNOTATED_LINKS} are sent",
                            links.len()
                        ));
                    }
                    for (i, l) in links.iter().take(MAX_ANNOTATED_LINKS).enumerate() {
                        let href = render(&format!("{key}[{i}].href"), &l.href, context);
                        let text = render(&format!("{key}[{i}].text"), &l.text, context);
                        match (href, text) {
                            (Ok(href), Ok(text)) if !href.is_empty() => out.links.push(EventLink {
                                text: truncate(
                                    if text.is_empty() { &href } else { &text },
                                    MAX_RENDERED_CHARS,
                                ),
                                href: truncate(&href, MAX_RENDERED_CHARS),
                            }),
                            (Ok(_), Ok(_)) => {}
                            (Err(e), _) | (_, Err(e)) => warnings.push(e),
                        }
                    }
                }
                Err(e) => warnings.push(format!(
                    "{key} is not a JSON list of {{\"text\", \"href\"}} objects: {e}"
                )),
            }
        } else if let Some(detail) = key.strip_prefix(DETAILS_ANNOTATION_PREFIX) {
            match render(key, value, context) {
                Ok(v) if !detail.is_empty() => out
                    .details
                    .push((detail.to_string(), truncate(&v, MAX_RENDERED_CHARS))),
                Ok(_) => {}
                Err(e) => warnings.push(e),
            }
        } else if key == USER_EMAIL_ANNOTATION {
            if is_email(value) {
                email = Some(value.trim().to_string());
            } else {
                // ilert refuses an event whose userEmail is no address: leave it out instead.
                warnings.push(format!(
                    "{key} is not an email address and was left out: {}",
                    truncate(value, 80)
                ));
            }
        }
    }
    (out, email, warnings)
}

/// Enough of an address for ilert's `format: email`: one `@`, a dot in the domain, no spaces.
fn is_email(s: &str) -> bool {
    let s = s.trim();
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// A rollout with every field of the context set, for checking templates.
pub fn sample_context() -> Value {
    serde_json::json!({
        "cluster": "prod-eu",
        "summary": "Deployment shop/web rolled out nginx:1.26 (revision 2) on prod-eu",
        "outcome": "Completed",
        "revision": "2",
        "previousRevision": "1",
        "workload": {
            "kind": "Deployment",
            "namespace": "shop",
            "name": "web",
            "uid": "00000000-0000-0000-0000-000000000000",
            "labels": {"app.kubernetes.io/name": "web"},
            "annotations": {"kubernetes.io/change-cause": "release 1.26"},
        },
        "images": {"web": "nginx:1.26"},
        "previousImages": {"web": "nginx:1.25"},
        "imageChanges": [{"container": "web", "from": "nginx:1.25", "to": "nginx:1.26"}],
        "changedBy": "helm",
        "changedVia": "helm",
        "changeCause": "release 1.26",
        "commit": "0a1b2c3d",
        "owners": [{"tool": "helm", "kind": "Release", "name": "shop", "namespace": "shop"}],
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:01:00Z",
        "durationSeconds": 60,
        "replicas": {"desired": 3, "updated": 3, "ready": 3, "available": 3},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(summary: &str) -> EventTemplate {
        EventTemplate {
            summary: Some(summary.into()),
            links: vec![LinkTemplate {
                text: "Commit {{ commit }}".into(),
                href: "{% if commit %}https://git.example.com/shop/commit/{{ commit }}{% endif %}"
                    .into(),
            }],
            custom_details: BTreeMap::from([(
                "team".to_string(),
                "{{ workload.labels['team'] | default('unknown') }}".to_string(),
            )]),
        }
    }

    #[test]
    fn templates_render_over_the_context() {
        let t = Templates::check(&spec(
            "{{ workload.name }}: {% for c in imageChanges %}{{ c.from }} -> {{ c.to }}{% endfor %}",
        ))
        .unwrap();
        let r = t.render(&sample_context()).unwrap();
        assert_eq!(r.summary.as_deref(), Some("web: nginx:1.25 -> nginx:1.26"));
        assert_eq!(
            r.links[0].href,
            "https://git.example.com/shop/commit/0a1b2c3d"
        );
        assert_eq!(r.links[0].text, "Commit 0a1b2c3d");
        assert_eq!(r.details, vec![("team".into(), "unknown".into())]);
        let mut no_commit = sample_context();
        no_commit["commit"] = Value::Null;
        assert!(t.render(&no_commit).unwrap().links.is_empty());
    }

    #[test]
    fn broken_templates_are_refused_with_their_line() {
        let e = Templates::check(&spec("line one\n{{ workload.name ")).unwrap_err();
        assert!(e.contains("spec.template.summary:2"), "{e}");
        let e = Templates::check(&spec("{{ workload.name | no_such_filter }}")).unwrap_err();
        assert!(
            e.contains("no_such_filter") || e.contains("unknown filter"),
            "{e}"
        );
        let e = Templates::check(&spec(
            "{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}",
        ))
        .unwrap_err();
        assert!(e.contains("fuel"), "{e}");
    }

    #[test]
    fn annotations_enrich_and_never_fail_the_event() {
        let annotations = [
            (SUMMARY_ANNOTATION, "{{ workload.name }} is live"),
            (
                LINKS_ANNOTATION,
                r#"[{"text": "Runbook", "href": "https://runbooks.example.com/{{ workload.name }}"}]"#,
            ),
            ("ilert.com/details.team", "payments"),
            ("ilert.com/details.broken", "{{ oops"),
            (USER_EMAIL_ANNOTATION, "not an address"),
        ];
        let (r, email, warnings) = from_annotations(annotations.iter().copied(), &sample_context());
        assert_eq!(r.summary.as_deref(), Some("web is live"));
        assert_eq!(r.links[0].href, "https://runbooks.example.com/web");
        assert_eq!(r.details, vec![("team".into(), "payments".into())]);
        assert_eq!(email, None);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let (_, email, _) = from_annotations(
            [(USER_EMAIL_ANNOTATION, "dev@example.com")].into_iter(),
            &sample_context(),
        );
        assert_eq!(email.as_deref(), Some("dev@example.com"));
    }
}
