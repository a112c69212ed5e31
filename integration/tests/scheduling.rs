//! Model-aware scheduling end to end, with the real binaries: a hub and three sidecar processes,
//! two in front of Ollama doubles (the model warm on one, cold on the other) and one in front of
//! an Anthropic double. Standard work goes to the warm model until it is busy, then spills over;
//! complex work goes to Claude; local-only work never does; when the Claude sidecar is gone,
//! complex work falls back to the standard tier, and `hubctl explain` and `hubctl why` say so.

use std::time::Duration;

use agentcom_integration::chat_doubles::{ChatDouble, Script};
use agentcom_integration::ollama::{ChatScript, FakeModel, OllamaDouble};
use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);
const MODEL: &str = "llama3.2:3b";
const CLAUDE: &str = "claude-sonnet-4-5";

/// `hubctl ARGS` against `hub`: (success, stdout, stderr).
async fn hubctl(hub: &HubProcess, args: &[&str]) -> (bool, String, String) {
    let output = agentcom_integration::process::hubctl(&hub.url, &hub.api.token, args).await;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

async fn hubctl_json(hub: &HubProcess, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, stdout, stderr) = hubctl(hub, &args).await;
    assert!(ok, "hubctl {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("hubctl {args:?} printed no JSON ({err}): {stdout}"))
}

fn tiered(tier: &str) -> Value {
    json!({ "llm": { "prompt": "hi", "max_tokens": 100 }, "tier": tier })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_go_where_they_finish_soonest_fall_back_when_claude_is_gone_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // Replies take about 2 s: long enough to be busy, short enough for a test.
    let size = 2_000_000_000; // Priced as a 1 s load until one is observed.
    let slow = ChatScript { between_pieces: Duration::from_millis(700), ..ChatScript::default() };
    let warm = OllamaDouble::start(vec![FakeModel::new(MODEL, size, "llama", "3.2B")]).await;
    warm.load(MODEL, size);
    warm.script(slow.clone());
    let cold = OllamaDouble::start(vec![FakeModel::new(MODEL, size, "llama", "3.2B")]).await;
    cold.script(slow);
    let claude = ChatDouble::anthropic().await;
    claude.script(Script { pieces: vec!["Hello".into(), " from".into(), " Claude".into()], ..Script::default() });

    let flags = [
        "--tier-model",
        &format!("standard={MODEL}"),
        "--tier-model",
        &format!("complex={CLAUDE}"),
        "--tier-fallback-after",
        "1s",
        "--heartbeat-interval-ms",
        "200",
    ]
    .map(str::to_owned);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let hub = HubProcess::serve(&dir.path().join("hub"), &flags).await;
    let checks = ["--llm-check-interval-ms", "200"];
    let _warm = SidecarProcess::start_with(&hub, "warm", 2, &work, &[&["--ollama", &warm.url][..], &checks].concat());
    let cold_flags = [&["--ollama", &cold.url, "--ollama-parallel", "3"][..], &checks].concat();
    let _cold = SidecarProcess::start_with(&hub, "cold", 2, &work, &cold_flags);
    let anthropic = [&["--anthropic-base-url", &claude.url, "--anthropic-model", CLAUDE][..], &checks].concat();
    let mut cloud =
        SidecarProcess::start_with_env(&hub, "cloud", 2, &work, &anthropic, &[("ANTHROPIC_API_KEY", "sk-ant-test")]);
    assert_eventually!(
        {
            let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            list["endpoints"].as_array().is_some_and(|e| e.len() == 3 && e.iter().all(|e| e["healthy"] == true))
        },
        PATIENCE,
        "all three inventories reached the hub"
    );
    let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
    let parallel: Vec<(String, u64)> = list["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["owner"]["sidecar_id"].as_str().unwrap().to_owned(), e["parallel"].as_u64().unwrap()))
        .collect();
    assert!(parallel.contains(&("cold".into(), 3)) && parallel.contains(&("warm".into(), 0)), "{parallel:?}");

    // Standard work: the warm model first; with it busy, the cold one (a 1 s load beats a 3.3 s
    // wait), rather than queue behind it.
    let first = hub.api.submit(tiered("standard")).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(hub.api.get(&first).await["sidecar_id"] == "warm", PATIENCE, "the first went to the warm model");
    let second = hub.api.submit(tiered("standard")).await["id"].as_str().unwrap().to_owned();
    // Complex work goes to Claude, and explain shows the candidates weighed.
    let complex = hub.api.submit(tiered("complex")).await["id"].as_str().unwrap().to_owned();
    for id in [&first, &second, &complex] {
        assert_eq!(hub.api.wait_final(id, PATIENCE).await["state"], "succeeded");
    }
    let ran_on = |task: &Value| task["sidecar_id"].as_str().unwrap().to_owned();
    assert_eq!(ran_on(&hub.api.get(&second).await), "cold", "spilled over to the cold model");
    let done = hub.api.get(&complex).await;
    assert_eq!((ran_on(&done).as_str(), done["outcome"]["stdout"].as_str()), ("cloud", Some("Hello from Claude")));
    assert_eq!(done["outcome"]["usage"]["model"], CLAUDE, "{done}");
    let explained = hubctl_json(&hub, &["explain", &second]).await;
    let decision = &explained["decisions"][0];
    assert_eq!(
        (decision["kind"].as_str(), decision["agent_id"].as_str()),
        (Some("placed"), Some("cold/0")),
        "{explained}"
    );
    let verdicts: Vec<(&str, &str)> = decision["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["sidecar_id"].as_str().unwrap(), c["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(verdicts, vec![("cold", "chosen"), ("warm", "slower")], "{explained}");
    let (ok, text, _) = hubctl(&hub, &["explain", &second]).await;
    assert!(ok && text.contains("finishes soonest") && text.contains("cold/0") && text.contains("warm"), "{text}");

    // Local-only work never reaches Claude: complex, it waits for a local model, then falls back
    // to the standard tier and runs on Ollama.
    let requests_before = claude.requests().len();
    let private = json!({ "llm": { "prompt": "private", "max_tokens": 100 }, "tier": "complex", "placement": { "local_only": true } });
    let private = hub.api.submit(private).await["id"].as_str().unwrap().to_owned();
    let done = hub.api.wait_final(&private, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["outcome"]["usage"]["provider"], "ollama", "{done}");
    assert_eq!(claude.requests().len(), requests_before, "nothing more reached the Claude API");

    // A task that cannot run says why, and keeps saying it.
    let pinned = json!({ "llm": { "prompt": "hi", "model": CLAUDE }, "placement": { "local_only": true } });
    let pinned = hub.api.submit(pinned).await["id"].as_str().unwrap().to_owned();
    let why = hubctl_json(&hub, &["why", &pinned]).await;
    assert_eq!(
        (why["why"]["waiting"].as_bool(), why["why"]["code"].as_str()),
        (Some(true), Some("local_only")),
        "{why}"
    );
    let (ok, text, _) = hubctl(&hub, &["why", &pinned]).await;
    assert!(ok && text.contains("waits: it is local-only") && text.contains("cloud_refused"), "{text}");
    let nowhere = hub.api.submit(json!({ "llm": { "prompt": "hi", "model": "nope:1b" } })).await;
    let why = hubctl_json(&hub, &["why", nowhere["id"].as_str().unwrap()]).await;
    assert_eq!(why["why"]["code"], "model_nowhere", "{why}");

    // The Claude sidecar goes away: complex work falls back to the standard tier after 1 s.
    cloud.kill9();
    assert_eventually!(
        hub.api.agents().await.iter().filter(|a| a["sidecar_id"] == "cloud").all(|a| a["state"] == "offline"),
        PATIENCE,
        "the hub saw the Claude sidecar go"
    );
    let complex = hub.api.submit(tiered("complex")).await["id"].as_str().unwrap().to_owned();
    let done = hub.api.wait_final(&complex, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["outcome"]["usage"]["provider"], "ollama", "ran on the standard tier's model: {done}");
    let explained = hubctl_json(&hub, &["explain", &complex]).await;
    let kinds: Vec<&str> =
        explained["decisions"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["fallback", "placed"], "{explained}");
    assert!(
        explained["decisions"][0]["reason"].as_str().unwrap().starts_with("moved from tier complex to standard after"),
        "{explained}"
    );
    assert_eq!(explained["decisions"][1]["tier_source"], "fallback from complex", "{explained}");
    let (ok, text, _) = hubctl(&hub, &["explain", &complex]).await;
    assert!(
        ok && text.contains("fallback for attempt 1") && text.contains("moved from tier complex to standard"),
        "{text}"
    );
    let (_, queue) = hub.api.request(reqwest::Method::GET, "/api/v1/queue", None).await;
    assert!(queue["queue"]["tier_fallbacks"].as_u64().unwrap() >= 2, "{queue}");
    assert_eq!(queue["queue"]["blocked"], 2, "the two tasks that cannot run wait aside: {queue}");
}
