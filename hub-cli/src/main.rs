//! `agentcom-hub`: `serve` runs the hub; `dev` runs it with a local sidecar for trying things out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentcom_hub::auth::Role;
use agentcom_hub::backup;
use agentcom_hub::core;
use agentcom_hub::domain::SpecDefaults;
use agentcom_hub::server::{self, DataDir};
use agentcom_hub::store::{self, Store};
use agentcom_proto::v1 as pb;
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

mod local_sidecar;

#[derive(Parser)]
#[command(name = "agentcom-hub", version, about = "The AgentCom hub: durable task queue, fleet registry, admin APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or JSON (auto: JSON when standard output is not a terminal). Every line
    /// is redacted; RUST_LOG filters.
    #[arg(long, global = true, value_enum, default_value = "auto", env = "AGENTCOM_LOG_FORMAT")]
    log_format: agentcom_process::logging::LogFormat,
    /// Export traces to this OTLP/gRPC collector (`http://HOST:4317`); off when unset.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(HubArgs),
    /// Run the hub with one local sidecar (`agentcom-sidecar run`, started beside it), for
    /// development and demos.
    Dev {
        #[command(flatten)]
        hub: HubArgs,
        #[command(flatten)]
        sidecar: local_sidecar::Args,
    },
    /// Write a backup now: through the running hub if there is one, else from the database.
    Backup {
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = ".agentcom")]
        data_dir: PathBuf,
        /// The running hub to ask (its admin token, and the CA pin in it, are read from the data
        /// directory) [default: the URL the hub on DATA_DIR recorded in DATA_DIR/hub.url].
        #[arg(long, env = "AGENTCOM_HUB")]
        hub: Option<String>,
        /// Where backups go [default: DATA_DIR/backups].
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
    /// Replace the database with a backup (the hub must be stopped; the old file is kept aside).
    Restore {
        #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = ".agentcom")]
        data_dir: PathBuf,
        /// The backup file, e.g. DATA_DIR/backups/hub-1795000000000.redb.
        #[arg(long)]
        from: PathBuf,
    },
}

