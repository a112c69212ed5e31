//! An Ollama protocol double: `/api/version`, `/api/tags` and `/api/ps` with the exact JSON
//! shapes Ollama sends, models that can be loaded and unloaded, and failure on demand; and
//! `POST /api/chat` streaming NDJSON chunks as Ollama does (a scripted reply, its timings, a
//! load time for a cold model, an error line after HTTP 200 on demand, or when the last turn
//! is "fail"); and `POST /api/generate` without a prompt, Ollama's preload, answered as Ollama
//! does once the model is loaded (its load time when cold).
//! It counts the checks it serves, so tests can reason in check cycles rather than seconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// A model the double has "downloaded".
#[derive(Clone, Debug)]
pub struct FakeModel {
    pub name: String,
    pub size: u64,
    pub family: String,
    pub parameter_size: String,
    pub quantization_level: String,
    /// Bytes in VRAM once loaded; `None` while cold.
    pub loaded_vram: Option<u64>,
}

impl FakeModel {
    pub fn new(name: &str, size: u64, family: &str, parameter_size: &str) -> FakeModel {
        FakeModel {
            name: name.to_owned(),
            size,
            family: family.to_owned(),
            parameter_size: parameter_size.to_owned(),
            quantization_level: "Q4_K_M".to_owned(),
            loaded_vram: None,
        }
    }
}

/// What `/api/chat` answers.
#[derive(Clone, Debug)]
pub struct ChatScript {
    /// The reply, one chunk per piece.
    pub pieces: Vec<String>,
    pub prompt_eval_count: u64,
    /// Before the first chunk (after any load).
    pub first_piece_after: std::time::Duration,
    pub between_pieces: std::time::Duration,
    /// How long loading a cold model takes (it is warm afterwards).
    pub load_time: std::time::Duration,
    /// Ends with `{"error": ...}` after this many pieces instead of the final chunk.
    pub fail_after: Option<usize>,
    /// The body ends after the pieces, without the `done: true` chunk (a cut stream).
    pub no_done: bool,
    /// The last chunk leaves out its counts (`prompt_eval_count`, `eval_count`).
    pub no_counts: bool,
}

impl Default for ChatScript {
    fn default() -> ChatScript {
        ChatScript {
            pieces: vec!["Hello".into(), ", ".into(), "world".into()],
            prompt_eval_count: 26,
            first_piece_after: std::time::Duration::from_millis(5),
            between_pieces: std::time::Duration::from_millis(2),
            load_time: std::time::Duration::from_millis(50),
            fail_after: None,
            no_done: false,
            no_counts: false,
        }
    }
}

#[derive(Default)]
struct Inner {
    models: Vec<FakeModel>,
    failing: bool,
    script: ChatScript,
    /// Bodies of the chat requests received, oldest first.
    chats: Vec<Value>,
    /// When each chat arrived, by the content of its last turn.
    arrivals: HashMap<String, std::time::Instant>,
    /// Bodies of the preloads received, oldest first.
    preloads: Vec<Value>,
    /// Replies to chats asked with `"stream": false`, in order (an agent's turns).
    turns: std::collections::VecDeque<Turn>,
}

/// One scripted reply to a non-streaming chat: text, or calls of the tools the request offered,
/// as Ollama sends them (`message.tool_calls[].function.{name, arguments}`, arguments an object).
#[derive(Clone, Debug)]
pub enum Turn {
    Text(String),
    ToolCalls(Vec<(String, Value)>),
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    /// `/api/ps` requests served (one per check of a prober).
    ps_requests: Arc<AtomicU64>,
    /// Chat streams whose client went away before the end.
    abandoned_chats: Arc<AtomicU64>,
}

pub struct OllamaDouble {
    pub url: String,
    pub addr: SocketAddr,
    shared: Shared,
    server: JoinHandle<()>,
}

