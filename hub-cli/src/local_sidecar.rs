//! The local sidecar of `agentcom-hub dev`: `agentcom-sidecar run`, found beside this binary,
//! started as a child tied to the hub (its own process group, killed if the hub dies), with the
//! flags `dev` was given for it. The sidecar binary checks those flags; the hub knows nothing of
//! its internals.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

/// How long the sidecar may take to get ready: containment set up and what a crash of an
/// earlier run left behind killed (waiting, at worst, on processes that take their time to die).
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long a stopping sidecar may take: it cancels what still runs and waits for it (10 s).
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// `dev`'s flags for its local sidecar, passed on to `agentcom-sidecar run`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Tasks the local sidecar runs at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) slots: u32,
    /// Where the local sidecar runs tasks: their working directory, and its workspaces
    /// [default: DATA_DIR/work, so that tasks do not write into the directory dev runs in].
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// The local sidecar reports N synthetic GPUs (shown as simulated).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) simulate_gpus: u32,
    /// A repository the local sidecar's work may run in (repeatable): a local path (those
    /// under it too) or a URL prefix; agent tasks need one.
    #[arg(long = "repo-allow", value_name = "PATH|URL")]
    pub(crate) repo_allow: Vec<String>,
    /// An Ollama server the local sidecar uses (repeatable) [default: one found at
    /// http://127.0.0.1:11434].
    #[arg(long = "ollama", value_name = "URL")]
    pub(crate) ollama: Vec<String>,
    /// An OpenAI-compatible server (ending in /v1: llama.cpp's server, vLLM) the local sidecar
    /// uses; its key comes from OPENAI_API_KEY.
    #[arg(long, value_name = "URL")]
    pub(crate) openai_base_url: Option<String>,
    /// Models to offer from the OpenAI-compatible server (repeatable) [default: what it lists].
    #[arg(long = "openai-model", value_name = "MODEL")]
    pub(crate) openai_models: Vec<String>,
    /// Requests the OpenAI-compatible server runs at once [default: 1].
    #[arg(long, value_name = "N")]
    pub(crate) openai_parallel: Option<u32>,
    /// The context window of the OpenAI-compatible server's model, in tokens, for servers that
    /// do not say it (llama-cpp-python).
    #[arg(long, value_name = "TOKENS")]
    pub(crate) openai_context: Option<u64>,
    /// Run each task of the local sidecar as a uid of its own from this range (e.g.
    /// 61000-61999), in a private directory: tasks cannot read each other's environment or
    /// files, nor signal each other. Needs root.
    #[arg(long, value_name = "FIRST-LAST")]
    pub(crate) run_as_range: Option<String>,
}

/// What the hub tells its local sidecar: where it is and how to join it.
pub(crate) struct Hub<'a> {
    pub(crate) url: &'a str,
    pub(crate) join_token_file: &'a Path,
    /// The hub CA's SHA-256, when it serves TLS.
    pub ca_sha256: Option<String>,
    pub(crate) data_dir: &'a Path,
    pub(crate) max_output_bytes: u64,
    pub(crate) otlp_endpoint: Option<&'a str>,
}

impl Args {
    /// `agentcom-sidecar`'s arguments for this local sidecar of `hub`, its work in `work_dir`.
    fn command_line(&self, hub: &Hub<'_>, work_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            args.push(name.into());
            args.push(value);
        };
        flag("--hub", hub.url.into());
        flag("--token-file", hub.join_token_file.into());
        if let Some(ca) = &hub.ca_sha256 {
            flag("--ca-fingerprint", ca.into());
        }
        flag("--slots", self.slots.to_string().into());
        flag("--tag", "dev".into());
        // It keeps its id and its record of running tasks in the hub's data directory.
        flag("--state-dir", hub.data_dir.join("sidecar").into());
        flag("--work-dir", work_dir.into());
        flag("--max-output-bytes", hub.max_output_bytes.to_string().into());
        flag("--simulate-gpus", self.simulate_gpus.to_string().into());
        for repo in &self.repo_allow {
            flag("--repo-allow", repo.into());
        }
        for url in &self.ollama {
            flag("--ollama", url.into());
        }
        if let Some(url) = &self.openai_base_url {
            flag("--openai-base-url", url.into());
        }
        for model in &self.openai_models {
            flag("--openai-model", model.into());
        }
        if let Some(n) = self.openai_parallel {
            flag("--openai-parallel", n.to_string().into());
        }
        if let Some(n) = self.openai_context {
            flag("--openai-context", n.to_string().into());
        }
        if let Some(range) = &self.run_as_range {
            flag("--run-as-range", range.into());
        }
        // Its log lines go where the hub's go, in the hub's format.
        let format = if agentcom_process::logging::is_json() { "json" } else { "text" };
        flag("--log-format", format.into());
        if let Some(endpoint) = hub.otlp_endpoint {
            flag("--otlp-endpoint", endpoint.into());
        }
        let mut line = vec![OsString::from("run")];
        line.extend(args);
        line.push("--notify-ready".into());
        line
    }
}

