//! `agentcom-sidecar run`: joins a hub and runs its work on this machine.

use std::path::PathBuf;

use agentcom_sidecar::runners::shell;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agentcom-sidecar", version, about = "Runs AgentCom work on this machine for a hub")]
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
    /// Dial out to the hub and run the work it assigns.
    Run(Box<RunArgs>),
    /// Trade a join token for this sidecar's own certificate, kept in the state directory, and exit.
    Enroll(EnrollArgs),
    /// Read a repository and print, as JSON, what it needs to run: its stacks, install commands,
    /// services with their ports and health checks, dependencies and environment. Runs nothing.
    Detect {
        /// The repository's directory.
        #[arg(default_value = ".")]
        path: std::path::PathBuf,
    },
    /// The steps of the built-in repo-up workflow that run in a repository's kept environment.
    #[command(subcommand)]
    Repo(RepoCommand),
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Print, as JSON, the environment's directory, commit and host, its plan (each service with
    /// its `command` and `probe`) and its phase records.
    Status {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run the install commands (the plan's, or AGENTCOM_INSTALL as a JSON list) unless the
    /// environment's records say they succeeded here; record them once they do.
    Setup {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Start every planned service on free ports, wait for each to answer its probe, stop them;
    /// exit 0 when all were ready.
    Check {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// How long the services have to become ready.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        within: std::time::Duration,
    },
}

#[derive(clap::Args)]
struct EnrollArgs {
    /// Hub URL: https://HOST:7420 or quic://HOST:7421.
    #[arg(long, env = "AGENTCOM_HUB")]
    hub: String,
    /// The join token `hubctl join-token create` printed (acj_...); it can be used as often as
    /// it was made for, and the hub keeps only its hash. Prefer AGENTCOM_JOIN or --join-file: a
    /// command line is readable by every local user.
    #[arg(long, env = "AGENTCOM_JOIN", hide_env_values = true, required_unless_present = "join_file")]
    join: Option<String>,
    /// Read the join token from this file (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    join_file: Option<PathBuf>,
    /// Where the identity is kept (identity/: key.pem 0600, cert.pem, ca.pem, id).
    #[arg(long)]
    state_dir: PathBuf,
    /// The host name the hub makes the sidecar id from [default: this machine's].
    #[arg(long)]
    hostname: Option<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Hub URL: https://HOST:7420 (TLS), quic://HOST:7421 (QUIC), or http:// for a plaintext hub.
    #[arg(long, env = "AGENTCOM_HUB", default_value = "http://127.0.0.1:7420")]
    hub: String,
    /// A join token (acj_..., from `hubctl join-token create`): the sidecar enrols with it when
    /// its state directory holds no identity yet, and ignores it after. Prefer AGENTCOM_JOIN or
    /// --join-file: a command line is readable by every local user.
    #[arg(long, env = "AGENTCOM_JOIN", hide_env_values = true)]
    join: Option<String>,
    /// Read the join token from this file (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    join_file: Option<PathBuf>,
    /// The hub's bootstrap join token (its data directory's `join.token`), for a sidecar that
    /// does not enrol (a plaintext hub on loopback). Prefer AGENTCOM_TOKEN or --token-file.
    #[arg(long, env = "AGENTCOM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The hub CA's SHA-256 to pin when the bootstrap token is used over https:// or quic://.
    #[arg(long, env = "AGENTCOM_CA_FINGERPRINT", value_name = "HEX")]
    ca_fingerprint: Option<String>,
    /// Read the join token from this file.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Tasks run at once (one agent each).
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// The host name the sidecar reports, and enrols under [default: this machine's].
    #[arg(long)]
    hostname: Option<String>,
    /// Sidecar id [default: kept in the state directory, made from the host name and a random
    /// suffix on first start].
    #[arg(long)]
    id: Option<String>,
    /// Where the sidecar keeps its id and its record of running tasks [default: WORK_DIR/.agentcom-sidecar].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How task processes are contained: auto (cgroup v2 where the sidecar can make cgroups,
    /// else a subreaper), cgroup (refuse to start without), subreaper.
    #[arg(long, default_value = "auto")]
    containment: agentcom_sidecar::contain::Preference,
    /// A directory outside the work directory that tasks may name as their cwd (repeatable).
    #[arg(long = "allow-cwd", value_name = "PATH")]
    allow_cwd: Vec<PathBuf>,
    /// A repository tasks may name as context.repository (repeatable): a local path (those
    /// under it are allowed too) or a URL prefix. Such work runs in a git working copy of its own.
    #[arg(long = "repo-allow", value_name = "PATH|URL")]
    repo_allow: Vec<String>,
    /// The Claude Code CLI agent work runs on [default: `claude` on the PATH, if there]. It
    /// runs with its own login, in the task's workspace and sandbox.
    #[arg(long, value_name = "PATH")]
    claude: Option<PathBuf>,
    /// Push each branch of successful work (agentcom/TASK_ID) to the repository it came from,
    /// with this machine's git credentials. A failed push is reported; the result stands.
    #[arg(long)]
    push_branches: bool,
    /// Serve this sidecar's Prometheus metrics at http://ADDR/metrics (its link, its tasks, its
    /// LLM requests); off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How long the workspace of a failed attempt is kept for a look (e.g. 24h, 30m).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    keep_failed_workspaces: std::time::Duration,
    /// A secret tasks may ask for by name in secret_env, read from FILE when a task starts (repeatable).
    #[arg(long = "secret", value_name = "NAME=FILE")]
    secrets: Vec<String>,
    /// Run tasks as this unprivileged user (the sidecar itself usually runs as root for cgroups).
    /// All tasks share it: one can read another's environment and files, and signal it; prefer
    /// --run-as-range.
    #[arg(long, value_name = "USER", conflicts_with = "run_as_range")]
    run_as: Option<String>,
    /// Run each task as a uid of its own from this range (e.g. 61000-61999; no accounts needed,
    /// none may use them), in a private directory of its own: tasks cannot read each other's
    /// environment or files, nor signal each other. Needs root, and at least as many uids as slots.
    #[arg(long, value_name = "FIRST-LAST")]
    run_as_range: Option<agentcom_sidecar::users::UidRange>,
    /// Read the Claude API key from this file instead of ANTHROPIC_API_KEY.
    #[arg(long, value_name = "FILE")]
    anthropic_key_file: Option<PathBuf>,
    /// Read the OpenAI-compatible server's key from this file instead of OPENAI_API_KEY.
    #[arg(long, value_name = "FILE")]
    openai_key_file: Option<PathBuf>,
    /// Tags the scheduler can match (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Directory tasks run in unless they name one.
    #[arg(long, default_value = ".")]
    work_dir: PathBuf,
    /// Environment variables tasks inherit from the sidecar (repeatable); replaces the default list.
    #[arg(long = "env-allow")]
    env_allow: Vec<String>,
    /// Output kept per stream for tasks that set no cap, in bytes.
    #[arg(long, default_value_t = agentcom_sidecar::DEFAULT_MAX_OUTPUT_BYTES)]
    max_output_bytes: usize,
    /// How often to report CPU, memory, disks and GPUs, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    resources_interval_ms: u64,
    /// Report N synthetic GPUs instead of reading NVML (development and demos; shown as simulated).
    #[arg(long, default_value_t = 0, value_name = "N")]
    simulate_gpus: u32,
    /// An Ollama server this sidecar may use (repeatable); reported up or down.
    #[arg(long = "ollama", value_name = "URL")]
    ollama: Vec<String>,
    /// Do not look for Ollama at http://127.0.0.1:11434.
    #[arg(long)]
    no_ollama_discovery: bool,
    /// Requests each Ollama server runs at once, as its OLLAMA_NUM_PARALLEL says; the hub's
    /// placement counts the wait behind requests in flight with it [default: 1].
    #[arg(long, env = "OLLAMA_NUM_PARALLEL", value_name = "N")]
    ollama_parallel: Option<u32>,
    /// How often to check LLM endpoints, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    llm_check_interval_ms: u64,
    #[command(flatten)]
    openai: agentcom_sidecar::reports::OpenAiArgs,
    /// Claude models to offer when ANTHROPIC_API_KEY is set (repeatable).
    #[arg(long = "anthropic-model", value_name = "MODEL")]
    anthropic_models: Vec<String>,
    /// Where the Claude API is (a gateway or proxy in front of it).
    #[arg(long, value_name = "URL", default_value = agentcom_sidecar::reports::ANTHROPIC_URL)]
    anthropic_base_url: String,
    /// Print `ready` on standard output once set up (containment ready, what an earlier run
    /// left behind killed), before dialing the hub: for a parent that must not serve before
    /// (`agentcom-hub dev`).
    #[arg(long, hide = true)]
    notify_ready: bool,
}

impl RunArgs {
    fn reports(&self) -> anyhow::Result<agentcom_sidecar::reports::Settings> {
        use agentcom_sidecar::reports::{self, Anthropic};
        anyhow::ensure!(self.resources_interval_ms >= 100, "--resources-interval-ms must be at least 100");
        anyhow::ensure!(self.llm_check_interval_ms >= 100, "--llm-check-interval-ms must be at least 100");
        anyhow::ensure!(self.simulate_gpus <= 64, "--simulate-gpus must be at most 64");
        anyhow::ensure!(
            self.ollama_parallel.is_none_or(|n| (1..=1_024).contains(&n)),
            "--ollama-parallel (or OLLAMA_NUM_PARALLEL) must be 1 to 1024"
        );
        for url in self.ollama.iter().chain([&self.anthropic_base_url]) {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "{url:?} must start with http:// or https://"
            );
        }
        let key = |name: &str, file: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
            let key = match file {
                Some(path) => agentcom_process::secure::read_key_file(path).map(Some).map_err(anyhow::Error::msg)?,
                None => std::env::var(name).ok().filter(|k| !k.trim().is_empty()),
            };
            if let Some(key) = &key {
                agentcom_process::logging::redact(key); // No log line carries it.
            }
            Ok(key)
        };
        let anthropic = key("ANTHROPIC_API_KEY", &self.anthropic_key_file)?.map(|api_key| Anthropic {
            api_key,
            base_url: self.anthropic_base_url.trim_end_matches('/').to_owned(),
            models: if self.anthropic_models.is_empty() {
                reports::DEFAULT_ANTHROPIC_MODELS.iter().map(|m| m.to_string()).collect()
            } else {
                self.anthropic_models.clone()
            },
        });
        let openai_key = key("OPENAI_API_KEY", &self.openai_key_file)?;
        let openai = self.openai.openai(openai_key).map_err(anyhow::Error::msg)?;
        Ok(reports::Settings {
            resources_every: std::time::Duration::from_millis(self.resources_interval_ms),
            simulate_gpus: self.simulate_gpus,
            llm_check_every: std::time::Duration::from_millis(self.llm_check_interval_ms),
            ollama: self.ollama.clone(),
            discover_ollama: !self.no_ollama_discovery,
            ollama_parallel: self.ollama_parallel.unwrap_or(0),
            openai,
            anthropic,
        })
    }
}