#[derive(clap::Args)]
struct HubArgs {
    /// Where the database and token files live.
    #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = ".agentcom")]
    data_dir: PathBuf,
    /// Address for gRPC and HTTP (one port), served over TLS with the hub's own CA.
    #[arg(long, env = "AGENTCOM_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Serve plaintext instead of TLS: tokens then travel in the clear, and sidecars cannot
    /// enrol. `dev` on a loopback address serves plaintext without it.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Also serve the sidecar link over QUIC on this UDP address (e.g. 0.0.0.0:7421; sidecars
    /// dial quic://HOST:7421). Needs TLS.
    #[arg(long, value_name = "ADDR")]
    quic_listen: Option<SocketAddr>,
    /// A DNS name or IP address to put in the serving certificate besides agentcom-hub,
    /// localhost and loopback (repeatable), for clients that check names (curl --cacert
    /// DATA_DIR/ca.pem). AgentCom's own clients pin the CA instead.
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// How often sidecars heartbeat, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    heartbeat_interval_ms: u64,
    /// A lease not renewed for this long expires (and its task is requeued), in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    lease_ttl_ms: u64,
    /// A sidecar not heard from for this long is offline, in milliseconds [default: 2.5 heartbeat intervals].
    #[arg(long)]
    heartbeat_ttl_ms: Option<u64>,
    /// A working agent whose task shows no output, tokens or progress for this long is flagged stalled, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    stall_after_ms: u64,
    /// A host (or host:port) whose LLM endpoints the hub may probe itself; repeatable. Empty by
    /// default: sidecars probe their own local endpoints.
    #[arg(long = "allow-endpoint", value_name = "HOST[:PORT]")]
    allow_endpoints: Vec<String>,
    /// How often the hub probes the endpoints added with `hubctl endpoints add`, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    endpoint_check_interval_ms: u64,
    /// Attempts for tasks that set none.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Output kept per stream for tasks that set no cap, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_output_bytes: u64,
    /// First retry backoff for tasks that set none, in milliseconds (doubles per attempt).
    #[arg(long, default_value_t = 1_000)]
    retry_backoff_base_ms: u64,
    /// Longest retry backoff for tasks that set none, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    retry_backoff_max_ms: u64,
    /// A waiting task ranks one priority lane higher for every this many milliseconds (anti-starvation).
    #[arg(long, default_value_t = 30_000)]
    aging_step_ms: u64,
    /// How long an idempotency key keeps returning its task, in milliseconds from the task's submit.
    #[arg(long, default_value_t = 24 * 3600 * 1000)]
    idempotency_retention_ms: u64,
    /// How long a finished task's output is kept (e.g. 7d, 12h); then it is dropped and the
    /// task's record says so.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    retain_output: Duration,
    /// The most bytes finished tasks' outputs may take (e.g. 20GiB, 500MiB); beyond it the
    /// oldest outputs are dropped first.
    #[arg(long, default_value = "20GiB", value_parser = parse_size)]
    retain_output_bytes: u64,
    /// How long a finished task's record is kept (e.g. 30d); then the task is forgotten.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    retain_tasks: Duration,
    /// Where backups go [default: DATA_DIR/backups].
    #[arg(long)]
    backup_dir: Option<PathBuf>,
    /// Take a backup this often, in milliseconds; 0 turns periodic backups off.
    #[arg(long, default_value_t = 3600 * 1000)]
    backup_interval_ms: u64,
    /// Backups kept; older ones are deleted.
    #[arg(long, default_value_t = 3)]
    backup_keep: usize,
    /// Open connections at most [default: three quarters of the open-file limit].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections from one address that have not sent a complete request yet.
    #[arg(long)]
    max_pending_per_source: Option<usize>,
    /// How long a connection may take to send its first request's headers, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Requests per second one admin token may make (bursts of twice that); 0 turns limiting off.
    #[arg(long, default_value_t = agentcom_hub::server::DEFAULT_RATE_PER_TOKEN)]
    rate_limit_per_token: u32,
    /// Let gateway requests that carry no key act as the token named NAME (`hubctl tokens create
    /// --role inference --name NAME`, its limits applying), for clients that cannot send a key,
    /// such as the Ollama CLI. Anyone who reaches the hub may then use the gateway as that key.
    #[arg(long, value_name = "NAME")]
    gateway_keyless: Option<String>,
    /// Changes storage may have queued before submits are refused with 503 and retry-after.
    #[arg(long, default_value_t = 100_000)]
    max_write_backlog: usize,
    /// A price table (TOML: dollars per million tokens per model) on top of the built-in Claude
    /// prices, to put a cost on each LLM result.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// The model LLM work of a tier runs on when it names none, e.g. `standard=llama3.2:3b`
    /// (repeatable; tiers: trivial, standard, complex). Without one, the sidecar picks.
    #[arg(long = "tier-model", value_name = "TIER=MODEL")]
    tier_models: Vec<String>,
    /// How long LLM work waits for its tier's model, with no agent able to take it, before it
    /// moves one tier up or down (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    tier_fallback_after: Duration,
    /// Send no task to a cloud provider (the Claude API, a hosted OpenAI-compatible API): all
    /// work is treated as local-only and waits for a local model.
    #[arg(long)]
    offline: bool,
    /// Do not load models ahead of the tasks that wait for them (pre-warming: when a model's
    /// tasks have waited longer than its load time and a host with room has it cold and idle,
    /// the hub asks that host's sidecar to load it).
    #[arg(long)]
    no_prewarm: bool,
    /// LLM work placed by its tier's model that fails its verification goes again, as a new
    /// attempt, one tier up (trivial to standard, standard to complex), recorded in explain.
    #[arg(long)]
    escalate: bool,
}

impl HubArgs {
    fn serve_options(&self, open_files: u64) -> anyhow::Result<server::ServeOptions> {
        let mut edge = agentcom_hub::edge::Limits::for_open_files(open_files);
        if let Some(max) = self.max_connections {
            anyhow::ensure!(
                (64..=open_files as usize).contains(&max),
                "--max-connections must be between 64 and the open-file limit ({open_files})"
            );
            edge = agentcom_hub::edge::Limits { max_connections: max, ..edge };
            edge.sidecar_reserve = (max / 10).max(16);
            edge.max_pending = (max - edge.sidecar_reserve) / 2;
            edge.max_pending_per_source = edge.max_pending_per_source.min(edge.max_pending);
        }
        if let Some(per_source) = self.max_pending_per_source {
            anyhow::ensure!(per_source >= 1, "--max-pending-per-source must be at least 1");
            edge.max_pending_per_source = per_source;
        }
        anyhow::ensure!(self.header_timeout_ms >= 100, "--header-timeout-ms must be at least 100");
        edge.header_timeout = Duration::from_millis(self.header_timeout_ms);
        Ok(server::ServeOptions {
            edge,
            rate_per_token: agentcom_hub::ratelimit::Rate::per_second(self.rate_limit_per_token),
            tls: None,
            quic_listen: None,
            keyless_gateway: self.gateway_keyless.clone(),
        })
    }

