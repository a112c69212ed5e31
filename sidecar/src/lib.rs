//! The AgentCom sidecar: dials out to the hub over one gRPC stream, runs the work it is
//! assigned, and streams progress and results back.
//!
//! [`run`] is the whole sidecar ([`prepare`] then [`run_prepared`], which `dev` calls apart so
//! that leftovers of a crash are killed before its hub serves); the binary only parses flags
//! into a [`Config`] (through [`Config::builder`], as `dev` and the test harness do). [`runners`]
//! run the work that [`job`] describes, `verify` checks it, `link` owns the stream to the hub
//! (protobuf appears there and in `enrol` only). The sidecar never listens on a port, except
//! for its metrics when asked (`--metrics-listen`).

pub mod attempt;
pub mod contain;
pub mod detect;
pub mod enrol;
pub mod job;
mod link;
pub mod metrics;
pub mod repo;
pub mod reports;
pub mod resources;
pub mod runners;
pub mod service;
mod spans;
pub mod state;
pub mod users;
pub mod verify;
pub mod workspace;

use std::future::Future;
use std::path::PathBuf;

use runners::shell;

pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Config {
    /// `http://host:port` of the hub.
    pub hub_url: String,
    /// The hub's bootstrap join token (or an admin token); empty for an enrolled sidecar, which
    /// authenticates with its certificate.
    pub token: String,
    /// The hub CA to pin for `https://` and `quic://` when the sidecar has no identity (an
    /// identity pins the CA it was enrolled by).
    pub ca_fingerprint: Option<agentcom_link::Fingerprint>,
    /// The identity the sidecar enrolled for, from its state directory.
    pub identity: Option<std::sync::Arc<agentcom_link::pki::Identity>>,
    /// Stable for this process; a reconnect reuses it so the hub keeps its leases.
    pub sidecar_id: String,
    pub hostname: String,
    pub slots: u32,
    pub tags: Vec<String>,
    pub shell: shell::Options,
    /// How task processes are contained.
    pub containment: contain::Preference,
    /// Where running attempts are recorded (and the next start cleans up after a crash);
    /// `None` keeps no records.
    pub state_dir: Option<std::path::PathBuf>,
    /// Output cap per stream for tasks that do not set one.
    pub default_max_output_bytes: usize,
    /// Resource reports and the LLM inventory.
    pub reports: reports::Settings,
    /// Serve `/metrics` here (`--metrics-listen`); `None`: no metrics server.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("enrolment: {0}")]
    Enrol(String),
    /// The hub revoked this sidecar's identity: it stops and must be enrolled again.
    #[error("{0}")]
    Revoked(String),
}

impl Error {
    /// The exit status for this error: 78 (EX_CONFIG) for a revoked identity, so that systemd
    /// does not restart it (`RestartPreventExitStatus=78`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Revoked(_) => 78,
            _ => 1,
        }
    }
}

impl Config {
    /// A configuration for a sidecar of the hub at `hub_url` that runs work in `work_dir`, with
    /// every other setting at its default.
    pub fn builder(hub_url: impl Into<String>, token: impl Into<String>, work_dir: PathBuf) -> ConfigBuilder {
        let allow: Vec<String> =
            agentcom_process::secure::DEFAULT_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect();
        ConfigBuilder {
            hub_url: hub_url.into(),
            token: token.into(),
            ca_fingerprint: None,
            sidecar_id: None,
            hostname: None,
            slots: 4,
            tags: Vec::new(),
            shell: shell::Options::new(work_dir, std::env::vars(), &allow),
            containment: contain::Preference::Auto,
            state_dir: None,
            default_max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            reports: reports::Settings::default(),
            metrics_listen: None,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let url = agentcom_link::connect::HubUrl::parse(&self.hub_url).map_err(|err| Error::Config(err.to_string()))?;
        if self.identity.is_none() {
            if url.is_encrypted() && self.ca_fingerprint.is_none() {
                return Err(Error::Config(format!(
                    "{} is encrypted and this sidecar has not enrolled: give a join token (--join acj_..., from `hubctl join-token create`)",
                    self.hub_url
                )));
            }
            if self.token.trim().is_empty() {
                return Err(Error::Config(
                    "no credential: enrol with --join (an https:// or quic:// hub), or give the hub's join.token (--token-file)".into(),
                ));
            }
        }
        if self.slots == 0 || self.slots > 1024 {
            return Err(Error::Config(format!("slots must be between 1 and 1024, not {}", self.slots)));
        }
        Ok(())
    }
}

/// Builds a [`Config`]; see [`Config::builder`].
#[must_use]
pub struct ConfigBuilder {
    hub_url: String,
    token: String,
    ca_fingerprint: Option<agentcom_link::Fingerprint>,
    sidecar_id: Option<String>,
    hostname: Option<String>,
    slots: u32,
    tags: Vec<String>,
    shell: shell::Options,
    containment: contain::Preference,
    state_dir: Option<PathBuf>,
    default_max_output_bytes: usize,
    reports: reports::Settings,
    metrics_listen: Option<std::net::SocketAddr>,
}

impl ConfigBuilder {
    /// The sidecar's id [default: the one kept in the state directory, else a new one].
    pub fn sidecar_id(mut self, id: impl Into<String>) -> ConfigBuilder {
        self.sidecar_id = Some(id.into());
        self
    }

