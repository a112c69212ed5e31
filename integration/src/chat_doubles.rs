//! Protocol doubles for the two SSE chat APIs: the Anthropic Messages API (`POST /v1/messages`)
//! and OpenAI-compatible chat completions (`POST /v1/chat/completions`), each speaking the exact
//! event stream the real server sends (`../shared/REFERENCE.md`), with scripted replies and
//! usage, a time to first token and per token, and faults on demand: 429 with `retry-after`,
//! 529 `overloaded_error`, an error event in the middle of a stream, a dropped connection.
//!
//! The OpenAI-compatible double also lists its models (`GET /v1/models`), as the sidecar's
//! probe asks. It can behave as llama.cpp's server does ([`Script::llama_cpp`]): no usage chunk
//! (it ignores `include_usage`), one generation at a time, and a second request (a probe
//! included) interrupting the running one, which then ends with `[DONE]` and no
//! `finish_reason`; or, with interruption off, every request waiting while one generates. `.ci/run` checks them against the official Python clients (`tests/official_clients.rs`).
//!
//! A request that does not stream (an agent's turn with `tools`) is answered with one whole
//! message: the next scripted [`Turn`] (text, or calls of the tools, as `tool_use` blocks or
//! `tool_calls` with ids), else the script's text. Like the real APIs, the doubles refuse (400)
//! a tool result that answers no call of the assistant message before it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use crate::ollama::Turn;

/// A fault the next requests meet, in order; once they are used up, requests succeed.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// HTTP 429 with `retry-after` in seconds.
    RateLimited { retry_after_s: u64 },
    /// HTTP 529 `overloaded_error` (Anthropic) or 503 (OpenAI-compatible).
    Overloaded,
    /// An error event after this many pieces, after HTTP 200.
    ErrorAfter(usize),
    /// The connection closes after this many pieces, with no end.
    DropAfter(usize),
}

/// What the double answers.
#[derive(Clone, Debug)]
pub struct Script {
    pub pieces: Vec<String>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub first_piece_after: Duration,
    pub between_pieces: Duration,
    /// Usage in the stream (OpenAI: the `include_usage` chunk; Anthropic: the counts in
    /// `message_start` and `message_delta`). Off: none, as llama.cpp's server.
    pub usage: bool,
    /// The stream ends with its API's end marker (OpenAI: a `finish_reason`; Anthropic: a
    /// `stop_reason`). Off: `[DONE]` or `message_stop` alone, as an interrupted llama.cpp.
    pub end_marker: bool,
    /// How a second request meets a running generation (OpenAI only).
    pub busy: Busy,
}

/// What a request does while a generation runs (llama.cpp's server runs one at a time).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Busy {
    /// Served at once, beside it (a server that batches).
    #[default]
    Beside,
    /// Interrupts it: the running stream ends at once with `[DONE]` and no `finish_reason`
    /// (llama-cpp-python's default, `interrupt_requests`).
    Interrupts,
    /// Waits until it is done (llama-cpp-python with `--interrupt_requests false`).
    Waits,
}

impl Script {
    /// As llama.cpp's server (llama-cpp-python, default settings) answers.
    pub fn llama_cpp() -> Script {
        Script { usage: false, busy: Busy::Interrupts, ..Script::default() }
    }
}

impl Default for Script {
    fn default() -> Script {
        Script {
            pieces: vec!["Hello".into(), "!".into()],
            input_tokens: 25,
            cached_input_tokens: 10,
            output_tokens: 15,
            first_piece_after: Duration::from_millis(5),
            between_pieces: Duration::from_millis(2),
            usage: true,
            end_marker: true,
            busy: Busy::Beside,
        }
    }
}

#[derive(Default)]
struct Inner {
    script: Script,
    faults: Vec<Fault>,
    /// (headers, body) of every request, oldest first.
    requests: Vec<(HeaderMap, Value)>,
    /// Replies to requests that do not stream, in order.
    turns: std::collections::VecDeque<Turn>,
    /// Tool calls handed out so far (for their ids).
    calls: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Anthropic,
    OpenAi,
}

#[derive(Clone)]
struct Shared {
    api: Api,
    inner: Arc<Mutex<Inner>>,
    /// Generations streaming now, and requests seen (each bumps it: a running generation that
    /// sees it change was interrupted).
    generating: Arc<std::sync::atomic::AtomicUsize>,
    requests_seen: Arc<std::sync::atomic::AtomicU64>,
}

