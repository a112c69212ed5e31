//! `hubctl explain` and `hubctl why`: placement decisions and waits, as text.

use serde_json::Value;

use crate::{age, table, table_lines};

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn seconds(ms: &Value) -> String {
    ms.as_f64().map_or("-".into(), |ms| format!("{:.2}s", ms / 1000.0))
}

/// The tier line: `tier standard (inferred), model llama3.2:3b`.
fn tier_line(decision: &Value) -> String {
    let model = decision["model"].as_str().map_or(String::new(), |m| format!(", model {m}"));
    format!("tier {} ({}){model}", text(&decision["tier"]), text(&decision["tier_source"]))
}

/// The candidates a decision weighed, best first.
fn print_candidates(decision: &Value) {
    let candidates = decision["candidates"].as_array().cloned().unwrap_or_default();
    if candidates.is_empty() {
        println!("  no candidates: nothing open could take it");
        return;
    }
    if candidates.iter().all(|c| c["estimate"].is_null()) {
        // Placed by capability: what counted is the idle agents.
        let rows = candidates
            .iter()
            .map(|c| vec![text(&c["agent_id"]), text(&c["sidecar_id"]), text(&c["verdict"]), text(&c["idle_agents"])])
            .collect();
        table(&["  AGENT", "SIDECAR", "VERDICT", "IDLE AGENTS"], rows_indented(rows));
        return;
    }
    let rows = candidates
        .iter()
        .map(|c| {
            let e = &c["estimate"];
            let agent = c["agent_id"]
                .as_str()
                .map_or_else(|| format!("{} (no idle agent)", text(&c["sidecar_id"])), str::to_owned);
            vec![
                agent,
                text(&c["endpoint_id"]),
                text(&c["verdict"]),
                seconds(&e["total_ms"]),
                seconds(&e["wait_ms"]),
                seconds(&e["load_ms"]),
                seconds(&e["generate_ms"]),
                seconds(&e["fit_ms"]),
                if e.is_null() {
                    "-".into()
                } else if c["warm"] == true {
                    "warm".into()
                } else {
                    "cold".into()
                },
                text(&c["in_flight"]),
            ]
        })
        .collect();
    table(
        &["  AGENT", "ENDPOINT", "VERDICT", "TOTAL", "WAIT", "LOAD", "GENERATE", "FIT", "MODEL", "IN FLIGHT"],
        rows_indented(rows),
    );
    if let Some(more) = decision["more_candidates"].as_u64().filter(|n| *n > 0) {
        println!("  ... and {more} more candidates");
    }
}

fn rows_indented(rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|mut row| {
            row[0] = format!("  {}", row[0]);
            row
        })
        .collect()
}

/// `GET /api/v1/tasks/{id}/decision` as text.
pub(crate) fn print_decisions(id: &str, response: &Value) {
    let decisions = response["decisions"].as_array().cloned().unwrap_or_default();
    if decisions.is_empty() {
        println!("task {id}: no placement decision kept (not placed yet, or placed before this hub started)");
        return;
    }
    for (n, d) in decisions.iter().enumerate() {
        if n > 0 {
            println!();
        }
        let at = age(d["at_unix_ms"].as_i64());
        println!("{} for attempt {} ({at} ago): {}", text(&d["kind"]), text(&d["attempt"]), text(&d["reason"]));
        let place = match d["agent_id"].as_str() {
            Some(agent) => {
                format!("to {agent}{}", d["endpoint_id"].as_str().map_or(String::new(), |e| format!(" via {e}")))
            }
            None => format!("waited: {}", text(&d["wait"])),
        };
        println!("  {}; {place}", tier_line(d));
        if let Some(line) = judge_line(d) {
            println!("  {line}");
        }
        print_candidates(d);
    }
}

/// Who judges the work's `llm_judge` steps: `judged by qwen2.5:7b via ep-... (est 0.53s)`.
fn judge_line(decision: &Value) -> Option<String> {
    let judge = &decision["judge"];
    let model = judge["model"].as_str()?;
    Some(format!(
        "judged by {model} via {} (est {})",
        text(&judge["endpoint_id"]),
        seconds(&judge["estimate"]["total_ms"])
    ))
}

/// `GET /api/v1/tasks/{id}/why` as text.
pub(crate) fn print_why(response: &Value) {
    let why = &response["why"];
    let id = text(&why["task_id"]);
    let verb = if why["waiting"] == true { "waits" } else { "is not waiting" };
    println!("task {id} {verb}: {} ({})", text(&why["message"]), text(&why["code"]));
    println!("  {} for {}", text(&why["state"]), age(why["since_unix_ms"].as_i64()));
    if let Some(now) = why["placement_now"].as_object().map(|_| &why["placement_now"]) {
        println!("  {}", tier_line(now));
        if let Some(at) = why["fallback_at_unix_ms"].as_i64() {
            let in_s = (at - crate::now_ms()).max(0) as f64 / 1000.0;
            println!("  moves to another tier in {in_s:.0}s if nothing changes");
        }
        print_candidates(now);
    }
}

