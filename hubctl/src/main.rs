//! `hubctl`: the command-line client for the AgentCom hub, over its HTTP JSON API.
//!
//! Every command prints a readable table or summary by default and the API's own JSON with
//! `--json`. `submit --wait` and `watch` stream a task's output as it is produced and exit with
//! the task's exit code (128+N for a signal, 124 for a timeout, 130 when cancelled, 125 when
//! hubctl itself failed).

mod bulk;
mod dlq;
mod enrol;
mod fleet;
mod pipe;
mod placement;
mod repo;
mod services;
mod show;
mod sse;
mod submit;
mod term;
mod tokens;
mod work;
mod workflow;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use agentcom_types::domain::FailureReason;
use anyhow::{Context, bail};
use base64::Engine;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{Value, json};

const DEFAULT_HUB: &str = "http://127.0.0.1:7420";
const DEFAULT_TOKEN_FILE: &str = ".agentcom/admin.token";
/// Exit code when hubctl itself fails during `--wait` (as `docker run` does).
const EXIT_HUBCTL_FAILED: u8 = 125;

#[derive(Parser)]
#[command(name = "hubctl", version, about = "Command-line client for the AgentCom hub")]
struct Cli {
    /// Hub URL [default: https://127.0.0.1:7420 when the token file pins a CA, else http://127.0.0.1:7420].
    #[arg(long, env = "AGENTCOM_HUB", global = true)]
    hub: Option<String>,
    /// Admin token [default: the one in --token-file].
    #[arg(long, env = "AGENTCOM_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A token file: the token, and the hub CA's fingerprint on a `ca-sha256=` line to pin
    /// (the hub's DATA_DIR/admin.token, or one `hubctl tokens create --out` wrote)
    /// [default: ./.agentcom/admin.token].
    #[arg(long, env = "AGENTCOM_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// The hub CA's SHA-256 to pin for an https:// hub (the hub prints it at start), instead of
    /// the token file's.
    #[arg(long, env = "AGENTCOM_CA_FINGERPRINT", global = true, value_name = "HEX")]
    ca_fingerprint: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a shell task (`-- COMMAND...`) or an LLM task (`--prompt`).
    Submit(Box<submit::SubmitArgs>),
    /// Show one task.
    Get { id: String },
    /// List tasks, newest first.
    List {
        /// Only tasks in this state (queued, dispatched, running, succeeded, failed, cancelled, ...).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only tasks older than this id (the last id of the previous page).
        #[arg(long)]
        before: Option<String>,
    },
    /// Cancel a task, wherever it is.
    Cancel { id: String },
    /// Bring a repository up (the built-in repo-up workflow), or stop what a run brought up.
    Repo {
        #[command(subcommand)]
        command: repo::RepoCommand,
    },
    /// Running services with their host, ports, state and uptime.
    Services,
    /// Stop a service (every process of it); waits until its sidecar says it ended.
    Stop { id: String },
    /// Stream a task's output until it ends; exits with its exit code.
    Watch { id: String },
    /// Where placement put a task and why: every candidate it weighed, with its estimate.
    Explain { id: String },
    /// Why a task waits (no capable agent, all busy, model nowhere, local-only, over budget, ...).
    Why { id: String },
    /// How each model's verified results went, by kind of work and tier: passed, failed, pass rate;
    /// `alias`, `aliases`, `unalias`: the gateway's model aliases.
    Models {
        #[command(subcommand)]
        command: Option<placement::ModelsCommand>,
    },
    /// List the agents (execution slots) of every sidecar.
    Agents,
    /// One agent: its state, task, and recent transitions with their causes.
    Agent { id: String },
    /// Hosts with their latest resources; with an id, one host in detail.
    Hosts { id: Option<String> },
    /// Stop new work going to a sidecar; running work finishes (or is requeued at --deadline).
    Drain {
        sidecar: String,
        /// Requeue what still runs after this long, e.g. 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<Duration>,
    },
    /// Let a drained sidecar take work again.
    Uncordon { sidecar: String },
    /// The LLM endpoint registry.
    Endpoints {
        #[command(subcommand)]
        command: fleet::EndpointsCommand,
    },
    /// The dead-letter queue: tasks that ran out of attempts or expired before they started.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Workflows: `validate FILE` (no hub needed), `run FILE`, `ls`, `get`, `watch`, `cancel`, `retry`.
    Workflow {
        #[command(subcommand)]
        command: workflow::WorkflowCommand,
    },
    /// Admin tokens with roles: create, ls, revoke (an admin token needed).
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// What the gateway's keys spent, per UTC day, key and model, or summed by one of them.
    Usage {
        #[arg(long, value_parser = ["key", "model", "day"])]
        by: Option<String>,
    },
    /// Join tokens that enrol new sidecars: create (with --print-install, the line to run on the
    /// new machine), ls, revoke.
    #[command(name = "join-token")]
    JoinToken {
        #[command(subcommand)]
        command: enrol::JoinTokenCommand,
    },
    /// Enrolled sidecars: ls, and revoke (its stream closes at once; it cannot reconnect).
    Sidecars {
        #[command(subcommand)]
        command: enrol::SidecarsCommand,
    },
    /// Admin actions (drains, dead-letter retries and purges, endpoint and token changes), newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The hub CA pinned, when it is known whole (a token file's, or --ca-fingerprint).
    ca: Option<agentcom_link::Fingerprint>,
    /// For the gRPC calls (`submit --from-file`), pinned the same way.
    dialer: std::sync::Arc<agentcom_link::connect::Dialer>,
}