/// The running local sidecar.
pub(crate) struct LocalSidecar {
    child: tokio::process::Child,
}

/// The variables `agentcom-sidecar run` reads its settings from, which `dev` gives as flags
/// instead: the hub's own must not reach it.
const SETTINGS_FROM_THE_ENVIRONMENT: &[&str] = &[
    "AGENTCOM_HUB",
    "AGENTCOM_TOKEN",
    "AGENTCOM_JOIN",
    "AGENTCOM_CA_FINGERPRINT",
    "AGENTCOM_LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

impl LocalSidecar {
    /// Starts the local sidecar of `hub` and waits until it is ready: its containment set up and
    /// what a crash of an earlier run left behind killed. Call it before the hub serves, so
    /// nothing is dispatched before, and from the main thread (see
    /// [`agentcom_process::child::tie_to_this_process`]).
    pub(crate) async fn start(args: &Args, hub: &Hub<'_>) -> anyhow::Result<LocalSidecar> {
        let work_dir = args.work_dir.clone().unwrap_or_else(|| hub.data_dir.join("work"));
        std::fs::create_dir_all(&work_dir).with_context(|| format!("making {}", work_dir.display()))?;
        let work_dir = std::fs::canonicalize(&work_dir)?;
        let exe = std::env::current_exe().context("finding this binary")?;
        let binary = exe.with_file_name("agentcom-sidecar");
        anyhow::ensure!(
            binary.exists(),
            "dev runs its local sidecar from {}, which is not there: build it too \
             (scripts/dev, or cargo build -p agentcom-sidecar with this binary's profile)",
            binary.display()
        );
        #[allow(clippy::disallowed_methods)] // dev's local sidecar: our own binary, not task code.
        let mut command = std::process::Command::new(&binary);
        command.args(args.command_line(hub, &work_dir)).stdin(Stdio::null()).stdout(Stdio::piped());
        for name in SETTINGS_FROM_THE_ENVIRONMENT {
            command.env_remove(name);
        }
        agentcom_process::child::tie_to_this_process(&mut command);
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the local sidecar ({})", binary.display()))?;
        let stdout = child.stdout.take().context("the local sidecar's standard output")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_WITHIN, lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line.trim() == "ready" => {
                // Whatever else it writes there is read and dropped, so it never blocks on a full pipe.
                let mut rest = lines.into_inner();
                tokio::spawn(async move { tokio::io::copy(&mut rest, &mut tokio::io::sink()).await });
                Ok(LocalSidecar { child })
            }
            Err(_) => {
                let _ = child.kill().await;
                anyhow::bail!("the local sidecar was not ready within {} s", READY_WITHIN.as_secs())
            }
            Ok(_) => {
                // It stopped before it was ready: it said why on standard error.
                let status = child.wait().await?;
                anyhow::bail!("the local sidecar did not start ({status}); its error is above")
            }
        }
    }

    /// Waits until the sidecar exits by itself (it should not, while the hub runs).
    pub(crate) async fn exited(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Stops the sidecar (SIGTERM: it cancels what still runs and reports it) and waits for it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_WITHIN, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "the local sidecar exited with {status}");
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the local sidecar did not stop within {} s; killed", STOP_WITHIN.as_secs())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn dev_flags_become_the_sidecars_own() {
        let cli = Cli::parse_from([
            "dev",
            "--slots",
            "2",
            "--repo-allow",
            "/srv/a",
            "--repo-allow",
            "/srv/b",
            "--openai-base-url",
            "http://127.0.0.1:8080/v1",
            "--openai-context",
            "4096",
            "--run-as-range",
            "61000-61999",
        ]);
        let hub = Hub {
            url: "https://127.0.0.1:7420",
            join_token_file: Path::new("/d/join.token"),
            ca_sha256: Some("ab12".into()),
            data_dir: Path::new("/d"),
            max_output_bytes: 1024,
            otlp_endpoint: None,
        };
        let line: Vec<String> =
            cli.args.command_line(&hub, Path::new("/w")).into_iter().map(|a| a.into_string().unwrap()).collect();
        let line = line.join(" ");
        assert!(line.starts_with("run --hub https://127.0.0.1:7420 --token-file /d/join.token --ca-fingerprint ab12 --slots 2 --tag dev --state-dir /d/sidecar --work-dir /w --max-output-bytes 1024 --simulate-gpus 0 --repo-allow /srv/a --repo-allow /srv/b --openai-base-url http://127.0.0.1:8080/v1 --openai-context 4096 --run-as-range 61000-61999 --log-format "), "{line}");
        assert!(line.ends_with(" --notify-ready"), "{line}");
    }
}
