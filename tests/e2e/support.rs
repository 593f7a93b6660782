//! Test support: a client for the running control plane, throw-away namespaces, the fake ilert,
//! and the controller run as the real built binary.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Config, CustomResourceExt};
use serde_json::{Value, json};

use ilert_rollout_controller::pipeline::IlertPipeline;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A client for the control plane that `make cluster-up` / `make test` started. Fails loudly,
/// saying how to start one, when there is none.
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hint = "no Kubernetes control plane for the end-to-end tests: run `make test`, or `make cluster-up` and `export KUBECONFIG=$PWD/target/cluster/kubeconfig`";
    let path =
        std::env::var("KUBECONFIG").unwrap_or_else(|_| panic!("KUBECONFIG is not set; {hint}"));
    assert!(
        std::path::Path::new(&path).exists(),
        "KUBECONFIG={path} does not exist; {hint}"
    );
    let config = Config::infer()
        .await
        .unwrap_or_else(|e| panic!("cannot load KUBECONFIG={path}: {e}; {hint}"));
    let client = Client::try_from(config).expect("client");
    if let Err(e) = client.apiserver_version().await {
        panic!("the control plane in {path} does not answer ({e}); {hint}");
    }
    client
}

/// Installs (or updates) the IlertPipeline CRD from the Rust types and waits until it is served.
pub async fn install_crd(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = IlertPipeline::crd();
    let name = crd.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("e2e-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    eventually(Duration::from_secs(30), "CRD established", || async {
        let crd = api.get(&name).await.ok()?;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

/// Polls `f` every 100 ms until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static IDENTITIES: std::sync::OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> =
    std::sync::OnceLock::new();

fn lock_identities() -> std::sync::MutexGuard<'static, std::collections::HashMap<String, PathBuf>> {
    IDENTITIES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// kubectl or helm of the control plane the tests run against: beside its kubeconfig (up.sh links
/// them into `<instance>/bin`).
pub fn tool(name: &str) -> String {
    let kubeconfig =
        std::env::var("KUBECONFIG").unwrap_or_else(|_| format!("{REPO}/target/cluster/kubeconfig"));
    let dir = Path::new(&kubeconfig)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    dir.join("bin").join(name).to_string_lossy().into_owned()
}

pub fn release_name(ns: &str) -> String {
    format!("irc-{ns}")
}

/// The chart's ServiceAccount name for the test release in `ns`.
pub fn chart_service_account(ns: &str) -> String {
    release_account(&release_name(ns))
}

/// The chart's ServiceAccount name in release `release`.
pub fn release_account(release: &str) -> String {
    format!("{release}-ilert-rollout-controller")
}

/// A loopback port free right now (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` with `args`; panics with its output unless it succeeds. Returns its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs the Helm chart into `ns` (its RBAC, ServiceAccount; no pods) and returns a kubeconfig
/// that authenticates as the chart's ServiceAccount with a token from the TokenRequest API, so
/// the controller runs under exactly the chart's permissions. Once per namespace.
pub fn chart_identity(ns: &str) -> PathBuf {
    release_identity(ns, &release_name(ns))
}

/// As [`chart_identity`], for a release of its own name: a second release of the chart in the
/// same namespace has a ServiceAccount (and RBAC) of its own.
pub fn release_identity(ns: &str, release: &str) -> PathBuf {
    let id = format!("{ns}/{release}");
    if let Some(p) = lock_identities().get(&id) {
        return p.clone();
    }
    let helm = tool("helm");
    let kubectl = tool("kubectl");
    let chart = format!("{REPO}/charts/ilert-rollout-controller");
    run(
        &helm,
        &[
            "install",
            release,
            &chart,
            "-n",
            ns,
            "--skip-crds",
            "--set",
            "replicaCount=0",
            "--set",
            "podDisruptionBudget.enabled=false",
        ],
    );
    // Only the chart's RBAC and ServiceAccount are needed here: the test runs the controller
    // itself. The chart's own Deployment would be one more workload for the test's pipeline.
    run(
        &kubectl,
        &["delete", "deployment", &release_account(release), "-n", ns],
    );
    let token = account_token(ns, &release_account(release), "2h");
    let dir = PathBuf::from(REPO).join("target/e2e-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{ns}-{release}.kubeconfig"));
    token_kubeconfig(&path, &token, ns);
    lock_identities().insert(id, path.clone());
    path
}

/// A TokenRequest token of the chart's ServiceAccount in `ns`, valid for `duration` (`1h`).
pub fn chart_token(ns: &str, duration: &str) -> String {
    account_token(ns, &chart_service_account(ns), duration)
}

/// A TokenRequest token of ServiceAccount `ns/account`, valid for `duration` (`1h`).
pub fn account_token(ns: &str, account: &str, duration: &str) -> String {
    run(
        &tool("kubectl"),
        &["create", "token", account, "-n", ns, "--duration", duration],
    )
}

/// Writes to `path` a kubeconfig for the control plane of `KUBECONFIG` that authenticates with
/// `token` and defaults to `namespace`.
pub fn token_kubeconfig(path: &Path, token: &str, namespace: &str) {
    let admin = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let admin: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&admin).unwrap()).unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "controller", "user": {"token": token.trim()}}],
        "contexts": [{"name": "controller", "context": {"cluster": "local", "user": "controller", "namespace": namespace}}],
        "current-context": "controller",
    });
    std::fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
}