impl Shared {
    /// A request arrives while generations may run: with `Busy::Waits` it waits for them, with
    /// `Busy::Interrupts` it cuts them short.
    async fn arrive(&self) {
        use std::sync::atomic::Ordering;
        let busy = self.inner.lock().expect("lock").script.busy;
        if busy == Busy::Waits {
            while self.generating.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.requests_seen.fetch_add(1, Ordering::SeqCst);
    }
}

/// One double, listening on `127.0.0.1:0`.
pub struct ChatDouble {
    /// The base URL clients take: `http://ADDR` for Anthropic, `http://ADDR/v1` for OpenAI.
    pub url: String,
    pub addr: SocketAddr,
    shared: Shared,
    server: JoinHandle<()>,
}

impl ChatDouble {
    pub async fn anthropic() -> ChatDouble {
        ChatDouble::start(Api::Anthropic).await
    }

    pub async fn openai() -> ChatDouble {
        ChatDouble::start(Api::OpenAi).await
    }

    async fn start(api: Api) -> ChatDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a chat double");
        let addr = listener.local_addr().expect("local addr");
        let shared = Shared { api, inner: Arc::default(), generating: Arc::default(), requests_seen: Arc::default() };
        let router = match api {
            Api::Anthropic => Router::new().route("/v1/messages", post(chat)),
            Api::OpenAi => Router::new().route("/v1/chat/completions", post(chat)).route("/v1/models", get(models)),
        }
        .with_state(shared.clone());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let url = match api {
            Api::Anthropic => format!("http://{addr}"),
            Api::OpenAi => format!("http://{addr}/v1"),
        };
        ChatDouble { url, addr, shared, server }
    }

    pub fn script(&self, script: Script) {
        self.shared.inner.lock().expect("lock").script = script;
    }

    /// Faults for the next requests, in order.
    pub fn faults(&self, faults: Vec<Fault>) {
        self.shared.inner.lock().expect("lock").faults = faults;
    }

    /// Replies to the next requests that do not stream (an agent's turns), in order.
    pub fn turns(&self, turns: Vec<Turn>) {
        self.shared.inner.lock().expect("lock").turns = turns.into();
    }

    /// Every request received: its headers and its JSON body.
    pub fn requests(&self) -> Vec<(HeaderMap, Value)> {
        self.shared.inner.lock().expect("lock").requests.clone()
    }
}

impl Drop for ChatDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The models an OpenAI-compatible server lists.
pub const OPENAI_MODELS: &[&str] = &["qwen2.5:7b", "llama3.2:3b"];