    fn backup_policy(&self) -> anyhow::Result<backup::Policy> {
        anyhow::ensure!(self.backup_keep >= 1, "--backup-keep must be at least 1");
        Ok(backup::Policy {
            dir: self.backup_dir.clone().unwrap_or_else(|| DataDir::new(&self.data_dir).backups()),
            every: (self.backup_interval_ms > 0).then(|| Duration::from_millis(self.backup_interval_ms)),
            keep: self.backup_keep,
        })
    }

    fn core_config(&self) -> anyhow::Result<core::Config> {
        anyhow::ensure!(self.heartbeat_interval_ms >= 50, "--heartbeat-interval-ms must be at least 50");
        anyhow::ensure!(
            self.lease_ttl_ms >= 2 * self.heartbeat_interval_ms,
            "--lease-ttl-ms must be at least twice --heartbeat-interval-ms"
        );
        let heartbeat_ttl_ms = self.heartbeat_ttl_ms.unwrap_or(self.heartbeat_interval_ms * 5 / 2);
        anyhow::ensure!(
            heartbeat_ttl_ms > self.heartbeat_interval_ms,
            "--heartbeat-ttl-ms must be longer than --heartbeat-interval-ms"
        );
        anyhow::ensure!(self.stall_after_ms >= 1_000, "--stall-after-ms must be at least 1000");
        anyhow::ensure!(self.endpoint_check_interval_ms >= 100, "--endpoint-check-interval-ms must be at least 100");
        anyhow::ensure!((1..=100).contains(&self.max_attempts), "--max-attempts must be between 1 and 100");
        let max_backoff = agentcom_hub::domain::limits::MAX_BACKOFF_MS;
        anyhow::ensure!(
            (1..=max_backoff).contains(&self.retry_backoff_base_ms)
                && (self.retry_backoff_base_ms..=max_backoff).contains(&self.retry_backoff_max_ms),
            "retry backoffs must satisfy 1 <= --retry-backoff-base-ms <= --retry-backoff-max-ms <= {max_backoff}"
        );
        anyhow::ensure!(self.aging_step_ms >= 1, "--aging-step-ms must be at least 1");
        anyhow::ensure!(
            (1..=agentcom_hub::domain::limits::MAX_OUTPUT_BYTES).contains(&self.max_output_bytes),
            "--max-output-bytes must be between 1 and {}",
            agentcom_hub::domain::limits::MAX_OUTPUT_BYTES
        );
        Ok(core::Config {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            heartbeat_ttl: Duration::from_millis(heartbeat_ttl_ms),
            stall_after: Duration::from_millis(self.stall_after_ms),
            allow_endpoints: self.allow_endpoints.clone(),
            endpoint_check_interval: Duration::from_millis(self.endpoint_check_interval_ms),
            spec_defaults: SpecDefaults {
                max_attempts: self.max_attempts,
                max_output_bytes: self.max_output_bytes,
                backoff_base_ms: self.retry_backoff_base_ms,
                backoff_max_ms: self.retry_backoff_max_ms,
            },
            aging_step: Duration::from_millis(self.aging_step_ms),
            idempotency_retention: Duration::from_millis(self.idempotency_retention_ms),
            max_write_backlog: self.max_write_backlog.max(1),
            tier_models: {
                let mut tiers = agentcom_hub::sched::TierModels::default();
                for text in &self.tier_models {
                    tiers.set(text).map_err(|err| anyhow::anyhow!("--tier-model: {err}"))?;
                }
                tiers
            },
            prices: match &self.prices {
                Some(path) => agentcom_hub::prices::Prices::load(path).map_err(anyhow::Error::msg)?,
                None => agentcom_hub::prices::Prices::default(),
            },
            tier_fallback_after: self.tier_fallback_after,
            offline: self.offline,
            prewarm: !self.no_prewarm,
            escalate: self.escalate,
            retain_output: self.retain_output,
            retain_output_bytes: self.retain_output_bytes,
            retain_tasks: self.retain_tasks,
            ..core::Config::default()
        })
    }
}

