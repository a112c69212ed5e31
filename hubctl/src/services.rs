//! Services: `hubctl services` lists the service tasks that have not ended, with their host,
//! ports, state and uptime; `hubctl stop ID` stops one (every process of it) and waits until
//! its sidecar says it ended.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Client, age, print_json, table};

/// How long `stop` waits for the sidecar to say the service ended.
const STOP_WAIT: Duration = Duration::from_secs(60);

pub(crate) async fn services(client: &Client, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = client.call(reqwest::Method::GET, "/api/v1/services", None).await?;
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> =
        response["services"].as_array().map(|services| services.iter().map(row).collect()).unwrap_or_default();
    if rows.is_empty() {
        println!("no services are running");
        return Ok(ExitCode::SUCCESS);
    }
    table(&["ID", "NAME", "STATE", "HOST", "PORTS", "UPTIME", "RESTARTS", "RUN"], rows);
    Ok(ExitCode::SUCCESS)
}

fn row(service: &Value) -> Vec<String> {
    let text = |name: &str| service[name].as_str().unwrap_or("-").to_owned();
    vec![
        text("id"),
        text("name"),
        text("state"),
        text("host"),
        ports_text(&service["ports"]),
        service["started_unix_ms"].as_i64().map_or_else(|| "-".to_owned(), |ms| age(Some(ms))),
        service["restarts"].as_u64().unwrap_or(0).to_string(),
        text("run_id"),
    ]
}

/// `web=41234 admin=41235`.
pub(crate) fn ports_text(ports: &Value) -> String {
    let ports: Vec<String> = ports
        .as_object()
        .map(|ports| ports.iter().map(|(name, port)| format!("{name}={port}")).collect())
        .unwrap_or_default();
    if ports.is_empty() { "-".to_owned() } else { ports.join(" ") }
}

/// The lines `hubctl get` prints for a service task's status.
pub(crate) fn status_lines(status: &Value) -> Vec<String> {
    if !status.is_object() {
        return Vec::new();
    }
    let mut lines = vec![
        format!(
            "service:   {} (up {})",
            status["state"].as_str().unwrap_or("?"),
            age(status["started_unix_ms"].as_i64())
        ),
        format!("ports:     {}", ports_text(&status["ports"])),
    ];
    if let Some(restarts) = status["restarts"].as_u64().filter(|&n| n > 0) {
        lines.push(format!("restarts:  {restarts}"));
    }
    if let Some(evidence) = status["evidence"].as_str().filter(|e| !e.is_empty()) {
        lines.push(format!("evidence:  {evidence}"));
    }
    lines
}

/// Cancels the task and waits (at most [`STOP_WAIT`]) until it has ended where it ran: once its
/// sidecar reports the end, every process of it is gone. Returns the task as it is then.
pub(crate) async fn stop_and_wait(client: &Client, id: &str) -> anyhow::Result<Value> {
    let response = client.call(reqwest::Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await?;
    let started = Instant::now();
    let mut task = response["task"].clone();
    while !ended(&task) && started.elapsed() < STOP_WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        task = client.call(reqwest::Method::GET, &format!("/api/v1/tasks/{id}"), None).await?["task"].clone();
    }
    Ok(task)
}

/// Its sidecar reported its end, or it never reached one.
pub(crate) fn ended(task: &Value) -> bool {
    !task["outcome"].is_null() || task["sidecar_id"].is_null()
}

pub(crate) async fn stop(client: &Client, id: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let task = stop_and_wait(client, id).await?;
    if json_out {
        print_json(&serde_json::json!({ "task": task }));
    } else if !ended(&task) {
        eprintln!("hubctl: {id} was told to stop; its sidecar has not said it ended after {} s", STOP_WAIT.as_secs());
        return Ok(ExitCode::FAILURE);
    } else {
        println!("{} {}", task["id"].as_str().unwrap_or(id), task["state"].as_str().unwrap_or("?"));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_services_ports_and_status_read_as_lines() {
        assert_eq!(super::ports_text(&json!({"admin": 41235, "web": 41234})), "admin=41235 web=41234");
        assert_eq!(super::ports_text(&json!({})), "-");
        let lines = super::status_lines(&json!({
            "state": "restarting", "ports": {"web": 41234}, "restarts": 2,
            "evidence": "exited with code 1: boom", "started_unix_ms": 1, "ready_unix_ms": null
        }));
        assert_eq!(lines[0].split(' ').take(4).collect::<Vec<_>>().join(" "), "service:   restarting");
        assert!(lines.contains(&"ports:     web=41234".to_owned()), "{lines:?}");
        assert!(lines.contains(&"restarts:  2".to_owned()));
        assert!(lines.contains(&"evidence:  exited with code 1: boom".to_owned()));
        assert!(super::status_lines(&json!(null)).is_empty());
    }
}
