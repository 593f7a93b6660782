//! The files in examples/ stay valid: each is applied to the real control plane.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

use crate::support::*;
use crate::*;

#[tokio::test]
async fn every_example_applies_to_the_control_plane() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "examples").await;
    let dir = format!("{REPO}/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples/ holds {} files", files.len());
    for f in &files {
        let out = Command::new(tool("kubectl"))
            .args(["apply", "-n", &ns.name, "-f"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pipelines: Api<IlertPipeline> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        pipelines
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        Duration::from_secs(60),
        "the example Deployment rolled out",
        || async { rollout_complete(&deployments.get("checkout").await.ok()?).then_some(()) },
    )
    .await;
}