/// A namespace of its own for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("e2e".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // Pods need the default ServiceAccount, which the controller-manager creates.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        eventually(
            Duration::from_secs(30),
            "default ServiceAccount",
            || async { sa.get_opt("default").await.ok().flatten() },
        )
        .await;
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Every release installed here: their ClusterRoles outlive the namespace.
        let releases: Vec<String> = {
            let mut ids = lock_identities();
            let prefix = format!("{}/", self.name);
            let mine: Vec<String> = ids
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            mine.iter()
                .filter_map(|k| ids.remove(k).map(|_| k[prefix.len()..].to_string()))
                .collect()
        };
        for release in releases {
            let _ = Command::new(tool("helm"))
                .args(["uninstall", &release, "-n", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let kubectl = tool("kubectl");
        let _ = Command::new(kubectl)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub async fn create_secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {key: value},
    }))
    .unwrap();
    api.patch(
        name,
        &PatchParams::apply("e2e-tests").force(),
        &Patch::Apply(&secret),
    )
    .await
    .expect("secret");
}

/// What the fake ilert should answer next.
#[derive(Clone, Debug)]
pub enum Reply {
    Accept,
    Status(u16, Value),
    RateLimited {
        retry_after_secs: u64,
    },
    Hang(Duration),
    /// A redirect (`status` 3xx) to `location`, as a proxy in between or a hostile answer sends.
    Redirect {
        status: u16,
        location: String,
    },
    /// `status` with a body of `bytes` bytes, streamed in 64 KiB chunks (never held whole).
    Body {
        status: u16,
        bytes: usize,
    },
    /// 429 with this `Retry-After` value, whatever it is.
    RetryAfter {
        raw: String,
    },
}

impl Reply {
    /// The status this reply answers with (0: none yet, a hang).
    fn status(&self) -> u16 {
        match self {
            Reply::Accept => 202,
            Reply::Status(s, _)
            | Reply::Redirect { status: s, .. }
            | Reply::Body { status: s, .. } => *s,
            Reply::RateLimited { .. } | Reply::RetryAfter { .. } => 429,
            Reply::Hang(_) => 0,
        }
    }

