//! Finding out what an LLM endpoint offers: health, version, downloaded and loaded models.
//!
//! Ollama is probed through `/api/version`, `/api/tags` and `/api/ps`; an OpenAI-compatible
//! server through `/models`. The hub uses these probes for the endpoints it checks itself, the
//! sidecar for its local ones.
//! Parsing is separate from I/O and tested with the exact JSON the servers send.
//!
//! In detail:
//!
//! LLM provider clients, shared by the hub's probes, the sidecar's reports and its LLM runner:
//!
//! probes: Ollama (`/api/version`, `/api/tags`, `/api/ps` joined into warm and cold models) and
//! OpenAI-compatible `/models` (a server of one model serves it warm); a model's context window
//! (llama.cpp's `/props`, vLLM's `max_model_len`, Ollama's `/api/show`) and a token count through a
//! server's tokenizer (`count_tokens`);
//!
//! `chat`: one streaming chat against Ollama's `/api/chat` (NDJSON), the Anthropic Messages API
//! (SSE: `ping` and unknown events ignored, an `error` event after 200) or OpenAI-compatible chat
//! completions (SSE with `include_usage`, `choices: null` tolerated), each through a pure
//! incremental parser fed whatever pieces the network delivers, yielding text and the final counts.
//! Dropping the request future closes the connection (cancel, timeout).
//!
//!   A reply is whole only with its API's end marker (a `finish_reason`, `message_stop` with a
//! `stop_reason`, `done: true`); without one the chat fails `Truncated`, a body broken mid-reply
//! `StreamBroken`, a request that did not get through `Transport`. `Error::reason`
//! (`chat/error.rs`, with the reading of the providers' error answers) maps each to the
//! `FailureReason` (`agentcom_types::domain`) an attempt records as the first word of its error,
//! and the hub retries by.
//!
//! `tools`: chat turns with tools, not streamed, on each provider's native tool calling: a
//! provider-neutral `Conversation` (user text, assistant text with calls, the calls' answers)
//! rendered per provider (`body`), and a reply read back (`parse_reply`), both pure and tested with
//! the providers' exact JSON; `turn` sends one.
//!
//! Parsing is separate from I/O and tested with the servers' exact bytes, split at every point.

use std::time::Duration;

use serde::Deserialize;

pub mod chat;
pub mod tools;

pub use agentcom_types::fleet::{Endpoint, Model};

/// What one check of an endpoint found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probe {
    pub healthy: bool,
    pub version: String,
    /// Why the endpoint is unhealthy.
    pub error: Option<String>,
    pub models: Vec<Model>,
}

impl Probe {
    /// An unhealthy endpoint, and why.
    pub fn failed(error: String) -> Probe {
        Probe { healthy: false, error: Some(error), ..Probe::default() }
    }

    /// `endpoint` as this check, made at `now`, found it.
    pub fn found(self, endpoint: Endpoint, now: i64) -> Endpoint {
        Endpoint {
            healthy: self.healthy,
            version: self.version,
            error: self.error,
            models: self.models,
            checked_unix_ms: now,
            ..endpoint
        }
    }
}

/// How long one request of a probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A client for probes: short timeouts, no proxy (endpoints are local or on the tailnet).
pub fn client() -> reqwest::Client {
    agentcom_process::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .expect("a reqwest client with plain settings builds")
}

/// Checks an Ollama server at `base_url` (`http://127.0.0.1:11434`). Never fails: an endpoint
/// that does not answer, or answers nonsense, is unhealthy with the reason.
pub async fn probe_ollama(client: &reqwest::Client, base_url: &str) -> Probe {
    let base = base_url.trim_end_matches('/');
    let fetch = |path: &'static str| get_json(client, format!("{base}{path}"), None);
    let (version, tags, ps) = tokio::join!(fetch("/api/version"), fetch("/api/tags"), fetch("/api/ps"));
    match (version, tags, ps) {
        (Ok(version), Ok(tags), Ok(ps)) => parse_ollama(&version, &tags, &ps).unwrap_or_else(Probe::failed),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => Probe::failed(err),
    }
}

