//! An Ollama protocol double: `/api/version`, `/api/tags` and `/api/ps` with the exact JSON
//! shapes Ollama sends, models that can be loaded and unloaded, and failure on demand.
//! It counts the checks it serves, so tests can reason in check cycles rather than seconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
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

#[derive(Default)]
struct Inner {
    models: Vec<FakeModel>,
    failing: bool,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    /// `/api/ps` requests served (one per check of a prober).
    ps_requests: Arc<AtomicU64>,
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
