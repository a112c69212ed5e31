//! The gateway (`docs/gateway.md`): the hub serving OpenAI's, Anthropic's and Ollama's APIs in
//! front of sidecars whose endpoints are the project's doubles, one of each API, checked with the
//! official Python clients (every client on every endpoint, so each pair of APIs is crossed), and
//! what the clients cannot see: the task each request makes (its lane, its placement as `explain`
//! says it, a prompt and reply not stored), inference tokens, and a caller that goes away
//! mid-stream cancelling the request at the endpoint.
//!
//! Needs a Python with the clients (`AGENTCOM_PYTHON`, else `target/pyclients/bin/python`, which
//! `scripts/test` makes); without one the test fails and says how to get one.

#![allow(clippy::disallowed_methods)] // Tests start the real tools.

use std::path::Path;
use std::time::Duration;

use agentcom_integration::assert_eventually;
use agentcom_integration::chat_doubles::{ChatDouble, Fault};
use agentcom_integration::ollama::{ChatScript, FakeModel, OllamaDouble, Turn};
use agentcom_integration::process::{HubProcess, SidecarProcess, hubctl};
use futures_util::StreamExt;
use serde_json::{Value, json};

const OLLAMA_MODEL: &str = "llama3.2:3b";
const OPENAI_MODEL: &str = "qwen2.5:7b";
const CLAUDE: &str = "claude-sonnet-4-5";
const PATIENCE: Duration = Duration::from_secs(30);

fn python() -> std::path::PathBuf {
    let made = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyclients/bin/python");
    let python = std::env::var_os("AGENTCOM_PYTHON").map(std::path::PathBuf::from).unwrap_or(made);
    assert!(
        python.exists(),
        "{} is missing: this test drives the gateway with the official Python clients. Run `scripts/test` (it makes \
         target/pyclients with integration/clients/requirements.txt), or set AGENTCOM_PYTHON to a python that has them",
        python.display()
    );
    python
}

/// A hub with three sidecars, one endpoint each: Ollama, an OpenAI-compatible server, the Claude
/// API; and an inference token.
struct Fleet {
    hub: HubProcess,
    ollama: OllamaDouble,
    openai: ChatDouble,
    claude: ChatDouble,
    _sidecars: Vec<SidecarProcess>,
    _dir: tempfile::TempDir,
    key: String,
}

async fn fleet(prefix: &str) -> Fleet {
    fleet_with(prefix, &[]).await
}

