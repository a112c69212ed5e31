//! Fleet commands: one agent and its history, hosts and their resources, drain and uncordon,
//! and the LLM endpoint registry.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Client, age, print_json, table};

#[derive(Subcommand)]
pub(crate) enum EndpointsCommand {
    /// List endpoints with their health and models (warm = loaded in memory).
    Ls,
    /// Add an endpoint the hub probes itself (its host must be on the hub's --allow-endpoint list).
    Add {
        url: String,
        /// ollama or openai.
        #[arg(long, default_value = "ollama")]
        kind: String,
    },
    /// Remove an endpoint by id.
    Rm { id: String },
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("").to_owned()
}

/// `idle`, `working (stalled)`, `draining`, ...
fn agent_state(agent: &Value) -> String {
    let state = text(&agent["state"]);
    if agent["stalled"].as_bool() == Some(true) { format!("{state} (stalled)") } else { state }
}

pub(crate) fn print_agents(response: &Value) {
    let rows = response["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                text(&a["id"]),
                agent_state(a),
                text(&a["hostname"]),
                a["task_id"].as_str().unwrap_or("-").to_owned(),
                age(a["last_activity_unix_ms"].as_i64().filter(|_| !a["task_id"].is_null())),
                age(a["last_seen_unix_ms"].as_i64()),
                text(&a["version"]),
            ]
        })
        .collect();
    table(&["AGENT", "STATE", "HOST", "TASK", "ACTIVE", "SEEN", "VERSION"], rows);
}

pub(crate) async fn agent(client: &Client, id: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    // Agent ids are `SIDECAR/SLOT`: one path segment, so the slash is escaped.
    let segment = id.replace('%', "%25").replace('/', "%2F");
    let response = client.call(reqwest::Method::GET, &format!("/api/v1/agents/{segment}"), None).await?;
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    let a = &response["agent"];
    println!("agent     {}", text(&a["id"]));
    println!("sidecar   {} on {}", text(&a["sidecar_id"]), text(&a["hostname"]));
    println!("state     {} for {}", agent_state(a), age(a["state_since_unix_ms"].as_i64()));
    if a["cordoned"].as_bool() == Some(true) {
        println!("cordoned  yes");
    }
    if let Some(task) = a["task_id"].as_str() {
        println!("task      {task} (last activity {} ago)", age(a["last_activity_unix_ms"].as_i64()));
    }
    println!("seen      {} ago", age(a["last_seen_unix_ms"].as_i64()));
    println!();
    let rows = a["history"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .map(|t| {
            vec![
                format!("{} ago", age(t["at_unix_ms"].as_i64())),
                format!("{} -> {}", text(&t["from"]), text(&t["to"])),
                text(&t["cause"]),
            ]
        })
        .collect();
    table(&["WHEN", "TRANSITION", "CAUSE"], rows);
    Ok(ExitCode::SUCCESS)
}

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / (1u64 << 30) as f64))
}

fn gpu_summary(resources: &Value) -> String {
    let Some(gpus) = resources["gpus"].as_array().filter(|g| !g.is_empty()) else { return "none".to_owned() };
    let utils: Vec<String> =
        gpus.iter().map(|g| g["utilization_percent"].as_u64().map_or("?".to_owned(), |u| format!("{u}%"))).collect();
    let simulated = if resources["gpus_simulated"].as_bool() == Some(true) { " simulated" } else { "" };
    format!("{}x{simulated} {}", gpus.len(), utils.join(" "))
}

fn host_status(h: &Value) -> String {
    let mut status = if h["online"].as_bool() == Some(true) { "online" } else { "offline" }.to_owned();
    if !h["cordon"].is_null() {
        status.push_str(", cordoned");
    }
    status
}

pub(crate) async fn hosts(client: &Client, id: Option<&str>, json_out: bool) -> anyhow::Result<ExitCode> {
    let path = id.map_or("/api/v1/hosts".to_owned(), |id| format!("/api/v1/hosts/{id}"));
    let response = client.call(reqwest::Method::GET, &path, None).await?;
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    if id.is_some() {
        print_host(&response["host"]);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = response["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let r = &h["resources"];
            vec![
                text(&h["id"]),
                text(&h["hostname"]),
                host_status(h),
                h["agents"].to_string(),
                r["cpu_percent"].as_f64().map_or("-".to_owned(), |c| format!("{c:.0}%")),
                r["load1"].as_f64().map_or("-".to_owned(), |l| format!("{l:.2}")),
                format!("{}/{}", gib(r["memory_used_bytes"].as_u64()), gib(r["memory_total_bytes"].as_u64())),
                if r.is_null() { "-".to_owned() } else { gpu_summary(r) },
                age(h["last_seen_unix_ms"].as_i64()),
            ]
        })
        .collect();
    table(&["HOST", "NAME", "STATUS", "AGENTS", "CPU", "LOAD", "MEM GiB", "GPUS", "SEEN"], rows);
    Ok(ExitCode::SUCCESS)
}

