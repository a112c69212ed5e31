//! The AgentCom sidecar: dials out to the hub over one gRPC stream, runs the work it is
//! assigned, and streams progress and results back.
//!
//! [`run`] is the whole sidecar; the binary only parses flags. [`shell`] runs processes,
//! `link` owns the stream to the hub. The sidecar never listens on a port.

mod link;
pub mod llm;
pub mod reports;
pub mod resources;
pub mod shell;

use std::future::Future;
use std::time::Duration;

/// Environment variables a task inherits from the sidecar unless configured otherwise.
pub const DEFAULT_ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Config {
    /// `http://host:port` of the hub.
    pub hub_url: String,
    /// A join token (or an admin token).
    pub token: String,
    /// Stable for this process; a reconnect reuses it so the hub keeps its leases.
    pub sidecar_id: String,
    pub hostname: String,
    pub slots: u32,
    pub tags: Vec<String>,
    pub shell: shell::Settings,
    /// Output cap per stream for tasks that do not set one.
    pub default_max_output_bytes: usize,
    /// Resource reports and the LLM inventory.
    pub reports: reports::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.hub_url.starts_with("http://") || self.hub_url.starts_with("https://")) {
            return Err(Error::Config(format!("hub url {:?} must start with http:// or https://", self.hub_url)));
        }
        if self.token.trim().is_empty() {
            return Err(Error::Config("a join token is required (--token or AGENTCOM_TOKEN)".into()));
        }
        if self.slots == 0 || self.slots > 1024 {
            return Err(Error::Config(format!("slots must be between 1 and 1024, not {}", self.slots)));
        }
        Ok(())
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

/// Runs the sidecar until `shutdown` completes; running work is then cancelled and reported.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    config.validate()?;
    link::Link::new(config).run(shutdown).await
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM: the binaries' shutdown trigger.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Default shell settings for a work directory, taking the allowlisted part of `vars`.
pub fn shell_settings(
    work_dir: std::path::PathBuf,
    vars: impl IntoIterator<Item = (String, String)>,
    allow: &[String],
) -> shell::Settings {
    shell::Settings { work_dir, base_env: shell::allowlisted_env(vars, allow), kill_grace: Duration::from_secs(5) }
}