    /// The hub CA to pin for an encrypted URL, for a sidecar that has not enrolled (`dev`'s own).
    pub fn ca_fingerprint(mut self, ca: Option<agentcom_link::Fingerprint>) -> ConfigBuilder {
        self.ca_fingerprint = ca;
        self
    }

    /// [default: the machine's host name]
    pub fn hostname(mut self, hostname: impl Into<String>) -> ConfigBuilder {
        self.hostname = Some(hostname.into());
        self
    }

    /// Tasks run at once [default: 4].
    pub fn slots(mut self, slots: u32) -> ConfigBuilder {
        self.slots = slots;
        self
    }

    pub fn tags(mut self, tags: Vec<String>) -> ConfigBuilder {
        self.tags = tags;
        self
    }

    /// The variables tasks inherit from the sidecar's environment [default: `agentcom_process::secure::DEFAULT_ENV_ALLOWLIST`].
    pub fn env_allow(mut self, allow: &[String]) -> ConfigBuilder {
        self.shell.base_env = shell::allowlisted_env(std::env::vars(), allow);
        self
    }

    /// Changes the shell settings (allowed directories, secrets, the user tasks run as).
    pub fn shell(mut self, change: impl FnOnce(&mut shell::Options)) -> ConfigBuilder {
        change(&mut self.shell);
        self
    }

    /// [default: cgroups where they can be made, else a subreaper]
    pub fn containment(mut self, containment: contain::Preference) -> ConfigBuilder {
        self.containment = containment;
        self
    }

    /// Where the id and the running attempts are kept [default: none, nothing is kept].
    pub fn state_dir(mut self, dir: PathBuf) -> ConfigBuilder {
        self.state_dir = Some(dir);
        self
    }

    /// Output kept per stream for tasks that set no cap [default: 1 MiB].
    pub fn max_output_bytes(mut self, bytes: usize) -> ConfigBuilder {
        self.default_max_output_bytes = bytes;
        self
    }

    pub fn reports(mut self, reports: reports::Settings) -> ConfigBuilder {
        self.reports = reports;
        self
    }

    /// Serves the sidecar's `/metrics` at `addr` [default: nowhere].
    pub fn metrics_listen(mut self, addr: Option<std::net::SocketAddr>) -> ConfigBuilder {
        self.metrics_listen = addr;
        self
    }

