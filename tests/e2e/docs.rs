//! README's reference tables match what the binary, the CRD and the metrics really expose.

use std::collections::BTreeSet;
use std::process::Command;

use ilert_rollout_controller::metrics::Metrics;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::support::REPO;
use ilert_rollout_controller::pipeline::IlertPipeline;

fn readme() -> String {
    std::fs::read_to_string(format!("{REPO}/README.md")).unwrap()
}

/// First cells (inside backticks) of the table rows whose first cell starts with `prefix`.
fn documented(prefix: &str) -> BTreeSet<String> {
    readme()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|c| c.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn assert_same(what: &str, documented: BTreeSet<String>, actual: BTreeSet<String>) {
    let missing: Vec<_> = actual.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&actual).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README {what}: undocumented {missing:?}, documented but absent {stale:?}"
    );
}

#[test]
fn documented_flags_and_environment_variables_match_the_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_ilert-rollout-controller"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: BTreeSet<String> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| format!("--{}", l.split([' ', '<']).next().unwrap()))
        .filter(|f| f != "--help")
        .collect();
    assert!(flags.len() >= 10, "{help}");
    assert_same("flags", documented("--"), flags);
    let envs: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|s| s.split('=').next().unwrap().to_string())
        .collect();
    let readme = readme();
    for env in envs {
        assert!(
            readme.contains(&format!("| `{env}` |")),
            "README does not document {env}"
        );
    }
}

/// Leaf paths of the CRD schema under `spec` and `status` (selectors and conditions are leaves).
fn schema_paths(prefix: &str, schema: &Value, out: &mut BTreeSet<String>) {
    let leaf = [
        "spec.namespaceSelector",
        "spec.selector",
        "status.conditions",
    ];
    match schema.get("properties").and_then(Value::as_object) {
        Some(props) if !leaf.contains(&prefix) => {
            for (k, v) in props {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                schema_paths(&p, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn documented_fields_match_the_crd() {
    let crd = serde_json::to_value(IlertPipeline::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut paths = BTreeSet::new();
    schema_paths("spec", &schema["spec"], &mut paths);
    schema_paths("status", &schema["status"], &mut paths);
    let mut docs = documented("spec.");
    docs.extend(documented("status."));
    assert_same("IlertPipeline fields", docs, paths);
}

#[test]
fn documented_metrics_match_the_registry() {
    let m = Metrics::default();
    // Labelled families show only once they have a child.
    m.event("Completed", "sent").inc();
    m.request("accepted");
    m.error(ilert_rollout_controller::metrics::Failure::Watch);
    m.decided("workload", 1);
    m.kube_request("GET", "/api/v1/namespaces/ns/secrets/s", None);
    m.task_restart("sender");
    let pipeline = ilert_rollout_controller::metrics::PipelineLabels {
        pipeline: "ns/p".into(),
    };
    for gauge in [
        &m.pending,
        &m.ledger_bytes,
        &m.ledger_unstored,
        &m.pipeline_ready,
    ] {
        gauge.get_or_create(&pipeline).set(0);
    }
    let text = m.encode();
    let actual: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut it = l.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            }
        })
        .collect();
    assert_same("metrics", documented("ilert_rollout_"), actual);
}

#[test]
fn documented_annotations_are_the_ones_the_controller_reads() {
    let docs = documented("ilert.com/");
    let actual: BTreeSet<String> = [
        ilert_rollout_controller::domain::keys::IGNORE_ANNOTATION,
        ilert_rollout_controller::domain::keys::TEST_EVENT_ANNOTATION,
        ilert_rollout_controller::domain::keys::SUMMARY_ANNOTATION,
        ilert_rollout_controller::domain::keys::LINKS_ANNOTATION,
        &format!(
            "{}<key>",
            ilert_rollout_controller::domain::keys::DETAILS_ANNOTATION_PREFIX
        ),
        ilert_rollout_controller::domain::keys::USER_EMAIL_ANNOTATION,
        ilert_rollout_controller::domain::keys::COMMIT_KEYS[0],
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_same("annotations", docs, actual);
}

#[test]
fn the_limitations_do_not_deny_a_kind_that_is_reported() {
    let readme = readme();
    let limitations = readme
        .split("\nLimitations: ")
        .nth(1)
        .and_then(|s| s.split("\n\n").next())
        .expect("README has a Limitations paragraph");
    let reported = limitations
        .split(';')
        .next()
        .unwrap_or_default()
        .replace('\n', " ");
    for kind in ilert_rollout_controller::domain::rollout::Kind::ALL {
        assert!(
            reported.contains(&format!("{}s", kind.as_str())),
            "README's limitations do not say that {kind}s are reported: {reported}"
        );
    }
    assert!(!reported.contains("only"), "{reported}");
}
