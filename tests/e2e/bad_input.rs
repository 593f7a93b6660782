//! Bad input of every kind: pipelines the CRD schema must refuse (each with a message naming the
//! field), pipelines that pass the schema but cannot work (each with a Ready=False reason that says
//! what to do), and workloads of odd shapes. Nothing crashes, and the well-formed workloads beside
//! them are all reported.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, PostParams, ValidationDirective};

use crate::support::*;
use crate::*;

fn pipeline_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::erase::<IlertPipeline>(&()),
    )
}

#[tokio::test]
async fn the_crd_schema_refuses_malformed_pipelines_naming_the_field() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "schema").await;
    let long = "a".repeat(254);
    let secret = |r: Value| json!({"integrationKeySecretRef": r});
    let ok = || json!({"name": "ilert"});
    let with = |field: &str, v: Value| {
        let mut spec = secret(ok());
        spec[field] = v;
        spec
    };
    let expr = |e: Value| with("selector", json!({"matchExpressions": [e]}));
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "integrationKeySecretRef"),
        (json!("ilert"), "spec"),
        (
            json!({"integrationKeySecretRef": "ilert"}),
            "integrationKeySecretRef",
        ),
        (secret(json!({})), "name"),
        (secret(json!({"name": ""})), "name"),
        (secret(json!({"name": null})), "name"),
        (secret(json!({"name": "Ilert"})), "name"),
        (secret(json!({"name": "ilert_key"})), "name"),
        (secret(json!({"name": "-ilert"})), "name"),
        (secret(json!({"name": "ilert-"})), "name"),
        (secret(json!({"name": "team/ilert"})), "name"),
        (secret(json!({"name": long})), "name"),
        (secret(json!({"name": 5})), "name"),
        (secret(json!({"name": "ilert", "key": ""})), "key"),
        (secret(json!({"name": "ilert", "key": "a/b"})), "key"),
        (secret(json!({"name": "ilert", "key": "has space"})), "key"),
        (secret(json!({"name": "ilert", "key": long})), "key"),
        (secret(json!({"name": "ilert", "key": true})), "key"),
        (with("suspend", json!("yes")), "suspend"),
        (with("suspend", json!(1)), "suspend"),
        (with("selector", json!("app=web")), "selector"),
        (
            with("selector", json!({"matchLabels": "app"})),
            "matchLabels",
        ),
        (
            with("selector", json!({"matchLabels": {"app": 1}})),
            "matchLabels",
        ),
        (
            with("selector", json!({"matchExpressions": {"key": "app"}})),
            "matchExpressions",
        ),
        (expr(json!({"operator": "In", "values": ["web"]})), "key"),
        (expr(json!({"key": "app"})), "operator"),
        (
            expr(json!({"key": "app", "operator": "In", "values": "web"})),
            "values",
        ),
        (
            expr(json!({"key": "app", "operator": "In", "values": [1]})),
            "values",
        ),
        (with("namespaceSelector", json!("all")), "namespaceSelector"),
        (with("workloads", json!([])), "workloads"),
        (with("workloads", json!(["CronJob"])), "workloads"),
        (with("template", json!({"summary": ""})), "template.summary"),
        (
            with("template", json!({"links": [{"text": "no href"}]})),
            "href",
        ),
        (
            with("template", json!({"customDetails": {"team": 1}})),
            "customDetails",
        ),
        (
            with("alerts", json!({"priority": "HIGH"})),
            "alertSourceKeySecretRef",
        ),
        (
            with(
                "alerts",
                json!({"alertSourceKeySecretRef": {"name": "ilert-alerts"}, "priority": "URGENT"}),
            ),
            "priority",
        ),
        (
            with("namespaceSelector", json!({"matchLabels": ["team"]})),
            "matchLabels",
        ),
    ];
    let api = pipeline_api(&client, &ns.name);
    let refuse = |name: String, spec: Value, strict: bool| {
        let api = api.clone();
        async move {
            let body = json!({
                "apiVersion": "ilert.com/v1alpha1", "kind": "IlertPipeline",
                "metadata": {"name": name}, "spec": spec,
            });
            let result = if strict {
                let mut pp = PatchParams::apply("e2e-tests").force();
                pp.field_validation = Some(ValidationDirective::Strict);
                api.patch(&name, &pp, &Patch::Apply(&body)).await
            } else {
                let obj: DynamicObject = serde_json::from_value(body.clone()).unwrap();
                api.create(&PostParams::default(), &obj).await
            };
            match result {
                Ok(_) => panic!("the API server accepted an invalid pipeline: {body}"),
                Err(kube::Error::Api(s)) => s,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let mut n = 0;
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let s = refuse(format!("bad-{i}"), spec.clone(), false).await;
        assert_eq!(s.code, 422, "{spec}: {s:?}");
        assert!(
            s.message.contains(field),
            "{spec}: the message does not name {field}: {}",
            s.message
        );
        n += 1;
    }
    // Unknown fields (a Secret in another namespace, a webhook URL) are refused, not silently dropped.
    for (i, (spec, field)) in [
        (
            secret(json!({"name": "ilert", "namespace": "kube-system"})),
            "namespace",
        ),
        (
            with("webhookUrl", json!("https://example.invalid")),
            "webhookUrl",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let s = refuse(format!("unknown-{i}"), spec.clone(), true).await;
        assert!(s.message.contains(field), "{spec}: {}", s.message);
        n += 1;
    }
    // A name the API server itself refuses.
    let s = refuse("Bad_Name".into(), secret(ok()), false).await;
    assert!(
        s.message.contains("metadata.name") || s.message.contains("Bad_Name"),
        "{}",
        s.message
    );
    n += 1;
    eprintln!("{n} malformed pipelines refused at admission");
    assert!(n >= 40);
}

/// Pipelines the schema accepts but that cannot work: each gets Ready=False with a reason and a
/// message that says what to do, an Event, and no event leaves for it; the one good pipeline
/// beside them delivers.
#[tokio::test]
async fn pipelines_that_cannot_work_say_why_and_do_not_disturb_the_good_one() {
    let mut w = World::new("wrong", true, None, &[]).await;
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.ns.name);
    create_secret(&w.client, &w.ns.name, "no-key", "otherKey", "x").await;
    create_secret(&w.client, &w.ns.name, "empty-key", "integrationKey", "").await;
    create_secret(&w.client, &w.ns.name, "blank-key", "integrationKey", " \n").await;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "unknown-secret",
            json!({"integrationKeySecretRef": {"name": "absent"}}),
            "SecretNotFound",
            "not found",
        ),
        (
            "missing-key",
            json!({"integrationKeySecretRef": {"name": "no-key"}}),
            "KeyNotFound",
            "has no non-empty key integrationKey",
        ),
        (
            "empty-key",
            json!({"integrationKeySecretRef": {"name": "empty-key"}}),
            "KeyNotFound",
            "has no non-empty key",
        ),
        (
            "blank-key",
            json!({"integrationKeySecretRef": {"name": "blank-key"}}),
            "KeyNotFound",
            "has no non-empty key",
        ),
        (
            "other-key-name",
            json!({"integrationKeySecretRef": {"name": "ilert", "key": "apiKey"}}),
            "KeyNotFound",
            "spec.integrationKeySecretRef.key",
        ),
        (
            "bad-operator",
            json!({"integrationKeySecretRef": {"name": "ilert"}, "selector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["a"]}]}}),
            "InvalidSelector",
            "spec.selector is invalid",
        ),
        (
            "bad-ns-operator",
            json!({"integrationKeySecretRef": {"name": "ilert"}, "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Like"}]}}),
            "InvalidSelector",
            "spec.namespaceSelector is invalid",
        ),
        (
            "suspended",
            json!({"integrationKeySecretRef": {"name": "ilert"}, "suspend": true, "selector": {"matchLabels": {"none": "x"}}}),
            "Suspended",
            "spec.suspend is true",
        ),
    ];
    for (name, spec, _, _) in &cases {
        create_pipeline(&w.pipelines, &w.ns.name, name, spec.clone()).await;
    }
    // A pipeline outside the trusted namespaces reaching across.
    let other = TestNamespace::new(&w.client, "wrong-tenant").await;
    create_secret(
        &w.client,
        &other.name,
        "ilert",
        "integrationKey",
        "ilapid-tenant",
    )
    .await;
    let tenant_pipelines: Api<IlertPipeline> = Api::namespaced(w.client.clone(), &other.name);
    create_pipeline(
        &tenant_pipelines,
        &w.ns.name,
        "reach",
        json!({"integrationKeySecretRef": {"name": "ilert"}, "namespaceSelector": {}}),
    )
    .await;
    // A selector matching nothing: Ready, but it says it selects no workload.
    create_pipeline(&w.pipelines, &w.ns.name, "matches-nothing", json!({"integrationKeySecretRef": {"name": "ilert"}, "selector": {"matchLabels": {"tier": "does-not-exist"}}})).await;

    apply(&w.deployments, "web", &deployment("web", "nginx:1.25", 1)).await;
    let condition = |api: Api<IlertPipeline>, name: String| async move {
        let p = api.get(&name).await.ok()?;
        let c = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        Some((c.status, c.reason, c.message))
    };
    for (name, _, reason, hint) in &cases {
        let (status, message) = eventually(
            Duration::from_secs(60),
            &format!("{name}: Ready=False {reason}"),
            || async {
                let (status, r, message) = condition(w.pipelines.clone(), name.to_string()).await?;
                (r == *reason).then_some((status, message))
            },
        )
        .await;
        assert_eq!(status, "False", "{name}");
        assert!(message.contains(hint), "{name}: {message}");
    }
    let (_, _, message) = eventually(
        Duration::from_secs(60),
        "reach: NamespaceSelectorNotAllowed",
        || async {
            condition(tenant_pipelines.clone(), "reach".into())
                .await
                .filter(|(_, r, _)| r == "NamespaceSelectorNotAllowed")
        },
    )
    .await;
    assert!(message.contains("trusted namespaces"), "{message}");
    let (status, _, _) = eventually(
        Duration::from_secs(60),
        "matches-nothing: Ready",
        || async { condition(w.pipelines.clone(), "matches-nothing".into()).await },
    )
    .await;
    assert_eq!(status, "True");
    let p = w.pipelines.get("matches-nothing").await.unwrap();
    assert_eq!(p.status.unwrap().selected_workloads, 0);

    // The good pipeline delivers; the broken ones send nothing (one key, one event).
    let events = w.ilert.wait_accepted(1, EVENT_WAIT).await;
    assert_eq!(events[0]["customDetails"]["name"], "web");
    assert_no_more_than(&w.ilert, 1, Duration::from_secs(3)).await;

    // Fixing a pipeline is enough: the key lands, the waiting event goes out with it.
    secrets
        .patch(
            "no-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"integrationKey": "ilapid-fixed\n"}})),
        )
        .await
        .unwrap();
    let events = w.ilert.wait_accepted(2, Duration::from_secs(60)).await;
    assert_eq!(
        events[1]["integrationKey"], "ilapid-fixed",
        "the trailing newline is not part of the key"
    );
    assert!(w.controller.exited().is_none(), "the controller exited");
    w.assert_key_never_leaked().await;
    w.ilert.assert_schema_valid();
}