    /// The configuration, with the id read from (or first written to) the state directory when
    /// none was given; checked.
    pub fn build(self) -> Result<Config, Error> {
        let hostname = self.hostname.unwrap_or_else(hostname);
        // An enrolled sidecar's id is the one its certificate was issued for.
        let identity = match &self.state_dir {
            Some(dir) => agentcom_link::pki::Identity::load(dir).map_err(|err| Error::Config(err.to_string()))?,
            None => None,
        };
        let sidecar_id = match (self.sidecar_id, &self.state_dir, &identity) {
            (Some(id), _, Some(identity)) if id != identity.sidecar_id => {
                return Err(Error::Config(format!(
                    "--id {id}: this state directory holds the identity of sidecar {}, and a sidecar's id is its certificate's",
                    identity.sidecar_id
                )));
            }
            (_, _, Some(identity)) => identity.sidecar_id.clone(),
            (Some(id), _, None) => id,
            (None, Some(dir), None) => state::StateDir::open(dir)
                .and_then(|state| state.sidecar_id(|| default_sidecar_id(&hostname)))
                .map_err(|err| Error::Config(format!("keeping the sidecar id in {}: {err}", dir.display())))?,
            (None, None, _) => default_sidecar_id(&hostname),
        };
        let config = Config {
            hub_url: self.hub_url,
            token: self.token,
            ca_fingerprint: self.ca_fingerprint,
            identity: identity.map(std::sync::Arc::new),
            sidecar_id,
            hostname,
            slots: self.slots,
            tags: self.tags,
            shell: self.shell,
            containment: self.containment,
            state_dir: self.state_dir,
            default_max_output_bytes: self.default_max_output_bytes,
            reports: self.reports,
            metrics_listen: self.metrics_listen,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The machine's host name, or "localhost" when it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

/// A sidecar id unique to this process: the host name and a random suffix.
pub fn default_sidecar_id(hostname: &str) -> String {
    let clean: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .take(96)
        .collect();
    format!("{clean}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// A future boxed where it is made. The entry points below return their futures boxed so that
/// their bodies are compiled once, in this crate, and not again in each binary that awaits them
/// (release builds do not share generic code between crates: boxing here cut about a minute of
/// CPU from a clean build).
pub type Boxed<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs the sidecar until `shutdown` completes; running work is then cancelled and reported.
pub fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Boxed<Result<(), Error>> {
    run_boxed(config, Box::pin(shutdown))
}

fn run_boxed(config: Config, shutdown: Boxed<()>) -> Boxed<Result<(), Error>> {
    Box::pin(async move {
        let prepared = prepare_inner(config.clone()).await?;
        run_prepared_inner(config, prepared, shutdown).await
    })
}

/// A sidecar whose containment is set up and whose earlier run's leftovers are dead.
pub struct Prepared {
    settings: shell::Settings,
    workspaces: std::sync::Arc<workspace::Workspaces>,
    /// A durable sidecar's claim on its id on this machine, held while it runs.
    _claim: Option<state::IdClaim>,
}

impl Prepared {
    /// The runners this sidecar has: shell, and LLM work when it has a provider (configured, or
    /// a local Ollama that answers at start), which also judges `llm_judge` steps.
    async fn runners(&self, config: &Config, latest: &reports::Latest) -> runners::Runners {
        let mut runners = runners::Runners::default()
            .with(runners::ShellRunner { settings: self.settings.clone() })
            .with(runners::service::ServiceRunner { settings: self.settings.clone(), ports: Default::default() })
            .with_workspaces(self.workspaces.clone())
            .with_users(self.settings.users.clone());
        let mut verifier = crate::verify::Verifier::new(self.settings.clone());
        let mut settings = config.reports.clone();
        if settings.ollama.is_empty() && settings.discover_ollama {
            let found = agentcom_llm::probe_ollama(&agentcom_llm::client(), reports::DEFAULT_OLLAMA_URL).await;
            if found.healthy {
                settings.ollama.push(reports::DEFAULT_OLLAMA_URL.to_owned());
            }
        }
        let has_models = runners::llm::LlmRunner::configured(&settings);
        if has_models {
            let llm: std::sync::Arc<dyn job::Runner> = std::sync::Arc::new(runners::llm::LlmRunner::new(
                settings.clone(),
                latest.models.clone(),
                latest.in_flight.clone(),
            ));
            verifier = verifier.judging_with(llm.clone());
            runners = runners.with_shared(llm);
        }
        // Agent work runs on Claude Code where its CLI is (--claude, or `claude` on the PATH),
        // else as a tool-calling loop on this sidecar's models (Ollama, OpenAI-compatible, Claude).
        let options = &self.settings.options;
        let path = options.base_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or_default();
        let claude = options.claude.clone().or_else(|| runners::claude::find_on_path(path));
        if let Some(program) = claude {
            tracing::info!(program = %program.display(), "agent work runs on Claude Code");
            runners = runners.with(runners::claude::ClaudeCodeRunner { settings: self.settings.clone(), program });
        } else if has_models {
            runners = runners.with(runners::agent::AgentLoopRunner {
                settings: self.settings.clone(),
                providers: settings,
                inventory: latest.models.clone(),
                in_flight: latest.in_flight.clone(),
                client: agentcom_llm::chat::client(),
            });
        }
        runners.verifying_with(verifier)
    }
}

/// Runs a sidecar that [`prepare`] made ready.
pub fn run_prepared(
    config: Config,
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Boxed<Result<(), Error>> {
    run_prepared_boxed(config, prepared, Box::pin(shutdown))
}

fn run_prepared_boxed(config: Config, prepared: Prepared, shutdown: Boxed<()>) -> Boxed<Result<(), Error>> {
    Box::pin(run_prepared_inner(config, prepared, shutdown))
}

async fn run_prepared_inner(config: Config, prepared: Prepared, shutdown: Boxed<()>) -> Result<(), Error> {
    let containment = prepared.settings.containment.clone();
    let summary = containment.summary().describe();
    // Reports run beside the link whether or not a session is open; the LLM runner reads the
    // same inventory the hub is sent.
    let stop_reports = tokio_util::sync::CancellationToken::new();
    let latest = reports::start(&config.sidecar_id, config.reports.clone(), stop_reports.clone());
    let runners = prepared.runners(&config, &latest).await;
    let metrics = metrics::Metrics::new(&config.sidecar_id);
    if let Some(addr) = config.metrics_listen {
        let listener = metrics::bind(addr).await.map_err(Error::Config)?;
        tokio::spawn(metrics::serve(listener, metrics.clone(), latest.resources.clone(), stop_reports.clone()));
    }
    // Failed attempts' workspaces are kept a while for a look, then swept: now and hourly.
    let workspaces = prepared.workspaces.clone();
    let sweeping = stop_reports.clone();
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = hourly.tick() => {}
                _ = sweeping.cancelled() => return,
            }
            tokio::task::spawn_blocking({
                let workspaces = workspaces.clone();
                move || workspaces.sweep()
            })
            .await
            .ok();
        }
    });
    let result = link::Link::new(config, runners, summary, latest, metrics).run(shutdown).await;
    stop_reports.cancel();
    // A clean stop: running work was cancelled and reported, so the watchdog has nothing to do.
    containment.release_watchdog();
    result
}

/// Checks the configuration, sets up containment, and kills whatever an earlier run of this
/// sidecar left behind, before the sidecar says hello (so the hub may run those tasks again).
/// `dev` calls this before its hub starts serving.
pub fn prepare(config: &Config) -> Boxed<Result<Prepared, Error>> {
    Box::pin(prepare_inner(config.clone()))
}

async fn prepare_inner(config: Config) -> Result<Prepared, Error> {
    let config = &config;
    agentcom_process::install_crypto_provider();
    config.validate()?;
    let durable = config.state_dir.is_some();
    // Before anything is touched: a durable sidecar kills what an earlier run of its id left
    // behind, which must never be another sidecar's running work.
    let claim = durable.then(|| state::IdClaim::take(&config.sidecar_id)).transpose().map_err(Error::Config)?;
    let containment =
        contain::Containment::setup(&config.sidecar_id, config.containment, durable).map_err(Error::Config)?;
    let state = match &config.state_dir {
        Some(dir) => Some(
            state::StateDir::open(dir)
                .and_then(|state| state.for_sidecar(&config.sidecar_id))
                .map_err(|err| Error::Config(format!("state directory {}: {err}", dir.display())))?,
        ),
        None => None,
    };
    if let Some(state) = state.clone() {
        let containment = containment.clone();
        let cleanup = tokio::task::spawn_blocking(move || {
            let ended = containment.kill_leftovers(&state.records());
            state.clear();
            ended
        });
        let ended = cleanup.await.map_err(|err| Error::Config(format!("cleaning up after an earlier run: {err}")))?;
        if ended > 0 {
            tracing::warn!(ended, "killed task processes an earlier run of this sidecar left behind");
        }
    }
    if config.shell.run_as.is_none() && config.shell.run_as_range.is_none() && nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "tasks run as root; give --run-as-range FIRST-LAST (e.g. 61000-61999: a uid of its own for each task) or --run-as USER"
        );
    }
    let mut settings = shell::Settings::new(config.shell.clone(), containment, state);
    // What a task may ask of this sidecar: its binary (`repo status`, `repo check`) and the
    // host name the hub knows it by (`placement.host`).
    let exe = std::env::current_exe().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    settings.options.task_vars =
        vec![("AGENTCOM_SIDECAR".to_owned(), exe), ("AGENTCOM_HOST".to_owned(), config.hostname.clone())];
    if let Some(range) = config.shell.run_as_range {
        range.check(config.slots).map_err(Error::Config)?;
        let users = users::Users::new(range, &settings.options.work_dir).map_err(Error::Config)?;
        settings.users = Some(std::sync::Arc::new(users));
    }
    let options = &settings.options;
    let owner = options.run_as.as_ref().map(|user| (user.uid, user.gid));
    let mut workspaces = workspace::Workspaces::new(
        &options.work_dir,
        options.repo_allow.clone(),
        options.keep_failed_workspaces,
        owner,
    );
    workspaces.users = settings.users.clone();
    workspaces.push_branches = options.push_branches;
    Ok(Prepared { settings, workspaces: std::sync::Arc::new(workspaces), _claim: claim })
}

/// The exit code of a failed run of a binary that runs a sidecar: the sidecar's own code for
/// its errors (see [`Error::exit_code`]), else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<Error>().map_or(1, Error::exit_code)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