    /// The answer of the replies both APIs give alike; None for the others.
    fn hostile(self) -> Option<Response> {
        Some(match self {
            Reply::Redirect { status, location } => (
                StatusCode::from_u16(status).unwrap(),
                [("location", location)],
            )
                .into_response(),
            Reply::Body { status, bytes } => {
                const CHUNK: usize = 64 * 1024;
                let chunk = axum::body::Bytes::from(vec![b'x'; CHUNK]);
                let chunks = (0..bytes.div_ceil(CHUNK)).map(move |i| {
                    let len = CHUNK.min(bytes - i * CHUNK);
                    Ok::<_, std::convert::Infallible>(chunk.slice(..len))
                });
                (
                    StatusCode::from_u16(status).unwrap(),
                    axum::body::Body::from_stream(futures::stream::iter(chunks)),
                )
                    .into_response()
            }
            Reply::RetryAfter { raw } => {
                (StatusCode::TOO_MANY_REQUESTS, [("retry-after", raw)]).into_response()
            }
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub body: Value,
    pub at: Instant,
    /// What the fake answered.
    pub status: u16,
}

#[derive(Default)]
struct FakeState {
    /// Every accepted request is answered only after this delay (a slow ilert).
    delay: Duration,
    received: Vec<Received>,
    script: VecDeque<Reply>,
    schema_errors: Vec<String>,
    /// Requests to the Events API (`spec.alerts`), kept apart from deployment events.
    alerts: Vec<Received>,
    alert_script: VecDeque<Reply>,
    /// Requests to anything else ("GET /api/deployment-events"): a followed 302 would land here.
    stray: Vec<String>,
}

/// A local stand-in for ilert: records every request, validates it against ilert's published
/// DeploymentEvent schema, and answers as scripted (202 when nothing is scripted).
#[derive(Clone)]
pub struct FakeIlert {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
    validator: Arc<jsonschema::Validator>,
    alert_validator: Arc<jsonschema::Validator>,
    /// true: the port is closed (connections refused) until set back to false.
    refusing: Arc<tokio::sync::watch::Sender<bool>>,
}

pub fn deployment_event_validator() -> jsonschema::Validator {
    schema_validator("deployment-events.openapi.yml", "DeploymentEvent")
}

/// ilert's published schema `name` of `file` (tests/ilert-api), as a validator.
pub fn schema_validator(file: &str, name: &str) -> jsonschema::Validator {
    let path = PathBuf::from(REPO).join("tests/ilert-api").join(file);
    let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("schema file"))
        .expect("schema yaml");
    let schema = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"].clone(),
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("valid schema")
}

impl FakeIlert {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let validator = Arc::new(deployment_event_validator());
        let fake = FakeIlert {
            url: String::new(),
            state,
            validator,
            alert_validator: Arc::new(schema_validator("events.openapi.yml", "Event")),
            refusing: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let app = axum::Router::new()
            .route(
                "/api/deployment-events",
                axum::routing::post(receive).fallback(stray),
            )
            .route(
                "/api/events",
                axum::routing::post(receive_alert).fallback(stray),
            )
            .fallback(stray)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut refusing = fake.refusing.subscribe();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let l = match listener.take() {
                    Some(l) => l,
                    None => loop {
                        match tokio::net::TcpListener::bind(addr).await {
                            Ok(l) => break l,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    },
                };
                let mut stop = refusing.clone();
                axum::serve(l, app.clone())
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|r| *r).await;
                    })
                    .await
                    .unwrap();
                // Closed: connections are refused until refusing is false again.
                if refusing.wait_for(|r| !*r).await.is_err() {
                    return;
                }
            }
        });
        FakeIlert {
            url: format!("http://{addr}"),
            ..fake
        }
    }

    /// Closes the port (every connection refused) or opens it again on the same address.
    pub fn refuse_connections(&self, refuse: bool) {
        self.refusing.send_replace(refuse);
    }

    /// Answers every later accepted request after `d`; a request whose client dies meanwhile is
    /// not counted as received.
    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Drops the deployment-event replies still scripted: later requests get 202.
    pub fn clear_script(&self) {
        self.state.lock().unwrap().script.clear();
    }

    /// Requests to any other method or path than the two APIs, as "METHOD /path".
    pub fn stray(&self) -> Vec<String> {
        self.state.lock().unwrap().stray.clone()
    }

    /// Every request this fake got, to either API or to anything else.
    pub fn requests_total(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.received.len() + st.alerts.len() + st.stray.len()
    }

    /// Every request so far (including refused ones).
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// How many requests were answered 202, without copying them.
    pub fn accepted_count(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.received.iter().filter(|r| r.status == 202).count()
    }

    /// Bodies of the requests answered 202.
    pub fn accepted(&self) -> Vec<Value> {
        accepted_bodies(self.received())
    }

    /// Panics if any request broke ilert's schema.
    pub fn assert_schema_valid(&self) {
        let errors = self.state.lock().unwrap().schema_errors.clone();
        assert!(
            errors.is_empty(),
            "payloads that break ilert's DeploymentEvent schema: {errors:#?}"
        );
    }

    /// Scripts the answers of the Events API (alerts), apart from deployment events.
    pub fn script_alerts(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().alert_script.extend(replies);
    }

    /// Every request to the Events API so far.
    pub fn alerts_received(&self) -> Vec<Received> {
        self.state.lock().unwrap().alerts.clone()
    }

    /// Bodies of the alert events answered 202.
    pub fn alerts_accepted(&self) -> Vec<Value> {
        accepted_bodies(self.alerts_received())
    }

    pub async fn wait_alerts_accepted(&self, n: usize, timeout: Duration) -> Vec<Value> {
        eventually(timeout, &format!("{n} accepted alert events"), || async {
            let a = self.alerts_accepted();
            (a.len() >= n).then_some(a)
        })
        .await
    }

    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<Value> {
        eventually(timeout, &format!("{n} accepted events"), || async {
            let a = self.accepted();
            (a.len() >= n).then_some(a)
        })
        .await
    }
}