impl Client {
    fn new(cli: &Cli) -> anyhow::Result<Client> {
        use agentcom_link::token_file::TokenFile;
        agentcom_process::install_crypto_provider();
        let path = cli.token_file.clone().unwrap_or_else(|| DEFAULT_TOKEN_FILE.into());
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => Some(TokenFile::parse(&text).with_context(|| format!("reading {}", path.display()))?),
            Err(_) if cli.token_file.is_none() => None,
            Err(err) => bail!("reading the token file {}: {err}", path.display()),
        };
        // With no --hub, the local hub: over TLS when the token file pins a CA (a hub that
        // serves TLS wrote it), else plaintext (`dev`).
        // A running hub records its URL beside its tokens (`DATA_DIR/hub.url`).
        let recorded = path.parent().and_then(|dir| std::fs::read_to_string(dir.join("hub.url")).ok());
        let default_hub = match (recorded, file.as_ref().and_then(|f| f.ca)) {
            (Some(url), _) if !url.trim().is_empty() => url.trim().to_owned(),
            (_, Some(_)) => DEFAULT_HUB.replacen("http://", "https://", 1),
            (_, None) => DEFAULT_HUB.to_owned(),
        };
        let base = cli.hub.clone().unwrap_or(default_hub).trim_end_matches('/').to_owned();
        let url = agentcom_link::connect::HubUrl::parse(&base)?;
        anyhow::ensure!(
            url.scheme != agentcom_link::connect::Scheme::Quic,
            "{base}: hubctl speaks to the hub's TCP port (https://HOST:7420); quic:// is for sidecars"
        );
        let token = match (&cli.token, &file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => file.token.clone(),
            (None, None) => bail!(
                "no admin token: pass --token or --token-file, or set AGENTCOM_TOKEN (no {DEFAULT_TOKEN_FILE} in {})",
                std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
            ),
        };
        let (ca, source) = match (&cli.ca_fingerprint, file.as_ref().and_then(|f| f.ca)) {
            (Some(hex), _) => (Some(agentcom_link::Fingerprint::parse(hex)?), "--ca-fingerprint".to_owned()),
            (None, Some(ca)) => (Some(ca), format!("the token file {}", path.display())),
            (None, None) => (None, String::new()),
        };
        if url.is_encrypted() && ca.is_none() {
            bail!(
                "{base} asks for TLS, and hubctl trusts only the hub's own CA, which nothing here pins: use the hub's DATA_DIR/admin.token (its ca-sha256 line pins it) as --token-file, or pass --ca-fingerprint HEX (the hub logs it at start). A hub that serves plaintext (`agentcom-hub dev`) is {}",
                base.replacen("https://", "http://", 1)
            );
        }
        let pin = ca.map(|ca| agentcom_link::tls::Pin::fingerprint(ca, source));
        let mut http = reqwest::Client::builder().tcp_nodelay(true).connect_timeout(Duration::from_secs(5));
        if let Some(pin) = &pin {
            let tls = agentcom_link::tls::client_config(pin.clone(), None, &[b"http/1.1"], false)?;
            http = http.use_preconfigured_tls(tls);
        }
        let dialer = std::sync::Arc::new(agentcom_link::connect::Dialer::new(url, pin, None)?);
        Ok(Client { http: http.build()?, base, token, ca, dialer })
    }

    /// The hub could not be reached: every cause, so a pin that does not match says so.
    fn unreachable(&self, err: &reqwest::Error) -> anyhow::Error {
        let chain = agentcom_link::error_chain(err);
        let fix = transport_fix(&self.base, &chain).map(|fix| format!("\n{fix}")).unwrap_or_default();
        anyhow::anyhow!("cannot reach the hub at {}: {chain}{fix}", self.base)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        let status = response.status();
        let mut body: Value =
            response.json().await.with_context(|| format!("the hub answered {status} with no JSON"))?;
        if term::human() {
            term::escape_value(&mut body);
        }
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("error");
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            bail!("{message} ({code}, HTTP {})", status.as_u16());
        }
        Ok(body)
    }

    /// Says on stderr why a task waits, if that changed since `said` (a failed ask says nothing:
    /// the event stream is what matters).
    async fn say_why(&self, id: &str, said: &mut String) {
        let Ok(mut answer) = self.call(reqwest::Method::GET, &format!("/api/v1/tasks/{id}/why"), None).await else {
            return;
        };
        term::escape_value(&mut answer);
        let why = &answer["why"];
        if why["waiting"] != true {
            return;
        }
        let line = format!("{} ({})", why["message"].as_str().unwrap_or("?"), why["code"].as_str().unwrap_or("?"));
        if line != *said {
            eprintln!("hubctl: waiting: {line}");
            *said = line;
        }
    }

    /// Streams a task's events, writing its output as it comes; returns the final task.
    async fn follow(&self, id: &str, quiet_json: bool) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1/tasks/{id}/events", self.base);
        let response =
            self.http.get(&url).bearer_auth(&self.token).send().await.map_err(|err| self.unreachable(&err))?;
        if !response.status().is_success() {
            let status = response.status();
            let mut body: Value = response.json().await.unwrap_or(Value::Null);
            term::escape_value(&mut body);
            bail!(
                "{} (HTTP {})",
                body["error"]["message"].as_str().unwrap_or("cannot watch the task"),
                status.as_u16()
            );
        }
        let mut parser = sse::Parser::default();
        let mut bytes = response.bytes_stream();
        let mut last: Option<Value> = None;
        let mut written = Written::default();
        // While the task waits to start, why it waits is asked every second and said on stderr
        // whenever it changes: nobody should wait in silence.
        let first = tokio::time::Instant::now() + WHY_EVERY;
        let mut asking = tokio::time::interval_at(first, WHY_EVERY);
        let mut said = String::new();
        loop {
            let waits = last
                .as_ref()
                .is_some_and(|task| matches!(task["state"].as_str(), Some("queued" | "ready" | "waiting")));
            let chunk = tokio::select! {
                chunk = bytes.next() => chunk,
                _ = asking.tick(), if waits => {
                    self.say_why(id, &mut said).await;
                    continue;
                }
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.context("the event stream broke")?;
            for event in parser.feed(&chunk) {
                match event.name.as_str() {
                    "snapshot" => {
                        let mut snapshot: Value = serde_json::from_str(&event.data).context("a malformed snapshot")?;
                        if term::human() {
                            term::escape_value(&mut snapshot);
                        }
                        last = Some(snapshot);
                    }
                    "output" if !quiet_json => {
                        let output: Value = serde_json::from_str(&event.data).context("a malformed output event")?;
                        write_output(&output, &mut written)?;
                    }
                    // The hub cannot store the task's result now: say so, rather than wait.
                    "error" => {
                        let mut error: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                        term::escape_value(&mut error);
                        bail!("{}", error["message"].as_str().unwrap_or("the hub ended the task's event stream"));
                    }
                    // An agent's steps go to stderr, beside the output (which is the model's text).
                    "step" if !quiet_json => {
                        let mut step: Value = serde_json::from_str(&event.data).context("a malformed step event")?;
                        term::escape_value(&mut step);
                        eprintln!(
                            "[step {}] {}",
                            step["number"].as_u64().unwrap_or(0) + 1,
                            work::step_line(&step["step"])
                        );
                    }
                    _ => {}
                }
            }
        }
        let task = last.context("the event stream ended before the task's state was known")?;
        if !is_final(&task) {
            bail!("the event stream ended while the task was still {}", task["state"].as_str().unwrap_or("?"));
        }
        Ok(task)
    }
}

