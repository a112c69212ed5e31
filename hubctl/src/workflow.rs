//! `hubctl workflow`: workflows. `validate` checks a workflow file here, without a hub; `run`
//! checks it the same way, then starts a run; `ls`, `get`, `watch`, `cancel` and `retry` work
//! on runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::{Client, print_json, table};

#[derive(Subcommand)]
pub(crate) enum WorkflowCommand {
    /// Check a workflow file (YAML or JSON): prints every problem as FILE:LINE:COLUMN: step ID:
    /// what is wrong, and exits 1 if there is any.
    Validate { file: PathBuf },
    /// Start a run of a workflow file (checked here first): prints the run id; with --wait,
    /// follows the run and exits 0 if it succeeded, 1 if not.
    Run {
        file: PathBuf,
        /// An input, as the file declares it (a list or object as JSON). Repeatable.
        #[arg(long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Print a workflow shipped with the hub (`repo-up`), as its file; with no name, list them.
    Show { name: Option<String> },
    /// The newest runs.
    Ls {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A run: every step with its state, duration, tokens, cost, verdict and task; the totals.
    Get { run: String },
    /// Follow a run until it ends, a line for each step that changes; exits 0 if it succeeded.
    Watch { run: String },
    /// Cancel a run and its running steps.
    Cancel { run: String },
    /// Run a failed or cancelled run again from the steps that did not succeed.
    Retry {
        run: String,
        #[arg(long)]
        wait: bool,
    },
    /// Webhooks that start a workflow: `add NAME --workflow FILE` prints the URL and the secret
    /// (once), `ls`, `rm NAME`.
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// Workflows run on their file's `on: {schedule: "CRON"}`: `add FILE`, `ls`, `rm NAME`.
    Schedules {
        #[command(subcommand)]
        command: SchedulesCommand,
    },
    /// What a workflow's runs kept (`remember:`) and its last successful run's outputs.
    Memory { workflow: String },
}

#[derive(Subcommand)]
pub(crate) enum HooksCommand {
    /// Bind NAME to a workflow whose input `payload` (an object) takes each delivery's body.
    Add {
        name: String,
        #[arg(long)]
        workflow: PathBuf,
    },
    Ls,
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum SchedulesCommand {
    /// Run the workflow on its `on.schedule` from now on, under its name.
    Add {
        file: PathBuf,
    },
    Ls,
    Rm {
        name: String,
    },
}

impl WorkflowCommand {
    /// Whether it needs no hub.
    pub(crate) fn offline(&self) -> bool {
        matches!(self, WorkflowCommand::Validate { .. })
    }
}

/// Runs what needs no hub.
pub(crate) fn offline(command: &WorkflowCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    match command {
        WorkflowCommand::Validate { file } => validate(file, json_out),
        _ => unreachable!("asked of offline commands only"),
    }
}

/// Runs what needs the hub.
pub(crate) async fn online(client: &Client, command: WorkflowCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match command {
        WorkflowCommand::Validate { .. } => unreachable!("answered before connecting"),
        WorkflowCommand::Show { name: Some(name) } => {
            let response = client.call(Method::GET, &format!("/api/v1/workflows/builtin/{name}"), None).await?;
            if json_out {
                print_json(&response);
            } else {
                print!("{}", response["workflow"]["source"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Show { name: None } => {
            let response = client.call(Method::GET, "/api/v1/workflows/builtin", None).await?;
            if json_out {
                print_json(&response);
            } else {
                for workflow in response["workflows"].as_array().into_iter().flatten() {
                    let source = workflow["source"].as_str().unwrap_or_default();
                    let description =
                        agentcom_workflow::file::load(source).ok().and_then(|d| d.description).unwrap_or_default();
                    println!("{:<10} {description}", workflow["name"].as_str().unwrap_or("?"));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Run { file, inputs, wait } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let definition = match agentcom_workflow::file::load(&text) {
                Ok(definition) => definition,
                Err(problems) => {
                    for problem in &problems {
                        eprintln!("{}:{problem}", file.display());
                    }
                    bail!("{}: {} problem(s); nothing was started", file.display(), problems.len());
                }
            };
            let mut given = Map::new();
            for input in &inputs {
                let (name, value) =
                    input.split_once('=').with_context(|| format!("--input {input}: write NAME=VALUE"))?;
                let declared = definition.inputs.get(name).with_context(|| {
                    let known: Vec<&String> = definition.inputs.keys().collect();
                    format!("--input {name}: the workflow declares no such input (it has {known:?})")
                })?;
                let value = declared.parse(value).map_err(|err| anyhow::anyhow!("--input {name}: {err}"))?;
                given.insert(name.to_owned(), value);
            }
            let body = json!({ "workflow": text, "inputs": given });
            let response = client.call(Method::POST, "/api/v1/workflows/runs", Some(body)).await?;
            let id = response["run"]["id"].as_str().context("the hub returned no run id")?.to_owned();
            if wait {
                return follow(client, &id, json_out).await;
            }
            if json_out {
                print_json(&response);
            } else {
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Ls { limit } => {
            let response = client.call(Method::GET, &format!("/api/v1/workflows/runs?limit={limit}"), None).await?;
            if json_out {
                print_json(&response);
            } else {
                print_runs(&response);
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Get { run } => {
            let response = client.call(Method::GET, &format!("/api/v1/workflows/runs/{run}"), None).await?;
            if json_out {
                print_json(&response);
            } else {
                print_run(&response["run"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Watch { run } => follow(client, &run, json_out).await,
        WorkflowCommand::Cancel { run } => {
            let response = client.call(Method::POST, &format!("/api/v1/workflows/runs/{run}/cancel"), None).await?;
            if json_out {
                print_json(&response);
            } else {
                println!("{run} {}", response["run"]["state"].as_str().unwrap_or("?"));
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Hooks { command } => hooks(client, command, json_out).await,
        WorkflowCommand::Schedules { command } => schedules(client, command, json_out).await,
        WorkflowCommand::Memory { workflow } => {
            let response = client.call(Method::GET, &format!("/api/v1/workflows/memory/{workflow}"), None).await?;
            if json_out {
                print_json(&response);
            } else {
                let memory = &response["memory"];
                match memory["last_run"].as_str() {
                    Some(run) => println!("{workflow}: last successful run {run}"),
                    None => println!("{workflow}: no successful run yet"),
                }
                for (name, value) in memory["values"].as_object().into_iter().flatten() {
                    println!("  {name} = {}", value.as_str().map_or_else(|| value.to_string(), str::to_owned));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Retry { run, wait } => {
            let response = client.call(Method::POST, &format!("/api/v1/workflows/runs/{run}/retry"), None).await?;
            if wait {
                return follow(client, &run, json_out).await;
            }
            if json_out {
                print_json(&response);
            } else {
                println!("{run} {}", response["run"]["state"].as_str().unwrap_or("?"));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn hooks(client: &Client, command: HooksCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match command {
        HooksCommand::Add { name, workflow } => {
            let text = std::fs::read_to_string(&workflow).with_context(|| format!("reading {}", workflow.display()))?;
            let body = json!({ "name": name, "workflow": text });
            let response = client.call(Method::POST, "/api/v1/workflows/hooks", Some(body)).await?;
            let hook = &response["hook"];
            if json_out {
                print_json(&response);
            } else {
                println!("url:    {}{}", client.base, hook["path"].as_str().unwrap_or("?"));
                println!("secret: {}", hook["secret"].as_str().unwrap_or("?"));
                eprintln!(
                    "[hubctl: the secret is shown this once; a sender signs each body with it (X-Hub-Signature-256: sha256=HMAC-SHA256 hex) and may send X-GitHub-Delivery or X-Delivery-Id]"
                );
            }
        }
        HooksCommand::Ls => {
            let response = client.call(Method::GET, "/api/v1/workflows/hooks", None).await?;
            if json_out {
                print_json(&response);
            } else {
                let rows = (response["hooks"].as_array().into_iter().flatten())
                    .map(|h| {
                        let text = |k: &str| h[k].as_str().unwrap_or("-").to_owned();
                        vec![text("name"), text("workflow"), text("path")]
                    })
                    .collect();
                table(&["HOOK", "WORKFLOW", "PATH"], rows);
            }
        }
        HooksCommand::Rm { name } => {
            let response = client.call(Method::DELETE, &format!("/api/v1/workflows/hooks/{name}"), None).await?;
            if json_out {
                print_json(&response);
            } else {
                println!("removed hook {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn schedules(client: &Client, command: SchedulesCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let when = |ms: &Value| ms.as_i64().map_or_else(|| "-".to_owned(), unix_ms_text);
    match command {
        SchedulesCommand::Add { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let response =
                client.call(Method::POST, "/api/v1/workflows/schedules", Some(json!({ "workflow": text }))).await?;
            if json_out {
                print_json(&response);
            } else {
                let schedule = &response["schedule"];
                println!(
                    "{} runs on {:?}; next at {}",
                    schedule["name"].as_str().unwrap_or("?"),
                    schedule["schedule"].as_str().unwrap_or("?"),
                    when(&schedule["next_slot_unix_ms"])
                );
            }
        }
        SchedulesCommand::Ls => {
            let response = client.call(Method::GET, "/api/v1/workflows/schedules", None).await?;
            if json_out {
                print_json(&response);
            } else {
                let rows = (response["schedules"].as_array().into_iter().flatten())
                    .map(|s| {
                        vec![
                            s["name"].as_str().unwrap_or("?").to_owned(),
                            s["schedule"].as_str().unwrap_or("?").to_owned(),
                            when(&s["last_slot_unix_ms"]),
                            when(&s["next_slot_unix_ms"]),
                        ]
                    })
                    .collect();
                table(&["SCHEDULE", "CRON (UTC)", "LAST SLOT", "NEXT SLOT"], rows);
            }
        }
        SchedulesCommand::Rm { name } => {
            let response = client.call(Method::DELETE, &format!("/api/v1/workflows/schedules/{name}"), None).await?;
            if json_out {
                print_json(&response);
            } else {
                println!("removed schedule {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a run until it ends: on stderr a line for each step (or item) whose state changes,
/// then the run as `get` shows it (or its JSON). Exits 0 if it succeeded, 1 if not.
async fn follow(client: &Client, id: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut failures = 0;
    loop {
        let response = match client.call(reqwest::Method::GET, &format!("/api/v1/workflows/runs/{id}"), None).await {
            Ok(response) => {
                failures = 0;
                response
            }
            // A hub restarting (or briefly away) is waited for, a little.
            Err(err) if failures < 60 => {
                failures += 1;
                if failures == 1 {
                    eprintln!("[hubctl: {err:#}; trying again]");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        let run = &response["run"];
        if !json_out {
            for step in run["steps"].as_array().into_iter().flatten() {
                let name = row_name(step);
                let state = format!("{} round {}", step["state"].as_str().unwrap_or("?"), step["round"]);
                if seen.get(&name) != Some(&state) {
                    let task = step["task_id"].as_str().map(|t| format!("  task {t}")).unwrap_or_default();
                    let reason = step["reason"].as_str().map(|r| format!("  ({r})")).unwrap_or_default();
                    eprintln!("  {name}: {}{task}{reason}", step["state"].as_str().unwrap_or("?"));
                    seen.insert(name, state);
                }
            }
        }
        let state = run["state"].as_str().unwrap_or("?");
        if matches!(state, "succeeded" | "failed" | "cancelled") {
            if json_out {
                print_json(&response);
            } else {
                print_run(run);
            }
            return Ok(if state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `fix`, or `per-file[3]` for an item.
fn row_name(step: &Value) -> String {
    let id = step["id"].as_str().unwrap_or("?");
    match step["item"].as_u64() {
        Some(item) => format!("{id}[{item}]"),
        None => id.to_owned(),
    }
}

/// A time as RFC 3339, to the second (UTC).
fn unix_ms_text(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn seconds(ms: &Value) -> String {
    ms.as_i64().map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

fn dollars(micros: u64) -> String {
    format!("${:.4}", micros as f64 / 1_000_000.0)
}

fn print_runs(response: &Value) {
    let rows = response["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|run| {
            let counts = run["counts"].as_object().map(|c| {
                let parts: Vec<String> = c.iter().map(|(state, n)| format!("{n} {state}")).collect();
                parts.join(", ")
            });
            vec![
                run["id"].as_str().unwrap_or("?").to_owned(),
                run["name"].as_str().unwrap_or("?").to_owned(),
                run["state"].as_str().unwrap_or("?").to_owned(),
                seconds(&run["duration_ms"]),
                run["trigger"].as_str().unwrap_or("?").to_owned(),
                counts.unwrap_or_default(),
            ]
        })
        .collect();
    table(&["RUN", "WORKFLOW", "STATE", "DURATION", "TRIGGER", "STEPS"], rows);
}

fn print_run(run: &Value) {
    let totals = &run["totals"];
    println!(
        "run {} ({}): {}, {}, started by {}",
        run["id"].as_str().unwrap_or("?"),
        run["name"].as_str().unwrap_or("?"),
        run["state"].as_str().unwrap_or("?"),
        seconds(&run["duration_ms"]),
        run["trigger"].as_str().unwrap_or("?"),
    );
    println!(
        "  tokens {} in / {} out, cost {}{}",
        totals["input_tokens"],
        totals["output_tokens"],
        dollars(totals["cost_micros"].as_u64().unwrap_or(0)),
        match run["retries"].as_u64() {
            Some(n) if n > 0 => format!(", retried {n} time(s)"),
            _ => String::new(),
        }
    );
    let rows = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|step| {
            let tokens = match (step["input_tokens"].as_u64(), step["output_tokens"].as_u64()) {
                (Some(0), Some(0)) | (None, _) | (_, None) => "-".to_owned(),
                (Some(input), Some(output)) => format!("{input}/{output}"),
            };
            vec![
                row_name(step),
                step["round"].to_string(),
                step["state"].as_str().unwrap_or("?").to_owned(),
                seconds(&step["duration_ms"]),
                tokens,
                step["cost_micros"].as_u64().map_or("-".to_owned(), dollars),
                step["verdict"].as_str().unwrap_or("-").to_owned(),
                step["task_id"].as_str().unwrap_or("-").to_owned(),
                step["reason"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    table(&["STEP", "ROUND", "STATE", "DURATION", "TOKENS", "COST", "VERDICT", "TASK", "WHY"], rows);
    if let Some(slowest) = run["slowest_step"].as_object() {
        let name = row_name(&Value::Object(slowest.clone()));
        println!("slowest step: {name}, {}", seconds(&slowest["duration_ms"]));
    }
}

fn validate(file: &Path, json_out: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match agentcom_workflow::file::load(&text) {
        Ok(definition) => {
            let steps = definition.workflow.steps.len();
            if json_out {
                print_json(&json!({ "valid": true, "name": definition.workflow.name, "steps": steps }));
            } else {
                eprintln!("{}: workflow {:?}, {steps} steps: valid", file.display(), definition.workflow.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            if json_out {
                let problems: Vec<_> = problems
                    .iter()
                    .map(|p| json!({ "line": p.line, "column": p.column, "step": p.step, "message": p.message }))
                    .collect();
                print_json(&json!({ "valid": false, "problems": problems }));
            } else {
                for problem in &problems {
                    println!("{}:{problem}", file.display());
                }
                eprintln!("{}: {} problem(s)", file.display(), problems.len());
            }
            Ok(ExitCode::from(1))
        }
    }
}
