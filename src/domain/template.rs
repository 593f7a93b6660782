//! Pure: a pipeline's `spec.template` and a workload's `ilert.com/*` annotations shape its events.
//!
//! Templates are minijinja, rendered over [`crate::domain::context::template_context`]. A pipeline's
//! templates are checked when the pipeline is applied (parsed, and rendered once over a sample
//! context, which also catches unknown filters): a broken one makes that pipeline Ready=False and
//! touches no other. A workload's annotations are rendered when its rollout is reported; one that
//! fails is left out and named in a warning, and the event goes out without it.

use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::keys::{
    DETAILS_ANNOTATION_PREFIX, LINKS_ANNOTATION, SUMMARY_ANNOTATION, USER_EMAIL_ANNOTATION,
};
use crate::domain::payload::EventLink;
use crate::domain::text::truncate;
use crate::pipeline::{EventTemplate, LinkTemplate};

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
/// The most one field may write while it renders: room for the characters kept (4 bytes each at
/// most), so output that is cut to size still renders, and a template printing megabytes fails at
/// the write that crosses it. Values built along the way are bounded by the fuel.
const MAX_OUTPUT_BYTES: usize = 4 * MAX_RENDERED_CHARS;
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

/// Holds what a template writes, and refuses the write that would take it past `limit`: a
/// template that prints too much fails there, before it allocates the rest.
struct BoundedOutput {
    written: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered output over its limit"));
        }
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a template did not render; the message names the field and, where minijinja knows it, the
/// line, and says what to change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("{field} rendered more than {limit} bytes and was refused: make it print less")]
    TooLarge { field: String, limit: usize },
    /// minijinja's own message: a syntax error, an undefined filter, the fuel spent.
    #[error("{0}")]
    Failed(String),
}

