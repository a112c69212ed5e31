//! How a task reads on the terminal: its row in `list`, and the page `get` prints.

use serde_json::Value;

use crate::{age, sep, table, usage_line, work};

pub(crate) fn command_text(task: &Value) -> String {
    let work = &task["spec"]["work"];
    let text = if let Some(argv) = work["shell"]["command"]["argv"].as_array() {
        argv.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
    } else if let Some(script) = work["shell"]["command"]["script"].as_str() {
        script.to_owned()
    } else if let Some(prompt) = work["llm"]["prompt"].as_str() {
        format!("prompt: {prompt}")
    } else if let Some(goal) = work["agent"]["goal"].as_str() {
        format!("agent: {goal}")
    } else if let Some(argv) = work["service"]["command"]["argv"].as_array() {
        format!("service: {}", argv.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
    } else if let Some(script) = work["service"]["command"]["script"].as_str() {
        format!("service: {script}")
    } else {
        String::new()
    };
    let text = text.replace('\n', " ");
    if text.chars().count() > 60 { format!("{}…", text.chars().take(59).collect::<String>()) } else { text }
}

pub(crate) fn exit_text(task: &Value) -> String {
    let exit = &task["outcome"]["exit"];
    if task["outcome"]["timed_out"] == true {
        // Killed by the sidecar at its timeout, not by a signal from anyone else.
        "timeout".into()
    } else if let Some(code) = exit["code"].as_i64() {
        code.to_string()
    } else if let Some(signal) = exit["signal"].as_i64() {
        format!("sig {signal}")
    } else {
        "-".into()
    }
}

pub(crate) fn print_task_table(response: &Value) {
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

pub(crate) fn print_task(task: &Value) {
    let field = |name: &str| task[name].as_str().unwrap_or("").to_owned();
    let outcome = &task["outcome"];
    println!("id:        {}", field("id"));
    println!("state:     {}{}", field("state"), sep(&field("state_reason")));
    println!("command:   {}", command_text(task));
    println!("priority:  {}", task["spec"]["priority"].as_str().unwrap_or("-"));
    println!("attempt:   {} (lease generation {})", task["attempt"], task["lease_generation"]);
    println!("agent:     {}", task["agent_id"].as_str().unwrap_or("-"));
    println!("created:   {} ago", age(task["created_unix_ms"].as_i64()));
    for line in crate::services::status_lines(&task["service"]) {
        println!("{line}");
    }
    if outcome.is_object() {
        println!("exit:      {}", exit_text(task));
        println!("duration:  {} ms", outcome["duration_ms"]);
        if let Some(line) = usage_line(task) {
            println!("usage:     {line}");
        }
        for line in work::verification_lines(task).into_iter().chain(work::work_lines(task)) {
            println!("{line}");
        }
        if let Some(dropped) = outcome["output_dropped_unix_ms"].as_i64() {
            let total = outcome["stdout_total_bytes"].as_u64().unwrap_or(0)
                + outcome["stderr_total_bytes"].as_u64().unwrap_or(0);
            println!(
                "output:    dropped {} ago by the hub's retention (--retain-output, --retain-output-bytes); it was {total} bytes",
                age(Some(dropped))
            );
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_timed_out_task_lists_as_timeout_not_its_signal() {
        let timed_out = json!({"outcome": {"exit": {"signal": 15}, "timed_out": true}});
        assert_eq!(super::exit_text(&timed_out), "timeout");
        assert_eq!(super::exit_text(&json!({"outcome": {"exit": {"signal": 9}}})), "sig 9");
        assert_eq!(super::exit_text(&json!({"outcome": {"exit": {"code": 3}}})), "3");
        assert_eq!(super::exit_text(&json!({"state": "queued"})), "-");
    }
}
