//! `hubctl`: the command-line client for the AgentCom hub, over its HTTP JSON API.
//!
//! Every command prints a readable table or summary by default and the API's own JSON with
//! `--json`. `submit --wait` and `watch` stream a task's output as it is produced and exit with
//! the task's exit code (128+N for a signal, 124 for a timeout, 130 when cancelled, 125 when
//! hubctl itself failed).

mod bulk;
mod fleet;
mod placement;
mod sse;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Hub URL [default: http://127.0.0.1:7420].
    #[arg(long, env = "AGENTCOM_HUB", global = true)]
    hub: Option<String>,
    /// Admin token [default: the contents of ./.agentcom/admin.token].
    #[arg(long, env = "AGENTCOM_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a shell task (`-- COMMAND...`) or an LLM task (`--prompt`).
    Submit(Box<SubmitArgs>),
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
    /// Stream a task's output until it ends; exits with its exit code.
    Watch { id: String },
    /// Where placement put a task and why: every candidate it weighed, with its estimate.
    Explain { id: String },
    /// Why a task waits (no capable agent, all busy, model nowhere, local-only, over budget, ...).
    Why { id: String },
    /// How each model's verified results went, by kind of work and tier: passed, failed, pass rate.
    Models,
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
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered tasks, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one dead-lettered task, with its reason and last output.
    Show { id: String },
    /// Requeue a dead-lettered task with a fresh set of attempts.
    Retry { id: String },
    /// Delete dead-lettered tasks (all, or those dead-lettered longer ago than --older-than).
    Purge {
        /// For example 7d or 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// urgent, high, normal or low.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// trivial, standard or complex (inferred when left out).
    #[arg(long)]
    tier: Option<String>,
    /// A name to show in listings.
    #[arg(long)]
    name: Option<String>,
    /// Kill the task after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Working directory on the sidecar.
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the task, NAME=VALUE (repeatable). Stored with the task and shown
    /// by the API: use --secret-env for secrets.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// A variable the sidecar fills in from its own --secret NAME=FILE (repeatable); the value
    /// never passes through the hub.
    #[arg(long = "secret-env", value_name = "NAME")]
    secret_env: Vec<String>,
    /// Memory the task's processes may use together, in bytes (cgroup memory.max).
    #[arg(long)]
    max_memory_bytes: Option<u64>,
    /// Processes the task may have at once (cgroup pids.max).
    #[arg(long)]
    max_pids: Option<u64>,
    /// Output kept per stream, in bytes.
    #[arg(long)]
    max_output_bytes: Option<u64>,
    /// Attempts before the task is dead-lettered (lost sidecars, and exit codes given to --retry-on-exit).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Retry when the command exits with this code (repeatable); other failures are final.
    #[arg(long = "retry-on-exit")]
    retry_on_exit: Vec<i32>,
    /// Run only after this task succeeded (repeatable); cancelled if it fails for good.
    #[arg(long = "after")]
    after: Vec<String>,
    /// A second submit with the same key returns the first task instead of a new one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Dead-letter the task as expired if it has not started within this long (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,
    /// An LLM prompt instead of a command; with --wait the reply streams to stdout.
    #[arg(long, conflicts_with = "command")]
    prompt: Option<String>,
    /// An agent goal instead of a command: an agent (Claude Code) works on it in a workspace of
    /// --repo, and its changes come back as a diff and a commit on agentcom/TASK_ID.
    #[arg(long, conflicts_with_all = ["command", "prompt"], requires = "repo")]
    agent: Option<String>,
    /// The repository the agent (or a command) works in: a path or URL the sidecar allows
    /// (agentcom-sidecar --repo-allow).
    #[arg(long)]
    repo: Option<String>,
    /// The branch or commit of --repo to start from [default: its default branch].
    #[arg(long, requires = "repo")]
    branch: Option<String>,
    /// Rounds of fixing after a failed --verify, each given what failed (with --agent) [default: 2].
    #[arg(long, requires = "agent")]
    fix_rounds: Option<u32>,
    /// The system prompt (with --prompt).
    #[arg(long, requires = "prompt")]
    system: Option<String>,
    /// The model (with --prompt) [default: the sidecar's choice].
    #[arg(long, requires = "prompt")]
    model: Option<String>,
    /// Most tokens to generate (with --prompt).
    #[arg(long, requires = "prompt")]
    max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (with --prompt).
    #[arg(long, requires = "prompt")]
    temperature: Option<f32>,
    /// Private work: never send it to a cloud provider (the Claude API, a hosted OpenAI API).
    #[arg(long)]
    local_only: bool,
    /// Budget in US dollars (e.g. 0.05): LLM work stops there and fails as budget_exceeded,
    /// keeping its output so far.
    #[arg(long, value_parser = parse_dollars)]
    max_cost: Option<u64>,
    /// Budget in tokens, read and written together: LLM work stops there like at --max-cost.
    #[arg(long)]
    max_total_tokens: Option<u64>,
    /// Submit every line of this file (JSON lines, each a `POST /api/v1/tasks` body; `-` reads
    /// stdin) over one stream, printing each task's id in line order once it is durable.
    #[arg(long, conflicts_with_all = ["command", "prompt", "wait"])]
    from_file: Option<std::path::PathBuf>,
    /// A check the work must pass, run by the sidecar after it (repeatable, in order):
    /// file_exists=PATH, 'command_succeeds=CMD ARGS', 'test_passes=CMD ARGS', git_clean,
    /// output_contains=TEXT, output_matches=REGEX, http_ok=URL (loopback), llm_judge[=MODEL] (a
    /// model judges the result against --criterion, after the others pass). A failed check fails
    /// the task as verification_failed.
    #[arg(long = "verify", value_name = "KIND[=ARG]", value_parser = parse_verify)]
    verify: Vec<Value>,
    /// A success criterion (repeatable): what done means, for people and for llm_judge.
    #[arg(long = "criterion", value_name = "TEXT")]
    criteria: Vec<String>,
    /// Stream the output and exit with the task's exit code.
    #[arg(long)]
    wait: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// One `--verify` as the JSON API takes it. Commands are split on whitespace, with '...' and
/// "..." quoting.
fn parse_verify(s: &str) -> Result<Value, String> {
    let (kind, arg) = match s.split_once('=') {
        Some((kind, arg)) => (kind.trim(), Some(arg)),
        None => (s.trim(), None),
    };
    let needs =
        |what: &str| arg.filter(|a| !a.trim().is_empty()).ok_or_else(|| format!("{kind} needs {what}: {kind}=..."));
    Ok(match kind {
        "file_exists" => json!({ "file_exists": needs("a path")? }),
        "command_succeeds" | "test_passes" => {
            let argv = split_words(needs("a command")?)?;
            json!({ kind: { "argv": argv } })
        }
        "git_clean" if arg.is_none() => json!("git_clean"),
        "output_contains" => json!({ "output_contains": { "text": needs("the text")? } }),
        "output_matches" => json!({ "output_contains": { "regex": needs("a regex")? } }),
        "http_ok" => json!({ "http_ok": needs("a URL")? }),
        "llm_judge" => json!({ "llm_judge": { "model": arg.unwrap_or_default().trim() } }),
        "git_clean" => return Err("git_clean takes no argument".into()),
        other => {
            return Err(format!(
                "unknown check {other:?}: use file_exists, command_succeeds, test_passes, git_clean, output_contains, output_matches, http_ok or llm_judge"
            ));
        }
    })
}

/// Words split on whitespace; '...' and "..." keep spaces inside one word.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in {text:?}"));
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(hub: Option<String>, token: Option<String>) -> anyhow::Result<Client> {
        let base = hub.unwrap_or_else(|| DEFAULT_HUB.to_owned()).trim_end_matches('/').to_owned();
        let token = match token {
            Some(token) => token,
            None => std::fs::read_to_string(DEFAULT_TOKEN_FILE).map(|t| t.trim().to_owned()).map_err(|_| {
                anyhow::anyhow!(
                    "no admin token: pass --token or set AGENTCOM_TOKEN (no {DEFAULT_TOKEN_FILE} in {})",
                    std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
                )
            })?,
        };
        let http = reqwest::Client::builder().tcp_nodelay(true).connect_timeout(Duration::from_secs(5)).build()?;
        Ok(Client { http, base, token })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| format!("the hub answered {status} with no JSON"))?;
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("error");
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            bail!("{message} ({code}, HTTP {})", status.as_u16());
        }
        Ok(body)
    }

    /// Streams a task's events, writing its output as it comes; returns the final task.
    async fn follow(&self, id: &str, quiet_json: bool) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1/tasks/{id}/events", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {}", self.base))?;
        if !response.status().is_success() {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
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
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.context("the event stream broke")?;
            for event in parser.feed(&chunk) {
                match event.name.as_str() {
                    "snapshot" => last = Some(serde_json::from_str(&event.data).context("a malformed snapshot")?),
                    "output" if !quiet_json => {
                        let output: Value = serde_json::from_str(&event.data).context("a malformed output event")?;
                        write_output(&output, &mut written)?;
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
        out.write_all(fresh)?;
        out.flush()?;
    } else {
        let mut err = std::io::stderr().lock();
        err.write_all(fresh)?;
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
        eprintln!("[hubctl: task {} {state}{}{}]", task["id"].as_str().unwrap_or("?"), sep(reason), sep(error));
    }
}

/// Agent rounds and the workspace, for `hubctl get`: a line per round, then where the change
/// went.
fn work_lines(task: &Value) -> Vec<String> {
    let outcome = &task["outcome"];
    let mut lines = Vec::new();
    for round in outcome["rounds"].as_array().into_iter().flatten() {
        let failed: Vec<&str> = round["failed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let failed = if failed.is_empty() { String::new() } else { format!(" ({})", failed.join(", ")) };
        let changed = round["diff_stat"].as_str().and_then(|s| s.lines().last()).unwrap_or("").trim().to_owned();
        let cost = round["cost_micros"].as_u64().map(|c| format!(", ${:.4}", c as f64 / 1e6)).unwrap_or_default();
        lines.push(format!(
            "round {}:   {}{failed}; {}; {} in / {} out tokens{cost}",
            round["number"],
            round["verdict"].as_str().unwrap_or("?"),
            if changed.is_empty() { "no changes" } else { &changed },
            round["input_tokens"],
            round["output_tokens"],
        ));
    }
    let workspace = &outcome["workspace"];
    if let Some(repository) = workspace["repository"].as_str() {
        let base: String = workspace["base"].as_str().unwrap_or("").chars().take(12).collect();
        let changed = workspace["diff_stat"].as_str().and_then(|s| s.lines().last()).unwrap_or("").trim().to_owned();
        let place = match (workspace["branch"].as_str(), workspace["commit"].as_str(), workspace["kept_at"].as_str()) {
            (Some(branch), Some(commit), _) => {
                format!("committed on {branch} ({})", commit.chars().take(12).collect::<String>())
            }
            (_, _, Some(kept)) => format!("kept at {kept}"),
            _ => "nothing committed".to_owned(),
        };
        let changed = if changed.is_empty() { "no changes".to_owned() } else { changed };
        lines.push(format!("workspace: {repository} at {base}: {changed}; {place}"));
    }
    lines
}

/// The verification report, for `hubctl get`: the verdict, then a line per step with its
/// evidence indented under it.
fn verification_lines(task: &Value) -> Vec<String> {
    let report = &task["outcome"]["verification"];
    let Some(steps) = report["steps"].as_array() else { return Vec::new() };
    let passed = steps.iter().filter(|s| s["passed"] == true).count();
    let verdict = report["verdict"].as_str().unwrap_or("?");
    let mut lines = vec![format!("verified:  {verdict} ({passed} of {} steps passed)", steps.len())];
    for step in steps {
        let mark = if step["passed"] == true { "pass" } else { "FAIL" };
        let kind = step["kind"].as_str().unwrap_or("?");
        let target = step["target"].as_str().unwrap_or("");
        lines.push(format!("  {mark}  {kind} {target} ({} ms)", step["duration_ms"]));
        if let Some(summary) = step["summary"].as_str() {
            lines.push(format!("        {summary}"));
        }
        if step["passed"] != true {
            lines.extend(step["evidence"].as_str().unwrap_or("").lines().map(|l| format!("        {l}")));
        }
    }
    lines
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

fn submit_body(args: &SubmitArgs) -> anyhow::Result<Value> {
    let mut body = json!({ "priority": args.priority });
    match (&args.prompt, args.command.is_empty()) {
        _ if args.agent.is_some() => {
            let mut agent = json!({ "goal": args.agent, "repository": args.repo });
            if let Some(branch) = &args.branch {
                agent["branch"] = json!(branch);
            }
            if let Some(rounds) = args.fix_rounds {
                agent["fix_rounds"] = json!(rounds);
            }
            body["agent"] = agent;
        }
        (Some(prompt), true) => {
            let mut llm = json!({ "prompt": prompt });
            if let Some(system) = &args.system {
                llm["system"] = json!(system);
            }
            if let Some(model) = &args.model {
                llm["model"] = json!(model);
            }
            if let Some(max) = args.max_tokens {
                llm["max_tokens"] = json!(max);
            }
            if let Some(t) = args.temperature {
                llm["temperature"] = json!(t);
            }
            body["llm"] = llm;
        }
        (None, false) => {
            let mut shell = json!({ "argv": args.command });
            if let Some(cwd) = &args.cwd {
                shell["cwd"] = json!(cwd);
            }
            if !args.env.is_empty() {
                shell["env"] =
                    args.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>().into();
            }
            if !args.secret_env.is_empty() {
                shell["secret_env"] = json!(args.secret_env);
            }
            body["shell"] = shell;
        }
        (None, true) => {
            bail!("nothing to run: give a command after `--` (hubctl submit -- echo hello), --prompt or --agent")
        }
        (Some(_), false) => bail!("give a command or --prompt, not both"),
    }
    if let (Some(repo), None) = (&args.repo, &args.agent) {
        let mut context = json!({ "repository": repo });
        if let Some(branch) = &args.branch {
            context["branch"] = json!(branch);
        }
        body["context"] = context;
    }
    if let Some(tier) = &args.tier {
        body["tier"] = json!(tier);
    }
    if args.local_only {
        body["placement"] = json!({ "local_only": true });
    }
    if let Some(name) = &args.name {
        body["name"] = json!(name);
    }
    let mut limits = serde_json::Map::new();
    if let Some(timeout) = args.timeout {
        limits.insert("timeout_ms".into(), json!(timeout.as_millis().max(1) as u64));
    }
    if let Some(max) = args.max_output_bytes {
        limits.insert("max_output_bytes".into(), json!(max));
    }
    if let Some(max) = args.max_attempts {
        limits.insert("max_attempts".into(), json!(max));
    }
    if let Some(max) = args.max_memory_bytes {
        limits.insert("max_memory_bytes".into(), json!(max));
    }
    if let Some(max) = args.max_pids {
        limits.insert("max_pids".into(), json!(max));
    }
    if let Some(micros) = args.max_cost {
        limits.insert("max_cost_micros".into(), json!(micros));
    }
    if let Some(tokens) = args.max_total_tokens {
        limits.insert("max_tokens".into(), json!(tokens));
    }
    if let Some(deadline) = args.deadline {
        limits.insert("deadline_unix_ms".into(), json!(now_ms() + deadline.as_millis() as i64));
    }
    if !limits.is_empty() {
        body["limits"] = limits.into();
    }
    if !args.retry_on_exit.is_empty() {
        body["retry"] = json!({ "retry_on_exit_codes": args.retry_on_exit });
    }
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    if !args.after.is_empty() {
        body["depends_on"] = json!(args.after);
    }
    if !args.verify.is_empty() {
        body["verification"] = json!(args.verify);
    }
    if !args.criteria.is_empty() {
        body["success_criteria"] = json!(args.criteria);
    }
    Ok(body)
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON values serialize"));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn age(unix_ms: Option<i64>) -> String {
    let Some(ms) = unix_ms.filter(|ms| *ms > 0) else { return "-".into() };
    let secs = ((now_ms() - ms).max(0) / 1000) as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn command_text(task: &Value) -> String {
    let work = &task["spec"]["work"];
    let text = if let Some(argv) = work["shell"]["command"]["argv"].as_array() {
        argv.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
    } else if let Some(script) = work["shell"]["command"]["script"].as_str() {
        script.to_owned()
    } else if let Some(prompt) = work["llm"]["prompt"].as_str() {
        format!("prompt: {prompt}")
    } else if let Some(goal) = work["agent"]["goal"].as_str() {
        format!("agent: {goal}")
    } else {
        String::new()
    };
    let text = text.replace('\n', " ");
    if text.chars().count() > 60 { format!("{}…", text.chars().take(59).collect::<String>()) } else { text }
}

fn exit_text(task: &Value) -> String {
    let exit = &task["outcome"]["exit"];
    if let Some(code) = exit["code"].as_i64() {
        code.to_string()
    } else if let Some(signal) = exit["signal"].as_i64() {
        format!("sig {signal}")
    } else {
        "-".into()
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

fn print_task_table(response: &Value) {
    let rows = response["tasks"]
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .map(|t| {
                    vec![
                        t["id"].as_str().unwrap_or("").to_owned(),
                        t["state"].as_str().unwrap_or("").to_owned(),
                        t["spec"]["priority"].as_str().unwrap_or("").to_owned(),
                        exit_text(t),
                        t["attempt"].to_string(),
                        age(t["created_unix_ms"].as_i64()),
                        command_text(t),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["ID", "STATE", "PRIORITY", "EXIT", "ATTEMPT", "AGE", "COMMAND"], rows);
    if let Some(reasons) = response["tasks"].as_array() {
        for task in reasons.iter().filter(|t| t["state"] == "dead_lettered") {
            println!("  {}: {}", task["id"].as_str().unwrap_or(""), task["state_reason"].as_str().unwrap_or(""));
        }
    }
}

async fn dlq(client: &Client, command: DlqCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = match command {
        DlqCommand::List { limit } => {
            client.call(reqwest::Method::GET, &format!("/api/v1/dlq?limit={limit}"), None).await?
        }
        DlqCommand::Show { id } => client.call(reqwest::Method::GET, &format!("/api/v1/dlq/{id}"), None).await?,
        DlqCommand::Retry { id } => {
            client.call(reqwest::Method::POST, &format!("/api/v1/dlq/{id}/retry"), None).await?
        }
        DlqCommand::Purge { older_than } => {
            let path = match older_than {
                Some(age) => format!("/api/v1/dlq?older_than_ms={}", age.as_millis().max(1)),
                None => "/api/v1/dlq".to_owned(),
            };
            client.call(reqwest::Method::DELETE, &path, None).await?
        }
    };
    if json_out {
        print_json(&response);
    } else if response["tasks"].is_array() {
        print_task_table(&response);
    } else if response["task"].is_object() {
        print_task(&response["task"]);
    } else {
        println!("purged {} dead-lettered tasks", response["purged"]);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_task(task: &Value) {
    let field = |name: &str| task[name].as_str().unwrap_or("").to_owned();
    let outcome = &task["outcome"];
    println!("id:        {}", field("id"));
    println!("state:     {}{}", field("state"), sep(&field("state_reason")));
    println!("command:   {}", command_text(task));
    println!("priority:  {}", task["spec"]["priority"].as_str().unwrap_or("-"));
    println!("attempt:   {} (lease generation {})", task["attempt"], task["lease_generation"]);
    println!("agent:     {}", task["agent_id"].as_str().unwrap_or("-"));
    println!("created:   {} ago", age(task["created_unix_ms"].as_i64()));
    if outcome.is_object() {
        println!("exit:      {}", exit_text(task));
        println!("duration:  {} ms", outcome["duration_ms"]);
        if let Some(line) = usage_line(task) {
            println!("usage:     {line}");
        }
        for line in verification_lines(task).into_iter().chain(work_lines(task)) {
            println!("{line}");
        }
        for stream in ["stdout", "stderr"] {
            let text = outcome[stream].as_str().unwrap_or("");
            let total = outcome[format!("{stream}_total_bytes")].as_u64().unwrap_or(0);
            if text.is_empty() {
                continue;
            }
            let note = if total > text.len() as u64 {
                format!(" (first {} of {total} bytes)", text.len())
            } else {
                String::new()
            };
            println!("{stream}:{note}");
            for line in text.lines() {
                println!("  {line}");
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(cli.hub, cli.token)?;
    match cli.command {
        Command::Submit(args) if args.from_file.is_some() => {
            let path = args.from_file.clone().expect("checked by the guard");
            bulk::submit_file(&client.base, &client.token, &path, cli.json).await
        }
        Command::Submit(args) => {
            let body = submit_body(&args)?;
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
        Command::Models => {
            let response = client.call(reqwest::Method::GET, "/api/v1/models/stats", None).await?;
            if cli.json {
                print_json(&response)
            } else {
                placement::print_model_stats(&response)
            }
            Ok(ExitCode::SUCCESS)
        }
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
                print_task(&response["task"])
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
                print_task_table(&response);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => dlq(&client, command, cli.json).await,
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
        Command::Hosts { id } => fleet::hosts(&client, id.as_deref(), cli.json).await,
        Command::Drain { sidecar, deadline } => fleet::drain(&client, &sidecar, deadline, cli.json).await,
        Command::Uncordon { sidecar } => fleet::uncordon(&client, &sidecar, cli.json).await,
        Command::Endpoints { command } => fleet::endpoints(&client, command, cli.json).await,
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
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hubctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Dollars (`0.05`) as millionths of a dollar.
fn parse_dollars(text: &str) -> Result<u64, String> {
    let dollars: f64 = text.parse().map_err(|_| format!("{text:?} is not an amount of dollars such as 0.05"))?;
    if !dollars.is_finite() || dollars <= 0.0 || dollars > 1e9 {
        return Err(format!("{text:?}: give an amount of dollars above 0"));
    }
    Ok((dollars * 1e6).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_flags_become_verification_steps() {
        let step = |s: &str| parse_verify(s).unwrap();
        assert_eq!(step("file_exists=out.txt"), json!({"file_exists": "out.txt"}));
        assert_eq!(
            step("command_succeeds=test -s out.txt"),
            json!({"command_succeeds": {"argv": ["test", "-s", "out.txt"]}})
        );
        assert_eq!(
            step(r#"test_passes=sh -c 'cargo test --quiet' """#),
            json!({"test_passes": {"argv": ["sh", "-c", "cargo test --quiet", ""]}})
        );
        assert_eq!(step("git_clean"), json!("git_clean"));
        assert_eq!(step("output_contains=all done"), json!({"output_contains": {"text": "all done"}}));
        assert_eq!(step(r"output_matches=^ok \d+"), json!({"output_contains": {"regex": r"^ok \d+"}}));
        assert_eq!(step("http_ok=http://127.0.0.1:8080/health"), json!({"http_ok": "http://127.0.0.1:8080/health"}));
        assert_eq!(step("llm_judge"), json!({"llm_judge": {"model": ""}}));
        assert_eq!(step("llm_judge=qwen2.5:7b"), json!({"llm_judge": {"model": "qwen2.5:7b"}}));
        for bad in ["file_exists", "file_exists=", "git_clean=x", "nope=1", "command_succeeds=sh -c 'x"] {
            assert!(parse_verify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_rounds_and_the_workspace_are_shown_a_line_each() {
        let task = json!({"outcome": {
            "rounds": [
                {"number": 1, "verdict": "failed", "failed": ["test_passes sh check.sh"], "diff_stat": " answer.txt | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n", "input_tokens": 100, "output_tokens": 20, "cost_micros": 10000},
                {"number": 2, "verdict": "passed", "failed": [], "diff_stat": "", "input_tokens": 90, "output_tokens": 15, "cost_micros": null}
            ],
            "workspace": {"repository": "/srv/repos/app", "base": "164fffa82caf283e98", "branch": "agentcom/01M8", "commit": "9c1d07aa11bb22cc", "diff_stat": " answer.txt | 2 +-\n 1 file changed", "kept_at": null}
        }});
        assert_eq!(
            work_lines(&task),
            vec![
                "round 1:   failed (test_passes sh check.sh); 1 file changed, 1 insertion(+), 1 deletion(-); 100 in / 20 out tokens, $0.0100",
                "round 2:   passed; no changes; 90 in / 15 out tokens",
                "workspace: /srv/repos/app at 164fffa82caf: 1 file changed; committed on agentcom/01M8 (9c1d07aa11bb)",
            ]
        );
    }

    #[test]
    fn the_verification_report_shows_each_step_and_why_it_failed() {
        let task = json!({"outcome": {"verification": {"verdict": "failed", "steps": [
            {"kind": "file_exists", "target": "out.txt", "passed": true, "duration_ms": 0, "evidence": "out.txt exists (a file)"},
            {"kind": "test_passes", "target": "cargo test", "passed": false, "duration_ms": 812,
             "evidence": "exit code 101; output:\ntest it ... FAILED", "summary": "test result: FAILED. 0 passed; 1 failed"}
        ]}}});
        assert_eq!(
            verification_lines(&task),
            vec![
                "verified:  failed (1 of 2 steps passed)",
                "  pass  file_exists out.txt (0 ms)",
                "  FAIL  test_passes cargo test (812 ms)",
                "        test result: FAILED. 0 passed; 1 failed",
                "        exit code 101; output:",
                "        test it ... FAILED",
            ]
        );
        assert!(verification_lines(&json!({"outcome": {}})).is_empty());
    }

    #[test]
    fn exit_codes_follow_the_shell_conventions() {
        let check = |task: Value, code: u8| assert_eq!(exit_code_of(&task), code, "{task}");
        check(json!({"state": "succeeded", "outcome": {"exit": {"code": 0}}}), 0);
        check(json!({"state": "failed", "outcome": {"exit": {"code": 3}}}), 3);
        check(json!({"state": "failed", "outcome": {"exit": {"signal": 9}}}), 137);
        check(json!({"state": "failed", "outcome": {"exit": {"signal": 15}, "timed_out": true}}), 124);
        check(json!({"state": "cancelled", "outcome": {"exit": {"signal": 15}}}), 130);
        check(json!({"state": "failed", "outcome": {"exit": "unknown", "error": "cannot start x"}}), 127);
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

    #[test]
    fn submit_needs_exactly_one_kind_of_work() {
        let args = |command: Vec<&str>, prompt: Option<&str>| SubmitArgs {
            priority: "normal".into(),
            tier: None,
            name: None,
            timeout: Some(Duration::from_secs(2)),
            cwd: None,
            env: vec![("A".into(), "1".into())],
            secret_env: vec!["TOKEN".into()],
            max_memory_bytes: Some(1 << 30),
            max_pids: None,
            max_output_bytes: None,
            max_attempts: None,
            retry_on_exit: vec![75],
            idempotency_key: Some("k".into()),
            after: vec!["01ARZ3NDEKTSV4RRFFQ69G5FAV".into()],
            deadline: None,
            from_file: None,
            prompt: prompt.map(String::from),
            system: prompt.map(|_| "be brief".to_owned()),
            model: None,
            max_tokens: prompt.map(|_| 64),
            temperature: None,
            local_only: prompt.is_some(),
            max_cost: prompt.map(|_| 50_000),
            max_total_tokens: None,
            verify: Vec::new(),
            criteria: Vec::new(),
            agent: None,
            repo: None,
            branch: None,
            fix_rounds: None,
            wait: false,
            command: command.into_iter().map(String::from).collect(),
        };
        let body = submit_body(&args(vec!["echo", "hi"], None)).unwrap();
        assert_eq!(body["shell"]["argv"], json!(["echo", "hi"]));
        assert_eq!(body["shell"]["env"]["A"], "1");
        assert_eq!(body["shell"]["secret_env"], json!(["TOKEN"]));
        assert_eq!(body["limits"]["max_memory_bytes"], 1 << 30);
        assert_eq!(body["limits"]["timeout_ms"], 2000);
        assert_eq!(body["retry"]["retry_on_exit_codes"], json!([75]));
        assert_eq!(body["idempotency_key"], "k");
        assert_eq!(body["depends_on"], json!(["01ARZ3NDEKTSV4RRFFQ69G5FAV"]));
        assert!(submit_body(&args(vec![], None)).is_err());
        let llm = submit_body(&args(vec![], Some("hi"))).unwrap();
        assert_eq!(llm["llm"], json!({ "prompt": "hi", "system": "be brief", "max_tokens": 64 }));
        assert_eq!(llm["placement"], json!({ "local_only": true }));
        assert_eq!(llm["limits"]["max_cost_micros"], 50_000);
        assert_eq!((parse_dollars("0.05"), parse_dollars("2")), (Ok(50_000), Ok(2_000_000)));
        assert!(parse_dollars("-1").is_err() && parse_dollars("$1").is_err() && parse_dollars("inf").is_err());
        let agent = SubmitArgs {
            agent: Some("fix it".into()),
            repo: Some("/srv/repos/app".into()),
            branch: Some("main".into()),
            fix_rounds: Some(3),
            verify: vec![json!({"test_passes": {"argv": ["cargo", "test"]}})],
            ..args(vec![], None)
        };
        let body = submit_body(&agent).unwrap();
        assert_eq!(
            body["agent"],
            json!({"goal": "fix it", "repository": "/srv/repos/app", "branch": "main", "fix_rounds": 3})
        );
        assert_eq!(body["verification"], json!([{"test_passes": {"argv": ["cargo", "test"]}}]));
        assert!(body["shell"].is_null() && body["context"].is_null());
        let in_repo = SubmitArgs { repo: Some("/srv/repos/app".into()), ..args(vec!["make"], None) };
        assert_eq!(submit_body(&in_repo).unwrap()["context"], json!({"repository": "/srv/repos/app"}));
    }
}