impl OllamaDouble {
    /// Listens on `127.0.0.1:0` with `models`, all cold.
    pub async fn start(models: Vec<FakeModel>) -> OllamaDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the Ollama double");
        let addr = listener.local_addr().expect("local addr");
        let shared = Shared::default();
        shared.inner.lock().expect("lock").models = models;
        let router = Router::new()
            .route("/api/version", get(version))
            .route("/api/tags", get(tags))
            .route("/api/ps", get(ps))
            .route("/api/chat", post(chat))
            .route("/api/generate", post(generate))
            .with_state(shared.clone());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true); // As Ollama (Go) does.
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        OllamaDouble { url: format!("http://{addr}"), addr, shared, server }
    }

    /// Loads a model into "VRAM" (warm), as a request or a preload would.
    pub fn load(&self, name: &str, vram: u64) {
        let mut inner = self.shared.inner.lock().expect("lock");
        let model = inner.models.iter_mut().find(|m| m.name == name).expect("a model the double has");
        model.loaded_vram = Some(vram);
    }

    /// Unloads a model (cold), as `keep_alive: 0` would.
    pub fn unload(&self, name: &str) {
        let mut inner = self.shared.inner.lock().expect("lock");
        if let Some(model) = inner.models.iter_mut().find(|m| m.name == name) {
            model.loaded_vram = None;
        }
    }

    /// While failing, every endpoint answers 500 `{"error": ...}`, as Ollama does when it breaks.
    pub fn set_failing(&self, failing: bool) {
        self.shared.inner.lock().expect("lock").failing = failing;
    }

    /// How many `/api/ps` requests it has served: one per check.
    pub fn checks(&self) -> u64 {
        self.shared.ps_requests.load(Ordering::SeqCst)
    }

    /// What `/api/chat` answers from now on.
    pub fn script(&self, script: ChatScript) {
        self.shared.inner.lock().expect("lock").script = script;
    }

    /// The chat requests received, oldest first.
    /// When the chat whose last turn was `content` arrived.
    pub fn arrived(&self, content: &str) -> Option<std::time::Instant> {
        self.shared.inner.lock().expect("lock").arrivals.get(content).copied()
    }

    /// Queues replies, answered in order: for non-streaming chats (an agent's turns), and for
    /// streamed chats while the next one is text (streamed a word at a time).
    pub fn turns(&self, turns: Vec<Turn>) {
        self.shared.inner.lock().expect("lock").turns.extend(turns);
    }

    /// The preloads received (`/api/generate` bodies), oldest first.
    pub fn preloads(&self) -> Vec<Value> {
        self.shared.inner.lock().expect("lock").preloads.clone()
    }

    /// Whether a model is loaded now.
    pub fn is_loaded(&self, name: &str) -> bool {
        self.shared.inner.lock().expect("lock").models.iter().any(|m| m.name == name && m.loaded_vram.is_some())
    }

    pub fn chats(&self) -> Vec<Value> {
        self.shared.inner.lock().expect("lock").chats.clone()
    }

    /// Chat streams the client closed before their end (a cancel, a timeout).
    pub fn abandoned_chats(&self) -> u64 {
        self.shared.abandoned_chats.load(Ordering::SeqCst)
    }
}

impl Drop for OllamaDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const DIGEST: &str = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72";

fn failure() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": "llama runner process has terminated: exit status 2" })))
        .into_response()
}

fn details(m: &FakeModel) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.family,
        "families": [m.family],
        "parameter_size": m.parameter_size,
        "quantization_level": m.quantization_level,
    })
}

async fn version(State(shared): State<Shared>) -> Response {
    if shared.inner.lock().expect("lock").failing {
        return failure();
    }
    Json(json!({ "version": "0.12.6" })).into_response()
}

async fn tags(State(shared): State<Shared>) -> Response {
    let inner = shared.inner.lock().expect("lock");
    if inner.failing {
        return failure();
    }
    let models: Vec<Value> = inner
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "model": m.name,
                "modified_at": "2025-10-02T09:13:44.529353872+02:00",
                "size": m.size,
                "digest": DIGEST,
                "details": details(m),
            })
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}