/// What to do about a connection that failed because the two ends speak different things: TLS
/// to a plaintext hub, or plaintext to a hub that serves TLS.
fn transport_fix(base: &str, error: &str) -> Option<String> {
    if base.starts_with("http://") && error.contains("invalid HTTP") {
        let https = base.replacen("http://", "https://", 1);
        return Some(format!(
            "the hub answered in TLS: it serves https. Use --hub {https} with the hub's DATA_DIR/admin.token as --token-file (its ca-sha256 line pins the hub's CA)"
        ));
    }
    if base.starts_with("https://") && (error.contains("InvalidContentType") || error.contains("corrupt message")) {
        let http = base.replacen("https://", "http://", 1);
        return Some(format!(
            "the hub does not speak TLS there (a plaintext hub, such as `agentcom-hub dev`): use --hub {http}"
        ));
    }
    None
}

/// How often `--wait` and `watch` ask why a task that has not started waits.
const WHY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How much of the current attempt's output is already written, per stream.
#[derive(Default)]
struct Written {
    attempt: u64,
    bytes: [u64; 2],
}

/// Writes an output event's bytes to our stdout or stderr, skipping what was already written.
/// A retried task's output starts again at offset 0; a note on stderr marks the new attempt.
fn write_output(output: &Value, written: &mut Written) -> anyhow::Result<()> {
    let attempt = output["attempt"].as_u64().unwrap_or(0);
    if attempt > written.attempt {
        if written.attempt > 0 {
            eprintln!("[hubctl: the task is being retried: attempt {attempt}]");
        }
        *written = Written { attempt, bytes: [0, 0] };
    } else if attempt < written.attempt {
        return Ok(());
    }
    let written = &mut written.bytes;
    let index = if output["stream"] == "stderr" { 1 } else { 0 };
    let offset = output["offset"].as_u64().unwrap_or(0);
    let data = base64::engine::general_purpose::STANDARD
        .decode(output["data_base64"].as_str().unwrap_or(""))
        .context("undecodable output")?;
    let end = offset + data.len() as u64;
    if end <= written[index] || offset > written[index] {
        return Ok(()); // Already written, or a gap the final outcome will not fill either.
    }
    let fresh = &data[(written[index] - offset) as usize..];
    written[index] = end;
    if index == 0 {
        let mut out = std::io::stdout().lock();
        out.write_all(&term::output_for(fresh, term::stdout_is_terminal()))?;
        out.flush()?;
    } else {
        let mut err = std::io::stderr().lock();
        err.write_all(&term::output_for(fresh, term::stderr_is_terminal()))?;
        err.flush()?;
    }
    Ok(())
}

