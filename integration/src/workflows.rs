//! Helpers for the workflow tests: `hubctl workflow` as JSON, and a run's rows.

use serde_json::Value;

use crate::HubProcess;
use crate::process::hubctl;

/// `hubctl --json workflow ARGS` against `hub`: its exit code and the JSON it printed (a panic,
/// with its stderr, when it printed none).
pub async fn workflow(hub: &HubProcess, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json", "workflow"];
    all.extend_from_slice(args);
    let output = hubctl(&hub.url, &hub.api.token, &all).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!("hubctl {args:?} printed no JSON: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr))
    });
    (output.status.code().unwrap_or(-1), json)
}

/// The rows of step `id` in a run as `GET /api/v1/workflows/runs/{id}` answers it.
pub fn rows<'a>(run: &'a Value, id: &str) -> Vec<&'a Value> {
    run["run"]["steps"].as_array().unwrap().iter().filter(|s| s["id"] == id).collect()
}
