//! `agentcom-hub`: `serve` runs the hub; `dev` runs it with a local sidecar for trying things out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentcom_hub::auth::Role;
use agentcom_hub::core;
use agentcom_hub::domain::SpecDefaults;
use agentcom_hub::server::{self, DataDir};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "agentcom-hub", version, about = "The AgentCom hub: durable task queue, fleet registry, admin APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(HubArgs),
    /// Run the hub with one local sidecar, for development and demos.
    Dev {
        #[command(flatten)]
        hub: HubArgs,
        /// Tasks the local sidecar runs at once.
        #[arg(long, default_value_t = 4)]
        slots: u32,
    },
}

#[derive(clap::Args)]
struct HubArgs {
    /// Where the database and token files live.
    #[arg(long, env = "AGENTCOM_DATA_DIR", default_value = ".agentcom")]
    data_dir: PathBuf,
    /// Address for gRPC and HTTP (one port).
    #[arg(long, env = "AGENTCOM_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// How often sidecars heartbeat, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    heartbeat_interval_ms: u64,
    /// A lease not renewed for this long expires (and its task is requeued), in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    lease_ttl_ms: u64,
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
}

impl HubArgs {
    fn core_config(&self) -> anyhow::Result<core::Config> {
        anyhow::ensure!(self.heartbeat_interval_ms >= 50, "--heartbeat-interval-ms must be at least 50");
        anyhow::ensure!(
            self.lease_ttl_ms >= 2 * self.heartbeat_interval_ms,
            "--lease-ttl-ms must be at least twice --heartbeat-interval-ms"
        );
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
            spec_defaults: SpecDefaults {
                max_attempts: self.max_attempts,
                max_output_bytes: self.max_output_bytes,
                backoff_base_ms: self.retry_backoff_base_ms,
                backoff_max_ms: self.retry_backoff_max_ms,
            },
            aging_step: Duration::from_millis(self.aging_step_ms),
            idempotency_retention: Duration::from_millis(self.idempotency_retention_ms),
            ..core::Config::default()
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args, None).await,
        Command::Dev { hub, slots } => serve(hub, Some(slots)).await,
    }
}

/// Runs the hub; with `dev_slots`, also a sidecar in this process that stops with it.
async fn serve(args: HubArgs, dev_slots: Option<u32>) -> anyhow::Result<()> {
    let mut config = args.core_config()?;
    config.cancel_inflight_on_shutdown = dev_slots.is_some();
    let data_dir = DataDir::new(&args.data_dir);
    let store = data_dir.open().with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
    let tokens = server::ensure_tokens(&data_dir, &store)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is another hub running?)", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");

    let stop_hub = tokio_util::sync::CancellationToken::new();
    let hub_stopped = stop_hub.clone();
    let hub = tokio::spawn(server::run(listener, store, tokens, config, async move { hub_stopped.cancelled().await }));

    let sidecar = match dev_slots {
        None => None,
        Some(slots) => {
            let token = std::fs::read_to_string(data_dir.token_file(Role::Join))?.trim().to_owned();
            let work_dir = std::env::current_dir()?;
            let hostname = agentcom_sidecar::hostname();
            let allow: Vec<String> = agentcom_sidecar::DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect();
            let config = agentcom_sidecar::Config {
                hub_url: url.clone(),
                token,
                sidecar_id: agentcom_sidecar::default_sidecar_id(&hostname),
                hostname,
                slots,
                tags: vec!["dev".to_owned()],
                shell: agentcom_sidecar::shell_settings(work_dir, std::env::vars(), &allow),
                default_max_output_bytes: args.max_output_bytes as usize,
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let stopped = stop.clone();
            let join = tokio::spawn(agentcom_sidecar::run(config, async move { stopped.cancelled().await }));
            Some((stop, join))
        }
    };

    let admin_token = data_dir.token_file(Role::Admin);
    let join_token = data_dir.token_file(Role::Join);
    eprintln!();
    eprintln!("  AgentCom hub on {url}");
    eprintln!("  admin token: {}", admin_token.display());
    eprintln!("  join token:  {}", join_token.display());
    if dev_slots.is_some() {
        // hubctl finds ./.agentcom/admin.token and the default address by itself; say what else it needs.
        let mut env = String::new();
        if url != "http://127.0.0.1:7420" {
            env.push_str(&format!("AGENTCOM_HUB={url} "));
        }
        if args.data_dir != std::path::Path::new(".agentcom") {
            env.push_str(&format!("AGENTCOM_TOKEN=$(cat {}) ", admin_token.display()));
        }
        eprintln!("  try:  {env}cargo run --release --bin hubctl -- submit --wait -- echo hello");
        eprintln!("  more sidecars:  agentcom-sidecar run --hub {url} --token-file {}", join_token.display());
    }
    eprintln!();

    agentcom_sidecar::shutdown_signal().await;
    eprintln!("shutting down (Ctrl-C again to force)");
    tokio::spawn(async {
        agentcom_sidecar::shutdown_signal().await;
        std::process::exit(130);
    });
    // The hub first: it cancels in-flight work and waits for the local sidecar to report it.
    stop_hub.cancel();
    hub.await.context("hub task")??;
    if let Some((stop, join)) = sidecar {
        stop.cancel();
        join.await.context("sidecar task")??;
    }
    Ok(())
}
