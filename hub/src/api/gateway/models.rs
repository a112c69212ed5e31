//! What the fleet serves, from the hub's registry: every healthy endpoint's models, by name
//! (`GET /v1/models`, Ollama's `/api/tags`, and `/api/ps` for those loaded now), and whether a
//! request's model is among them.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Dialect, Kind, Refusal};
use crate::api::http::HttpState;
use crate::fleet::{Endpoint, EndpointKind, Model};

/// The healthy endpoints of the registry.
pub(super) async fn healthy(state: &HttpState) -> Result<Vec<Endpoint>, Refusal> {
    let listing = state.hub.endpoint_listing().await.map_err(|err| Refusal::new(Kind::Unavailable, err.to_string()))?;
    Ok(listing.into_iter().map(|(endpoint, _)| endpoint).filter(|e| e.healthy).collect())
}

/// Every model name served, sorted, each once.
pub(super) fn names(endpoints: &[Endpoint]) -> Vec<String> {
    let mut names: Vec<String> = endpoints.iter().flat_map(|e| e.models.iter().map(|m| m.name.clone())).collect();
    names.sort();
    names.dedup();
    names
}

/// Whether some healthy endpoint serves `model` (the Claude API serves `claude-` models beyond
/// those it lists, as the sidecar's runner knows).
pub(super) fn served(endpoints: &[Endpoint], model: &str) -> bool {
    endpoints.iter().any(|e| e.models.iter().any(|m| m.name == model))
        || (model.starts_with("claude-") && endpoints.iter().any(|e| e.kind == EndpointKind::Anthropic))
}

/// Whether some healthy endpoint that is not a cloud provider serves `model`.
pub(super) fn served_locally(endpoints: &[Endpoint], model: &str) -> bool {
    endpoints.iter().any(|e| !crate::fleet::is_cloud(e) && e.models.iter().any(|m| m.name == model))
}

/// The refusal of a model the fleet does not serve, naming what it does.
pub(super) fn not_served(endpoints: &[Endpoint], model: &str) -> Refusal {
    let names = names(endpoints);
    let offered =
        if names.is_empty() { "none (no healthy endpoint is registered)".to_owned() } else { names.join(", ") };
    Refusal::new(Kind::NotFound, format!("model {model:?} is not served by this fleet; available: {offered}"))
}

pub(super) async fn v1_models(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let dialect = super::dialect_of("/v1/models", &headers).unwrap_or(Dialect::OpenAi);
    match healthy(&state).await {
        Ok(endpoints) => {
            let names = names(&endpoints);
            let body = match dialect {
                Dialect::Anthropic => super::anthropic::models(&names),
                _ => super::openai::models(&names),
            };
            axum::Json(body).into_response()
        }
        Err(refusal) => refusal.into_response(dialect),
    }
}

fn details(model: &Model) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": if model.family.is_empty() { Value::Null } else { json!([model.family]) },
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization,
    })
}

/// Each model once, the first endpoint's description of it winning (and a loaded copy over one
/// that is not, for `/api/ps`).
fn by_name(endpoints: &[Endpoint], loaded_only: bool) -> BTreeMap<&str, &Model> {
    let mut models: BTreeMap<&str, &Model> = BTreeMap::new();
    for model in endpoints.iter().flat_map(|e| e.models.iter()) {
        if loaded_only && !model.loaded {
            continue;
        }
        models.entry(&model.name).or_insert(model);
    }
    models
}

pub(super) async fn tags(State(state): State<HttpState>) -> Response {
    match healthy(&state).await {
        Ok(endpoints) => {
            let models: Vec<Value> = by_name(&endpoints, false)
                .into_values()
                .map(|m| {
                    json!({
                        "name": m.name, "model": m.name, "modified_at": "1970-01-01T00:00:00Z",
                        "size": m.size_bytes, "digest": "", "details": details(m),
                    })
                })
                .collect();
            axum::Json(json!({ "models": models })).into_response()
        }
        Err(refusal) => refusal.into_response(Dialect::Ollama),
    }
}

pub(super) async fn ps(State(state): State<HttpState>) -> Response {
    match healthy(&state).await {
        Ok(endpoints) => {
            let models: Vec<Value> = by_name(&endpoints, true)
                .into_values()
                .map(|m| {
                    json!({
                        "name": m.name, "model": m.name, "size": m.size_bytes, "digest": "", "details": details(m),
                        "expires_at": super::ollama::created_at(m.expires_unix_ms.unwrap_or(0)),
                        "size_vram": m.size_vram_bytes,
                    })
                })
                .collect();
            axum::Json(json!({ "models": models })).into_response()
        }
        Err(refusal) => refusal.into_response(Dialect::Ollama),
    }
}

/// The hub's version: the gateway is no Ollama, and says which build answers.
pub(super) async fn version() -> Response {
    axum::Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}
