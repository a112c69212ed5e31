//! The fleet view: LLM endpoints against an Ollama double, resource reports, stalls, and drain.

#![allow(clippy::disallowed_methods)] // Tests and benchmarks start the real binaries and tools.

use std::process::Command;
use std::time::Duration;

use agentcom_integration::ollama::{FakeModel, OllamaDouble};
use agentcom_integration::{HubProcess, SidecarProcess, TestMesh, assert_eventually, binary, shell};
use agentcom_sidecar::reports::Settings;
use serde_json::{Value, json};

fn models() -> Vec<FakeModel> {
    vec![
        FakeModel::new("llama3.2:3b", 2_019_393_189, "llama", "3.2B"),
        FakeModel::new("qwen2.5-coder:7b", 4_683_087_332, "qwen2", "7.6B"),
    ]
}

async fn endpoints(api: &agentcom_integration::Api) -> Vec<Value> {
    let (status, body) = api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
    assert_eq!(status, 200, "{body}");
    body["endpoints"].as_array().cloned().unwrap_or_default()
}

fn model_state(endpoint: &Value, name: &str) -> Option<String> {
    let models = endpoint["models"].as_array()?;
    Some(models.iter().find(|m| m["name"] == name)?["state"].as_str()?.to_owned())
}

/// Waits until `check` holds for the double's endpoint, and returns how many checks the double
/// served after `since` until then: "within one check cycle" means at most two (one may have
/// been in flight when the change happened).
async fn checks_until(
    api: &agentcom_integration::Api,
    double: &OllamaDouble,
    since: u64,
    check: impl Fn(&Value) -> bool,
) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = endpoints(api).await;
        if let Some(endpoint) = list.iter().find(|e| e["url"] == double.url.as_str())
            && check(endpoint)
        {
            return double.checks() - since;
        }
        assert!(std::time::Instant::now() < deadline, "no change within 20 s: {list:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_go_warm_and_cold_and_health_flips_within_one_check_cycle() {
    let double = OllamaDouble::start(models()).await;
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let reports = Settings {
        llm_check_every: Duration::from_millis(400),
        ollama: vec![double.url.clone()],
        discover_ollama: false,
        ..Settings::default()
    };
    mesh.add_sidecar_reporting(1, reports);
    let api = mesh.api.clone();

    checks_until(&api, &double, 0, |e| e["healthy"] == true && e["models"].as_array().is_some_and(|m| m.len() == 2))
        .await;
    let endpoint = endpoints(&api).await.remove(0);
    assert_eq!(endpoint["kind"], "ollama");
    assert_eq!(endpoint["version"], "0.12.6");
    assert_eq!(endpoint["owner"]["sidecar_id"], "test-sidecar-0");
    assert_eq!(model_state(&endpoint, "llama3.2:3b").as_deref(), Some("cold"));
    let qwen = endpoint["models"].as_array().unwrap().iter().find(|m| m["name"] == "qwen2.5-coder:7b").unwrap();
    assert_eq!(qwen["family"], "qwen2");
    assert_eq!(qwen["parameter_size"], "7.6B");
    assert_eq!(qwen["quantization"], "Q4_K_M");
    assert_eq!(qwen["size_bytes"], 4_683_087_332u64);

    let since = double.checks();
    double.load("qwen2.5-coder:7b", 5_832_763_392);
    let cycles =
        checks_until(&api, &double, since, |e| model_state(e, "qwen2.5-coder:7b").as_deref() == Some("warm")).await;
    assert!(cycles <= 2, "warm after {cycles} checks");
    let warm = endpoints(&api).await.remove(0);
    let qwen = warm["models"].as_array().unwrap().iter().find(|m| m["name"] == "qwen2.5-coder:7b").unwrap().clone();
    assert_eq!(qwen["size_vram_bytes"], 5_832_763_392u64);
    assert_eq!(qwen["expires_unix_ms"], 1_795_281_631_837i64, "2026-11-21T17:20:31.837Z");
    assert_eq!(model_state(&warm, "llama3.2:3b").as_deref(), Some("cold"));

    let since = double.checks();
    double.unload("qwen2.5-coder:7b");
    let cycles =
        checks_until(&api, &double, since, |e| model_state(e, "qwen2.5-coder:7b").as_deref() == Some("cold")).await;
    assert!(cycles <= 2, "cold after {cycles} checks");

    let since = double.checks();
    double.set_failing(true);
    let cycles = checks_until(&api, &double, since, |e| e["healthy"] == false).await;
    assert!(cycles <= 2, "unhealthy after {cycles} checks");
    let down = endpoints(&api).await.remove(0);
    assert!(down["error"].as_str().unwrap().contains("500"), "{down}");

    let since = double.checks();
    double.set_failing(false);
    let cycles = checks_until(&api, &double, since, |e| e["healthy"] == true).await;
    assert!(cycles <= 2, "healthy again after {cycles} checks");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_report_resources_without_a_gpu_and_simulated_gpus_say_so() {
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let every = Duration::from_millis(300);
    mesh.add_sidecar_reporting(1, Settings { resources_every: every, discover_ollama: false, ..Settings::default() });
    let simulated =
        Settings { resources_every: every, simulate_gpus: 2, discover_ollama: false, ..Settings::default() };
    mesh.add_sidecar_reporting(1, simulated);
    let api = mesh.api.clone();
    let host = |id: &'static str| {
        let api = api.clone();
        async move { api.request(reqwest::Method::GET, &format!("/api/v1/hosts/{id}"), None).await.1["host"].clone() }
    };
    assert_eventually!(
        host("test-sidecar-0").await["history"].as_array().is_some_and(|h| h.len() >= 2),
        Duration::from_secs(10),
        "two reports from the first sidecar"
    );
    let plain = host("test-sidecar-0").await;
    let resources = &plain["resources"];
    assert!(resources["memory_total_bytes"].as_u64().unwrap() > 0, "{plain}");
    assert!(!resources["cpu_per_core_percent"].as_array().unwrap().is_empty());
    assert!((0.0..=100.0).contains(&resources["cpu_percent"].as_f64().unwrap()));
    // This machine has no NVIDIA driver: no GPU, reported cleanly, not simulated.
    assert_eq!(resources["gpus"], json!([]));
    assert_eq!(resources["gpus_simulated"], false);
    assert_eq!(plain["online"], true);

    assert_eventually!(
        !host("test-sidecar-1").await["resources"].is_null(),
        Duration::from_secs(10),
        "a report from the simulating sidecar"
    );
    let sim = host("test-sidecar-1").await;
    assert_eq!(sim["resources"]["gpus_simulated"], true);
    let gpus = sim["resources"]["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert!(gpus[0]["name"].as_str().unwrap().contains("Simulated"), "{sim}");
    let (status, list) = api.request(reqwest::Method::GET, "/api/v1/hosts", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["hosts"].as_array().unwrap().len(), 2);
    assert!(list["hosts"][0].get("history").is_none(), "the list leaves history out");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_task_flags_its_agent_stalled_and_a_chatty_one_does_not() {
    let mesh = TestMesh::new().slots(2).config(|c| c.stall_after = Duration::from_millis(600)).start().await;
    let api = mesh.api.clone();
    let silent = api.submit(shell("sleep 3")).await["id"].as_str().unwrap().to_owned();
    let chatty =
        api.submit(shell("for i in $(seq 30); do echo $i; sleep 0.1; done")).await["id"].as_str().unwrap().to_owned();
    let agent_of = |id: String| {
        let api = api.clone();
        async move { api.agents().await.into_iter().find(|a| a["task_id"] == id.as_str()) }
    };
    assert_eventually!(
        agent_of(silent.clone()).await.is_some_and(|a| a["stalled"] == true),
        Duration::from_secs(10),
        "the silent task's agent is flagged stalled"
    );
    let stalled_agent = agent_of(silent.clone()).await.expect("the silent task runs")["id"].clone();
    let talking = agent_of(chatty.clone()).await.expect("the chatty task runs");
    assert_eq!(talking["stalled"], false, "{talking}");
    // The flag goes with the task: once it ends, its agent is idle and not stalled.
    api.wait_final(&silent, Duration::from_secs(20)).await;
    let freed = api.agents().await.into_iter().find(|a| a["id"] == stalled_agent).expect("the agent is still there");
    assert_eq!(freed["stalled"], false, "{freed}");
    assert!(freed["task_id"].is_null(), "{freed}");
    mesh.stop().await;
}

fn hubctl(hub: &HubProcess, args: &[&str]) -> std::process::Output {
    Command::new(binary("hubctl"))
        .args(args)
        .env("AGENTCOM_HUB", &hub.url)
        .env("AGENTCOM_TOKEN", &hub.api.token)
        .output()
        .expect("running hubctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_a_deadline_requeues_what_still_runs_and_uncordon_brings_the_sidecar_back() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &["--heartbeat-interval-ms", "200"]).await;
    let mut a = SidecarProcess::start(&hub, "side-a", 1, &work);
    assert_eventually!(hub.api.agents().await.len() == 1, Duration::from_secs(20), "sidecar a joined");
    // The first run outlives the drain deadline; a rerun (on the other sidecar) ends at once.
    let long =
        hub.api.submit(shell("if [ -e started ]; then echo rerun; else touch started; sleep 60; fi")).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eventually!(
        hub.api.get(&long).await["state"] == "running",
        Duration::from_secs(20),
        "the long task runs on a"
    );
    let _b = SidecarProcess::start(&hub, "side-b", 1, &work);
    assert_eventually!(
        hub.api.agents().await.iter().any(|a| a["sidecar_id"] == "side-b" && a["state"] == "idle"),
        Duration::from_secs(20),
        "sidecar b joined"
    );

    let drained = hubctl(&hub, &["drain", "side-a", "--deadline", "2s"]);
    assert!(drained.status.success(), "{}", String::from_utf8_lossy(&drained.stderr));
    assert!(String::from_utf8_lossy(&drained.stdout).contains("requeued"));
    let agent_a =
        || async { hub.api.request(reqwest::Method::GET, "/api/v1/agents/side-a%2F0", None).await.1["agent"].clone() };
    assert_eq!(agent_a().await["state"], "draining");
    assert_eq!(agent_a().await["cordoned"], true);

    // New work goes to b while a drains.
    let quick = hub.api.submit(shell("echo quick")).await["id"].as_str().unwrap().to_owned();
    let quick = hub.api.wait_final(&quick, Duration::from_secs(20)).await;
    assert_eq!(quick["state"], "succeeded");
    assert_eq!(quick["sidecar_id"], "side-b");

    // At the deadline the long task is taken back from a and runs again on b.
    let long = hub.api.wait_final(&long, Duration::from_secs(30)).await;
    assert_eq!(long["state"], "succeeded", "{long}");
    assert_eq!(long["sidecar_id"], "side-b", "{long}");
    assert_eq!(long["attempt"], 2, "{long}");
    let shown = hubctl(&hub, &["get", long["id"].as_str().unwrap()]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("rerun"), "{}", String::from_utf8_lossy(&shown.stdout));
    assert_eq!(agent_a().await["state"], "draining", "a takes nothing new");

    let uncordoned = hubctl(&hub, &["uncordon", "side-a"]);
    assert!(uncordoned.status.success(), "{}", String::from_utf8_lossy(&uncordoned.stderr));
    assert_eq!(agent_a().await["state"], "idle");
    let history = hubctl(&hub, &["agent", "side-a/0"]);
    let history = String::from_utf8_lossy(&history.stdout);
    for expected in ["idle -> assigned", "draining -> idle", "uncordoned", "cordoned; running work requeued"] {
        assert!(history.contains(expected), "{expected:?} missing from:\n{history}");
    }
    let unknown = hubctl(&hub, &["drain", "no-such-sidecar"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", String::from_utf8_lossy(&unknown.stderr));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));

    // A cordon outlives a hub crash, shows while its sidecar is away, and can be lifted then.
    assert!(hubctl(&hub, &["drain", "side-a"]).status.success());
    a.kill9();
    hub.kill9();
    hub.restart().await;
    let (status, away) = hub.api.request(reqwest::Method::GET, "/api/v1/hosts/side-a", None).await;
    assert_eq!(status, 200, "{away}");
    assert_eq!(away["host"]["online"], false);
    assert!(!away["host"]["cordon"].is_null(), "{away}");
    let lifted = hubctl(&hub, &["uncordon", "side-a"]);
    assert!(lifted.status.success(), "{}", String::from_utf8_lossy(&lifted.stderr));
    let (status, gone) = hub.api.request(reqwest::Method::GET, "/api/v1/hosts/side-a", None).await;
    assert_eq!(status, 404, "neither seen nor cordoned any more: {gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_survives_a_hub_restart_and_the_hub_probes_only_allowlisted_hosts() {
    let hub_double = OllamaDouble::start(models()).await;
    let side_double = OllamaDouble::start(models()[..1].to_vec()).await;
    hub_double.load("llama3.2:3b", 2_500_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::serve(
        &dir.path().join("hub"),
        &["--allow-endpoint", "127.0.0.1", "--endpoint-check-interval-ms", "300"],
    )
    .await;

    let refused = hubctl(&hub, &["endpoints", "add", "http://10.1.2.3:11434"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("allowlist"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let (status, body) = hub
        .api
        .request(reqwest::Method::POST, "/api/v1/endpoints", Some(json!({ "url": "http://169.254.169.254" })))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");

    let added = hubctl(&hub, &["endpoints", "add", &hub_double.url]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut sidecar = SidecarProcess::start_with(
        &hub,
        "side-llm",
        1,
        &work,
        &["--ollama", &side_double.url, "--llm-check-interval-ms", "300"],
    );
    let ready = |list: &[Value]| {
        list.len() == 2
            && list.iter().all(|e| e["healthy"] == true)
            && list.iter().any(|e| model_state(e, "llama3.2:3b").as_deref() == Some("warm"))
    };
    assert_eventually!(ready(&endpoints(&hub.api).await), Duration::from_secs(20), "both endpoints checked");
    let before = endpoints(&hub.api).await;
    let listed = hubctl(&hub, &["endpoints", "ls"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("llama3.2:3b (warm)") && listed.contains("side-llm"), "{listed}");

    // Both the hub's own endpoint and the sidecar's come back from disk after a kill -9, as
    // last checked (no probe runs within the first interval, and the sidecar is gone).
    sidecar.kill9();
    hub.kill9();
    hub.restart().await;
    let after = endpoints(&hub.api).await;
    let strip = |list: &[Value]| -> Vec<Value> {
        list.iter()
            .map(|e| {
                let mut e = e.clone();
                e["checked_unix_ms"] = json!(0);
                // Until its sidecar is back, a sidecar's endpoint is listed unreachable.
                if e["owner"]["by"] == "sidecar" {
                    e["healthy"] = json!(null);
                    e["error"] = json!(null);
                }
                e
            })
            .collect()
    };
    assert_eq!(strip(&after), strip(&before));

    let hub_id = before.iter().find(|e| e["owner"]["by"] == "hub").unwrap()["id"].as_str().unwrap().to_owned();
    let removed = hubctl(&hub, &["endpoints", "rm", &hub_id]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(endpoints(&hub.api).await.len(), 1);
}
