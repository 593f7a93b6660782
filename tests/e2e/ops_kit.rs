//! The chart's operations kit: the PrometheusRule checked and unit-tested with promtool, the
//! dashboard ConfigMap, topology spread and resources, `kubectl explain` teaching every field,
//! and the default image naming the repository the release workflow publishes to.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/ilert-rollout-controller"
);

fn helm_template(values: &[&str]) -> String {
    let mut args = vec!["template", "irc", CHART, "-n", "ilert-system"];
    args.extend_from_slice(values);
    run(&tool("helm"), &args)
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|d: &serde_json::Value| !d.is_null())
        .collect()
}

/// A checker tests/cluster/build.sh built into the cache (`make test` builds them first).
fn checker(var: &str, name: &str) -> String {
    let out = Command::new(format!("{REPO}/tests/cluster/build.sh"))
        .arg("print-bin-dirs")
        .output()
        .expect("tests/cluster/build.sh");
    let dirs = String::from_utf8_lossy(&out.stdout).into_owned();
    let dir = dirs
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("build.sh print-bin-dirs names no {var}"));
    let path = format!("{dir}/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run tests/cluster/build.sh (make test does)"
    );
    path
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rendered = helm_template(&[
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ]);
    let rule = documents(&rendered).remove(0);
    assert_eq!(rule["kind"], "PrometheusRule");
    let dir = std::path::PathBuf::from(REPO).join("target/e2e-logs/alerts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rules.yaml"),
        serde_yaml_ng::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        format!("{REPO}/tests/alerts/rules.test.yaml"),
        dir.join("rules.test.yaml"),
    )
    .unwrap();
    let promtool = checker("PROMTOOL_BIN", "promtool");
    for args in [
        &["check", "rules", "rules.yaml"][..],
        &["test", "rules", "rules.test.yaml"][..],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        eprintln!("promtool {}: {}", args.join(" "), text.trim());
    }
    // Every alert of the rule file has a unit test.
    let tests = std::fs::read_to_string(dir.join("rules.test.yaml")).unwrap();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let name = r["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - exp_labels"
            )),
            "no test where {name} fires"
        );
    }
    // Opt-in: nothing by default.
    assert!(!helm_template(&[]).contains("kind: PrometheusRule"));
}

#[test]
fn the_dashboard_configmap_carries_the_sidecar_label_and_valid_json() {
    assert!(!helm_template(&[]).contains("-dashboard"));
    let rendered = helm_template(&[
        "--set",
        "grafanaDashboard.enabled=true",
        "--show-only",
        "templates/dashboard.yaml",
    ]);
    let cm = documents(&rendered).remove(0);
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = cm["data"]["ilert-rollout-controller.json"]
        .as_str()
        .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for needle in [
        "outcome",
        "Pending",
        "delay",
        "Requests",
        "rate limit",
        "Leader",
        "memory",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needle)),
            "no panel about {needle}: {titles:?}"
        );
    }
    // Which metrics the queries name is checked against a live scrape in image.rs.
}

#[test]
fn two_replicas_spread_over_nodes_with_resources_from_the_benchmark() {
    let deploy = documents(&helm_template(&[
        "--show-only",
        "templates/deployment.yaml",
    ]))
    .remove(0);
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 2);
    let spread = &spec["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["maxSkew"], 1);
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "irc"
    );
    let resources = &spec["containers"][0]["resources"];
    // docs/benchmarks.md: 31 MiB resident with 10,000 Deployments, peak 39 MiB (start-up).
    assert_eq!(resources["requests"]["memory"], "64Mi");
    assert_eq!(resources["limits"]["memory"], "160Mi");
    let custom = documents(&helm_template(&[
        "--show-only",
        "templates/deployment.yaml",
        "--set",
        "topologySpreadConstraints[0].maxSkew=2",
        "--set",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "--set",
        "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
    ]))
    .remove(0);
    let spread = &custom["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert!(spread["labelSelector"]["matchLabels"].is_object());
}

#[test]
fn the_default_image_is_the_one_the_release_workflow_publishes() {
    let values: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap())
            .unwrap();
    let release =
        std::fs::read_to_string(format!("{REPO}/.github/workflows/release.yaml")).unwrap();
    let chart = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap();
    // GHCR names an image after the repository's owner, lower-cased.
    let owner = chart
        .lines()
        .find_map(|l| l.strip_prefix("sources: [https://github.com/"))
        .and_then(|l| l.split('/').next())
        .expect("Chart.yaml sources names the GitHub repository")
        .to_lowercase();
    assert_eq!(
        values["image"]["repository"],
        format!("ghcr.io/{owner}/ilert-rollout-controller")
    );
    assert!(release.contains("image=ghcr.io/$owner/ilert-rollout-controller"));
    assert!(release.contains("platforms: linux/amd64,linux/arm64"));
    assert!(release.contains("cosign sign --yes"));
    assert!(release.contains("helm push"));
}

#[tokio::test]
async fn kubectl_explain_describes_every_field_of_the_spec() {
    let client = client().await;
    install_crd(&client).await;
    let args = ["explain", "ilertpipeline.spec", "--recursive"];
    // A CRD just established is in the OpenAPI document kubectl reads a moment later.
    eventually(
        Duration::from_secs(30),
        "kubectl explain finds the CRD",
        || async {
            let ok = Command::new(tool("kubectl"))
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then_some(())
        },
    )
    .await;
    let text = run(&tool("kubectl"), &args);
    assert!(text.contains("integrationKeySecretRef"), "{text}");
    // --recursive lists names only; each one's own explain has its DESCRIPTION.
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut fields = Vec::new();
    let body = text.split("FIELDS:").nth(1).expect("FIELDS");
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let indent = line.len() - line.trim_start().len();
        let name = line.split_whitespace().next().unwrap().to_string();
        if name.ends_with(':') {
            continue; // "enum: A, B" under a field: its allowed values, not a field
        }
        while path.last().is_some_and(|(i, _)| *i >= indent) {
            path.pop();
        }
        path.push((indent, name));
        fields.push(
            path.iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join("."),
        );
    }
    assert!(fields.len() > 10, "{fields:?}");
    let mut missing = Vec::new();
    for f in &fields {
        let out = Command::new(tool("kubectl"))
            .args(["explain", &format!("ilertpipeline.spec.{f}")])
            .output()
            .expect("kubectl");
        let text = String::from_utf8_lossy(&out.stdout);
        let described = text
            .split("DESCRIPTION:")
            .nth(1)
            .map(|d| d.split("FIELDS:").next().unwrap_or(d).trim())
            .is_some_and(|d| !d.is_empty() && d != "<empty>");
        if !described {
            missing.push(f.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}