/// Checks an OpenAI-compatible server at `base_url` (ending in `/v1`) through `GET /models`.
pub async fn probe_openai(client: &reqwest::Client, base_url: &str, api_key: Option<&str>) -> Probe {
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    match get_json(client, url, api_key).await {
        Ok(body) => parse_openai_models(&body).unwrap_or_else(Probe::failed),
        Err(err) => Probe::failed(err),
    }
}

/// How long a count of tokens may take.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// Tokens in `text` as the model at an OpenAI-compatible server's `base_url` (ending in `/v1`)
/// counts them, through the server's tokenizer: llama-cpp-python's `POST /extras/tokenize/count`,
/// else llama.cpp's `POST /tokenize`. `None` when the server has neither (vLLM, a hosted API).
///
/// The count includes the beginning-of-text token these servers add. Mind that llama.cpp's
/// server interrupts a running generation for any request: count only while none is in flight.
pub async fn count_tokens(
    client: &reqwest::Client,
    base_url: &str,
    api_key: Option<&str>,
    model: &str,
    text: &str,
) -> Option<u64> {
    let root = base_url.trim_end_matches('/');
    let root = root.strip_suffix("/v1").unwrap_or(root);
    let post = |path: &str, body: serde_json::Value| {
        let mut request = client.post(format!("{root}{path}")).timeout(COUNT_TIMEOUT).json(&body);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.json::<serde_json::Value>().await.ok()
        }
    };
    if let Some(answer) = post("/extras/tokenize/count", serde_json::json!({ "input": text, "model": model })).await
        && let Some(count) = answer["count"].as_u64()
    {
        return Some(count);
    }
    let answer = post("/tokenize", serde_json::json!({ "content": text, "add_special": true })).await?;
    answer["tokens"].as_array().map(|tokens| tokens.len() as u64)
}

/// The context window of the model an OpenAI-compatible server serves, when it says: llama.cpp's
/// `GET /props` (`default_generation_settings.n_ctx`), vLLM's `max_model_len` in `GET /v1/models`.
pub async fn context_window(
    client: &reqwest::Client,
    base_url: &str,
    api_key: Option<&str>,
    model: &str,
) -> Option<u64> {
    let base = base_url.trim_end_matches('/');
    let root = base.strip_suffix("/v1").unwrap_or(base);
    if let Ok(props) = get_json(client, format!("{root}/props"), api_key).await
        && let Some(n_ctx) = parse_props_context(&props)
    {
        return Some(n_ctx);
    }
    let models = get_json(client, format!("{base}/models"), api_key).await.ok()?;
    parse_models_context(&models, model)
}

/// Ollama's context window for `model`: `POST /api/show`, `model_info["<arch>.context_length"]`
/// (what the model supports; the server may run it with less, `num_ctx`, 2,048 or 4,096 by
/// default, which `parameters` says when set).
pub async fn ollama_context_window(client: &reqwest::Client, base_url: &str, model: &str) -> Option<u64> {
    let url = format!("{}/api/show", base_url.trim_end_matches('/'));
    let response = client.post(&url).json(&serde_json::json!({ "model": model })).send().await.ok()?;
    let body = response.bytes().await.ok()?;
    parse_ollama_show_context(&body)
}

/// `n_ctx` from llama.cpp's `/props`.
pub fn parse_props_context(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["default_generation_settings"]["n_ctx"].as_u64().or_else(|| value["n_ctx"].as_u64()).filter(|&n| n > 0)
}

/// vLLM's `max_model_len` of `model` (or of the only model) in `/v1/models`.
pub fn parse_models_context(body: &[u8], model: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let data = value["data"].as_array()?;
    let entry = data.iter().find(|m| m["id"] == model).or(if data.len() == 1 { data.first() } else { None })?;
    entry["max_model_len"].as_u64().filter(|&n| n > 0)
}

/// The context Ollama runs a model with: `num_ctx` in its parameters when set, else the
/// smaller of the model's own `*.context_length` and Ollama's default of 4,096.
pub fn parse_ollama_show_context(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let configured = value["parameters"].as_str().and_then(|parameters| {
        parameters.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("num_ctx")).then(|| words.next()?.parse::<u64>().ok()).flatten()
        })
    });
    if configured.is_some() {
        return configured;
    }
    let trained = value["model_info"]
        .as_object()?
        .iter()
        .find(|(key, _)| key.ends_with(".context_length"))
        .and_then(|(_, v)| v.as_u64())?;
    Some(trained.min(OLLAMA_DEFAULT_CONTEXT))
}

