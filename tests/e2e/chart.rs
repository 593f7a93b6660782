//! The Helm chart: lint, render with several value sets, server-side dry-run, schema errors, CRD
//! drift, and least-privilege RBAC proven with SelfSubjectAccessReview as the chart's identity.

use std::process::Command;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::{Client, Config};

use crate::support::*;

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/ilert-rollout-controller"
);

fn helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("helm"))
        .args(args)
        .output()
        .expect("helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const VALUE_SETS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    (
        "existing Secret",
        &[
            "--set",
            "ilert.existingSecret=team-key",
            "--set",
            "pipeline.create=true",
        ],
    ),
    (
        "quick start",
        &[
            "--set",
            "ilert.integrationKey=ilapid-quickstart",
            "--set",
            "pipeline.create=true",
            "--set",
            "clusterName=prod-eu",
        ],
    ),
    (
        "monitoring and network policy on",
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "extraEnv[0].name=HTTPS_PROXY",
            "--set",
            "extraEnv[0].value=http://proxy:3128",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
        ],
    ),
];

#[test]
fn the_chart_lints_and_renders_with_every_value_set() {
    for (name, values) in VALUE_SETS {
        let mut lint = vec!["lint", CHART];
        lint.extend_from_slice(values);
        let (ok, out) = helm(&lint);
        assert!(ok, "helm lint ({name}): {out}");
        let mut template = vec!["template", "irc", CHART, "-n", "ilert-system"];
        template.extend_from_slice(values);
        let (ok, out) = helm(&template);
        assert!(ok, "helm template ({name}): {out}");
        assert!(out.contains("kind: ClusterRole"), "{name}");
        assert!(
            out.contains("readOnlyRootFilesystem: true") && out.contains("RuntimeDefault"),
            "{name}"
        );
        assert!(
            out.contains("app.kubernetes.io/name: ilert-rollout-controller"),
            "{name}"
        );
    }
    let (_, quick) = helm(&[
        "template",
        "irc",
        CHART,
        "--set",
        "ilert.integrationKey=ilapid-quickstart",
        "--set",
        "pipeline.create=true",
    ]);
    assert!(quick.contains("kind: IlertPipeline") && quick.contains("namespaceSelector:"));
    let (_, monitoring) = helm(&[
        "template",
        "irc",
        CHART,
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    ]);
    assert!(
        monitoring.contains("kind: ServiceMonitor") && monitoring.contains("kind: NetworkPolicy")
    );
}

#[test]
fn wrong_values_fail_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=-1"], "replicaCount"),
        (&["--set", "logFormat=xml"], "logFormat"),
        (&["--set", "apiUrl=api.ilert.com"], "apiUrl"),
        (&["--set", "rateLimitPerMinute=0"], "rateLimitPerMinute"),
        (&["--set", "pipeline.create=true"], "ilert.integrationKey"),
        (&["--set", "unknownValue=1"], "unknownValue"),
        (
            &["--set", "prometheusRule.notReadyFor=ten minutes"],
            "notReadyFor",
        ),
        (&["--set", "grafanaDashboard.labelz.a=b"], "labelz"),
    ];
    for (values, needle) in cases {
        let mut args = vec!["template", "irc", CHART];
        args.extend_from_slice(values);
        let (ok, out) = helm(&args);
        assert!(!ok, "{values:?} was accepted");
        assert!(
            out.contains(needle),
            "the error for {values:?} does not name {needle}: {out}"
        );
    }
}

#[test]
fn the_chart_holds_the_generated_crd() {
    let chart =
        std::fs::read_to_string(format!("{CHART}/crds/ilert.com_ilertpipelines.yaml")).unwrap();
    let top =
        std::fs::read_to_string(format!("{REPO}/crds/ilert.com_ilertpipelines.yaml")).unwrap();
    assert_eq!(
        chart, top,
        "charts/.../crds drifted from crds/: run `make crds`"
    );
}

#[tokio::test]
async fn the_api_server_accepts_the_rendered_chart() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "chart-dry").await;
    for (name, values) in &VALUE_SETS[..3] {
        let mut args = vec!["install", "irc", CHART, "-n", &ns.name, "--dry-run=server"];
        args.extend_from_slice(values);
        let (ok, out) = helm(&args);
        assert!(ok, "server dry-run ({name}): {out}");
    }
}

async fn allowed(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview");
    r.status.map(|s| s.allowed).unwrap_or(false)
}

#[tokio::test]
async fn the_chart_identity_is_read_only_towards_workloads() {
    let admin = client().await;
    let ns = TestNamespace::new(&admin, "rbac").await;
    let kubeconfig = chart_identity(&ns.name);
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let other = Some("default");
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        for resource in ["deployments", "replicasets", "statefulsets", "daemonsets"] {
            assert!(
                !allowed(&client, verb, "apps", resource, other).await,
                "may {verb} {resource}"
            );
        }
    }
    // Argo Rollouts: its Rollouts are read, never changed (no promote, abort or undo), and
    // nothing else of its group is read.
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !allowed(&client, verb, "argoproj.io", "rollouts", other).await,
            "may {verb} rollouts"
        );
    }
    for resource in ["analysisruns", "experiments", "applications"] {
        assert!(
            !allowed(&client, "list", "argoproj.io", resource, other).await,
            "may list argoproj.io {resource}"
        );
    }
    for verb in ["list", "watch", "create", "update", "patch", "delete"] {
        assert!(
            !allowed(&client, verb, "", "secrets", other).await,
            "may {verb} secrets"
        );
    }
    assert!(
        !allowed(&client, "update", "ilert.com", "ilertpipelines", other).await,
        "may change pipeline specs"
    );
    assert!(
        !allowed(&client, "create", "", "configmaps", other).await,
        "may write ConfigMaps outside its namespace"
    );
    assert!(
        !allowed(&client, "create", "coordination.k8s.io", "leases", other).await,
        "may take Leases outside its namespace"
    );
    // What it needs, and no more.
    assert!(allowed(&client, "watch", "apps", "deployments", other).await);
    assert!(allowed(&client, "watch", "argoproj.io", "rollouts", other).await);
    assert!(allowed(&client, "get", "", "secrets", other).await);
    assert!(
        allowed(
            &client,
            "patch",
            "ilert.com",
            "ilertpipelines/status",
            other
        )
        .await
    );
    assert!(allowed(&client, "create", "events.k8s.io", "events", other).await);
    assert!(allowed(&client, "patch", "", "configmaps", Some(&ns.name)).await);
    assert!(
        allowed(
            &client,
            "patch",
            "coordination.k8s.io",
            "leases",
            Some(&ns.name)
        )
        .await
    );
}
