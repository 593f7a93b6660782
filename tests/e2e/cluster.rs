//! The local control plane itself behaves like a real cluster: the genuine Deployment controller
//! rolls out, numbers revisions and reports completion.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

use crate::support::*;
use crate::*;

#[tokio::test]
async fn a_deployment_rolls_out_and_a_new_image_becomes_revision_two() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cluster").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, "web", &deployment("web", "nginx:1.25", 3)).await;
    let d = wait_revision_complete(&api, "web", "1").await;
    assert_eq!(d.status.as_ref().unwrap().available_replicas, Some(3));

    apply(&api, "web", &deployment("web", "nginx:1.26", 3)).await;
    let d = wait_revision_complete(&api, "web", "2").await;
    let image = d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("nginx:1.26"));
    // The same rule `kubectl rollout status` applies, by kubectl itself.
    let out = run(
        &tool("kubectl"),
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            &ns.name,
            "--timeout=30s",
        ],
    );
    assert!(out.contains("successfully rolled out"), "{out}");
}