/// The context Ollama gives a model unless told otherwise (`OLLAMA_CONTEXT_LENGTH`).
pub const OLLAMA_DEFAULT_CONTEXT: u64 = 4_096;

/// How long a preload may take: Ollama gives up on a load after 5 minutes (`OLLAMA_LOAD_TIMEOUT`).
pub const PRELOAD_TIMEOUT: Duration = Duration::from_secs(330);

/// Loads `model` into memory on the Ollama server at `base_url` without generating anything
/// (a preload: `POST /api/generate` with the model and no prompt), kept there for `keep_alive`
/// (the server's default when `None`). Returns how long the load took, from the request to its
/// answer.
pub async fn preload_ollama(
    client: &reqwest::Client,
    base_url: &str,
    model: &str,
    keep_alive: Option<&str>,
) -> Result<Duration, String> {
    let url = format!("{}/api/generate", base_url.trim_end_matches('/'));
    let mut body = serde_json::json!({ "model": model, "stream": false });
    if let Some(keep_alive) = keep_alive {
        body["keep_alive"] = keep_alive_json(keep_alive);
    }
    let started = std::time::Instant::now();
    let sent = client.post(&url).timeout(PRELOAD_TIMEOUT).json(&body).send().await;
    let response = sent.map_err(|err| format!("POST {url}: {}", describe(&err)))?;
    let status = response.status();
    let answer = response.bytes().await.map_err(|err| format!("POST {url}: {}", describe(&err)))?;
    let took = started.elapsed();
    let detail = serde_json::from_slice::<ErrorBody>(&answer).map(|e| e.error).unwrap_or_default();
    if !status.is_success() || !detail.is_empty() {
        return Err(format!("POST {url}: HTTP {status} {detail}").trim_end().to_owned());
    }
    Ok(took)
}

/// Ollama's `keep_alive` as sent: seconds as a number (Ollama reads a string with Go's duration
/// syntax, in which "3600" has no unit), anything else as text ("10m", "-1m").
pub fn keep_alive_json(keep_alive: &str) -> serde_json::Value {
    match keep_alive.parse::<i64>() {
        Ok(seconds) => seconds.into(),
        Err(_) => keep_alive.into(),
    }
}

async fn get_json(client: &reqwest::Client, url: String, bearer: Option<&str>) -> Result<Vec<u8>, String> {
    let mut request = client.get(&url);
    if let Some(key) = bearer {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|err| format!("GET {url}: {}", describe(&err)))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|err| format!("GET {url}: {}", describe(&err)))?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<ErrorBody>(&body).map(|e| e.error).unwrap_or_default();
        return Err(format!("GET {url}: HTTP {status} {detail}").trim_end().to_owned());
    }
    Ok(body.to_vec())
}

