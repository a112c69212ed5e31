//! `hubctl repo up|down`: a repository brought up by the hub's built-in `repo-up` workflow
//! (`hubctl workflow show repo-up`), and its services stopped again.
//!
//! `up` starts a run; with `--wait` it follows it, a line per phase as it changes (and why the
//! first phase waits, when no sidecar takes it), and exits 0 once every service is ready, 1 if
//! the run failed. The report (`--json`: `{"run": {...}}`) is read from the run, its step tasks
//! (`label=workflow_run=RUN`) and the running services.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::{Client, print_json};

#[derive(Subcommand)]
pub(crate) enum RepoCommand {
    /// Bring a repository up: detect, set up (once per commit), start its services on free ports,
    /// check their health, fix what fails with an agent, report. Prints the run id; with --wait,
    /// follows it and exits 0 once every service is ready (1 if the run failed).
    Up {
        /// A local path or URL that a sidecar's --repo-allow covers.
        source: String,
        /// A branch or commit [default: the default branch].
        #[arg(long)]
        branch: Option<String>,
        /// Make the environment anew: every phase runs again.
        #[arg(long)]
        fresh: bool,
        /// The model of the fix step [default: the sidecar's choice].
        #[arg(long)]
        model: Option<String>,
        /// How long a service has to answer its health check (e.g. 60s, 2m).
        #[arg(long, value_name = "DURATION")]
        ready_within: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Stop every service a repo-up run started (and the run, if it still runs).
    Down { run: String },
}

pub(crate) async fn repo(client: &Client, command: RepoCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    match command {
        RepoCommand::Up { source, branch, fresh, model, ready_within, wait } => {
            // A local path is given to the sidecar whole (its allowlist is of absolute paths).
            let source = match std::fs::canonicalize(&source) {
                Ok(path) => path.to_string_lossy().into_owned(),
                Err(_) => source,
            };
            let mut inputs = Map::new();
            inputs.insert("repo".into(), json!(source));
            inputs.insert("fresh".into(), json!(fresh));
            if let Some(branch) = branch {
                inputs.insert("branch".into(), json!(branch));
            }
            if let Some(model) = model {
                inputs.insert("model".into(), json!(model));
            }
            if let Some(within) = ready_within {
                humantime::parse_duration(&within).with_context(|| format!("--ready-within {within}"))?;
                inputs.insert("ready_within".into(), json!(within));
            }
            let body = json!({ "builtin": "repo-up", "inputs": inputs });
            let response = client.call(reqwest::Method::POST, "/api/v1/workflows/runs", Some(body)).await?;
            let id = response["run"]["id"].as_str().context("the hub returned no run id")?.to_owned();
            if !wait {
                if json_out {
                    print_json(&json!({ "run": report(client, &id).await? }));
                } else {
                    println!("{id}");
                    eprintln!("[follow it with: hubctl workflow watch {id}; stop it with: hubctl repo down {id}]");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let state = follow(client, &id, json_out).await?;
            let report = report(client, &id).await?;
            if json_out {
                print_json(&json!({ "run": report }));
            } else {
                print_report(&report);
            }
            Ok(if state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        RepoCommand::Down { run } => down(client, &run, json_out).await,
    }
}

/// Follows the run until it ends, a line on stderr per phase (or service) whose state changes;
/// returns its final state.
async fn follow(client: &Client, id: &str, quiet: bool) -> anyhow::Result<String> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut told_why = std::collections::BTreeSet::new();
    let mut last_change = Instant::now();
    loop {
        let run =
            client.call(reqwest::Method::GET, &format!("/api/v1/workflows/runs/{id}"), None).await?["run"].clone();
        for row in run["steps"].as_array().into_iter().flatten() {
            let name = match row["item"].as_u64() {
                Some(item) => format!("{}[{item}]", row["id"].as_str().unwrap_or("?")),
                None => row["id"].as_str().unwrap_or("?").to_owned(),
            };
            let state = format!("{} round {}", row["state"].as_str().unwrap_or("?"), row["round"]);
            if seen.get(&name) != Some(&state) {
                if !quiet {
                    let reason = row["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
                    let round =
                        row["round"].as_u64().filter(|&r| r > 1).map(|r| format!(" round {r}")).unwrap_or_default();
                    eprintln!("  {name}: {}{round}{reason}", row["state"].as_str().unwrap_or("?"));
                }
                seen.insert(name, state);
                last_change = Instant::now();
            }
        }
        // A phase whose task has waited a while for a sidecar (none allows the repository, every
        // slot busy with services): say why, once for each.
        if !quiet && last_change.elapsed() > Duration::from_secs(3) {
            for row in run["steps"].as_array().into_iter().flatten().filter(|r| r["state"] == "running") {
                let Some(task) = row["task_id"].as_str() else { continue };
                if !told_why.insert(task.to_owned()) {
                    continue;
                }
                let why = client.call(reqwest::Method::GET, &format!("/api/v1/tasks/{task}/why"), None).await?;
                if why["why"]["waiting"] == true {
                    eprintln!(
                        "[hubctl: {} waits: {}]",
                        row["id"].as_str().unwrap_or("?"),
                        why["why"]["message"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        let state = run["state"].as_str().unwrap_or("?");
        if matches!(state, "succeeded" | "failed" | "cancelled") {
            return Ok(state.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The run's report: what was detected, each phase, each service, what the fix changed, tokens
/// and cost.
async fn report(client: &Client, id: &str) -> anyhow::Result<Value> {
    let run = client.call(reqwest::Method::GET, &format!("/api/v1/workflows/runs/{id}"), None).await?["run"].clone();
    let tasks = client
        .call(reqwest::Method::GET, &format!("/api/v1/tasks?label=workflow_run={id}&limit=1000"), None)
        .await?["tasks"]
        .clone();
    let services = client.call(reqwest::Method::GET, "/api/v1/services", None).await?["services"].clone();
    let rows: Vec<Value> = run["steps"].as_array().cloned().unwrap_or_default();
    let env = rows.iter().find(|r| r["id"] == "detect").map(|r| r["outputs"]["env"].clone()).unwrap_or(Value::Null);
    let mut phases = Vec::new();
    for step in run["graph"].as_array().into_iter().flatten() {
        let name = step["id"].as_str().unwrap_or("?");
        let of_step: Vec<&Value> = rows.iter().filter(|r| r["id"] == name).collect();
        let Some(first) = of_step.first() else { continue };
        let started = of_step.iter().filter_map(|r| r["started_unix_ms"].as_i64()).min();
        let finished = of_step.iter().filter_map(|r| r["finished_unix_ms"].as_i64()).max();
        let mut phase = json!({
            "name": name,
            "state": first["step_state"],
            "round": first["round"],
            "duration_ms": started.zip(finished).map(|(s, f)| f - s),
            "reason": of_step.iter().find_map(|r| r["reason"].as_str()),
            "tasks": of_step.iter().filter_map(|r| r["task_id"].as_str()).collect::<Vec<_>>(),
        });
        if name == "setup" && first["step_state"] == "skipped" {
            phase["resumed"] = env["phases"]["setup"]["record"].clone();
        }
        phases.push(phase);
    }
    // Where the rules found no service, the model's plan (marked as its) is what ran.
    let proposed = rows.iter().find(|r| r["id"] == "propose" && r["state"] == "succeeded").map(|r| {
        let mut plan = r["outputs"]["plan"].clone();
        for service in plan["services"].as_array_mut().into_iter().flatten() {
            service["source"] = json!("model");
        }
        for (index, line) in plan["install"].clone().as_array().into_iter().flatten().enumerate() {
            plan["install"][index] = json!({"run": line, "source": "model"});
        }
        plan
    });
    let plan = proposed.as_ref().map_or(&env["plan"]["services"], |p| &p["services"]);
    let starts = rows.iter().filter(|r| r["id"] == "start");
    let services: Vec<Value> = starts
        .map(|row| {
            let index = row["item"].as_u64().unwrap_or(0) as usize;
            let task = row["task_id"].as_str().unwrap_or_default();
            let live = services.as_array().into_iter().flatten().find(|s| s["id"] == task);
            let ports = live.map_or_else(|| row["outputs"]["ports"].clone(), |s| s["ports"].clone());
            json!({
                "name": plan[index]["name"],
                "state": live.map_or_else(|| json!(if row["state"] == "succeeded" { "stopped" } else { row["state"].as_str().unwrap_or("?") }), |s| s["state"].clone()),
                "host": live.map_or_else(|| row["outputs"]["host"].clone(), |s| s["host"].clone()),
                "port": ports.as_object().and_then(|p| plan[index]["ports"][0].as_str().and_then(|first| p.get(first))).cloned(),
                "ports": ports,
                "url": live.map_or_else(|| row["outputs"]["url"].clone(), |s| s["url"].clone()),
                "task_id": task,
                "reason": row["reason"],
            })
        })
        .collect();
    let fixes: Vec<Value> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["spec"]["labels"]["workflow_step"] == "fix")
        .map(|t| {
            let workspace = &t["outcome"]["workspace"];
            json!({
                "task_id": t["id"],
                "round": t["spec"]["labels"]["workflow_round"],
                "state": t["state"],
                "verdict": t["outcome"]["verification"]["verdict"],
                "diff_stat": workspace["diff_stat"],
                "diff": workspace["diff"],
                "branch": workspace["branch"],
                "commit": workspace["commit"],
            })
        })
        .collect();
    Ok(json!({
        "id": run["id"],
        "state": run["state"],
        "repo": run["inputs"]["repo"],
        "commit": env["commit"],
        "host": env["host"],
        "environment": env["dir"],
        "created_unix_ms": run["created_unix_ms"],
        "duration_ms": run["duration_ms"],
        "phases": phases,
        "services": services,
        "fixes": fixes,
        "detected": env["plan"],
        "proposed": proposed,
        "totals": run["totals"],
    }))
}

fn print_report(report: &Value) {
    let text = |v: &Value| {
        v.as_str().map(str::to_owned).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() })
    };
    println!("run:      {} {}", text(&report["id"]), text(&report["state"]));
    println!("repo:     {} at {}", text(&report["repo"]), text(&report["commit"]));
    println!("on:       {} in {}", text(&report["host"]), text(&report["environment"]));
    println!("phases:");
    for phase in report["phases"].as_array().into_iter().flatten() {
        let took = phase["duration_ms"].as_i64().map(|ms| format!(" {:.1}s", ms as f64 / 1000.0)).unwrap_or_default();
        let note = match (&phase["resumed"], phase["reason"].as_str()) {
            (Value::Object(record), _) => format!(" (done already by task {})", text(&record["task"])),
            (_, Some(reason)) => format!(" ({reason})"),
            _ => String::new(),
        };
        println!("  {:<8} {}{took}{note}", text(&phase["name"]), text(&phase["state"]));
    }
    println!("services:");
    for service in report["services"].as_array().into_iter().flatten() {
        println!("  {:<8} {:<10} {}", text(&service["name"]), text(&service["state"]), text(&service["url"]));
    }
    for fix in report["fixes"].as_array().into_iter().flatten() {
        println!("fix (round {}): {} {}", text(&fix["round"]), text(&fix["state"]), text(&fix["commit"]));
        for line in fix["diff_stat"].as_str().unwrap_or("").lines() {
            println!("  {line}");
        }
    }
    let totals = &report["totals"];
    if totals["input_tokens"].as_u64().unwrap_or(0) + totals["output_tokens"].as_u64().unwrap_or(0) > 0 {
        println!("tokens:   {} in, {} out", totals["input_tokens"], totals["output_tokens"]);
    }
}

/// Stops every service of the run (waiting until each has ended) and the run, if it runs.
async fn down(client: &Client, run: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let state =
        client.call(reqwest::Method::GET, &format!("/api/v1/workflows/runs/{run}"), None).await?["run"]["state"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
    if matches!(state.as_str(), "pending" | "running") {
        client.call(reqwest::Method::POST, &format!("/api/v1/workflows/runs/{run}/cancel"), None).await?;
    }
    let services = client.call(reqwest::Method::GET, "/api/v1/services", None).await?["services"].clone();
    let mine: Vec<&Value> = services.as_array().into_iter().flatten().filter(|s| s["run_id"] == run).collect();
    // Down once every one of them is ended on its sidecar: none of their processes is left.
    let mut stopped = Vec::new();
    for service in &mine {
        let id = service["id"].as_str().unwrap_or_default();
        let task = crate::services::stop_and_wait(client, id).await?;
        anyhow::ensure!(crate::services::ended(&task), "service {id} was told to stop and has not ended");
        stopped.push(id.to_owned());
    }
    if json_out {
        print_json(&json!({ "run": run, "stopped": stopped }));
    } else {
        println!("stopped {} service(s) of run {run}", stopped.len());
    }
    Ok(ExitCode::SUCCESS)
}