fn named(name: &str, labels_app: &str, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": labels_app}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": labels_app}},
            "template": {"metadata": {"labels": {"app": labels_app}}, "spec": {"containers": containers}}
        }
    })
}

/// Workloads of odd shapes, side by side with ordinary ones: each is reported once (or, where it
/// cannot finish, not at all), payloads stay within ilert's schema, nothing crashes.
#[tokio::test]
async fn workloads_of_odd_shapes_are_reported_and_break_nothing() {
    let mut w = World::new("shapes", true, None, &["--rate-limit-per-minute", "1000"]).await;
    let mut expected: Vec<String> = Vec::new();
    let mut put = |name: &str| expected.push(name.to_string());

    let mut zero = deployment("zero", "nginx:1.25", 0);
    zero["spec"]["replicas"] = json!(0);
    apply(&w.deployments, "zero", &zero).await;
    put("zero");

    let mut huge = deployment("huge-annotations", "nginx:1.25", 1);
    huge["metadata"]["annotations"] = json!({
        "kubernetes.io/change-cause": "x".repeat(100_000),
        "example.com/blob": "y".repeat(100_000),
    });
    apply(&w.deployments, "huge-annotations", &huge).await;
    put("huge-annotations");

    let many: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("registry.example/team/app-{i}:1.{i}")}))
        .collect();
    apply(
        &w.deployments,
        "many-containers",
        &named("many-containers", "many-containers", json!(many)),
    )
    .await;
    put("many-containers");

    let digest = "nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000";
    apply(
        &w.deployments,
        "by-digest",
        &deployment("by-digest", digest, 1),
    )
    .await;
    put("by-digest");

    let long_name = format!("l{}", "o".repeat(240));
    apply(
        &w.deployments,
        &long_name,
        &named(
            &long_name,
            "long-name",
            json!([{"name": "app", "image": "nginx:1.25"}]),
        ),
    )
    .await;
    put(&long_name);

    let mut unicode = deployment("unicode", "nginx:1.25", 1);
    unicode["metadata"]["annotations"] =
        json!({"kubernetes.io/change-cause": "Grüße 🚀 \"quoted\" \\ back\nslash"});
    apply(&w.deployments, "unicode", &unicode).await;
    put("unicode");

    let mut labels = deployment("many-labels", "nginx:1.25", 1);
    for i in 0..100 {
        labels["metadata"]["labels"][format!("example.com/label-{i}")] = json!(format!("v{i}"));
    }
    apply(&w.deployments, "many-labels", &labels).await;
    put("many-labels");

    // Only an init container changes: a new revision, reported.
    let with_init = |image: &str| {
        let mut d = deployment("init-only", "nginx:1.25", 1);
        d["spec"]["template"]["spec"]["initContainers"] =
            json!([{"name": "migrate", "image": image}]);
        d
    };
    apply(&w.deployments, "init-only", &with_init("migrate:1")).await;
    put("init-only");

    // Deleted in the middle of its rollout: its first revision is reported, nothing else.
    apply(
        &w.deployments,
        "doomed",
        &deployment("doomed", "nginx:1.25", 1),
    )
    .await;
    put("doomed");

    let tally = eventually(
        Duration::from_secs(90),
        "every odd workload reported",
        || async {
            let t = Tally::of(&w.ilert.received());
            expected
                .iter()
                .all(|n| t.has(&w.ns.name, n, "1"))
                .then_some(t)
        },
    )
    .await;
    assert!(tally.duplicates().is_empty(), "{:?}", tally.duplicates());

    apply(&w.deployments, "init-only", &with_init("migrate:2")).await;
    apply(
        &w.deployments,
        "doomed",
        &deployment("doomed", "nginx:1.26", 1),
    )
    .await;
    w.deployments
        .delete("doomed", &Default::default())
        .await
        .unwrap();
    apply(
        &w.deployments,
        "after",
        &deployment("after", "nginx:1.25", 1),
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "init-only revision 2 and the workload beside them",
        || async {
            let t = Tally::of(&w.ilert.received());
            (t.has(&w.ns.name, "init-only", "2") && t.has(&w.ns.name, "after", "1")).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = Tally::of(&w.ilert.received());
    assert!(
        !tally.has(&w.ns.name, "doomed", "2"),
        "a deleted Deployment's unfinished rollout was reported"
    );
    assert!(tally.duplicates().is_empty(), "{:?}", tally.duplicates());

    // The payloads: huge values truncated to ilert's limits, all of them schema-valid.
    let huge_event = w
        .ilert
        .accepted()
        .into_iter()
        .find(|e| e["customDetails"]["name"] == "huge-annotations")
        .unwrap();
    let cause = huge_event["customDetails"]["changeCause"].as_str().unwrap();
    assert!(
        cause.chars().count() <= 1024,
        "change-cause of {} characters",
        cause.chars().count()
    );
    assert!(
        huge_event.to_string().len() < 8 * 1024,
        "{} bytes",
        huge_event.to_string().len()
    );
    assert!(w.controller.exited().is_none(), "the controller exited");
    w.ilert.assert_schema_valid();
}