fn accepted_bodies(received: Vec<Received>) -> Vec<Value> {
    received
        .into_iter()
        .filter(|r| r.status == 202)
        .map(|r| r.body)
        .collect()
}

/// The Events API: validated against ilert's `Event` schema, scripted apart.
async fn receive_alert(State(fake): State<FakeIlert>, body: String) -> Response {
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let reply = {
        let mut st = fake.state.lock().unwrap();
        if let Err(e) = fake.alert_validator.validate(&parsed) {
            st.schema_errors.push(format!("Event: {e}: {body}"));
        }
        st.alert_script.pop_front().unwrap_or(Reply::Accept)
    };
    let status = match &reply {
        Reply::Hang(_) => 202,
        other => other.status(),
    };
    fake.state.lock().unwrap().alerts.push(Received {
        body: parsed,
        at: Instant::now(),
        status,
    });
    match reply {
        Reply::Status(s, body) => {
            (StatusCode::from_u16(s).unwrap(), axum::Json(body)).into_response()
        }
        Reply::RateLimited { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_secs.to_string())],
        )
            .into_response(),
        Reply::Accept | Reply::Hang(_) => StatusCode::ACCEPTED.into_response(),
        other => other.hostile().expect("a reply both APIs give alike"),
    }
}

async fn receive(State(fake): State<FakeIlert>, _headers: HeaderMap, body: String) -> Response {
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (reply, delay) = {
        let mut st = fake.state.lock().unwrap();
        if let Err(e) = fake.validator.validate(&parsed) {
            st.schema_errors.push(format!("{e}: {body}"));
        }
        (st.script.pop_front().unwrap_or(Reply::Accept), st.delay)
    };
    if matches!(reply, Reply::Accept) && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = reply.status();
    fake.state.lock().unwrap().received.push(Received {
        body: parsed,
        at: Instant::now(),
        status,
    });
    match reply {
        Reply::Accept => StatusCode::ACCEPTED.into_response(),
        Reply::Status(s, body) => {
            (StatusCode::from_u16(s).unwrap(), axum::Json(body)).into_response()
        }
        Reply::RateLimited { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_secs.to_string())],
            axum::Json(
                json!({"status": 429, "message": "Too many requests", "code": "RATE_LIMIT"}),
            ),
        )
            .into_response(),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::ACCEPTED.into_response()
        }
        other => other.hostile().expect("a reply both APIs give alike"),
    }
}

