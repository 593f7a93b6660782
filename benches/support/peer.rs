//! The peer of `make bench`: kubewatch (built by `tests/cluster/build.sh peers` from the source
//! kept in the shared peers folder), watching Deployments in all namespaces and posting every
//! change to a local webhook, on the same control plane in the same run as the controller.
//!
//! What it asks of the API server is counted from the control plane's audit log, which records
//! the requests of its ServiceAccount (`bench-peer/kubewatch`) and nothing else (tests/cluster/up.sh).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};

use crate::support::{REPO, account_token, eventually, token_kubeconfig};
use crate::world::apply_as;

pub const USER: &str = "system:serviceaccount:bench-peer:kubewatch";

/// What the webhook received.
#[derive(Default)]
pub struct Hook {
    /// Per namespace: messages, and of them how many say a rollout finished.
    pub messages: HashMap<String, usize>,
    pub finished: HashMap<String, usize>,
    pub reasons: HashMap<String, usize>,
    pub last_at: Option<Instant>,
}

pub struct Peer {
    child: Child,
    pub pid: u32,
    pub hook: Arc<Mutex<Hook>>,
    dir: PathBuf,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let out = Command::new(format!("{REPO}/tests/cluster/build.sh"))
        .arg("print-bin-dirs")
        .output()
        .expect("tests/cluster/build.sh print-bin-dirs");
    let dirs = String::from_utf8_lossy(&out.stdout);
    let dir = dirs
        .lines()
        .find_map(|l| l.strip_prefix("KUBEWATCH_BIN="))
        .expect("KUBEWATCH_BIN in print-bin-dirs");
    let bin = PathBuf::from(dir).join("kubewatch");
    assert!(
        bin.exists(),
        "the peer is not built: {} is missing (make bench builds it: tests/cluster/build.sh peers)",
        bin.display()
    );
    bin
}

/// A message says a rollout finished when its text does: kubewatch's say what changed
/// (`Created`, `Updated`, `Deleted`), never whether the rollout is done.
fn says_finished(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["rolled out", "complete", "finished", "successfully"]
        .iter()
        .any(|w| t.contains(w))
}

/// The webhook's answer. By default 204 No Content: kubewatch never closes a response body, and
/// Go's client hands a connection back to its pool only once the body is read; an answer without
/// one is read at once, so kubewatch keeps one connection alive and delivers every message (its
/// best case). `BENCH_PEER_ANSWER=ok` answers `ok` and closes the connection, as webhooks that
/// answer with a body do: every message then leaves kubewatch a socket and two goroutines for
/// good, and past its descriptor limit (20,000 on the benchmark machine) its posts fail at
/// `socket()`, which costs it almost nothing, so its CPU figure is then that of part of the work.
fn answer(with_body: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    if with_body {
        ([(axum::http::header::CONNECTION, "close")], "ok").into_response()
    } else {
        axum::http::StatusCode::NO_CONTENT.into_response()
    }
}

/// The ServiceAccount kubewatch runs as, with read access to Deployments, and a kubeconfig with
/// its token.
async fn kubeconfig(client: &Client, dir: &std::path::Path) -> PathBuf {
    let ns: Api<Namespace> = Api::all(client.clone());
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench-peer"}});
    apply_as(&ns, "bench", "bench-peer", &body).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "bench-peer");
    let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kubewatch", "namespace": "bench-peer"}});
    apply_as(&sas, "bench", "kubewatch", &body).await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "bench-peer-kubewatch"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]}],
    });
    apply_as(&roles, "bench", "bench-peer-kubewatch", &body).await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "bench-peer-kubewatch"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bench-peer-kubewatch"},
        "subjects": [{"kind": "ServiceAccount", "name": "kubewatch", "namespace": "bench-peer"}],
    });
    apply_as(&bindings, "bench", "bench-peer-kubewatch", &body).await;
    let path = dir.join("kubeconfig");
    token_kubeconfig(
        &path,
        &account_token("bench-peer", "kubewatch", "24h"),
        "bench-peer",
    );
    path
}