pub(crate) fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "connection refused or unreachable".to_owned()
    } else {
        err.to_string()
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct Version {
    version: String,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct ModelList<T> {
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty")]
    models: Vec<T>,
}

#[derive(Deserialize)]
struct Tag {
    name: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    details: Details,
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    family: String,
    #[serde(default)]
    parameter_size: String,
    #[serde(default)]
    quantization_level: String,
}

#[derive(Deserialize)]
struct Loaded {
    name: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    size_vram: u64,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    details: Details,
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Joins Ollama's three answers: every downloaded model, marked loaded when `/api/ps` lists it
/// (a loaded model missing from the tags, which a concurrent pull can cause, is still listed).
pub fn parse_ollama(version: &[u8], tags: &[u8], ps: &[u8]) -> Result<Probe, String> {
    let version: Version = serde_json::from_slice(version).map_err(|e| format!("/api/version: {e}"))?;
    let tags: ModelList<Tag> = serde_json::from_slice(tags).map_err(|e| format!("/api/tags: {e}"))?;
    let ps: ModelList<Loaded> = serde_json::from_slice(ps).map_err(|e| format!("/api/ps: {e}"))?;
    let mut models: Vec<Model> = tags
        .models
        .into_iter()
        .map(|t| Model {
            name: t.name,
            size_bytes: t.size,
            family: t.details.family,
            parameter_size: t.details.parameter_size,
            quantization: t.details.quantization_level,
            ..Model::default()
        })
        .collect();
    for loaded in ps.models {
        let expires_unix_ms = loaded.expires_at.as_deref().and_then(parse_time);
        let model = match models.iter_mut().find(|m| m.name == loaded.name) {
            Some(model) => model,
            None => {
                models.push(Model {
                    name: loaded.name.clone(),
                    size_bytes: loaded.size,
                    family: loaded.details.family,
                    parameter_size: loaded.details.parameter_size,
                    quantization: loaded.details.quantization_level,
                    ..Model::default()
                });
                models.last_mut().expect("just pushed")
            }
        };
        model.loaded = true;
        model.size_vram_bytes = loaded.size_vram;
        model.expires_unix_ms = expires_unix_ms;
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Probe { healthy: true, version: version.version, error: None, models })
}

/// `GET /models` of an OpenAI-compatible server: `{"data": [{"id": ...}]}` (some send `null`).
pub fn parse_openai_models(body: &[u8]) -> Result<Probe, String> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default = "Vec::new", deserialize_with = "null_as_empty")]
        data: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        id: String,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| format!("/models: {e}"))?;
    // A server that serves one model (llama.cpp's, vLLM) has it loaded while it answers.
    let single = list.data.len() == 1;
    let models = list.data.into_iter().map(|e| Model { name: e.id, loaded: single, ..Model::default() }).collect();
    Ok(Probe { healthy: true, models, ..Probe::default() })
}