fn main() -> std::process::ExitCode {
    // The hub's secrets (its keys in the environment) stay out of its children's reach.
    let allow: Vec<String> = agentcom_process::secure::DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect();
    agentcom_process::binary_main(&allow, agentcom_process::logging::LogFormat::from_args(), |_| 1, run)
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _traces = match &cli.command {
        Command::Serve(_) | Command::Dev { .. } => {
            agentcom_process::start_traces("agentcom-hub", cli.otlp_endpoint.as_deref())?
        }
        _ => None,
    };
    match cli.command {
        Command::Serve(args) => serve(args, None).await,
        Command::Dev { hub, sidecar } => {
            let otlp_endpoint = cli.otlp_endpoint.clone();
            serve(hub, Some((sidecar, otlp_endpoint))).await
        }
        Command::Backup { data_dir, hub, backup_dir } => backup_now(data_dir, hub, backup_dir).await,
        Command::Restore { data_dir, from } => {
            let database = DataDir::new(&data_dir).database();
            let restored = tokio::task::spawn_blocking(move || backup::restore(&from, &database)).await??;
            eprintln!("restored {} tasks into {}", restored.tasks, DataDir::new(&data_dir).database().display());
            if let Some(aside) = restored.kept_aside {
                eprintln!("the replaced database was kept as {}", aside.display());
            }
            Ok(())
        }
    }
}

/// Says what to do about a damaged database: which restore command, with the newest backup.
fn explain_damage(err: &store::Error, data_dir: &std::path::Path, backup_dir: &std::path::Path) -> anyhow::Error {
    let from = backup::latest(backup_dir)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{}/hub-TIMESTAMP.redb (none found there)", backup_dir.display()));
    anyhow::anyhow!(
        "{err}\nthe hub will not start on a damaged database. Restore the newest backup:\n  agentcom-hub restore --data-dir {} --from {from}",
        data_dir.display()
    )
}

async fn backup_now(data_dir: PathBuf, hub: Option<String>, backup_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = DataDir::new(&data_dir);
    let policy = backup::Policy { dir: backup_dir.unwrap_or_else(|| dir.backups()), every: None, keep: usize::MAX };
    let database = dir.database();
    if database.exists() {
        let opened = {
            let database = database.clone();
            tokio::task::spawn_blocking(move || Store::open(&database)).await?
        };
        match opened {
            Ok(store) => {
                let info = tokio::task::spawn_blocking(move || backup::take(&store, &policy)).await??;
                println!("{}", info.path.display());
                eprintln!("backed up {} tasks ({} bytes)", info.tasks, info.bytes);
                return Ok(());
            }
            Err(store::Error::InUse { .. }) => {} // A hub is running: ask it.
            Err(err) => return Err(err.into()),
        }
    }
    let text = std::fs::read_to_string(dir.token_file(Role::Admin))
        .with_context(|| format!("reading {}", dir.token_file(Role::Admin).display()))?;
    let file = agentcom_link::token_file::TokenFile::parse(&text)?;
    // The hub that serves this data directory says where (`DATA_DIR/hub.url`).
    let recorded = std::fs::read_to_string(dir.url_file()).ok().map(|text| text.trim().to_owned());
    let hub = hub
        .or(recorded)
        .unwrap_or_else(|| format!("{}://127.0.0.1:7420", if file.ca.is_some() { "https" } else { "http" }));
    let pin = file.ca.map(|ca| agentcom_link::tls::Pin::fingerprint(ca, "the data directory's admin.token"));
    let dialer = agentcom_link::connect::Dialer::new(agentcom_link::connect::HubUrl::parse(&hub)?, pin, None)?;
    let channel = agentcom_link::connect::channel(std::sync::Arc::new(dialer)).await.map_err(|err| {
        anyhow::anyhow!(
            "the database is in use, and the hub at {hub} cannot be reached: {}",
            agentcom_link::error_chain(&err)
        )
    })?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let mut request = tonic::Request::new(pb::BackupRequest {});
    request.metadata_mut().insert("authorization", format!("Bearer {}", file.token).parse()?);
    let info = client.backup(request).await.map_err(|status| anyhow::anyhow!("{}", status.message()))?.into_inner();
    println!("{}", info.path);
    eprintln!("backed up {} tasks ({} bytes) through the running hub", info.tasks, info.bytes);
    Ok(())
}