/// Anything but a POST to one of the two APIs: recorded, and answered as axum would (404/405).
async fn stray(
    State(fake): State<FakeIlert>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> StatusCode {
    let known = matches!(uri.path(), "/api/deployment-events" | "/api/events");
    fake.state
        .lock()
        .unwrap()
        .stray
        .push(format!("{method} {}", uri.path()));
    if known {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::NOT_FOUND
    }
}

/// The controller, run as the real built binary with real flags.
pub struct Controller {
    /// Authenticates as the chart's ServiceAccount.
    pub kubeconfig: PathBuf,
    /// Extra environment of the process.
    pub env: Vec<(String, String)>,
    /// `RUST_LOG` of the process; None leaves it unset, so the binary's own default (what the
    /// chart ships) applies.
    log_filter: Option<&'static str>,
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Controller {
    /// Starts a controller that serves only pipelines labelled `e2e-ns=<ns>`, keeps its state in `ns`,
    /// and trusts `ns`.
    pub fn start(ns: &str, ilert: &FakeIlert, extra: &[&str]) -> Self {
        Self::start_named(ns, ilert, extra, "a")
    }

    /// A second replica of the same controller (same namespace, pipelines and lease).
    pub fn start_named(ns: &str, ilert: &FakeIlert, extra: &[&str], replica: &str) -> Self {
        Self::start_serving(ns, ilert, &format!("e2e-ns={ns}"), extra, replica)
    }

    /// A controller in `ns` that serves the pipelines `selector` selects (`--pipeline-selector`):
    /// one shard of a cluster split across instances.
    pub fn start_serving(
        ns: &str,
        ilert: &FakeIlert,
        selector: &str,
        extra: &[&str],
        replica: &str,
    ) -> Self {
        Self::start_serving_as(ns, ilert, selector, extra, replica, chart_identity(ns))
    }

    /// As [`Controller::start_serving`], authenticated by `kubeconfig` (see [`release_identity`]).
    pub fn start_serving_as(
        ns: &str,
        ilert: &FakeIlert,
        selector: &str,
        extra: &[&str],
        replica: &str,
        kubeconfig: PathBuf,
    ) -> Self {
        let mut c = Self::unspawned(ns, ilert, selector, extra, replica, kubeconfig);
        c.spawn();
        c
    }

    /// As [`Controller::start`], logging as the chart ships it (no `RUST_LOG`, so info and above):
    /// what the benchmark measures.
    pub fn start_as_shipped(ns: &str, ilert: &FakeIlert, extra: &[&str]) -> Self {
        let selector = format!("e2e-ns={ns}");
        let mut c = Self::unspawned(ns, ilert, &selector, extra, "a", chart_identity(ns));
        c.log_filter = None;
        c.spawn();
        c
    }

    fn unspawned(
        ns: &str,
        ilert: &FakeIlert,
        selector: &str,
        extra: &[&str],
        replica: &str,
        kubeconfig: PathBuf,
    ) -> Self {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--cluster-name".into(),
            "e2e".into(),
            "--namespace".into(),
            ns.into(),
            "--trusted-namespaces".into(),
            ns.into(),
            "--pipeline-selector".into(),
            selector.into(),
            "--log-format".into(),
            "json".into(),
            "--listen-address".into(),
            "127.0.0.1:0".into(),
            "--lease-duration-seconds".into(),
            "4".into(),
            "--lease-grace-seconds".into(),
            "2".into(),
        ];
        if !extra.contains(&"--api-url") {
            args.extend(["--api-url".to_string(), ilert.url.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let dir = PathBuf::from(REPO).join("target/e2e-logs");
        std::fs::create_dir_all(&dir).unwrap();
        Controller {
            kubeconfig,
            env: Vec::new(),
            log_filter: Some("info,ilert_rollout_controller=debug"),
            child: None,
            log: dir.join(format!("{ns}-{replica}.log")),
            args,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ilert-rollout-controller"));
        match self.log_filter {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command
            .args(&self.args)
            .env(
                "POD_NAME",
                self.log.file_stem().unwrap().to_string_lossy().to_string(),
            )
            // The chart's ServiceAccount, never the admin identity of the test process.
            .env("KUBECONFIG", &self.kubeconfig)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the controller binary");
        self.child = Some(child);
    }

    /// kill -9: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The process id of the running controller.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until the controller logs that its caches are synced.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .logs()
                .matches("\"message\":\"caches synced and backlog decided\"")
                .count()
                >= self.starts()
            {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "the controller exited ({status}); its log:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "controller not ready after 30 s; log in {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Base URL of /metrics, /healthz and /readyz of the latest start.
    pub fn ops_url(&self) -> String {
        let logs = self.logs();
        let line = logs
            .lines()
            .rev()
            .find(|l| l.contains("serving /metrics"))
            .expect("the controller logs its listen address");
        let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
        format!("http://{}", v["address"].as_str().expect("address field"))
    }

    /// Sends SIGTERM and waits for the process to exit; returns how long that took. Waits without
    /// blocking the test's runtime: the fake ilert on it must answer the requests still in flight.
    pub async fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            while c.try_wait().ok().flatten().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        started.elapsed()
    }

    /// SIGTERM, then the same process again: a rolling restart, as the chart's pod gets.
    pub async fn graceful_restart(&mut self) {
        self.terminate().await;
        self.spawn();
    }

    fn starts(&self) -> usize {
        self.logs()
            .matches("\"message\":\"starting\"")
            .count()
            .max(1)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long after ilert's 202 a kill -9 may still repeat the event: the answer reaches the
/// controller and the sent state is written (one group-committed ConfigMap patch; 2 s bounds a
/// busy API server).
pub const KILL_WINDOW: Duration = Duration::from_secs(2);

/// One rollout as named in the events: namespace, name, revision.
pub type RolloutId = (String, String, String);

/// What ilert accepted, per rollout: when each copy arrived (combined events count for each).
pub struct Tally {
    pub copies: BTreeMap<RolloutId, Vec<Instant>>,
}

impl Tally {
    pub fn of(received: &[Received]) -> Self {
        let mut copies: BTreeMap<RolloutId, Vec<Instant>> = BTreeMap::new();
        for r in received.iter().filter(|r| r.status == 202) {
            let details = &r.body["customDetails"];
            let rollouts = details
                .get("rollouts")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_else(|| vec![details.clone()]);
            for d in rollouts {
                let field = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                if d.get("name").is_none() {
                    continue;
                }
                copies
                    .entry((field("namespace"), field("name"), field("revision")))
                    .or_default()
                    .push(r.at);
            }
        }
        Tally { copies }
    }

    pub fn has(&self, namespace: &str, name: &str, revision: &str) -> bool {
        self.copies.contains_key(&(
            namespace.to_string(),
            name.to_string(),
            revision.to_string(),
        ))
    }

    /// Rollouts accepted more than once.
    pub fn duplicates(&self) -> Vec<(&RolloutId, &Vec<Instant>)> {
        self.copies.iter().filter(|(_, v)| v.len() > 1).collect()
    }

    /// Every duplicate must come from a kill that hit between ilert's 202 and the sent state
    /// being written: its first copy arrived at most `window` before one of `kills`, and every
    /// later copy after that kill. Prints what it found.
    pub fn assert_duplicates_only_from(&self, kills: &[Instant], window: Duration) {
        let mut explained = Vec::new();
        for (id, at) in self.duplicates() {
            let first = at[0];
            let kill = kills
                .iter()
                // A process takes a moment to die: a 202 written just after the signal counts too.
                .find(|k| {
                    first <= **k + Duration::from_millis(200)
                        && k.saturating_duration_since(first) <= window
                });
            let Some(kill) = kill else {
                panic!(
                    "{id:?} was accepted {} times, and its first copy was not within {window:?} before a kill (kills at {:?} after it)",
                    at.len(),
                    kills
                        .iter()
                        .map(|k| k.checked_duration_since(first))
                        .collect::<Vec<_>>()
                );
            };
            assert!(
                at[1..].iter().all(|t| t > kill),
                "{id:?}: a repeat came before the kill that explains it"
            );
            explained.push(format!(
                "{}/{} rev {} ({} ms before a kill)",
                id.0,
                id.1,
                id.2,
                kill.saturating_duration_since(first).as_millis()
            ));
        }
        eprintln!(
            "{} rollouts accepted, {} repeated, each by a kill inside the window: {explained:?}",
            self.copies.len(),
            explained.len()
        );
    }
}