/// `hubctl models`: one line per model, kind of work and tier.
pub(crate) fn print_model_stats(response: &Value) {
    let models = response["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("no verified results yet (verdicts come from tasks with verification steps)");
        return;
    }
    for line in model_stat_lines(&models) {
        println!("{line}");
    }
}

fn model_stat_lines(models: &[Value]) -> Vec<String> {
    let rows = models
        .iter()
        .map(|m| {
            let text = |name: &str| m[name].as_str().unwrap_or("?").to_owned();
            let rate = m["pass_rate"].as_f64().map(|r| format!("{:.0}%", r * 100.0)).unwrap_or_else(|| "?".into());
            vec![text("model"), text("kind"), text("tier"), m["passed"].to_string(), m["failed"].to_string(), rate]
        })
        .collect();
    table_lines(&["MODEL", "KIND", "TIER", "PASSED", "FAILED", "PASS RATE"], rows)
}

#[cfg(test)]
mod model_tests {
    use super::*;

    #[test]
    fn the_judge_shows_in_a_line_when_placement_chose_one() {
        let decision = serde_json::json!({"judge": {"model": "qwen2.5:7b", "endpoint_id": "ep-1", "estimate": {"total_ms": 533.3}}});
        assert_eq!(judge_line(&decision).as_deref(), Some("judged by qwen2.5:7b via ep-1 (est 0.53s)"));
        assert_eq!(judge_line(&serde_json::json!({"judge": null})), None);
    }

    #[test]
    fn model_stats_print_as_a_table() {
        let models = vec![
            serde_json::json!({"model": "qwen2.5:7b", "kind": "llm", "tier": "standard", "passed": 3, "failed": 5, "pass_rate": 0.5}),
            serde_json::json!({"model": "claude-sonnet-4-5", "kind": "agent", "tier": "complex", "passed": 9, "failed": 1, "pass_rate": 0.857}),
        ];
        assert_eq!(
            model_stat_lines(&models),
            vec![
                "MODEL              KIND   TIER      PASSED  FAILED  PASS RATE",
                "qwen2.5:7b         llm    standard  3       5       50%",
                "claude-sonnet-4-5  agent  complex   9       1       86%",
            ]
        );
    }
}

/// `hubctl models`: the verdicts by model (no subcommand), or the gateway's model aliases.
#[derive(clap::Subcommand)]
pub(crate) enum ModelsCommand {
    /// Make NAME mean the first of MODELS the fleet serves, for the gateway's callers (`*`: the
    /// fallback, what a model nowhere in the fleet means). Replaces an alias of that name.
    Alias {
        name: String,
        #[arg(required = true, num_args = 1..)]
        models: Vec<String>,
    },
    /// The gateway's model aliases.
    Aliases,
    /// Remove an alias.
    Unalias { name: String },
}

pub(crate) async fn models(
    client: &crate::Client,
    command: Option<ModelsCommand>,
    json_out: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let response = match &command {
        None => client.call(reqwest::Method::GET, "/api/v1/models/stats", None).await?,
        Some(ModelsCommand::Alias { name, models }) => {
            let path = format!("/api/v1/models/aliases/{}", segment(name));
            client.call(reqwest::Method::PUT, &path, Some(serde_json::json!({ "models": models }))).await?
        }
        Some(ModelsCommand::Aliases) => client.call(reqwest::Method::GET, "/api/v1/models/aliases", None).await?,
        Some(ModelsCommand::Unalias { name }) => {
            let path = format!("/api/v1/models/aliases/{}", segment(name));
            client.call(reqwest::Method::DELETE, &path, None).await?
        }
    };
    if json_out {
        crate::print_json(&response);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let models_of = |alias: &Value| {
        let models: Vec<&str> = alias["models"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        models.join(" ")
    };
    match command {
        None => print_model_stats(&response),
        Some(ModelsCommand::Alias { name, .. }) => println!("{name} -> {}", models_of(&response)),
        Some(ModelsCommand::Unalias { name }) => println!("{name} removed"),
        Some(ModelsCommand::Aliases) => {
            let rows: Vec<Vec<String>> = response["aliases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| vec![text(&a["name"]), models_of(a)])
                .collect();
            if rows.is_empty() {
                eprintln!("no aliases: hubctl models alias NAME MODEL [MODEL...] makes one");
            } else {
                table(&["ALIAS", "MODELS (first served wins)"], rows);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `name` as one path segment: anything but letters, digits and `-._~:*` percent-encoded.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'*' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