async fn fleet_with(prefix: &str, hub_flags: &[&str]) -> Fleet {
    let ollama = OllamaDouble::start(vec![FakeModel::new(OLLAMA_MODEL, 1, "llama", "3.2B")]).await;
    ollama.load(OLLAMA_MODEL, 1);
    let openai = ChatDouble::openai().await;
    let claude = ChatDouble::anthropic().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), hub_flags).await;
    let checks = ["--llm-check-interval-ms", "200"];
    let id = |name: &str| format!("{prefix}-{name}");
    let sidecars = vec![
        SidecarProcess::start_with(&hub, &id("ollama"), 2, &work, &[&["--ollama", &ollama.url][..], &checks].concat()),
        SidecarProcess::start_with(
            &hub,
            &id("openai"),
            2,
            &work,
            &[&["--openai-base-url", &openai.url, "--openai-model", OPENAI_MODEL][..], &checks].concat(),
        ),
        SidecarProcess::start_with_env(
            &hub,
            &id("claude"),
            2,
            &work,
            &[&["--anthropic-base-url", &claude.url, "--anthropic-model", CLAUDE][..], &checks].concat(),
            &[("ANTHROPIC_API_KEY", "sk-ant-test")],
        ),
    ];
    assert_eventually!(
        {
            let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            list["endpoints"].as_array().is_some_and(|e| e.len() == 3 && e.iter().all(|e| e["healthy"] == true))
        },
        PATIENCE,
        "the three endpoints reached the hub"
    );
    let (status, made) = hub
        .api
        .request(reqwest::Method::POST, "/api/v1/tokens", Some(json!({"role": "inference", "name": "tools"})))
        .await;
    assert_eq!(status, 201, "{made}");
    let key = made["secret"].as_str().unwrap().to_owned();
    Fleet { hub, ollama, openai, claude, _sidecars: sidecars, _dir: dir, key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_clients_reach_every_endpoint_through_the_gateway() {
    let python = python();
    let fleet = fleet("gw").await;
    // Each request with tools reaches its double as one whole turn: per client, a call of the
    // tool, the answer once given its result, and (streamed to the caller) the call again.
    let called = Turn::ToolCalls(vec![("get_weather".into(), json!({"city": "Paris"}))]);
    let answer = Turn::Text("It is sunny in Paris.".into());
    let turns: Vec<Turn> = (0..3).flat_map(|_| [called.clone(), answer.clone(), called.clone()]).collect();
    fleet.ollama.turns(turns.clone());
    fleet.openai.turns(turns.clone());
    fleet.claude.turns(turns);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/check_gateway.py");
    // The text each double streams, and the tokens each counts (input with the cached ones).
    let cases = [
        format!("{OLLAMA_MODEL}:Hello, world:26:3"),
        format!("{OPENAI_MODEL}:Hello!:35:15"),
        format!("{CLAUDE}:Hello!:35:15"),
    ];
    let args: Vec<String> = [fleet.hub.url.clone(), fleet.key.clone()].into_iter().chain(cases).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).args(args).output().expect("running the python check")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the official clients failed:\n{stdout}\n{stderr}");
    for model in [OLLAMA_MODEL, OPENAI_MODEL, CLAUDE] {
        for api in ["openai", "anthropic", "ollama"] {
            assert!(stdout.contains(&format!("{api} {model}: ok")), "{stdout}");
            assert!(stdout.contains(&format!("{api} tools {model}: ok")), "{stdout}");
        }
    }
    assert!(stdout.contains("refusals and listings: ok"), "{stdout}");

    // Every request was a task in the interactive lane, its prompt and reply not kept.
    let (_, listed) =
        fleet.hub.api.request(reqwest::Method::GET, "/api/v1/tasks?label=gateway=ollama&limit=100", None).await;
    let tasks = listed["tasks"].as_array().cloned().unwrap_or_default();
    assert!(tasks.len() >= 6, "{listed}");
    for task in &tasks {
        assert_eq!(task["spec"]["priority"], "interactive", "{task}");
        assert_eq!(task["state"], "succeeded", "{task}");
        let messages = &task["spec"]["work"]["llm"]["messages"];
        assert!(messages.as_array().is_none_or(Vec::is_empty), "the prompt is not shown: {task}");
        let id = task["id"].as_str().unwrap();
        let stored = fleet.hub.api.get(id).await;
        assert_eq!(stored["outcome"]["stdout"].as_str().unwrap_or_default(), "", "{stored}");
        assert!(stored["outcome"]["usage"]["output_tokens"].as_u64().is_some_and(|n| n > 0), "{stored}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_names_its_task_and_placement_and_a_caller_that_leaves_cancels_it() {
    let fleet = fleet("gwh").await;
    let http = reqwest::Client::new();
    let chat = |model: &str, stream: bool| json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let answer = http
        .post(format!("{}/v1/chat/completions", fleet.hub.url))
        .bearer_auth(&fleet.key)
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&chat(OPENAI_MODEL, false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (task, placement) = (header("x-agentcom-task"), header("x-agentcom-placement"));
    assert!(placement.starts_with("gwh-openai/"), "{placement}");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!", "{body}");
    // hubctl explain works for it, and says where it went.
    let explained = hubctl(&fleet.hub.url, &fleet.hub.api.token, &["--json", "explain", &task]).await;
    assert!(explained.status.success(), "{}", String::from_utf8_lossy(&explained.stderr));
    let explained: Value = serde_json::from_slice(&explained.stdout).unwrap();
    assert_eq!(explained["decisions"][0]["kind"], "placed", "{explained}");
    assert!(explained.to_string().contains("gwh-openai"), "{explained}");
    assert_eq!(fleet.hub.api.get(&task).await["trace_id"], trace, "the caller's trace holds the task's spans");

    // The inference key reaches the gateway only.
    let refused = http.get(format!("{}/api/v1/tasks", fleet.hub.url)).bearer_auth(&fleet.key).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    // Anthropic's clients send x-api-key; a wrong one is refused in Anthropic's shape.
    let wrong = http
        .post(format!("{}/v1/messages", fleet.hub.url))
        .header("x-api-key", "nope")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await.unwrap();
    assert_eq!(
        (wrong["type"].as_str(), wrong["error"]["type"].as_str()),
        (Some("error"), Some("authentication_error"))
    );

    // An alias means the first of its models the fleet serves; a model nowhere is a 404 until
    // a fallback (`*`) says what it means.
    let admin = |args: &'static [&'static str]| hubctl(&fleet.hub.url, &fleet.hub.api.token, args);
    let ask = |model: &str| {
        http.post(format!("{}/v1/chat/completions", fleet.hub.url))
            .bearer_auth(&fleet.key)
            .json(&chat(model, false))
            .send()
    };
    assert!(admin(&["models", "alias", "fast", "no-such-model", OLLAMA_MODEL]).await.status.success());
    let listed = admin(&["--json", "models", "aliases"]).await;
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["aliases"][0], json!({"name": "fast", "models": ["no-such-model", OLLAMA_MODEL]}));
    let fast = ask("fast").await.unwrap();
    assert!(fast.headers()["x-agentcom-placement"].to_str().unwrap().starts_with("gwh-ollama/"));
    let body: Value = fast.json().await.unwrap();
    assert_eq!(
        (body["model"].as_str(), body["choices"][0]["message"]["content"].as_str()),
        (Some(OLLAMA_MODEL), Some("Hello, world"))
    );
    let missing = ask("gpt-5").await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "model_not_found", "{missing}");
    assert!(missing["error"]["message"].as_str().unwrap().contains(OPENAI_MODEL), "{missing}");
    assert!(admin(&["models", "alias", "*", OPENAI_MODEL]).await.status.success());
    assert_eq!(ask("gpt-5").await.unwrap().status(), 200, "the fallback serves it");
    // An endpoint that fails before its first token: the request goes on to the alias's next.
    assert!(admin(&["models", "alias", "sturdy", OPENAI_MODEL, OLLAMA_MODEL]).await.status.success());
    fleet.openai.faults(vec![Fault::ErrorAfter(0); 3]);
    let sturdy = ask("sturdy").await.unwrap();
    assert_eq!(sturdy.status(), 200);
    let body: Value = sturdy.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello, world", "{body}");
    assert!(admin(&["models", "unalias", "*"]).await.status.success());
    assert_eq!(ask("gpt-5").await.unwrap().status(), 404);

    // A long reply; the caller reads its first piece and goes away.
    fleet.ollama.script(ChatScript {
        pieces: (0..400).map(|i| format!("word{i} ")).collect(),
        between_pieces: Duration::from_millis(25),
        ..ChatScript::default()
    });
    let streaming = http
        .post(format!("{}/api/chat", fleet.hub.url))
        .bearer_auth(&fleet.key)
        .json(&chat(OLLAMA_MODEL, true))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    let task = streaming.headers()["x-agentcom-task"].to_str().unwrap().to_owned();
    let mut body = streaming.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first: Value = serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["message"]["content"], "word0 ", "{first}");
    drop(body);
    assert_eventually!(fleet.ollama.abandoned_chats() == 1, PATIENCE, "the endpoint saw its request closed");
    let done = fleet.hub.api.wait_final(&task, PATIENCE).await;
    assert_eq!(done["state"], "cancelled", "{done}");
}