async fn ps(State(shared): State<Shared>) -> Response {
    shared.ps_requests.fetch_add(1, Ordering::SeqCst);
    let inner = shared.inner.lock().expect("lock");
    if inner.failing {
        return failure();
    }
    let models: Vec<Value> = inner
        .models
        .iter()
        .filter_map(|m| {
            let vram = m.loaded_vram?;
            Some(json!({
                "name": m.name,
                "model": m.name,
                "size": m.size + 1_000_000_000,
                "digest": DIGEST,
                "details": details(m),
                "expires_at": "2026-11-21T10:20:31.83753-07:00",
                "size_vram": vram,
                "context_length": 4096,
            }))
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// `POST /api/generate` with no prompt: a preload. Loads the model (taking the script's load
/// time when it is cold) and answers as Ollama does, `done_reason: "load"`. Generating is not
/// what the double is for: a prompt is refused.
async fn generate(State(shared): State<Shared>, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let (cold, load_time) = {
        let mut inner = shared.inner.lock().expect("lock");
        if inner.failing {
            return failure();
        }
        if body["prompt"].as_str().is_some_and(|p| !p.is_empty()) {
            let error = json!({ "error": "the Ollama double answers /api/generate only to preload a model" });
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
        inner.preloads.push(body.clone());
        let load_time = inner.script.load_time;
        let Some(found) = inner.models.iter().find(|m| m.name == model) else {
            let error = json!({ "error": format!("model '{model}' not found") });
            return (StatusCode::NOT_FOUND, Json(error)).into_response();
        };
        (found.loaded_vram.is_none(), load_time)
    };
    if cold {
        tokio::time::sleep(load_time).await;
        let mut inner = shared.inner.lock().expect("lock");
        if let Some(m) = inner.models.iter_mut().find(|m| m.name == model) {
            m.loaded_vram = Some(m.size);
        }
    }
    let answer = json!({
        "model": model,
        "created_at": "2025-10-02T10:00:00.123456789Z",
        "response": "",
        "done": true,
        "done_reason": "load",
    });
    Json(answer).into_response()
}

/// Counts a stream as abandoned unless it was read to its end.
struct EndGuard {
    finished: bool,
    abandoned: Arc<AtomicU64>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn chat_chunk(model: &str, content: &str) -> Value {
    json!({
        "model": model,
        "created_at": "2025-10-02T10:00:00.123456789Z",
        "message": { "role": "assistant", "content": content },
        "done": false,
    })
}

async fn chat(State(shared): State<Shared>, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let (script, cold) = {
        let mut inner = shared.inner.lock().expect("lock");
        inner.chats.push(body.clone());
        if let Some(last) = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()) {
            inner.arrivals.insert(last.to_owned(), std::time::Instant::now());
        }
        if inner.failing {
            return failure();
        }
        let mut script = inner.script.clone();
        // A conversation whose last turn is "fail" ends with an error line, whatever the script:
        // for clients that cannot change the script between calls.
        if body["messages"].as_array().and_then(|m| m.last()).is_some_and(|m| m["content"] == "fail") {
            script.fail_after = Some(1);
        }
        let Some(found) = inner.models.iter_mut().find(|m| m.name == model) else {
            let error = json!({ "error": format!("model \"{model}\" not found, try pulling it first") });
            return (StatusCode::NOT_FOUND, Json(error)).into_response();
        };
        let cold = found.loaded_vram.is_none();
        if body["stream"] == false {
            found.loaded_vram.get_or_insert(found.size);
            let turn = inner.turns.pop_front().unwrap_or_else(|| Turn::Text(script.pieces.concat()));
            return Json(turn_reply(&model, turn, script.prompt_eval_count)).into_response();
        }
        if let Some(Turn::Text(_)) = inner.turns.front()
            && let Some(Turn::Text(text)) = inner.turns.pop_front()
        {
            script.pieces = text.split_inclusive(' ').map(str::to_owned).collect();
        }
        (script, cold)
    };
    let shared_after = shared.clone();
    let stream = async_stream(move |tx| async move {
        let mut guard = EndGuard { finished: false, abandoned: shared_after.abandoned_chats.clone() };
        let started = std::time::Instant::now();
        let mut load = std::time::Duration::ZERO;
        if cold {
            tokio::time::sleep(script.load_time).await;
            load = script.load_time;
            let mut inner = shared_after.inner.lock().expect("lock");
            if let Some(m) = inner.models.iter_mut().find(|m| m.name == model) {
                m.loaded_vram = Some(m.size);
            }
        }
        // A zero sleep still waits for the timer's next tick (a millisecond): skip it.
        if !script.first_piece_after.is_zero() {
            tokio::time::sleep(script.first_piece_after).await;
        }
        let generating = std::time::Instant::now();
        for (n, piece) in script.pieces.iter().enumerate() {
            if script.fail_after == Some(n) {
                let error = json!({ "error": "an error was encountered while running the model: unexpected EOF" });
                let _ = tx.send(format!("{error}\n")).await;
                guard.finished = true;
                return;
            }
            if n > 0 && !script.between_pieces.is_zero() {
                tokio::time::sleep(script.between_pieces).await;
            }
            if tx.send(format!("{}\n", chat_chunk(&model, piece))).await.is_err() {
                return; // The client went away.
            }
        }
        if script.no_done {
            guard.finished = true;
            return; // The body ends without its last message.
        }
        let mut last = json!({
            "model": model,
            "created_at": "2025-10-02T10:00:01.123456789Z",
            "message": { "role": "assistant", "content": "" },
            "done": true,
            "done_reason": "stop",
            "total_duration": started.elapsed().as_nanos() as u64,
            "load_duration": load.as_nanos() as u64,
            "prompt_eval_count": script.prompt_eval_count,
            "prompt_eval_duration": 1_000_000u64,
            "eval_count": script.pieces.len(),
            "eval_duration": generating.elapsed().as_nanos() as u64,
        });
        if script.no_counts {
            for field in ["prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"] {
                last.as_object_mut().expect("an object").remove(field);
            }
        }
        if tx.send(format!("{last}\n")).await.is_ok() {
            guard.finished = true;
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(stream))
        .expect("a chat response builds")
}

/// The whole reply to a non-streaming chat, as Ollama sends it.
fn turn_reply(model: &str, turn: Turn, prompt_eval_count: u64) -> Value {
    let (content, tool_calls, eval_count) = match turn {
        Turn::Text(text) => {
            let words = text.split_whitespace().count().max(1);
            (text, Vec::new(), words)
        }
        Turn::ToolCalls(calls) => {
            let n = calls.len();
            let calls: Vec<Value> = calls
                .into_iter()
                .map(|(name, arguments)| json!({ "function": { "name": name, "arguments": arguments } }))
                .collect();
            (String::new(), calls, 10 * n)
        }
    };
    let mut message = json!({ "role": "assistant", "content": content });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "model": model,
        "created_at": "2025-10-02T10:00:01.123456789Z",
        "message": message,
        "done": true,
        "done_reason": "stop",
        "total_duration": 2_000_000u64,
        "load_duration": 0u64,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": 1_000_000u64,
        "eval_count": eval_count,
        "eval_duration": 1_000_000u64,
    })
}

/// A body stream fed by `produce` through a channel; a closed body (the client went away)
/// makes the producer's sends fail.
fn async_stream<F, Fut>(produce: F) -> impl futures_util::Stream<Item = Result<String, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}
