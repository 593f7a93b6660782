use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use ilert_rollout_controller::metrics::Metrics;
use ilert_rollout_controller::pipeline::IlertPipeline;
use ilert_rollout_controller::shell::ilert::IlertClient;
use ilert_rollout_controller::shell::server;
use ilert_rollout_controller::shell::{self, Config, Readiness, Signals};
use kube::api::ListParams;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// jemalloc, with a background thread that hands freed pages back to the OS within a second.
/// Starting with 10,000 Deployments leaves ~33 MiB of live heap behind a peak of ~48 MiB (the
/// initial lists); glibc's malloc kept ~110 MiB resident for it, jemalloc so configured ~55 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's `malloc_conf`, read before the first allocation (so not from code in `main`).
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: a pointer to an immutable, 'static, NUL-terminated string.
unsafe impl Sync for MallocConf {}
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

#[derive(Parser, Debug)]
#[command(
    name = "ilert-rollout-controller",
    version,
    about = "Reports every finished Kubernetes rollout to ilert as a deployment event"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (the default).
    Run(Box<RunArgs>),
    /// Print the IlertPipeline CRD as YAML.
    Crds,
    /// Print what the controller would send to ilert for a workload's latest rollout (the
    /// integration key redacted), through your own kubeconfig; read-only.
    Preview(PreviewArgs),
    /// Send a test event through a pipeline (sets its ilert.com/test-event annotation) and wait
    /// for ilert's answer.
    Test(TestArgs),
    /// The pipelines across namespaces: readiness, selected workloads, pending and sent events,
    /// the last event.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
struct PreviewArgs {
    /// The workload as <kind>/<name>: deploy/web, sts/db, ds/agent, rollout/web.
    workload: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// The pipeline whose templates shape the event, as <namespace>/<name> or <name> (default:
    /// the first pipeline in the workload's namespace that selects it).
    #[arg(long)]
    pipeline: Option<String>,
    /// The cluster name the controller runs with (its --cluster-name).
    #[arg(long, default_value = "")]
    cluster_name: String,
}

#[derive(clap::Args, Debug)]
struct TestArgs {
    /// The pipeline, as <name> or <namespace>/<name>.
    pipeline: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// How long to wait for ilert's answer, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Only this namespace (default: all the kubeconfig may list).
    #[arg(short, long)]
    namespace: Option<String>,
}

/// Called as `kubectl-ilert` (the kubectl plugin `kubectl ilert`): the person's commands only.
fn as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().starts_with("kubectl-ilert"))
        })
        .unwrap_or(false)
}

