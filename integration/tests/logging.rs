//! Logs of the real binaries: one JSON object per line with `--log-format json`, and no planted
//! secret in any line: not a provider key from the environment, not a `--secret` file's value,
//! not a URL's password (which the sidecar does log, as the endpoint it could not reach), not a
//! token. Nor in any API response, event stream or dashboard file, though the task prints the
//! secret and the URL and the endpoint's error names the URL.

use std::time::Duration;

use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_no_planted_secret() {
    const KEY: &str = "sk-ant-canary-key-5be1d07";
    const FILE_SECRET: &str = "canary-file-secret-93c2";
    const URL_PASSWORD: &str = "canary-url-password-1f4";
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let secret_file = dir.path().join("canary.secret");
    std::fs::write(&secret_file, format!("{FILE_SECRET}\n")).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &["--log-format", "json"]).await;
    // An Ollama URL with a password, on a port nothing listens on: the sidecar logs it as down.
    let ollama = format!("http://agent:{URL_PASSWORD}@127.0.0.1:9");
    let secret = format!("CANARY={}", secret_file.display());
    let flags = ["--log-format", "json", "--ollama", &ollama, "--llm-check-interval-ms", "200", "--secret", &secret];
    let _sidecar = SidecarProcess::start_with_env(&hub, "canary", 1, &work, &flags, &[("ANTHROPIC_API_KEY", KEY)]);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "the sidecar joined");
    let events = hub.api.follow("/api/v1/events");
    // A task that prints the secret and the URL, on both streams, and fails.
    // The URL is put together by the task, so its spec does not hold the password.
    let (head, tail) = URL_PASSWORD.split_at(7);
    let script = format!(
        "a={head}; b={tail}; echo \"$CANARY\"; echo \"cannot reach http://agent:$a$b@127.0.0.1:9\" >&2; exit 3"
    );
    let body = json!({ "shell": { "script": script, "secret_env": ["CANARY"] } });
    let task = hub.api.submit(body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state_reason"], "exit code 3", "{done}");
    assert_eq!(done["outcome"]["stdout"], format!("{}\n", "*".repeat(FILE_SECRET.len())), "{done}");
    assert!(done["outcome"]["stderr"].as_str().unwrap().contains("http://agent:****"), "{done}");
    let endpoint = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await.1;
    let ollama_endpoint = endpoint["endpoints"].as_array().unwrap().iter().find(|e| e["kind"] == "ollama").unwrap();
    assert_eq!(ollama_endpoint["url"], "http://agent:****@127.0.0.1:9", "{endpoint}");
    assert!(
        ollama_endpoint["error"].as_str().unwrap().contains("http://agent:****@"),
        "the error names the URL, masked"
    );

    let hub_log = dir.path().join("hub.log");
    let sidecar_log = dir.path().join("hub.canary.log");
    assert_eventually!(
        std::fs::read_to_string(&sidecar_log).unwrap_or_default().contains("LLM endpoint down"),
        PATIENCE,
        "the sidecar logged the endpoint it could not reach"
    );
    let token = std::fs::read_to_string(hub.join_token_file()).unwrap().trim().to_owned();
    let canaries = [KEY, FILE_SECRET, URL_PASSWORD, token.as_str()];

    // API responses, both event streams, and the dashboard's files.
    let mut seen = vec![done.to_string(), endpoint.to_string()];
    for path in ["/api/v1/tasks", "/api/v1/agents", "/api/v1/hosts", "/api/v1/queue", &format!("/api/v1/tasks/{id}")] {
        seen.push(hub.api.request(reqwest::Method::GET, path, None).await.1.to_string());
    }
    let task_events = hub.api.follow(&format!("/api/v1/tasks/{id}/events"));
    assert_eventually!(task_events.raw().contains("event: snapshot"), PATIENCE, "the task's events");
    seen.push(task_events.raw());
    assert_eventually!(events.raw().contains("event: task"), PATIENCE, "the hub's events");
    seen.push(events.raw());
    let http = agentcom_integration::http_client();
    let page = http.get(format!("{}/", hub.url)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<html"), "{page}");
    let mut files = vec![page];
    for script in ["app.js", "app.css", "views.js", "api.js"] {
        files.push(http.get(format!("{}/ui/{script}", hub.url)).send().await.unwrap().text().await.unwrap());
    }
    seen.extend(files);
    for text in &seen {
        for canary in canaries.iter().chain([&hub.api.token.as_str()]) {
            assert!(!text.contains(canary), "{canary} in an API answer: {text}");
        }
    }
    for log in [&hub_log, &sidecar_log] {
        let text = std::fs::read_to_string(log).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{} is empty", log.display());
        for line in &lines {
            let parsed: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            assert!(parsed["level"].is_string() && parsed["timestamp"].is_string(), "{line}");
        }
        for canary in canaries.iter().chain([&hub.api.token.as_str()]) {
            assert!(!text.contains(canary), "{canary} in {}:\n{text}", log.display());
        }
    }
    let sidecar_text = std::fs::read_to_string(&sidecar_log).unwrap();
    let down = sidecar_text.lines().find(|l| l.contains("LLM endpoint down")).unwrap();
    assert!(down.contains("http://agent:[redacted]@127.0.0.1:9"), "{down}");
}