/// Makes a key with `limits` through `hubctl tokens create`, returning its secret.
async fn key(fleet: &Fleet, name: &str, limits: &[&str]) -> String {
    let args = [&["tokens", "create", "--role", "inference", "--name", name][..], limits].concat();
    let made = hubctl(&fleet.hub.url, &fleet.hub.api.token, &args).await;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    String::from_utf8_lossy(&made.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_held_to_their_limits_and_their_spend_is_shown() {
    let fleet = fleet_with("gwk", &["--gateway-keyless", "cli"]).await;
    let http = reqwest::Client::new();
    let openai = |key: &str, model: &str| {
        http.post(format!("{}/v1/chat/completions", fleet.hub.url))
            .bearer_auth(key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };

    // Over its rate: 429 with retry-after, in OpenAI's shape.
    let slow = key(&fleet, "slow", &["--rpm", "2"]).await;
    for _ in 0..2 {
        assert_eq!(openai(&slow, OLLAMA_MODEL).await.unwrap().status(), 200);
    }
    let refused = openai(&slow, OLLAMA_MODEL).await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("2 requests per minute"), "{body}");

    // Over its daily budget: the first request spends it (Claude is priced), the next is refused.
    let thrifty = key(&fleet, "thrifty", &["--daily-budget", "0.0001"]).await;
    assert_eq!(openai(&thrifty, CLAUDE).await.unwrap().status(), 200);
    let refused = openai(&thrifty, CLAUDE).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("daily budget"), "{body}");

    // A model it may not use, and a local-only key asking for a cloud model: 403.
    let narrow = key(&fleet, "narrow", &["--models", OLLAMA_MODEL]).await;
    let refused = openai(&narrow, OPENAI_MODEL).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains(&format!("may use: {OLLAMA_MODEL}")), "{body}");
    let private = key(&fleet, "private", &["--local-only"]).await;
    let refused = openai(&private, CLAUDE).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(openai(&private, OPENAI_MODEL).await.unwrap().status(), 200, "a local server is fine");

    // A client that cannot send a key (the Ollama CLI) acts as the token the hub names for it,
    // once that token exists.
    let keyless = || {
        http.post(format!("{}/api/chat", fleet.hub.url))
            .json(&json!({"model": OLLAMA_MODEL, "stream": false, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let refused = keyless().await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused: Value = refused.json().await.unwrap();
    assert!(refused["error"].as_str().unwrap().contains("missing bearer token"), "{refused}");
    key(&fleet, "cli", &["--models", OLLAMA_MODEL]).await;
    let served = keyless().await.unwrap();
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.unwrap();
    assert_eq!(served["message"]["content"], "Hello, world", "{served}");

    // The spend per key, from hubctl usage.
    let usage = hubctl(&fleet.hub.url, &fleet.hub.api.token, &["--json", "usage", "--by", "key"]).await;
    assert!(usage.status.success(), "{}", String::from_utf8_lossy(&usage.stderr));
    let usage: Value = serde_json::from_slice(&usage.stdout).unwrap();
    let of = |name: &str| usage["usage"].as_array().unwrap().iter().find(|u| u["key_name"] == name).cloned();
    let thrifty = of("thrifty").expect("the thrifty key's spend");
    assert_eq!(thrifty["requests"], 1, "{usage}");
    assert!(thrifty["cost_usd"].as_f64().unwrap() > 0.0001, "{usage}");
    assert_eq!(of("slow").unwrap()["requests"], 2, "{usage}");
    assert_eq!(of("slow").unwrap()["cost_usd"], 0.0, "a local model costs nothing: {usage}");
    assert_eq!(of("cli").unwrap()["requests"], 1, "the keyless request counts as its key's: {usage}");
    let table = hubctl(&fleet.hub.url, &fleet.hub.api.token, &["usage"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("thrifty") && table.contains(CLAUDE), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_the_warm_model_until_it_is_busy_and_explain_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // Replies take about 2 s: long enough to be busy, short enough for a test.
    let size = 2_000_000_000; // Priced as a 1 s load until one is observed.
    let slow = ChatScript { between_pieces: Duration::from_millis(700), ..ChatScript::default() };
    let warm = OllamaDouble::start(vec![FakeModel::new(OLLAMA_MODEL, size, "llama", "3.2B")]).await;
    warm.load(OLLAMA_MODEL, size);
    warm.script(slow.clone());
    let cold = OllamaDouble::start(vec![FakeModel::new(OLLAMA_MODEL, size, "llama", "3.2B")]).await;
    cold.script(slow);
    let hub = HubProcess::serve(&dir.path().join("hub"), &["--heartbeat-interval-ms", "200"]).await;
    let checks = ["--llm-check-interval-ms", "200"];
    let _warm =
        SidecarProcess::start_with(&hub, "gwp-warm", 2, &work, &[&["--ollama", &warm.url][..], &checks].concat());
    let cold_flags = [&["--ollama", &cold.url, "--ollama-parallel", "3"][..], &checks].concat();
    let _cold = SidecarProcess::start_with(&hub, "gwp-cold", 2, &work, &cold_flags);
    assert_eventually!(
        {
            let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            list["endpoints"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["healthy"] == true))
        },
        PATIENCE,
        "both inventories reached the hub"
    );
    let http = reqwest::Client::new();
    let ask = || {
        http.post(format!("{}/v1/chat/completions", hub.url))
            .bearer_auth(&hub.api.token)
            .json(&json!({"model": OLLAMA_MODEL, "max_tokens": 100, "stream": true,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let placement = |response: &reqwest::Response| {
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        (header("x-agentcom-task"), header("x-agentcom-placement"))
    };
    // The first goes to the warm model; while it streams, the warm endpoint (one at a time) is
    // busy, and the second goes where it finishes soonest: the cold one (a 1 s load beats a 2 s
    // wait).
    let first = ask().await.unwrap();
    let (_, first_placed) = placement(&first);
    assert!(first_placed.starts_with("gwp-warm/"), "{first_placed}");
    let second = ask().await.unwrap();
    let (second_task, second_placed) = placement(&second);
    assert!(second_placed.starts_with("gwp-cold/"), "{second_placed}");
    for response in [first, second] {
        let text = response.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    let explained = agentcom_integration::process::hubctl(&hub.url, &hub.api.token, &["explain", &second_task]).await;
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(explained.status.success() && text.contains("finishes soonest") && text.contains("gwp-warm"), "{text}");
    let explained =
        agentcom_integration::process::hubctl(&hub.url, &hub.api.token, &["--json", "explain", &second_task]).await;
    let explained: Value = serde_json::from_slice(&explained.stdout).unwrap();
    let verdicts: Vec<(&str, &str)> = explained["decisions"][0]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["sidecar_id"].as_str().unwrap(), c["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(verdicts, vec![("gwp-cold", "chosen"), ("gwp-warm", "slower")], "{explained}");
}