/// A person's command, with its exit code.
async fn person(command: Command) -> std::process::ExitCode {
    use ilert_rollout_controller::shell::cli;
    let result = match command {
        Command::Preview(a) => {
            cli::run_preview(
                &a.workload,
                a.namespace.as_deref(),
                a.pipeline.as_deref(),
                &a.cluster_name,
            )
            .await
        }
        Command::Test(a) => {
            cli::run_test(
                &a.pipeline,
                a.namespace.as_deref(),
                Duration::from_secs(a.timeout_seconds.max(1)),
            )
            .await
        }
        Command::Status(a) => cli::run_status(a.namespace.as_deref()).await,
        Command::Run(_) | Command::Crds => unreachable!("not a person's command"),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// ilert's API base URL.
    #[arg(long, env = "ILERT_API_URL", default_value = "https://api.ilert.com")]
    api_url: String,
    /// Cluster name shown in every event.
    #[arg(long, env = "CLUSTER_NAME", default_value = "")]
    cluster_name: String,
    /// The controller's own namespace: delivery state lives here. Default: the pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Namespaces whose pipelines may use namespaceSelector (comma-separated). Default: the controller's own.
    #[arg(long, env = "TRUSTED_NAMESPACES", value_delimiter = ',')]
    trusted_namespaces: Vec<String>,
    /// Requests per minute per integration key (ilert allows 10 for deployment pipelines).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_per_minute: u32,
    /// Requests per minute per alert source key, for `spec.alerts` (ilert allows 50).
    #[arg(long, env = "ALERT_RATE_LIMIT_PER_MINUTE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    alert_rate_limit_per_minute: u32,
    /// Serve only IlertPipelines with these labels (e.g. `shard=a`): splits a large cluster across releases.
    #[arg(long, env = "PIPELINE_SELECTOR")]
    pipeline_selector: Option<String>,
    /// How often to ask the API server whether Argo Rollouts' Rollout kind is served, in
    /// seconds: its watch starts when the CRD appears and stops when it goes, without a restart.
    #[arg(long, env = "DISCOVERY_INTERVAL_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    discovery_interval_seconds: u64,
    /// Time-out of one request to ilert, in seconds.
    #[arg(long, env = "ILERT_TIMEOUT_SECONDS", default_value_t = 10)]
    ilert_timeout_seconds: u64,
    /// Longest wait between retries while ilert is unavailable, in seconds.
    #[arg(long, env = "RETRY_MAX_SECONDS", default_value_t = 300)]
    retry_max_seconds: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    listen_address: std::net::SocketAddr,
    /// Elect a leader among replicas on a Lease in the controller's namespace; only the leader sends.
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "ilert-rollout-controller")]
    lease_name: String,
    /// Seconds a leader holds the lease without renewing it; a standby takes over after that.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration_seconds: u64,
    /// Seconds before expiry at which the leader renews the lease.
    #[arg(long, env = "LEASE_GRACE_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    lease_grace_seconds: u64,
    /// KiB of delivery state one ledger ConfigMap holds before the shard spills into the next
    /// (the API server refuses objects past 1 MiB).
    #[arg(long, env = "LEDGER_PAGE_KIB", default_value_t = 768, value_parser = clap::value_parser!(u64).range(1..=900))]
    ledger_page_kib: u64,
    /// ConfigMaps per ledger shard (16 shards per pipeline): with the page size, what a pipeline's
    /// pending events may take before the ledger is full.
    #[arg(long, env = "LEDGER_PAGES", default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    ledger_pages: u8,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn,reqwest=warn")
    });
    // Colours only for a person at a terminal, never in log files or collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // One TLS crypto provider for kube and reqwest alike.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plugin = as_kubectl_plugin();
    let cli = if plugin {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command()
            .name("kubectl ilert")
            .bin_name("kubectl ilert")
            .subcommand_required(true)
            .mut_args(|a| a.hide(true))
            .mut_subcommand("run", |c| c.hide(true))
            .mut_subcommand("crds", |c| c.hide(true))
            .get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    } else {
        Cli::parse()
    };
    let args = match cli.command {
        Some(Command::Crds) => {
            print!("{}", ilert_rollout_controller::crd_yaml());
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Run(args)) => *args,
        Some(c @ (Command::Preview(_) | Command::Test(_) | Command::Status(_))) => {
            return person(c).await;
        }
        None => cli.run,
    };
    init_logging(args.log_format);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let namespace = match args.namespace.clone().filter(|n| !n.is_empty()) {
        Some(ns) => ns,
        None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "default".to_string()),
    };
    let trusted: Vec<String> = if args.trusted_namespaces.iter().all(|t| t.trim().is_empty()) {
        vec![namespace.clone()]
    } else {
        args.trusted_namespaces
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let metrics = Arc::new(Metrics::default());
    let client = kube_client(metrics.clone()).await?;
    check_crd(&client).await?;
    let ilert = IlertClient::new(
        &args.api_url,
        Duration::from_secs(args.ilert_timeout_seconds.max(1)),
    )?;
    let cfg = Config {
        namespace: namespace.clone(),
        trusted_namespaces: trusted.clone(),
        cluster_name: args.cluster_name.clone(),
        rate_limit_per_minute: args.rate_limit_per_minute,
        alert_rate_limit_per_minute: args.alert_rate_limit_per_minute,
        pipeline_selector: args.pipeline_selector.clone(),
        retry_cap: Duration::from_secs(args.retry_max_seconds.max(1)),
        ilert_timeout: Duration::from_secs(args.ilert_timeout_seconds.max(1)),
        discovery_interval: Duration::from_secs(args.discovery_interval_seconds),
        lease: args.leader_elect.then(|| args.lease_name.clone()),
        ledger_capacity: ilert_rollout_controller::domain::book::Capacity {
            page_bytes: args.ledger_page_kib as usize * 1024,
            pages: args.ledger_pages,
        },
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| {
            format!(
                "{}-{}",
                ilert_rollout_controller::domain::keys::CONTROLLER_NAME,
                std::process::id()
            )
        }),
    };
    info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = %namespace,
        trusted_namespaces = %trusted.join(","),
        api_url = %args.api_url,
        cluster = %args.cluster_name,
        rate_limit_per_minute = args.rate_limit_per_minute,
        "starting"
    );
    let readiness = Readiness::default();
    let server = tokio::spawn(server::serve(
        args.listen_address,
        metrics.clone(),
        readiness.clone(),
    ));

    // Every replica watches; only the lease holder sends and writes.
    let (leader, lease_task) = if args.leader_elect {
        let grace = args
            .lease_grace_seconds
            .min(args.lease_duration_seconds - 1);
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            // Unique even where every replica is pid 1 and POD_NAME is not set.
            .with_identity(format!("{}-{:08x}", cfg.instance, rand::random::<u32>()))
            .with_duration(args.lease_duration_seconds)
            .with_grace(grace)
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot set up leader election on Lease {namespace}/{}",
                    args.lease_name
                )
            })?;
        let (rx, task) = manager.watch().await;
        (rx, Some(task))
    } else {
        let (tx, rx) = watch::channel(true);
        // Keep the sender alive for the life of the process: always leader.
        std::mem::forget(tx);
        (rx, None)
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let controller = shell::run(
        client,
        ilert,
        cfg,
        readiness,
        metrics,
        Signals {
            leader: leader.clone(),
            shutdown: shutdown_rx,
        },
    );
    // Boxed so it can be dropped (with its lease receiver) before the lease is released.
    let mut controller = Box::pin(controller);
    let result = tokio::select! {
        r = &mut controller => r,
        r = server => match r {
            Ok(Ok(())) => Err(anyhow::anyhow!("the metrics server stopped")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("the metrics server failed: {e}")),
        },
        _ = shutdown_signal() => {
            info!("received a stop signal");
            let _ = shutdown_tx.send(true);
            (&mut controller).await
        }
    };
    // Dropping the last receiver makes the lease task release the lease, so a standby takes
    // over at once instead of after the lease expires.
    drop(leader);
    drop(controller);
    if let Some(task) = lease_task {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => info!("lease released"),
            Ok(Ok(Err(e))) => warn!(error = %e, "could not release the lease"),
            Ok(Err(e)) => warn!(error = %e, "lease task failed"),
            Err(_) => warn!("releasing the lease timed out"),
        }
    }
    result
}

/// Fails fast with an install hint when the CRD is missing, instead of looping on 404s.
async fn check_crd(client: &Client) -> anyhow::Result<()> {
    let api: Api<IlertPipeline> = Api::all(client.clone());
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the IlertPipeline CRD (ilertpipelines.ilert.com) is not installed: run `kubectl apply -f crds/ilert.com_ilertpipelines.yaml` (or `ilert-rollout-controller crds | kubectl apply -f -`), or install the Helm chart"
        ),
        Err(e) => Err(e).context("cannot list IlertPipelines"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The Kubernetes client, counting every request it makes (`ilert_rollout_kube_requests_total`).
async fn kube_client(metrics: Arc<Metrics>) -> anyhow::Result<Client> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes API found: run in a cluster, or set KUBECONFIG")?;
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics.kube_request(req.method().as_str(), req.uri().path(), req.uri().query());
        req
    });
    Ok(shell::kube_client::builder(config)
        .context("the Kubernetes client configuration is not usable")?
        .with_layer(&count)
        .build())
}
