//! LLM work that holds against servers as they really behave, through the protocol doubles:
//! a reply without its API's end marker is `truncated` and retried, never `succeeded`; a server
//! that counts nothing still yields usage, marked estimated; a server that runs one generation
//! at a time and interrupts it for the next request (llama.cpp's) gets one task at a time and
//! no probe while it generates; a probe that waits behind a generation does not mark the
//! endpoint down; hubctl says a failure once and exits quietly into a closed pipe.
//!
//! `llama_cpp.rs` runs the same against the real server.

#![allow(clippy::disallowed_methods)] // Tests start the real tools (hubctl in a shell pipeline).

use std::time::Duration;

use agentcom_integration::chat_doubles::{Busy, ChatDouble, Script};
use agentcom_integration::ollama::{ChatScript, FakeModel, OllamaDouble};
use agentcom_integration::{RunningMesh, TestMesh, assert_eventually};
use agentcom_sidecar::reports::{Anthropic, OpenAi, Settings};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);
const OLLAMA_MODEL: &str = "llama3.2:3b";
const OPENAI_MODEL: &str = "qwen2.5:7b";
const CLAUDE_MODEL: &str = "claude-haiku-4-5";

/// A hub and one sidecar with `slots` agents that checks its endpoints every 200 ms.
async fn start(slots: u32, reports: Settings) -> RunningMesh {
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let reports = Settings { llm_check_every: Duration::from_millis(200), discover_ollama: false, ..reports };
    mesh.add_sidecar_reporting(slots, reports);
    assert_eventually!(mesh.api.agents().await.len() == slots as usize, PATIENCE, "the sidecar joined");
    assert_eventually!(
        {
            let (_, list) = mesh.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            list["endpoints"].as_array().is_some_and(|e| !e.is_empty() && e.iter().all(|e| e["healthy"] == true))
        },
        PATIENCE,
        "the endpoint is up at the hub"
    );
    mesh
}

fn openai(double: &ChatDouble) -> Settings {
    let openai = OpenAi {
        base_url: double.url.clone(),
        api_key: None,
        models: vec![OPENAI_MODEL.into()],
        parallel: 0,
        context: None,
    };
    Settings { openai: Some(openai), ..Settings::default() }
}

fn anthropic(double: &ChatDouble) -> Settings {
    let anthropic =
        Anthropic { api_key: "sk-ant-test".into(), base_url: double.url.clone(), models: vec![CLAUDE_MODEL.into()] };
    Settings { anthropic: Some(anthropic), ..Settings::default() }
}

fn ollama(double: &OllamaDouble) -> Settings {
    Settings { ollama: vec![double.url.clone()], ..Settings::default() }
}

fn prompt(model: &str, attempts: u32) -> Value {
    json!({ "llm": { "prompt": "say hello", "model": model }, "limits": { "max_attempts": attempts } })
}

async fn run(mesh: &RunningMesh, body: Value) -> Value {
    let task = mesh.api.submit(body).await;
    mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await
}