fn print_host(h: &Value) {
    println!("host      {} ({})", text(&h["id"]), text(&h["hostname"]));
    println!("status    {}", host_status(h));
    println!("system    {} {}, sidecar {}", text(&h["os"]), text(&h["arch"]), text(&h["version"]));
    let containment = text(&h["containment"]);
    println!("contain   {}", if containment.is_empty() { "not reported" } else { containment.as_str() });
    let r = &h["resources"];
    if r.is_null() {
        println!("resources not reported yet");
        return;
    }
    println!(
        "cpu       {:.0}% over {} cores, load {:.2} {:.2} {:.2}",
        r["cpu_percent"].as_f64().unwrap_or(0.0),
        r["cpu_per_core_percent"].as_array().map_or(0, Vec::len),
        r["load1"].as_f64().unwrap_or(0.0),
        r["load5"].as_f64().unwrap_or(0.0),
        r["load15"].as_f64().unwrap_or(0.0)
    );
    println!(
        "memory    {} GiB used, {} GiB available of {} GiB",
        gib(r["memory_used_bytes"].as_u64()),
        gib(r["memory_available_bytes"].as_u64()),
        gib(r["memory_total_bytes"].as_u64())
    );
    for d in r["disks"].as_array().into_iter().flatten() {
        println!(
            "disk      {} {} GiB free of {} GiB",
            text(&d["mount"]),
            gib(d["available_bytes"].as_u64()),
            gib(d["total_bytes"].as_u64())
        );
    }
    let simulated = if r["gpus_simulated"].as_bool() == Some(true) { " [simulated]" } else { "" };
    match r["gpus"].as_array().filter(|g| !g.is_empty()) {
        None => println!("gpus      no GPU"),
        Some(gpus) => {
            for g in gpus {
                let opt = |v: &Value, unit: &str| v.as_u64().map_or("n/a".to_owned(), |n| format!("{n}{unit}"));
                println!(
                    "gpu {}     {}{simulated}: {} busy, {}/{} GiB, {}, {}",
                    g["index"],
                    text(&g["name"]),
                    opt(&g["utilization_percent"], "%"),
                    gib(g["memory_used_bytes"].as_u64()),
                    gib(g["memory_total_bytes"].as_u64()),
                    opt(&g["temperature_celsius"], " C"),
                    g["power_milliwatts"]
                        .as_u64()
                        .map_or("n/a".to_owned(), |mw| format!("{:.0} W", mw as f64 / 1000.0)),
                );
            }
        }
    }
    let history = h["history"].as_array().map_or(0, Vec::len);
    println!("history   {history} samples (GET /api/v1/hosts/{} for all of them)", text(&h["id"]));
}

pub(crate) async fn drain(
    client: &Client,
    sidecar: &str,
    deadline: Option<Duration>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let body = json!({ "deadline_ms": deadline.map(|d| d.as_millis() as u64) });
    let response = client.call(reqwest::Method::POST, &format!("/api/v1/hosts/{sidecar}/drain"), Some(body)).await?;
    if json_out {
        print_json(&response);
    } else {
        match deadline {
            Some(d) => println!(
                "{sidecar} cordoned: no new work; tasks still running in {} are requeued",
                humantime::format_duration(d)
            ),
            None => println!("{sidecar} cordoned: no new work; running tasks finish"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn uncordon(client: &Client, sidecar: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = client.call(reqwest::Method::POST, &format!("/api/v1/hosts/{sidecar}/uncordon"), None).await?;
    if json_out {
        print_json(&response);
    } else {
        println!("{sidecar} takes work again");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `endpoints ls` says when there are none: how to get one.
pub(crate) const NO_ENDPOINTS: &str = "no LLM endpoints yet. A sidecar reports its own: start Ollama on its machine (found at 127.0.0.1:11434), or run it with --ollama URL, --openai-base-url URL (llama.cpp's server, vLLM) or ANTHROPIC_API_KEY set; or add one the hub probes itself: hubctl endpoints add URL --kind ollama|openai (its host must be on the hub's --allow-endpoint)";

pub(crate) async fn endpoints(client: &Client, command: EndpointsCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = match &command {
        EndpointsCommand::Ls => client.call(reqwest::Method::GET, "/api/v1/endpoints", None).await?,
        EndpointsCommand::Add { url, kind } => {
            let body = json!({ "url": url, "kind": kind });
            client.call(reqwest::Method::POST, "/api/v1/endpoints", Some(body)).await?
        }
        EndpointsCommand::Rm { id } => {
            client.call(reqwest::Method::DELETE, &format!("/api/v1/endpoints/{id}"), None).await?
        }
    };
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    let list = match &command {
        EndpointsCommand::Ls => response["endpoints"].as_array().cloned().unwrap_or_default(),
        _ => vec![response["endpoint"].clone()],
    };
    if list.is_empty() {
        println!("{NO_ENDPOINTS}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for e in &list {
        let by = e["owner"]["sidecar_id"].as_str().unwrap_or("hub").to_owned();
        let health = if e["healthy"].as_bool() == Some(true) {
            "healthy".to_owned()
        } else {
            format!("down: {}", e["error"].as_str().unwrap_or("?"))
        };
        let models: Vec<String> = e["models"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| format!("{} ({})", text(&m["name"]), text(&m["state"])))
            .collect();
        let models = if models.is_empty() { "-".to_owned() } else { models.join(", ") };
        rows.push(vec![text(&e["id"]), text(&e["kind"]), text(&e["url"]), by, health, models]);
    }
    table(&["ID", "KIND", "URL", "PROBED BY", "HEALTH", "MODELS"], rows);
    Ok(ExitCode::SUCCESS)
}