/// Runs the hub; with `dev_sidecar` (its flags, and where it exports traces), also a local
/// sidecar that stops with it.
async fn serve(args: HubArgs, dev_sidecar: Option<(local_sidecar::Args, Option<String>)>) -> anyhow::Result<()> {
    let mut config = args.core_config()?;
    let dev = dev_sidecar.is_some();
    config.cancel_inflight_on_shutdown = dev;
    let open_files = agentcom_hub::edge::raise_open_file_limit();
    let serve_options = args.serve_options(open_files)?;
    let backups = args.backup_policy()?;
    let data_dir = DataDir::new(&args.data_dir);
    let store = match data_dir.open() {
        Ok(store) => store,
        Err(server::Error::Store(err)) if err.is_damage() => {
            return Err(explain_damage(&err, &args.data_dir, &backups.dir));
        }
        Err(err) => return Err(anyhow::Error::new(err).context(format!("opening {}", args.data_dir.display()))),
    };
    let plaintext = args.insecure_plaintext || (dev && args.listen.ip().is_loopback());
    let tls = if plaintext {
        if !args.listen.ip().is_loopback() {
            tracing::warn!(listen = %args.listen, "serving plaintext beyond loopback (--insecure-plaintext): tokens travel in the clear");
        }
        None
    } else {
        let mut names = args.tls_names.clone();
        if let Ok(host) = nix::unistd::gethostname() {
            names.push(host.to_string_lossy().into_owned());
        }
        if !args.listen.ip().is_unspecified() {
            names.push(args.listen.ip().to_string());
        }
        Some(data_dir.tls(&names).with_context(|| format!("setting up TLS in {}", args.data_dir.display()))?)
    };
    let ca = tls.as_ref().map(|tls| tls.authority.fingerprint());
    let tokens = server::ensure_tokens(&data_dir, &store, ca)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is another hub running?)", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    let mut serve_options = serve_options;
    serve_options.tls = tls;
    serve_options.quic_listen = args.quic_listen;

    // The local sidecar is made ready before the hub serves: a restart after a crash kills what
    // the crash left running before anything can be dispatched again.
    let mut sidecar = match &dev_sidecar {
        None => None,
        Some((sidecar, otlp_endpoint)) => {
            let hub = local_sidecar::Hub {
                url: &url,
                join_token_file: &data_dir.token_file(Role::Join),
                ca_sha256: ca.map(|ca| ca.hex()),
                data_dir: &args.data_dir,
                max_output_bytes: args.max_output_bytes,
                otlp_endpoint: otlp_endpoint.as_deref(),
            };
            Some(local_sidecar::LocalSidecar::start(sidecar, &hub).await?)
        }
    };

    let backup_dir = backups.dir.clone();
    let hub = match server::Hub::start_with(listener, store, tokens, config, backups, serve_options).await {
        Ok(hub) => hub,
        Err(server::Error::Store(err)) if err.is_damage() => {
            return Err(explain_damage(&err, &args.data_dir, &backup_dir));
        }
        Err(err) => return Err(err.into()),
    };

    let admin_token = data_dir.token_file(Role::Admin);
    let join_token = data_dir.token_file(Role::Join);
    // For the tools given only the data directory: which address this hub serves.
    let url_file = data_dir.url_file();
    if let Err(err) = std::fs::write(&url_file, format!("{url}\n")) {
        tracing::warn!(path = %url_file.display(), error = %err, "could not record the hub's URL");
    }
    if agentcom_process::logging::is_json() {
        // Machines read the log: the banner is one event of it.
        let (admin, join) = (admin_token.display().to_string(), join_token.display().to_string());
        let ca_sha256 = ca.map(|ca| ca.hex());
        tracing::info!(url, admin_token = admin, join_token = join, ca_sha256, "serving");
    } else {
        banner(&url, &admin_token, &join_token, dev, &args.data_dir, ca);
    }

    let exited = async {
        match &mut sidecar {
            Some(sidecar) => Some(sidecar.exited().await),
            None => std::future::pending().await,
        }
    };
    let sidecar_exited = tokio::select! {
        _ = agentcom_process::shutdown_signal() => None,
        exited = exited => exited,
    };
    match &sidecar_exited {
        None => tracing::info!("shutting down (Ctrl-C again to force)"),
        Some(status) => tracing::error!(status = ?status, "the local sidecar exited; stopping the hub"),
    }

    tokio::spawn(async {
        agentcom_process::shutdown_signal().await;
        std::process::exit(130);
    });
    // The hub first: it cancels in-flight work and waits for the local sidecar to report it.
    hub.stop().await;
    let _ = std::fs::remove_file(&url_file);
    if let Some(status) = sidecar_exited {
        anyhow::bail!("the local sidecar exited ({})", status.map_or_else(|err| err.to_string(), |s| s.to_string()));
    }
    if let Some(sidecar) = sidecar {
        sidecar.stop().await?;
    }
    Ok(())
}