async fn models(State(shared): State<Shared>) -> Json<Value> {
    shared.arrive().await;
    let data: Vec<Value> = OPENAI_MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_795_000_000, "owned_by": "library"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

async fn chat(State(shared): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    shared.arrive().await;
    let (script, fault) = {
        let mut inner = shared.inner.lock().expect("lock");
        inner.requests.push((headers.clone(), body.clone()));
        let fault = (!inner.faults.is_empty()).then(|| inner.faults.remove(0));
        (inner.script.clone(), fault)
    };
    // A key as `x-api-key` (what AgentCom and older clients send) or a bearer token (newer
    // official clients), and a pinned API version, as the real API wants.
    let has_key = headers.contains_key("x-api-key") || headers.contains_key("authorization");
    if shared.api == Api::Anthropic && (!has_key || !headers.contains_key("anthropic-version")) {
        let error = json!({"type": "error", "error": {"type": "authentication_error", "message": "x-api-key header is required"}});
        return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match (&fault, shared.api) {
        (Some(Fault::RateLimited { retry_after_s }), api) => {
            let error = match api {
                Api::Anthropic => {
                    json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}})
                }
                Api::OpenAi => {
                    json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})
                }
            };
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", retry_after_s.to_string())], Json(error))
                .into_response();
        }
        (Some(Fault::Overloaded), Api::Anthropic) => {
            let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
            let status = StatusCode::from_u16(529).expect("529 is a status code");
            return (status, Json(error)).into_response();
        }
        (Some(Fault::Overloaded), Api::OpenAi) => {
            let error = json!({"error": {"message": "The server is overloaded", "type": "server_error"}});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
        }
        _ => {}
    }
    if body["stream"] != true {
        if let Err(why) = answers_follow_calls(shared.api, &body) {
            let error = match shared.api {
                Api::Anthropic => json!({"type": "error", "error": {"type": "invalid_request_error", "message": why}}),
                Api::OpenAi => json!({"error": {"message": why, "type": "invalid_request_error", "code": null}}),
            };
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
        let (turn, first_call) = {
            let mut inner = shared.inner.lock().expect("lock");
            let turn = inner.turns.pop_front().unwrap_or_else(|| Turn::Text(script.pieces.concat()));
            let first_call = inner.calls;
            if let Turn::ToolCalls(calls) = &turn {
                inner.calls += calls.len() as u64;
            }
            (turn, first_call)
        };
        return Json(whole_reply(shared.api, &model, &script, turn, first_call)).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    let api = shared.api;
    let generating = Generating::start(&shared);
    tokio::spawn(async move {
        let generating = generating;
        let stop_after = match fault {
            Some(Fault::ErrorAfter(n)) | Some(Fault::DropAfter(n)) => Some(n),
            _ => None,
        };
        let events = match api {
            Api::Anthropic => anthropic_events(&model, &script),
            Api::OpenAi => openai_events(&model, &script),
        };
        let (head, pieces, tail) = events;
        for event in head {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(script.first_piece_after).await;
        for (n, event) in pieces.into_iter().enumerate() {
            if Some(n) == stop_after {
                if let Some(Fault::ErrorAfter(_)) = fault {
                    let error = match api {
                        Api::Anthropic => sse(
                            Some("error"),
                            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                        ),
                        Api::OpenAi => {
                            sse(None, &json!({"error": {"message": "the model crashed", "type": "server_error"}}))
                        }
                    };
                    let _ = tx.send(error).await;
                }
                return; // DropAfter: the body ends here, with no end marker.
            }
            if n > 0 {
                tokio::time::sleep(script.between_pieces).await;
            }
            if script.busy == Busy::Interrupts && generating.interrupted() {
                let _ = tx.send("data: [DONE]\n\n".to_owned()).await;
                return; // Cut short, cleanly, with no finish_reason.
            }
            if tx.send(event).await.is_err() {
                return;
            }
        }
        drop(generating);
        for event in tail {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(axum::body::Body::from_stream(body))
        .expect("a stream response builds")
}

/// One generation streaming, counted while it lives.
struct Generating {
    shared: Shared,
    /// Requests seen when it began.
    seen: u64,
}

impl Generating {
    fn start(shared: &Shared) -> Generating {
        use std::sync::atomic::Ordering;
        shared.generating.fetch_add(1, Ordering::SeqCst);
        Generating { shared: shared.clone(), seen: shared.requests_seen.load(Ordering::SeqCst) }
    }

    /// Another request has arrived since it began.
    fn interrupted(&self) -> bool {
        self.shared.requests_seen.load(std::sync::atomic::Ordering::SeqCst) != self.seen
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        self.shared.generating.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whether every tool result in `body` answers a call of the assistant message just before it,
/// as both real APIs insist.
fn answers_follow_calls(api: Api, body: &Value) -> Result<(), String> {
    let messages = body["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut asked: Vec<String> = Vec::new();
    for (n, message) in messages.iter().enumerate() {
        let answered: Vec<&str> = match api {
            Api::Anthropic => message["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["type"] == "tool_result")
                .filter_map(|b| b["tool_use_id"].as_str())
                .collect(),
            Api::OpenAi if message["role"] == "tool" => message["tool_call_id"].as_str().into_iter().collect(),
            Api::OpenAi => Vec::new(),
        };
        if let Some(stray) = answered.iter().find(|id| !asked.iter().any(|a| a == *id)) {
            return Err(format!("messages.{n}: a tool result for {stray}, which the message before did not call"));
        }
        if message["role"] == "assistant" {
            asked = match api {
                Api::Anthropic => message["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b["type"] == "tool_use")
                    .filter_map(|b| b["id"].as_str().map(str::to_owned))
                    .collect(),
                Api::OpenAi => message["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect(),
            };
        } else if api == Api::Anthropic || message["role"] != "tool" {
            asked.clear();
        }
    }
    Ok(())
}

/// A whole message, as the API answers a request that does not stream.
fn whole_reply(api: Api, model: &str, script: &Script, turn: Turn, first_call: u64) -> Value {
    let (text, calls) = match turn {
        Turn::Text(text) => (text, Vec::new()),
        Turn::ToolCalls(calls) => (String::new(), calls),
    };
    let ids = (first_call..).map(|n| format!("toolu_01{n:020}"));
    match api {
        Api::Anthropic => {
            let mut content: Vec<Value> = Vec::new();
            if !text.is_empty() {
                content.push(json!({"type": "text", "text": text}));
            }
            let stop = if calls.is_empty() { "end_turn" } else { "tool_use" };
            content.extend(
                calls
                    .into_iter()
                    .zip(ids)
                    .map(|((name, input), id)| json!({"type": "tool_use", "id": id, "name": name, "input": input})),
            );
            json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": script.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": script.cached_input_tokens,
                    "output_tokens": script.output_tokens
                }
            })
        }
        Api::OpenAi => {
            let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
            let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
            if !calls.is_empty() {
                let calls: Vec<Value> = calls
                    .into_iter()
                    .zip(ids.map(|id| id.replace("toolu_01", "call_")))
                    .map(|((name, arguments), id)| {
                        json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments.to_string()}})
                    })
                    .collect();
                message["tool_calls"] = Value::Array(calls);
            }
            json!({
                "id": "chatcmpl-7f3a",
                "object": "chat.completion",
                "created": 1_795_000_000,
                "model": model,
                "system_fingerprint": "fp_44709d6fcb",
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": script.input_tokens + script.cached_input_tokens,
                    "completion_tokens": script.output_tokens,
                    "total_tokens": script.input_tokens + script.cached_input_tokens + script.output_tokens,
                    "prompt_tokens_details": {"cached_tokens": script.cached_input_tokens}
                }
            })
        }
    }
}

/// The Messages stream, as (before the text, one event per piece, after the text).
fn anthropic_events(model: &str, script: &Script) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut start = json!({
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": script.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": script.cached_input_tokens,
                "output_tokens": 1
            }
        }
    });
    let mut head = vec![
        sse(Some("message_start"), &start),
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse(Some("ping"), &json!({"type": "ping"})),
    ];
    if !script.usage {
        start["message"].as_object_mut().expect("an object").remove("usage");
        head[0] = sse(Some("message_start"), &start);
    }
    let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": script.output_tokens}});
    if !script.usage {
        delta.as_object_mut().expect("an object").remove("usage");
    }
    if !script.end_marker {
        delta["delta"] = json!({"stop_sequence": null});
    }
    let pieces = script
        .pieces
        .iter()
        .map(|text| {
            sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            )
        })
        .collect();
    let tail = vec![
        sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0})),
        sse(Some("message_delta"), &delta),
        sse(Some("message_stop"), &json!({"type": "message_stop"})),
    ];
    (head, pieces, tail)
}

/// The chat completions stream with `include_usage`, as (before, pieces, after).
fn openai_events(model: &str, script: &Script) -> (Vec<String>, Vec<String>, Vec<String>) {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-7f3a",
            "object": "chat.completion.chunk",
            "created": 1_795_000_000,
            "model": model,
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        })
    };
    let head = vec![sse(None, &chunk(json!({"role": "assistant", "content": ""}), Value::Null))];
    let pieces = script.pieces.iter().map(|text| sse(None, &chunk(json!({"content": text}), Value::Null))).collect();
    let usage = json!({
        "id": "chatcmpl-7f3a",
        "object": "chat.completion.chunk",
        "created": 1_795_000_000,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": script.input_tokens + script.cached_input_tokens,
            "completion_tokens": script.output_tokens,
            "total_tokens": script.input_tokens + script.cached_input_tokens + script.output_tokens,
            "prompt_tokens_details": {"cached_tokens": script.cached_input_tokens}
        }
    });
    let finish = if script.end_marker { json!("stop") } else { Value::Null };
    let mut tail = vec![sse(None, &chunk(json!({}), finish))];
    if script.usage {
        tail.push(sse(None, &usage));
    }
    tail.push("data: [DONE]\n\n".to_owned());
    (head, pieces, tail)
}