fn is_final(task: &Value) -> bool {
    matches!(task["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "expired" | "dead_lettered"))
}

/// The exit code that stands for a finished task.
fn exit_code_of(task: &Value) -> u8 {
    let outcome = &task["outcome"];
    match task["state"].as_str() {
        Some("succeeded") => 0,
        Some("cancelled") => 130,
        _ if outcome["timed_out"] == true => 124,
        // An LLM failure (truncated, stream_broken, ...) ran and failed, and LLM and agent work
        // start no process: 127 is only a command that could not start.
        _ if outcome["error"].as_str().is_some_and(|e| FailureReason::of(e).is_some()) => 1,
        _ if outcome["error"].is_string() && !task["spec"]["work"]["shell"].is_object() => 1,
        _ if outcome["error"].is_string() => 127,
        _ => match (outcome["exit"]["code"].as_i64(), outcome["exit"]["signal"].as_i64()) {
            // The work ran well and still failed (its verification, its budget): not 0.
            (Some(0), _) => 1,
            (Some(code), _) => code.clamp(0, 255) as u8,
            (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
            _ => 1,
        },
    }
}

/// Tells about output that was cut at the cap, and why a task failed when that is not obvious.
fn report_end(task: &Value) {
    let outcome = &task["outcome"];
    for (stream, kept) in [("stdout", &outcome["stdout"]), ("stderr", &outcome["stderr"])] {
        let total = outcome[format!("{stream}_total_bytes")].as_u64().unwrap_or(0);
        let kept = kept.as_str().map(|s| s.len() as u64).unwrap_or(0);
        if total > kept && kept > 0 {
            eprintln!("[hubctl: {stream} truncated: kept the first {kept} of {total} bytes]");
        }
    }
    if let Some(line) = usage_line(task) {
        eprintln!("[hubctl: {line}]");
    }
    let state = task["state"].as_str().unwrap_or("?");
    let code = outcome["exit"]["code"].as_i64();
    if state != "succeeded" && (code.is_none() || code == Some(0) || state == "cancelled") {
        let reason = task["state_reason"].as_str().unwrap_or("");
        let error = outcome["error"].as_str().unwrap_or("");
        // The reason usually is the error (or holds it): said once.
        let error = if reason.contains(error) { "" } else { error };
        eprintln!("[hubctl: task {} {state}{}{}]", task["id"].as_str().unwrap_or("?"), sep(reason), sep(error));
    }
}

/// One line about what LLM work used: `llama3.2:3b (ollama) on gpu-1: 26 in / 3 out tokens, TTFT
/// 41 ms, 20.0 tokens/s, load 900 ms, $0.000120`; `None` for other work.
fn usage_line(task: &Value) -> Option<String> {
    let usage = task["outcome"]["usage"].as_object()?;
    let text = |name: &str| usage.get(name).and_then(Value::as_str).unwrap_or("?").to_owned();
    let number = |name: &str| usage.get(name).and_then(Value::as_u64);
    let host = task["sidecar_id"].as_str().unwrap_or("?");
    let mut line = format!(
        "{} ({}) on {host}: {} in / {} out tokens",
        text("model"),
        text("provider"),
        number("input_tokens").unwrap_or(0),
        number("output_tokens").unwrap_or(0)
    );
    if let Some(cached) = number("cached_input_tokens").filter(|n| *n > 0) {
        line.push_str(&format!(" ({cached} cached)"));
    }
    if let Some(ttft) = number("ttft_ms") {
        line.push_str(&format!(", TTFT {ttft} ms"));
    }
    if let Some(rate) = usage.get("output_tokens_per_s").and_then(Value::as_f64) {
        line.push_str(&format!(", {rate:.1} tokens/s"));
    }
    if let Some(load) = number("load_ms").filter(|n| *n > 0) {
        line.push_str(&format!(", load {load} ms"));
    }
    if let Some(cost) = number("cost_micros") {
        line.push_str(&format!(", ${:.6}", cost as f64 / 1e6));
    }
    Some(line)
}

fn sep(s: &str) -> String {
    if s.is_empty() { String::new() } else { format!(": {s}") }
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON values serialize"));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn age(unix_ms: Option<i64>) -> String {
    let Some(ms) = unix_ms.filter(|ms| *ms > 0) else { return "-".into() };
    span(((now_ms() - ms).max(0) / 1000) as u64)
}

/// How long until a time: `in 59m`, or `past` once it has gone by.
fn until(unix_ms: Option<i64>) -> String {
    let Some(ms) = unix_ms.filter(|ms| *ms > 0) else { return "-".into() };
    let secs = (ms - now_ms()) / 1000;
    if secs < 0 {
        return "past".into();
    }
    // Rounded up: a token made for 2h says `in 2h` until an hour has gone.
    let secs = secs as u64;
    let up = |unit: u64, suffix: &str| format!("in {}{suffix}", secs.div_ceil(unit));
    match secs {
        0..=59 => format!("in {secs}s"),
        60..=3599 => up(60, "m"),
        3600..=86_399 => up(3600, "h"),
        _ => up(86_400, "d"),
    }
}

fn span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Prints rows as left-aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    for line in table_lines(header, rows) {
        println!("{line}");
    }
}

/// A header and rows in columns as wide as their widest cell.
fn table_lines(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        parts.join("  ").trim_end().to_owned()
    };
    let mut lines = vec![line(header.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.into_iter().map(line));
    lines
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Workflow { command } = &cli.command
        && command.offline()
    {
        return workflow::offline(command, cli.json);
    }
    let client = Client::new(&cli)?;
    match cli.command {
        Command::Submit(args) if args.from_file.is_some() => {
            let path = args.from_file.clone().expect("checked by the guard");
            bulk::submit_file(&client, &path, cli.json).await
        }
        Command::Submit(args) => {
            let body = submit::submit_body(&args)?;
            let response = client.call(reqwest::Method::POST, "/api/v1/tasks", Some(body)).await;
            let response = match response {
                Ok(response) => response,
                Err(err) if args.wait => {
                    eprintln!("hubctl: {err:#}");
                    return Ok(ExitCode::from(EXIT_HUBCTL_FAILED));
                }
                Err(err) => return Err(err),
            };
            let id = response["task"]["id"].as_str().context("the hub returned no task id")?.to_owned();
            if response["existing"] == true && !cli.json {
                eprintln!("[hubctl: the idempotency key matched task {id}; not submitted again]");
            }
            if !args.wait {
                if cli.json {
                    print_json(&response);
                } else {
                    println!("{id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            wait_for(&client, &id, cli.json).await
        }
        Command::Watch { id } => wait_for(&client, &id, cli.json).await,
        Command::Explain { id } => {
            let response = client.call(reqwest::Method::GET, &format!("/api/v1/tasks/{id}/decision"), None).await?;
            if cli.json {
                print_json(&response)
            } else {
                placement::print_decisions(&id, &response)
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command } => placement::models(&client, command, cli.json).await,
        Command::Why { id } => {
            let response = client.call(reqwest::Method::GET, &format!("/api/v1/tasks/{id}/why"), None).await?;
            if cli.json {
                print_json(&response)
            } else {
                placement::print_why(&response)
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { id } => {
            let response = client.call(reqwest::Method::GET, &format!("/api/v1/tasks/{id}"), None).await?;
            if cli.json {
                print_json(&response)
            } else {
                show::print_task(&response["task"])
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { state, limit, before } => {
            let mut path = format!("/api/v1/tasks?limit={limit}");
            if let Some(state) = state {
                path.push_str(&format!("&state={state}"));
            }
            if let Some(before) = before {
                path.push_str(&format!("&before={before}"));
            }
            let response = client.call(reqwest::Method::GET, &path, None).await?;
            if cli.json {
                print_json(&response);
            } else {
                show::print_task_table(&response);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => dlq::dlq(&client, command, cli.json).await,
        Command::Workflow { command } => workflow::online(&client, command, cli.json).await,
        Command::Cancel { id } => {
            let response = client.call(reqwest::Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await?;
            if cli.json {
                print_json(&response);
            } else {
                println!(
                    "{} {}",
                    response["task"]["id"].as_str().unwrap_or(&id),
                    response["task"]["state"].as_str().unwrap_or("?")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents => {
            let response = client.call(reqwest::Method::GET, "/api/v1/agents", None).await?;
            if cli.json {
                print_json(&response);
            } else {
                fleet::print_agents(&response);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { id } => fleet::agent(&client, &id, cli.json).await,
        Command::Services => services::services(&client, cli.json).await,
        Command::Repo { command } => repo::repo(&client, command, cli.json).await,
        Command::Stop { id } => services::stop(&client, &id, cli.json).await,
        Command::Hosts { id } => fleet::hosts(&client, id.as_deref(), cli.json).await,
        Command::Drain { sidecar, deadline } => fleet::drain(&client, &sidecar, deadline, cli.json).await,
        Command::Uncordon { sidecar } => fleet::uncordon(&client, &sidecar, cli.json).await,
        Command::Endpoints { command } => fleet::endpoints(&client, command, cli.json).await,
        Command::Tokens { command } => tokens::tokens(&client, command, cli.json).await,
        Command::Usage { by } => tokens::usage(&client, by.as_deref(), cli.json).await,
        Command::Audit { limit } => tokens::audit(&client, limit, cli.json).await,
        Command::JoinToken { command } => enrol::join_tokens(&client, command, cli.json).await,
        Command::Sidecars { command } => enrol::sidecars(&client, command, cli.json).await,
    }
}

async fn wait_for(client: &Client, id: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    match client.follow(id, json_out).await {
        Ok(task) => {
            if json_out {
                print_json(&json!({ "task": task }));
            } else {
                report_end(&task);
            }
            Ok(ExitCode::from(exit_code_of(&task)))
        }
        Err(err) => {
            eprintln!("hubctl: {err:#}");
            Ok(ExitCode::from(EXIT_HUBCTL_FAILED))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    pipe::quiet_on_closed_pipe();
    let cli = Cli::parse();
    term::set_human(!cli.json);
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hubctl: {}", term::escape(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_that_does_not_match_the_hub_names_the_one_that_does() {
        let fix = transport_fix(
            "http://hub:7420",
            "error sending request: client error (Connect): invalid HTTP version parsed",
        );
        assert!(fix.unwrap().contains("--hub https://hub:7420"));
        let fix = transport_fix(
            "https://127.0.0.1:7420",
            "error sending request: client error (Connect): received corrupt message of type InvalidContentType",
        );
        assert!(fix.unwrap().contains("--hub http://127.0.0.1:7420"));
        assert_eq!(transport_fix("http://hub:7420", "tcp connect error: Connection refused"), None);
    }

    #[test]
    fn exit_codes_follow_the_shell_conventions() {
        let check = |task: Value, code: u8| assert_eq!(exit_code_of(&task), code, "{task}");
        check(json!({"state": "succeeded", "outcome": {"exit": {"code": 0}}}), 0);
        check(json!({"state": "failed", "outcome": {"exit": {"code": 3}}}), 3);
        check(json!({"state": "failed", "outcome": {"exit": {"signal": 9}}}), 137);
        check(json!({"state": "failed", "outcome": {"exit": {"signal": 15}, "timed_out": true}}), 124);
        check(json!({"state": "cancelled", "outcome": {"exit": {"signal": 15}}}), 130);
        let shell = json!({"shell": {"command": {"argv": ["x"]}}});
        check(
            json!({"state": "failed", "spec": {"work": shell}, "outcome": {"exit": "unknown", "error": "cannot start x"}}),
            127,
        );
        let llm = json!({"llm": {"prompt": "hi"}});
        check(
            json!({"state": "failed", "spec": {"work": llm}, "outcome": {"exit": "unknown", "error": "openai: bad key"}}),
            1,
        );
        let truncated = "truncated: openai: [DONE] came without a finish_reason";
        check(json!({"state": "dead_lettered", "outcome": {"exit": "unknown", "error": truncated}}), 1);
        check(json!({"state": "failed", "state_reason": "lost"}), 1);
    }

    #[test]
    fn the_usage_line_says_what_llm_work_used() {
        let task = json!({
            "sidecar_id": "gpu-1",
            "outcome": {"usage": {
                "provider": "ollama", "model": "llama3.2:3b", "input_tokens": 26, "output_tokens": 3,
                "cached_input_tokens": 0, "ttft_ms": 41, "output_tokens_per_s": 20.04, "load_ms": 900, "cost_micros": 120
            }}
        });
        assert_eq!(
            usage_line(&task).unwrap(),
            "llama3.2:3b (ollama) on gpu-1: 26 in / 3 out tokens, TTFT 41 ms, 20.0 tokens/s, load 900 ms, $0.000120"
        );
        assert_eq!(usage_line(&json!({"outcome": {"exit": {"code": 0}}})), None);
    }
}