fn main() -> std::process::ExitCode {
    let log_format = agentcom_process::logging::LogFormat::from_args();
    agentcom_sidecar::contain::watchdog_main_if_requested();
    agentcom_process::binary_main(&env_allowlist_from_args(), log_format, agentcom_sidecar::exit_code, run)
}

/// The task environment allowlist, read from the arguments before clap runs (the environment
/// isolation needs it first): every `--env-allow NAME` / `--env-allow=NAME`, or the default list.
fn env_allowlist_from_args() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    let mut allow = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--env-allow" {
            allow.extend(iter.next().cloned());
        } else if let Some(name) = arg.strip_prefix("--env-allow=") {
            allow.push(name.to_owned());
        }
    }
    if allow.is_empty() {
        allow = agentcom_process::secure::DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect();
    }
    allow
}

/// A token from its file (`-`: standard input), trimmed.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the token from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?
    };
    Ok(text.trim().to_owned())
}

/// A token given as a command-line argument is readable by every local user, tasks included,
/// in /proc/PID/cmdline: said once, with what to use instead.
fn warn_of_tokens_on_the_command_line(matches: &clap::ArgMatches) {
    let Some((_, args)) = matches.subcommand() else { return };
    for (id, instead) in [("join", "AGENTCOM_JOIN or --join-file"), ("token", "AGENTCOM_TOKEN or --token-file")] {
        if args.try_get_raw(id).ok().flatten().is_some()
            && args.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        {
            tracing::warn!(
                "--{id} on the command line is readable by every user of this machine (/proc/PID/cmdline); use {instead}"
            );
        }
    }
}

