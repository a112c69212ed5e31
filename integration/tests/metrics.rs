//! `/metrics` end to end: the hub's output passes `promtool check metrics` (Debian's
//! `prometheus` package; `.ci/run` installs it), carries what the mesh did, and a real
//! Prometheus server started here scrapes it and answers a PromQL query with the queue's depth.

use std::process::{Command, Stdio};
use std::time::Duration;

use agentcom_integration::{TestMesh, assert_eventually};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

/// The hub's metrics as Prometheus sees them (a token required: a viewer's is enough).
async fn scrape(url: &str, token: &str) -> String {
    let response =
        agentcom_integration::http_client().get(format!("{url}/metrics")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

fn tool(name: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/usr/bin").join(name);
    assert!(path.exists(), "{name} is missing: install Debian's prometheus package (.ci/run does)");
    path
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text: &str) -> String {
    #[allow(clippy::disallowed_methods)] // Reason: the test runs the real promtool.
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { String::new() } else { said }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_metrics_pass_promtool_and_say_what_happened() {
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let reports = agentcom_sidecar::reports::Settings { simulate_gpus: 2, ..Default::default() };
    mesh.add_sidecar_reporting(2, reports);
    assert_eventually!(mesh.api.agents().await.len() == 2, PATIENCE, "the sidecar joined");
    for argv in [json!(["true"]), json!(["sh", "-c", "exit 3"])] {
        let task = mesh.api.submit(json!({ "shell": { "argv": argv } })).await;
        mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    }
    // Work for a tag nobody has waits in the queue.
    for _ in 0..3 {
        mesh.api
            .submit(json!({ "shell": { "argv": ["true"] }, "priority": "high", "placement": { "tags": ["nowhere"] } }))
            .await;
    }
    assert_eventually!(
        scrape(&mesh.url, &mesh.api.token).await.contains("agentcom_gpu_memory_total_bytes{"),
        PATIENCE,
        "the simulated GPUs' report reached the hub"
    );
    let text = scrape(&mesh.url, &mesh.api.token).await;
    assert_eq!(promtool_check(&text), "", "promtool check metrics:\n{text}");
    let at = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(at("agentcom_tasks_submitted_total{lane=\"normal\"}"), 2.0);
    assert_eq!(at("agentcom_tasks_submitted_total{lane=\"high\"}"), 3.0);
    assert_eq!(at("agentcom_tasks_finished_total{state=\"succeeded\",reason=\"none\"}"), 1.0);
    assert_eq!(at("agentcom_tasks_finished_total{state=\"failed\",reason=\"exit_code\"}"), 1.0);
    assert_eq!(at("agentcom_tasks_dispatched_total{kind=\"shell\"}"), 2.0);
    assert_eq!(at("agentcom_queue_wait_seconds_count"), 2.0);
    assert_eq!(at("agentcom_agents{state=\"idle\"}"), 2.0);
    assert_eq!(at("agentcom_sidecars{state=\"online\"}"), 1.0);
    assert!(at("agentcom_storage_commit_seconds_count") >= 4.0);
    let queued: f64 = text
        .lines()
        .filter(|l| l.starts_with("agentcom_tasks{lane=\"high\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(queued, 3.0, "{text}");
    // A lane and state with nothing in it says 0, not its last value.
    assert_eq!(at("agentcom_tasks{lane=\"normal\",state=\"running\"}"), 0.0);
    assert_eq!(at("agentcom_agents{state=\"working\"}"), 0.0);
    assert!(
        text.lines().any(|l| l.starts_with("agentcom_gpu_utilization_ratio{") && l.contains("gpu=\"1\"")),
        "{text}"
    );
    // No task id ever becomes a label.
    let (_, list) = mesh.api.request(reqwest::Method::GET, "/api/v1/tasks", None).await;
    for task in list["tasks"].as_array().unwrap() {
        assert!(!text.contains(task["id"].as_str().unwrap()));
    }
    // Without a token there is nothing to see.
    let anonymous = agentcom_integration::http_client().get(format!("{}/metrics", mesh.url)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    mesh.stop().await;
}

/// A Prometheus server that stops with the test.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_hub_and_promql_sees_the_queue() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    for _ in 0..4 {
        mesh.api.submit(json!({ "shell": { "argv": ["true"] }, "priority": "low" })).await;
    }
    // A read-only token is all Prometheus needs.
    let (status, made) = mesh
        .api
        .request(reqwest::Method::POST, "/api/v1/tokens", Some(json!({ "role": "viewer", "name": "prometheus" })))
        .await;
    assert_eq!(status, 201, "{made}");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("viewer.token");
    std::fs::write(&token_file, made["secret"].as_str().unwrap()).unwrap();
    let target = mesh.url.trim_start_matches("http://").to_owned();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: agentcom-hub\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{target}']\n",
        token_file.display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    #[allow(clippy::disallowed_methods)] // Reason: the test runs a real Prometheus server.
    let server = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Prometheus(server);
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=sum(agentcom_tasks%7Blane%3D%22low%22%7D)");
    let mut answer = Value::Null;
    assert_eventually!(
        {
            if let Ok(response) = agentcom_integration::http_client().get(&query).send().await {
                answer = response.json().await.unwrap_or(Value::Null);
            }
            answer["data"]["result"][0]["value"][1] == "4"
        },
        Duration::from_secs(60),
        "Prometheus scraped the hub and counts four queued tasks"
    );
    let (_, targets) = {
        let response = agentcom_integration::http_client()
            .get(format!("http://127.0.0.1:{port}/api/v1/targets"))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(targets["data"]["activeTargets"][0]["health"], "up", "{targets}");
    mesh.stop().await;
}

fn deploy(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// Runs promtool with `args` in `dir`; its complaints, if it failed.
fn promtool(dir: &std::path::Path, args: &[&str]) -> Result<(), String> {
    #[allow(clippy::disallowed_methods)] // Reason: the test runs the real promtool.
    let out = Command::new(tool("promtool")).args(args).current_dir(dir).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(()) } else { Err(said) }
}

#[test]
fn the_shipped_prometheus_config_and_alert_rules_check_and_their_tests_pass() {
    let dir = deploy("prometheus");
    promtool(&dir, &["check", "rules", "alerts.yml"]).unwrap();
    promtool(&dir, &["test", "rules", "alerts_test.yml"]).unwrap();
    // The config names a token file that exists on a real server: check a copy that points at one.
    let scratch = tempfile::tempdir().unwrap();
    let token = scratch.path().join("token");
    std::fs::write(&token, "agentcom_viewer_x").unwrap();
    let config = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    assert!(config.contains("/etc/prometheus/agentcom-viewer.token"));
    let config = config.replace("/etc/prometheus/agentcom-viewer.token", &token.to_string_lossy());
    std::fs::write(scratch.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(dir.join("alerts.yml"), scratch.path().join("alerts.yml")).unwrap();
    promtool(scratch.path(), &["check", "config", "prometheus.yml"]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_is_one_the_hub_serves() {
    let mesh = TestMesh::new().sidecars(0).start().await;
    let text = scrape(&mesh.url, &mesh.api.token).await;
    mesh.stop().await;
    // What the hub describes; what it serves at any moment is a part of that.
    let served: std::collections::BTreeSet<&str> = agentcom_hub::metrics::names().collect();
    for name in text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()) {
        assert!(served.contains(name), "{name} is served but not described");
    }
    let names = regex::Regex::new(r"agentcom_[a-z_]+").unwrap();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/agentcom.json")).unwrap()).unwrap();
    let mut used = vec![std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap()];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            used.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for text in &used {
        for name in names.find_iter(text).map(|m| m.as_str()) {
            let base = ["_bucket", "_count", "_sum"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(served.contains(base), "{name} is used but the hub serves no {base}: {served:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecars_own_metrics_pass_promtool_and_count_its_work() {
    use agentcom_integration::ollama::{FakeModel, OllamaDouble};
    let double = OllamaDouble::start(vec![FakeModel::new("llama3.2:3b", 1, "llama", "3.2B")]).await;
    double.load("llama3.2:3b", 1);
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let reports = agentcom_sidecar::reports::Settings {
        ollama: vec![double.url.clone()],
        llm_check_every: Duration::from_millis(200),
        resources_every: Duration::from_millis(200),
        discover_ollama: false,
        ..Default::default()
    };
    mesh.add_sidecar_configured(1, |config| config.reports(reports).metrics_listen(Some(addr)));
    assert_eventually!(mesh.api.agents().await.len() == 1, PATIENCE, "the sidecar joined");
    for body in [
        json!({ "shell": { "argv": ["true"] } }),
        json!({ "shell": { "argv": ["false"] } }),
        json!({ "llm": { "prompt": "hi", "model": "llama3.2:3b" } }),
    ] {
        let task = mesh.api.submit(body).await;
        mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    }
    let scrape = || async {
        agentcom_integration::http_client()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert_eventually!(scrape().await.contains("agentcom_sidecar_memory_total_bytes "), PATIENCE, "a resource reading");
    let text = scrape().await;
    assert_eq!(promtool_check(&text), "", "promtool check metrics:\n{text}");
    let at = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(at("agentcom_sidecar_connected"), 1.0);
    assert_eq!(at("agentcom_sidecar_sessions_total"), 1.0);
    assert_eq!(at("agentcom_sidecar_tasks_running"), 0.0);
    assert_eq!(at("agentcom_sidecar_tasks_finished_total{kind=\"shell\",result=\"succeeded\"}"), 1.0);
    assert_eq!(at("agentcom_sidecar_tasks_finished_total{kind=\"shell\",result=\"failed\"}"), 1.0);
    assert_eq!(at("agentcom_sidecar_llm_requests_total{provider=\"ollama\",model=\"llama3.2:3b\"}"), 1.0);
    assert!(at("agentcom_sidecar_memory_total_bytes") > 0.0);
    let served: std::collections::BTreeSet<&str> = agentcom_sidecar::metrics::names().collect();
    for name in text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()) {
        assert!(served.contains(name), "{name} is served but not described");
    }
    mesh.stop().await;
}