/// Ollama's times are RFC 3339 with nanoseconds and an offset; its "never expires" is a date
/// centuries away, kept as it is.
fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = r#"{"version":"0.12.6"}"#;
    const TAGS: &str = r#"{"models":[{"name":"llama3.2:3b","model":"llama3.2:3b","modified_at":"2025-10-02T09:13:44.529353872+02:00","size":2019393189,"digest":"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"3.2B","quantization_level":"Q4_K_M"}},{"name":"qwen2.5-coder:7b","model":"qwen2.5-coder:7b","modified_at":"2025-09-30T18:01:02.1234+02:00","size":4683087332,"digest":"2b0496514337a3d5901f1d253d01726c890b721e891335a56d6e08cedf3e2cb0","details":{"parent_model":"","format":"gguf","family":"qwen2","families":["qwen2"],"parameter_size":"7.6B","quantization_level":"Q4_K_M"}}]}"#;
    const PS: &str = r#"{"models":[{"name":"qwen2.5-coder:7b","model":"qwen2.5-coder:7b","size":6654289920,"digest":"2b0496514337a3d5901f1d253d01726c890b721e891335a56d6e08cedf3e2cb0","details":{"parent_model":"","format":"gguf","family":"qwen2","families":["qwen2"],"parameter_size":"7.6B","quantization_level":"Q4_K_M"},"expires_at":"2025-10-02T10:20:31.83753-07:00","size_vram":5832763392,"context_length":4096}]}"#;

    #[test]
    fn keep_alive_goes_as_seconds_when_it_is_a_number_and_as_a_duration_otherwise() {
        assert_eq!(keep_alive_json("3600"), serde_json::json!(3600));
        assert_eq!(keep_alive_json("-1"), serde_json::json!(-1));
        assert_eq!(keep_alive_json("10m"), serde_json::json!("10m"));
        assert_eq!(keep_alive_json("0"), serde_json::json!(0));
    }

    #[test]
    fn ollama_answers_join_into_warm_and_cold_models() {
        let probe = parse_ollama(VERSION.as_bytes(), TAGS.as_bytes(), PS.as_bytes()).unwrap();
        assert!(probe.healthy);
        assert_eq!(probe.version, "0.12.6");
        assert_eq!(probe.models.len(), 2);
        let cold = &probe.models[0];
        assert_eq!(
            cold,
            &Model {
                name: "llama3.2:3b".into(),
                size_bytes: 2019393189,
                family: "llama".into(),
                parameter_size: "3.2B".into(),
                quantization: "Q4_K_M".into(),
                ..Model::default()
            }
        );
        let warm = &probe.models[1];
        assert!(warm.loaded);
        assert_eq!(warm.size_bytes, 4683087332, "the download size; VRAM is separate");
        assert_eq!(warm.size_vram_bytes, 5832763392);
        assert_eq!(warm.expires_unix_ms, Some(1759425631837), "2025-10-02T17:20:31.837Z");
    }

    #[test]
    fn an_idle_ollama_with_nothing_loaded_or_nothing_pulled_parses() {
        let probe = parse_ollama(VERSION.as_bytes(), br#"{"models":[]}"#, br#"{"models":null}"#).unwrap();
        assert!(probe.healthy && probe.models.is_empty());
    }

    #[test]
    fn a_loaded_model_missing_from_the_tags_is_still_listed() {
        let probe = parse_ollama(VERSION.as_bytes(), br#"{"models":[]}"#, PS.as_bytes()).unwrap();
        assert_eq!(probe.models.len(), 1);
        assert!(probe.models[0].loaded);
        assert_eq!(probe.models[0].family, "qwen2");
    }

    #[test]
    fn nonsense_is_an_error_naming_the_path() {
        let err = parse_ollama(VERSION.as_bytes(), b"<html>", PS.as_bytes()).unwrap_err();
        assert!(err.starts_with("/api/tags:"), "{err}");
    }

    #[test]
    fn openai_model_lists_parse_leniently() {
        let body = br#"{"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","created":1727000000,"owned_by":"vllm"}]}"#;
        let probe = parse_openai_models(body).unwrap();
        assert_eq!(probe.models[0].name, "meta-llama/Llama-3.1-8B-Instruct");
        assert!(probe.models[0].loaded, "a server of one model serves it loaded: warm");
        assert!(parse_openai_models(br#"{"data":null}"#).unwrap().models.is_empty());
        let two = br#"{"data":[{"id":"a"},{"id":"b"}]}"#;
        assert!(parse_openai_models(two).unwrap().models.iter().all(|m| !m.loaded), "a router of several: not known");
    }

    #[test]
    fn context_windows_are_read_where_each_server_says_them() {
        // llama.cpp's server (llama-server) `/props`.
        let props = br#"{"default_generation_settings":{"n_ctx":2048,"params":{"n_predict":-1}},"total_slots":1,"chat_template":"..."}"#;
        assert_eq!(parse_props_context(props), Some(2048));
        assert_eq!(parse_props_context(b"{}"), None);
        // vLLM's `/v1/models`.
        let vllm = br#"{"object":"list","data":[{"id":"Qwen/Qwen2.5-7B-Instruct","object":"model","owned_by":"vllm","root":"Qwen/Qwen2.5-7B-Instruct","max_model_len":32768}]}"#;
        assert_eq!(parse_models_context(vllm, "Qwen/Qwen2.5-7B-Instruct"), Some(32768));
        assert_eq!(parse_models_context(vllm, "other"), Some(32768), "the only model");
        assert_eq!(parse_models_context(br#"{"data":[{"id":"gemma"}]}"#, "gemma"), None);
        // Ollama's `/api/show`: num_ctx when set, else the model's own length capped at 4,096.
        let show = br#"{"parameters":"stop \"<end_of_turn>\"\nnum_ctx 8192","model_info":{"general.architecture":"gemma3","gemma3.context_length":32768}}"#;
        assert_eq!(parse_ollama_show_context(show), Some(8192));
        let plain = br#"{"model_info":{"general.architecture":"llama","llama.context_length":131072}}"#;
        assert_eq!(parse_ollama_show_context(plain), Some(4096));
        let small = br#"{"model_info":{"llama.context_length":2048}}"#;
        assert_eq!(parse_ollama_show_context(small), Some(2048));
    }

    #[tokio::test]
    async fn a_closed_port_is_unhealthy_with_the_reason() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let probe = probe_ollama(&client(), &url).await;
        assert!(!probe.healthy);
        assert!(probe.error.as_deref().unwrap().contains("connection refused"), "{probe:?}");
    }
}