/// What `serve` and `dev` say on a terminal once they listen.
fn banner(
    url: &str,
    admin_token: &std::path::Path,
    join_token: &std::path::Path,
    dev: bool,
    data_dir: &std::path::Path,
    ca: Option<agentcom_link::Fingerprint>,
) {
    eprintln!();
    eprintln!("  AgentCom hub on {url}");
    match ca {
        Some(_) => eprintln!("  admin token: {} (hubctl reads it, with the CA pin in it)", admin_token.display()),
        None => eprintln!("  admin token: {} (hubctl reads it)", admin_token.display()),
    }
    match ca {
        Some(ca) => {
            eprintln!("  hub CA:      sha256 {ca} ({}/ca.pem)", data_dir.display());
            eprintln!("  new sidecar: hubctl join-token create --print-install");
        }
        None => eprintln!("  join token:  {} (plaintext: loopback only)", join_token.display()),
    }
    if dev {
        // A URL that signs the dashboard in: the token rides in the fragment, which the browser
        // never sends, and the page takes it out of the address bar.
        let file = std::fs::read_to_string(admin_token).ok();
        match file.and_then(|text| agentcom_link::token_file::TokenFile::parse(&text).ok()) {
            Some(file) => eprintln!("  dashboard:   {url}/#token={}", file.token),
            None => eprintln!("  dashboard:   {url}/"),
        }
        // hubctl finds ./.agentcom/admin.token, and the hub's URL beside it, by itself; from
        // another data directory it needs to be told where the token is.
        let mut env = String::new();
        if data_dir != std::path::Path::new(".agentcom") {
            env.push_str(&format!("AGENTCOM_TOKEN_FILE={} ", admin_token.display()));
        }
        // The binaries beside this one, as they can be typed from here.
        let beside = |name: &str| {
            let path = std::env::current_exe().ok()?.with_file_name(name);
            let here = std::env::current_dir().ok()?;
            path.exists().then(|| match path.strip_prefix(&here) {
                Ok(relative) => relative.display().to_string(),
                Err(_) => path.display().to_string(),
            })
        };
        let hubctl = beside("hubctl").unwrap_or_else(|| "cargo run --release --bin hubctl --".into());
        eprintln!("  try:  {env}{hubctl} submit --wait -- echo hello");
        if ca.is_none() {
            let sidecar =
                beside("agentcom-sidecar").unwrap_or_else(|| "cargo run --release --bin agentcom-sidecar --".into());
            eprintln!("  more sidecars:  {sidecar} run --hub {url} --token-file {}", join_token.display());
        }
    }
    eprintln!();
}

/// A size as people write it: `20GiB`, `500MiB`, `64KiB`, `1.5GB`, `1048576` (bytes).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let number: f64 = number.parse().map_err(|_| format!("{text:?}: expected a size such as 20GiB or 500MiB"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)")),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("{text:?}: too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_as_people_write_them() {
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("500 MiB"), Ok(500 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").unwrap_err().contains("unknown unit"));
    }
}