impl Peer {
    /// Starts the webhook and kubewatch; returns once kubewatch's Deployment watch is open.
    pub async fn start(client: &Client, n: usize) -> Peer {
        let bin = binary();
        let dir = PathBuf::from(format!("{REPO}/target/bench/peer-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = kubeconfig(client, &dir).await;
        let hook: Arc<Mutex<Hook>> = Arc::default();
        let with_body = std::env::var("BENCH_PEER_ANSWER").is_ok_and(|v| v == "ok");
        let app = {
            let hook = hook.clone();
            axum::Router::new().fallback(axum::routing::post(
                move |axum::Json(body): axum::Json<Value>| {
                    let hook = hook.clone();
                    async move {
                        let meta = &body["eventmeta"];
                        let ns = meta["namespace"].as_str().unwrap_or("").to_string();
                        let text = body["text"].as_str().unwrap_or("");
                        let mut h = hook.lock().unwrap();
                        *h.messages.entry(ns.clone()).or_default() += 1;
                        if says_finished(text) {
                            *h.finished.entry(ns).or_default() += 1;
                        }
                        *h.reasons
                            .entry(meta["reason"].as_str().unwrap_or("").to_string())
                            .or_default() += 1;
                        h.last_at = Some(Instant::now());
                        answer(with_body)
                    }
                },
            ))
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        std::fs::write(
            dir.join(".kubewatch.yaml"),
            format!(
                "handler:\n  webhook:\n    url: \"http://127.0.0.1:{port}/\"\nresource:\n  deployment: true\nnamespace: \"\"\n"
            ),
        )
        .unwrap();
        assert!(
            audit_log().exists(),
            "{} is missing: the control plane was started without the audit log the peer is counted by (tests/cluster/down.sh, then up.sh)",
            audit_log().display()
        );
        let audit_before = audit_requests(true);
        let log = std::fs::File::create(dir.join("kubewatch.log")).unwrap();
        let child = Command::new(&bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("KW_CONFIG", &dir)
            .env("KUBECONFIG", &kubeconfig)
            .env("LISTEN_ADDRESS", "127.0.0.1:0")
            // Info: kubewatch logs a failed post at info level only (`logrus.Printf`).
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let pid = child.id();
        let peer = Peer {
            child,
            pid,
            hook,
            dir,
        };
        eventually(
            Duration::from_secs(120),
            "kubewatch watching Deployments",
            || async { (audit_requests(true) > audit_before).then_some(()) },
        )
        .await;
        peer
    }

    /// Messages about `namespaces` so far, and how many of them say a rollout finished.
    pub fn messages(&self, namespaces: &[String]) -> (usize, usize) {
        let h = self.hook.lock().unwrap();
        let sum = |m: &HashMap<String, usize>| namespaces.iter().filter_map(|n| m.get(n)).sum();
        (sum(&h.messages), sum(&h.finished))
    }

    /// The posts kubewatch logged as failed so far, and the first such error (it says so only in
    /// its log). With the webhook's empty answers there should be none; any would mean it
    /// delivered only part of its messages, and its CPU figure is then that of part of the work.
    pub fn failed_posts(&self) -> (usize, Option<String>) {
        let log = std::fs::read_to_string(self.dir.join("kubewatch.log")).unwrap_or_default();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("msg=\"Post \\\""))
            .collect();
        (failed.len(), failed.first().map(|l| l.to_string()))
    }

    /// Waits until no message arrived for `quiet` (kubewatch posts one at a time).
    pub async fn settle(&self, quiet: Duration, limit: Duration) {
        let start = Instant::now();
        loop {
            let last = self.hook.lock().unwrap().last_at;
            if last.is_none_or(|t| t.elapsed() >= quiet) || start.elapsed() > limit {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Requests of the peer's ServiceAccount in the audit log: watches (`watches = true`), or every
/// other request.
pub fn audit_requests(watches: bool) -> usize {
    // The control plane's logs sit beside its kubeconfig (tests/cluster/up.sh).
    let kubeconfig =
        std::env::var("KUBECONFIG").unwrap_or_else(|_| format!("{REPO}/target/cluster/kubeconfig"));
    let path = std::path::Path::new(&kubeconfig)
        .with_file_name("logs")
        .join("audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == USER)
        .filter(|e| (e["verb"] == "watch") == watches)
        // A watch is logged when its response starts; any other request once, when complete.
        .filter(|e| watches || e["stage"] == "ResponseComplete")
        .count()
}

/// The control plane's audit log: its logs sit beside its kubeconfig (tests/cluster/up.sh).
fn audit_log() -> PathBuf {
    let kubeconfig =
        std::env::var("KUBECONFIG").unwrap_or_else(|_| format!("{REPO}/target/cluster/kubeconfig"));
    std::path::Path::new(&kubeconfig)
        .with_file_name("logs")
        .join("audit.log")
}