/// The task ran `attempts` attempts, each cut short, and was dead-lettered as truncated with the
/// reply so far kept: never `succeeded`.
fn assert_truncated(done: &Value, reply_so_far: &str) {
    assert_eq!(done["state"], "dead_lettered", "{done}");
    let reason = done["state_reason"].as_str().unwrap();
    assert!(reason.starts_with("truncated: ") && reason.ends_with("(attempt 2 of 2)"), "{reason}");
    assert_eq!(done["attempt"], 2, "retried once by its policy: {done}");
    assert_eq!(done["outcome"]["stdout"], reply_so_far, "{done}");
    assert_eq!(done["outcome"]["exit"], "unknown", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_its_end_marker_is_truncated_and_retried_on_every_api() {
    let double = ChatDouble::openai().await;
    double.script(Script { end_marker: false, ..Script::default() });
    let mesh = start(1, openai(&double)).await;
    assert_truncated(&run(&mesh, prompt(OPENAI_MODEL, 2)).await, "Hello!");
    mesh.stop().await;

    let double = ChatDouble::anthropic().await;
    double.script(Script { end_marker: false, ..Script::default() });
    let mesh = mesh_without_probe(anthropic(&double)).await;
    assert_truncated(&run(&mesh, prompt(CLAUDE_MODEL, 2)).await, "Hello!");
    mesh.stop().await;

    let double = OllamaDouble::start(vec![FakeModel::new(OLLAMA_MODEL, 1, "llama", "3.2B")]).await;
    double.load(OLLAMA_MODEL, 1);
    double.script(ChatScript { no_done: true, ..ChatScript::default() });
    let mesh = start(1, ollama(&double)).await;
    assert_truncated(&run(&mesh, prompt(OLLAMA_MODEL, 2)).await, "Hello, world");
    mesh.stop().await;
}

/// The Claude API is not probed: its endpoint is up from the start.
async fn mesh_without_probe(reports: Settings) -> RunningMesh {
    start(1, reports).await
}

fn assert_estimated(done: &Value, output_tokens: u64) {
    assert_eq!(done["state"], "succeeded", "{done}");
    let usage = &done["outcome"]["usage"];
    assert_eq!(usage["estimated"], true, "{usage}");
    assert_eq!(usage["output_tokens"], output_tokens, "a token per streamed piece: {usage}");
    // "say hello": 3 characters a token at most, and a chat template's framing (8 tokens).
    let input = usage["input_tokens"].as_u64().unwrap();
    assert!((9..=16).contains(&input), "{usage}");
    assert!(usage["output_tokens_per_s"].as_f64().is_some_and(|r| r > 0.0), "{usage}");
    assert_eq!(usage["stop_reason"], "stop", "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_counts_nothing_still_yields_usage_marked_estimated() {
    let pieces: Vec<String> = (0..12).map(|n| format!("t{n} ")).collect();
    let double = ChatDouble::openai().await;
    double.script(Script { usage: false, pieces: pieces.clone(), ..Script::default() });
    let mesh = start(1, openai(&double)).await;
    let done = run(&mesh, prompt(OPENAI_MODEL, 1)).await;
    assert_estimated(&done, 12);
    assert_eq!(done["outcome"]["usage"]["cost_micros"], 0, "a local server costs nothing: {done}");
    mesh.stop().await;

    let double = ChatDouble::anthropic().await;
    let script = Script { usage: false, pieces: pieces.clone(), ..Script::default() };
    double.script(script);
    let mesh = mesh_without_probe(anthropic(&double)).await;
    let done = run(&mesh, prompt(CLAUDE_MODEL, 1)).await;
    assert_eq!(done["outcome"]["usage"]["stop_reason"], "end_turn", "{done}");
    assert_eq!(done["outcome"]["usage"]["estimated"], true, "{done}");
    assert_eq!(done["outcome"]["usage"]["output_tokens"], 12, "{done}");
    mesh.stop().await;

    let double = OllamaDouble::start(vec![FakeModel::new(OLLAMA_MODEL, 1, "llama", "3.2B")]).await;
    double.load(OLLAMA_MODEL, 1);
    double.script(ChatScript { no_counts: true, pieces, ..ChatScript::default() });
    let mesh = start(1, ollama(&double)).await;
    assert_estimated(&run(&mesh, prompt(OLLAMA_MODEL, 1)).await, 12);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_interrupts_gets_one_task_at_a_time_and_no_probe_while_it_generates() {
    // llama.cpp's server as it runs by default: any request, a probe included, cuts a running
    // generation short. Forty pieces, 50 ms apart: two seconds, ten probe intervals.
    let pieces: Vec<String> = (0..40).map(|n| format!("w{n} ")).collect();
    let whole: String = pieces.concat();
    let double = ChatDouble::openai().await;
    double.script(Script { pieces, between_pieces: Duration::from_millis(50), ..Script::llama_cpp() });
    // Two agents: the sidecar could take both tasks at once; the endpoint must not.
    let mesh = start(2, openai(&double)).await;
    let first = mesh.api.submit(prompt(OPENAI_MODEL, 1)).await;
    let second = mesh.api.submit(prompt(OPENAI_MODEL, 1)).await;
    let (first, second) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
    // While the first generates, the second waits at the hub, saying why.
    assert_eventually!(mesh.api.get(first).await["state"] == "running", PATIENCE, "the first runs");
    let (_, why) = mesh.api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{second}/why"), None).await;
    assert_eq!(mesh.api.get(second).await["attempt"], 0, "held back: {why}");
    let first = mesh.api.wait_final(first, PATIENCE).await;
    let second = mesh.api.wait_final(second, PATIENCE).await;
    for done in [&first, &second] {
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["outcome"]["stdout"], whole.as_str(), "whole, byte for byte");
        assert_eq!(done["attempt"], 1, "never cut short, never retried: {done}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_waits_behind_a_generation_does_not_mark_the_endpoint_down() {
    // llama.cpp's server with interruption off: a request waits while one generates, longer
    // than a probe's 3 s. The endpoint is healthy by the evidence of the stream.
    let pieces: Vec<String> = (0..25).map(|n| format!("w{n} ")).collect();
    let double = ChatDouble::openai().await;
    let script = Script { pieces, between_pieces: Duration::from_millis(200), busy: Busy::Waits, ..Script::default() };
    double.script(script);
    let mesh = start(1, openai(&double)).await;
    let task = mesh.api.submit(prompt(OPENAI_MODEL, 1)).await;
    let id = task["id"].as_str().unwrap().to_owned();
    loop {
        let (_, list) = mesh.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
        assert_eq!(list["endpoints"][0]["healthy"], true, "never down while it streams: {list}");
        if mesh.api.get(&id).await["state"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_before_the_work_began_requeues_it_and_hubctl_says_so_once() {
    let double = ChatDouble::openai().await;
    let mesh = start(1, openai(&double)).await;
    // The server goes away; the next attempt finds it down.
    let url = double.url.clone();
    drop(double);
    let body = json!({ "llm": { "prompt": "hi", "model": OPENAI_MODEL }, "limits": { "max_attempts": 2 },
                       "retry": { "backoff_base_ms": 10, "backoff_max_ms": 20 } });
    let done = run(&mesh, body).await;
    assert_eq!(done["state"], "dead_lettered", "{done}");
    let reason = done["state_reason"].as_str().unwrap();
    assert!(reason.starts_with("endpoint_down: "), "{reason}");
    assert_eq!(done["attempt"], 2, "retried, not failed at once: {done}");
    let id = done["id"].as_str().unwrap();
    let output = agentcom_integration::process::hubctl(&mesh.url, &mesh.api.token, &["get", id]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("endpoint_down").count(), 1, "said once: {stdout}");
    // Following it (as `submit --wait` does) says why once, and exits 1: LLM work starts no
    // process that could fail to start.
    let waited = agentcom_integration::process::hubctl(&mesh.url, &mesh.api.token, &["watch", id]).await;
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("endpoint_down").count(), 1, "said once: {stderr}");
    // Into a pipe closed after its first line: quiet, and successful.
    let get = format!("AGENTCOM_HUB={} AGENTCOM_TOKEN={} {} get {id} | head -1", mesh.url, mesh.api.token, hubctl());
    let piped = std::process::Command::new("bash").args(["-o", "pipefail", "-c", &get]).output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success() && !stderr.contains("panicked"), "{:?} {stderr}", piped.status);
    assert!(String::from_utf8_lossy(&piped.stdout).starts_with("id:"), "{piped:?}");
    // And the endpoint list says where the server was, down.
    let (_, list) = mesh.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
    assert_eq!(list["endpoints"][0]["url"], url.as_str());
    mesh.stop().await;
}

fn hubctl() -> String {
    agentcom_integration::process::binary("hubctl").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_sidecars_endpoints_are_listed_unreachable() {
    let double = ChatDouble::openai().await;
    let mut mesh = start(1, openai(&double)).await;
    mesh.sidecars.remove(0).stop().await;
    assert_eventually!(
        {
            let (_, list) = mesh.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            let endpoint = &list["endpoints"][0];
            endpoint["healthy"] == false
                && endpoint["error"].as_str().is_some_and(|e| e.contains("unreachable: its sidecar"))
        },
        PATIENCE,
        "the endpoint shows its sidecar offline"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_takes_an_openai_compatible_server_and_an_ollama_address_for_its_sidecar() {
    use agentcom_integration::process::HubProcess;
    let openai = ChatDouble::openai().await;
    let ollama = OllamaDouble::start(vec![FakeModel::new(OLLAMA_MODEL, 1, "llama", "3.2B")]).await;
    ollama.load(OLLAMA_MODEL, 1);
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let args =
        ["--openai-base-url", openai.url.as_str(), "--openai-model", OPENAI_MODEL, "--ollama", ollama.url.as_str()];
    let hub = HubProcess::dev(&dir.path().join("hub"), &work, &args).await;
    assert_eventually!(
        {
            let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            let endpoints = list["endpoints"].as_array().cloned().unwrap_or_default();
            let up = |kind: &str| endpoints.iter().any(|e| e["kind"] == kind && e["healthy"] == true);
            up("openai") && up("ollama")
        },
        PATIENCE,
        "both endpoints are up at the hub"
    );
    for model in [OPENAI_MODEL, OLLAMA_MODEL] {
        let task = hub.api.submit(prompt(model, 1)).await;
        let done = hub.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["outcome"]["usage"]["model"], model, "{done}");
    }
}