/// Renders one template. The error names the template and the line, as minijinja reports it.
pub fn render(name: &str, source: &str, context: &Value) -> Result<String, TemplateError> {
    let mut out = BoundedOutput {
        written: Vec::new(),
        limit: MAX_OUTPUT_BYTES,
        overflowed: false,
    };
    let result = env()
        .template_from_named_str(name, source)
        .and_then(|t| t.render_captured_to(minijinja::value::Serde(context), &mut out))
        .map(drop);
    if out.overflowed {
        return Err(TemplateError::TooLarge {
            field: name.to_string(),
            limit: MAX_OUTPUT_BYTES,
        });
    }
    result.map_err(|e| {
        let mut msg = e.to_string();
        // minijinja names the template in its message; add the line when it does not.
        if let Some(line) = e.line()
            && !msg.contains(&format!("{name}:{line}"))
        {
            msg = format!("{msg} (in {name}:{line})");
        }
        if e.kind() == minijinja::ErrorKind::OutOfFuel {
            msg = format!(
                "{msg}: it runs more instructions or builds larger values than one field may (a budget of {FUEL} instructions, a byte of text costing 1/64 of one)"
            );
        }
        TemplateError::Failed(msg)
    })?;
    Ok(String::from_utf8_lossy(&out.written).trim().to_string())
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
    pub fn check(spec: &EventTemplate) -> Result<Self, TemplateError> {
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

    pub fn render(&self, context: &Value) -> Result<Rendered, TemplateError> {
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
                Err(e) => warnings.push(e.to_string()),
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
                            (Err(e), _) | (_, Err(e)) => warnings.push(e.to_string()),
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
                Err(e) => warnings.push(e.to_string()),
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
        let e = Templates::check(&spec("line one\n{{ workload.name "))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.template.summary:2"), "{e}");
        let e = Templates::check(&spec("{{ workload.name | no_such_filter }}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no_such_filter") || e.contains("unknown filter"),
            "{e}"
        );
        let e = Templates::check(&spec(
            "{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("fuel"), "{e}");
    }

    /// Counts what the thread that renders allocates, so a test can bound the peak of one render.
    mod peak {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn add(n: usize) {
            let _ = LIVE.try_with(|live| {
                let now = live.get().saturating_add(n as isize);
                live.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
        }

        fn sub(n: usize) {
            let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n as isize)));
        }

        struct Counting;

        // SAFETY: every call is passed on to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc(layout) };
                if !p.is_null() {
                    add(layout.size());
                }
                p
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc_zeroed(layout) };
                if !p.is_null() {
                    add(layout.size());
                }
                p
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                unsafe { System.dealloc(ptr, layout) };
                sub(layout.size());
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let p = unsafe { System.realloc(ptr, layout, new_size) };
                if !p.is_null() {
                    sub(layout.size());
                    add(new_size);
                }
                p
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;

        /// Runs `f` and returns what it returned and the most it held allocated at once.
        pub fn during<R>(f: impl FnOnce() -> R) -> (R, usize) {
            let base = LIVE.with(Cell::get);
            PEAK.with(|p| p.set(base));
            let r = f();
            let peak = PEAK.with(Cell::get);
            (r, peak.saturating_sub(base).max(0) as usize)
        }
    }

    /// Templates whose output would be hundreds of MB, and one of 1 MB that fits the fuel.
    const BOMBS: [(&str, &str); 7] = [
        ("repetition", r#"{{ "x" * 400000000 }}"#),
        (
            "repetition in a loop",
            r#"{% for i in range(100) %}{{ "y" * 5000000 }}{% endfor %}"#,
        ),
        (
            "nested replace",
            r#"{{ "xxxxxxxxxx" | replace("x", "xxxxxxxxxx") | replace("x", "xxxxxxxxxx") | replace("x", "xxxxxxxxxx") | replace("x", "xxxxxxxxxx") | replace("x", "xxxxxxxxxx") | replace("x", "xxxxxxxxxx") | replace("x", "xxxxxxxxxx") | replace("x", "xxxxxxxxxx") }}"#,
        ),
        (
            "join of a big list",
            r#"{{ range(100000) | join("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz") }}"#,
        ),
        (
            "join of a repeated list",
            r#"{{ (range(100000) | list * 1000) | join(",") }}"#,
        ),
        (
            "concatenation in a loop",
            r#"{% set s = namespace(v="xxxxxxxx") %}{% for i in range(60) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v }}"#,
        ),
        ("one megabyte", r#"{{ "y" * 1000000 }}"#),
    ];

    /// Renders one bomb, returning its error, how long it took and the peak it allocated.
    fn detonate(what: &str, f: impl FnOnce() -> Option<String>) -> String {
        let started = std::time::Instant::now();
        let (err, peak) = peak::during(f);
        let took = started.elapsed();
        eprintln!("{what}: {took:?}, peak {peak} bytes, {err:?}");
        let err = err.unwrap_or_else(|| panic!("{what} rendered"));
        assert!(
            took < std::time::Duration::from_secs(1),
            "{what} took {took:?}"
        );
        // The fuel bounds what a render builds (50,000 x 64 bytes), the writer what it prints.
        assert!(peak < 4 << 20, "{what} held {peak} bytes at once");
        err
    }

    /// The error of a bomb: out of fuel or past the output limit; the megabyte one by the limit.
    fn refused(what: &str, e: &str) {
        assert!(
            e.contains("fuel") || e.contains("rendered more than"),
            "{e}"
        );
        if what == "one megabyte" {
            assert!(
                e.contains(&format!("rendered more than {MAX_OUTPUT_BYTES} bytes")),
                "{e}"
            );
        }
    }

    #[test]
    fn templates_that_would_render_hundreds_of_megabytes_are_refused_at_once() {
        for (what, bomb) in BOMBS {
            let fields: [(&str, EventTemplate); 3] = [
                ("spec.template.summary", spec(bomb)),
                ("spec.template.customDetails.x", {
                    let mut s = spec("ok");
                    s.custom_details.insert("x".into(), bomb.into());
                    s
                }),
                ("spec.template.links[0].href", {
                    let mut s = spec("ok");
                    s.links[0].href = bomb.into();
                    s
                }),
            ];
            for (field, spec) in fields {
                let e = detonate(&format!("{what} as {field}"), || {
                    Templates::check(&spec).err().map(|e| e.to_string())
                });
                assert!(e.contains(field), "{e}");
                refused(what, &e);
            }
            for key in [SUMMARY_ANNOTATION, "ilert.com/details.x"] {
                let e = detonate(&format!("{what} as {key}"), || {
                    let (r, _, warnings) =
                        from_annotations([(key, bomb)].into_iter(), &sample_context());
                    assert_eq!(r, Rendered::default());
                    warnings.into_iter().next()
                });
                assert!(e.contains(key), "{e}");
                refused(what, &e);
            }
        }
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