async fn run() -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    warn_of_tokens_on_the_command_line(&matches);
    let _traces = agentcom_process::start_traces("agentcom-sidecar", cli.otlp_endpoint.as_deref())?;
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Detect { path } => {
            let plan = agentcom_sidecar::detect::detect(&path)?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
            return Ok(());
        }
        Command::Repo(RepoCommand::Status { dir }) => {
            println!("{}", serde_json::to_string_pretty(&agentcom_sidecar::repo::status(&dir)?)?);
            return Ok(());
        }
        Command::Repo(RepoCommand::Setup { dir }) => return agentcom_sidecar::repo::setup(&dir),
        Command::Repo(RepoCommand::Check { dir, within }) => {
            anyhow::ensure!(agentcom_sidecar::repo::check(&dir, within)?, "not every service became ready");
            return Ok(());
        }
        Command::Enroll(args) => {
            let hostname = args.hostname.unwrap_or_else(agentcom_sidecar::hostname);
            let join = match (args.join, &args.join_file) {
                (_, Some(path)) => read_token(path)?,
                (Some(join), None) => join,
                (None, None) => anyhow::bail!("no join token: give AGENTCOM_JOIN, --join-file or --join"),
            };
            let identity = agentcom_sidecar::enrol::enroll(&args.hub, &join, &args.state_dir, &hostname).await?;
            println!("{}", identity.sidecar_id);
            eprintln!(
                "enrolled as {}; its identity is in {}",
                identity.sidecar_id,
                agentcom_link::pki::Identity::dir(&args.state_dir).display()
            );
            return Ok(());
        }
    };
    let reports = args.reports()?;
    let notify_ready = args.notify_ready;
    let token = match (args.token, args.token_file) {
        (Some(token), _) => token,
        (None, Some(path)) => read_token(&path)?,
        (None, None) => String::new(),
    };
    let ca_fingerprint = args.ca_fingerprint.as_deref().map(agentcom_link::Fingerprint::parse).transpose()?;
    let work_dir = shell::resolve_work_dir(&args.work_dir)
        .with_context(|| format!("work directory {}", args.work_dir.display()))?;
    let allow: Vec<String> = if args.env_allow.is_empty() {
        agentcom_process::secure::DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect()
    } else {
        args.env_allow
    };
    let mut allow_cwd = Vec::new();
    for dir in &args.allow_cwd {
        allow_cwd.push(std::fs::canonicalize(dir).with_context(|| format!("--allow-cwd {}", dir.display()))?);
    }
    let mut secrets = std::collections::BTreeMap::new();
    for secret in &args.secrets {
        let (name, file) = secret.split_once('=').with_context(|| format!("--secret {secret:?} must be NAME=FILE"))?;
        anyhow::ensure!(!name.is_empty() && !file.is_empty(), "--secret {secret:?} must be NAME=FILE");
        let file = std::fs::canonicalize(file).with_context(|| format!("--secret {name}: the file {file}"))?;
        secrets.insert(name.to_owned(), file);
    }
    let claude = match &args.claude {
        Some(path) => Some(std::fs::canonicalize(path).with_context(|| format!("--claude {}", path.display()))?),
        None => None,
    };
    let run_as = args.run_as.as_deref().map(shell::RunAs::lookup).transpose().map_err(anyhow::Error::msg)?;
    let state_dir = args.state_dir.clone().unwrap_or_else(|| work_dir.join(".agentcom-sidecar"));
    // An empty AGENTCOM_JOIN (a compose file's unset variable) is no token.
    let join = match &args.join_file {
        Some(path) => Some(read_token(path)?),
        None => args.join.clone(),
    };
    let join = join.filter(|join| !join.trim().is_empty());
    if let Some(join) = &join
        && agentcom_link::pki::Identity::load(&state_dir)?.is_none()
    {
        // Checked before the token is spent: enrolment would give another id.
        if let Some(id) = &args.id {
            anyhow::bail!(
                "--id {id} cannot be used with a join token: an enrolled sidecar's id is the one the hub gives its                  certificate (made from --hostname); leave out --id, or give --hostname instead"
            );
        }
        let hostname = args.hostname.clone().unwrap_or_else(agentcom_sidecar::hostname);
        agentcom_sidecar::enrol::enroll(&args.hub, join, &state_dir, &hostname).await?;
    }
    let mut config = agentcom_sidecar::Config::builder(args.hub, token, work_dir)
        .ca_fingerprint(ca_fingerprint)
        .slots(args.slots)
        .tags(args.tags)
        .env_allow(&allow)
        .shell(|shell| {
            shell.allow_cwd = allow_cwd;
            shell.secrets = secrets;
            shell.run_as = run_as;
            shell.run_as_range = args.run_as_range;
            shell.repo_allow = args.repo_allow.clone();
            shell.keep_failed_workspaces = args.keep_failed_workspaces;
            shell.push_branches = args.push_branches;
            shell.claude = claude;
        })
        .containment(args.containment)
        .state_dir(state_dir)
        .max_output_bytes(args.max_output_bytes)
        .metrics_listen(args.metrics_listen)
        .reports(reports);
    if let Some(id) = args.id {
        config = config.sidecar_id(id);
    }
    if let Some(hostname) = args.hostname {
        config = config.hostname(hostname);
    }
    let config = config.build()?;
    if notify_ready {
        let prepared = agentcom_sidecar::prepare(&config).await?;
        println!("ready");
        agentcom_sidecar::run_prepared(config, prepared, agentcom_process::shutdown_signal()).await?;
    } else {
        agentcom_sidecar::run(config, agentcom_process::shutdown_signal()).await?;
    }
    Ok(())
}
