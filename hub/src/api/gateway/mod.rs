//! The gateway: the fleet as one model endpoint, in the three APIs LLM tools speak: OpenAI's
//! chat completions (`openai`), Anthropic's Messages (`anthropic`) and Ollama's (`ollama`), on
//! the hub's one listener. `docs/gateway.md` is the user's view.
//!
//! A request is read into one provider-neutral [`Chat`], which becomes LLM work: a task in the
//! `interactive` lane, placed by the scheduler like any other (a warm model first, a cold one
//! where it finishes soonest), run by a sidecar against whichever endpoint it has, whatever API
//! that endpoint speaks (the sidecar's `llm` runner). `relay` streams the reply back as it
//! arrives, rendered in the caller's API ([`Render`]), and cancels the task when the caller goes.
//! The prompt and the reply are not stored (`LlmWork::redact`); usage, timing and placement
//! are, on the task.
//!
//! Errors come in each API's own shape and status ([`Refusal::into_response`]), refusals of the
//! authentication layer included (`server::authenticate` asks [`dialect_of`]).

mod aliases;
mod anthropic;
mod keys;
mod models;
mod ollama;
mod openai;
mod relay;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

pub use self::aliases::Aliases;
pub(crate) use self::aliases::{delete as aliases_delete, list as aliases_list, put as aliases_put};
pub use self::keys::Meters;
use super::http::HttpState;
use crate::auth::Caller;
use crate::domain::{ChatMessage, ChatRole, ToolCall, ToolSpec};

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Ollama,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Ollama => "ollama",
        }
    }
}

/// The gateway's API for a request to `path`, if the path is the gateway's. `GET /v1/models` is
/// Anthropic's when the caller sends `anthropic-version` (as Anthropic's clients do), else
/// OpenAI's.
pub fn dialect_of(path: &str, headers: &HeaderMap) -> Option<Dialect> {
    match path {
        "/v1/chat/completions" => Some(Dialect::OpenAi),
        "/v1/models" if headers.contains_key("anthropic-version") => Some(Dialect::Anthropic),
        "/v1/models" => Some(Dialect::OpenAi),
        "/v1/messages" => Some(Dialect::Anthropic),
        "/api/chat" | "/api/generate" | "/api/tags" | "/api/ps" | "/api/version" => Some(Dialect::Ollama),
        _ => None,
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/models", get(models::v1_models))
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        .route("/api/tags", get(models::tags))
        .route("/api/ps", get(models::ps))
        .route("/api/version", get(models::version))
        .with_state(state)
}

/// One chat request, whichever API it came in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chat {
    pub model: String,
    pub system: String,
    pub messages: Vec<ChatMessage>,
    /// 0: the provider's default.
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub stop: Vec<String>,
    /// Ask for one JSON object.
    pub json: bool,
    pub stream: bool,
    /// OpenAI: end the stream with a chunk holding the usage (`stream_options.include_usage`).
    pub usage_chunk: bool,
    /// Ollama: how long the model stays loaded afterwards.
    pub keep_alive: Option<String>,
    /// Ollama's `/api/generate`: the reply is `response`, not a `message`.
    pub generate: bool,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// The caller's trace (a `traceparent` header), which the task's spans join.
    pub trace_parent: Option<crate::domain::TraceParent>,
}

/// Why generation ended, in no API's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The model finished its turn.
    End,
    /// It reached `max_tokens`.
    Length,
    /// It produced one of the stop sequences.
    Sequence,
    /// It called tools (`Finish::tool_calls`).
    ToolUse,
}

impl Stop {
    /// From a provider's own words (`stop`, `end_turn`, `length`, `max_tokens`, `stop_sequence`).
    pub fn of(reason: &str) -> Stop {
        match reason {
            "length" | "max_tokens" => Stop::Length,
            "stop_sequence" => Stop::Sequence,
            "tool_calls" | "tool_use" => Stop::ToolUse,
            _ => Stop::End,
        }
    }
}

/// How a reply ended: what the final chunk or the whole answer says besides the text.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    /// The model that answered.
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub stop: Stop,
    pub duration_ms: u64,
    pub load_ms: Option<u64>,
    /// The tools the reply called.
    pub tool_calls: Vec<ToolCall>,
}

/// A refusal or a failure, shown in the caller's API's error shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub kind: Kind,
    pub message: String,
    /// Seconds, for `retry-after`.
    pub retry_after: Option<u64>,
}

/// What went wrong, which decides the status and each API's error type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    Unauthenticated,
    Forbidden,
    NotFound,
    RateLimited,
    /// The hub cannot take work now (storage behind, shutting down).
    Unavailable,
    /// The model's endpoint failed.
    Upstream,
    Timeout,
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Upstream => StatusCode::BAD_GATEWAY,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Refusal {
    pub fn new(kind: Kind, message: impl Into<String>) -> Refusal {
        Refusal { kind, message: message.into(), retry_after: None }
    }

    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Kind::Invalid, message)
    }

    /// A refusal of the authentication layer, in the gateway's terms.
    pub fn from_api(err: &crate::api::ApiError, retry_after: Option<u64>) -> Refusal {
        use crate::api::ErrorCode;
        let kind = match err.code {
            ErrorCode::Unauthenticated => Kind::Unauthenticated,
            ErrorCode::PermissionDenied => Kind::Forbidden,
            ErrorCode::RateLimited => Kind::RateLimited,
            ErrorCode::InvalidArgument | ErrorCode::PayloadTooLarge => Kind::Invalid,
            ErrorCode::NotFound => Kind::NotFound,
            ErrorCode::ResourceExhausted | ErrorCode::Unavailable => Kind::Unavailable,
            _ => Kind::Internal,
        };
        Refusal { kind, message: err.message.clone(), retry_after }
    }

    /// The error body in `dialect`'s shape.
    pub fn body(&self, dialect: Dialect) -> Value {
        match dialect {
            Dialect::OpenAi => openai::error(self),
            Dialect::Anthropic => anthropic::error(self),
            Dialect::Ollama => ollama::error(self),
        }
    }

    pub fn into_response(self, dialect: Dialect) -> Response {
        let mut response = (self.kind.status(), axum::Json(self.body(dialect))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Seconds since the epoch, for the `created` fields.
fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Reads a JSON body, refusing what is not JSON in the API's words. (A body over the hub's
/// limit, `MAX_BODY_BYTES`, is refused before it is read.)
fn json_body(body: &Bytes) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|err| Refusal::invalid(format!("the request body is not JSON: {err}")))
}

async fn chat(
    state: HttpState,
    dialect: Dialect,
    caller: Option<Caller>,
    (headers, body): (HeaderMap, Bytes),
    parse: fn(&Value) -> Result<Chat, Refusal>,
) -> Response {
    let mut chat = match json_body(&body).and_then(|value| parse(&value)) {
        Ok(chat) => chat,
        Err(refusal) => return refusal.into_response(dialect),
    };
    // An instrumented client's trace; a malformed header is not worth refusing a chat for.
    chat.trace_parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    relay::run(state, dialect, caller, chat).await
}

/// Who asked, as the authentication layer found it.
type Asker = Option<axum::Extension<Caller>>;

async fn openai_chat(State(state): State<HttpState>, caller: Asker, headers: HeaderMap, body: Bytes) -> Response {
    chat(state, Dialect::OpenAi, caller.map(|c| c.0), (headers, body), openai::parse).await
}

async fn anthropic_messages(
    State(state): State<HttpState>,
    caller: Asker,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    chat(state, Dialect::Anthropic, caller.map(|c| c.0), (headers, body), anthropic::parse).await
}

async fn ollama_chat(State(state): State<HttpState>, caller: Asker, headers: HeaderMap, body: Bytes) -> Response {
    chat(state, Dialect::Ollama, caller.map(|c| c.0), (headers, body), ollama::parse_chat).await
}

async fn ollama_generate(State(state): State<HttpState>, caller: Asker, headers: HeaderMap, body: Bytes) -> Response {
    chat(state, Dialect::Ollama, caller.map(|c| c.0), (headers, body), ollama::parse_generate).await
}

/// Text of a message's `content`: a string, or a list of parts of which only `text` parts are
/// taken; other parts are refused.
fn content_text(content: &Value, field: &str) -> Result<String, Refusal> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part["type"].as_str() {
                    Some("text") => text.push_str(part["text"].as_str().unwrap_or_default()),
                    Some(other) => {
                        return Err(Refusal::invalid(format!(
                            "{field}: {other} parts are not supported by this gateway (text only)"
                        )));
                    }
                    None => return Err(Refusal::invalid(format!("{field}: a content part has no type"))),
                }
            }
            Ok(text)
        }
        _ => Err(Refusal::invalid(format!("{field} must be a string or a list of parts"))),
    }
}

/// `stop` as a string or a list of strings.
fn stop_list(value: &Value, field: &str) -> Result<Vec<String>, Refusal> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(one) => Ok(vec![one.clone()]),
        Value::Array(many) => many
            .iter()
            .map(|s| {
                s.as_str().map(str::to_owned).ok_or_else(|| Refusal::invalid(format!("{field} holds a non-string")))
            })
            .collect(),
        _ => Err(Refusal::invalid(format!("{field} must be a string or a list of strings"))),
    }
}

/// A number field that must fit a `u32`, if present.
fn u32_field(body: &Value, field: &str) -> Result<Option<u32>, Refusal> {
    match &body[field] {
        Value::Null => Ok(None),
        value => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Refusal::invalid(format!("{field} must be a whole number from 0 to {}", u32::MAX))),
    }
}

fn temperature(value: &Value, field: &str) -> Result<Option<f32>, Refusal> {
    match value {
        Value::Null => Ok(None),
        value => match value.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Ok(Some(t as f32)),
            _ => Err(Refusal::invalid(format!("{field} must be a number from 0 to 2"))),
        },
    }
}

fn required_model(body: &Value) -> Result<String, Refusal> {
    match body["model"].as_str() {
        Some(model) if !model.trim().is_empty() => Ok(model.trim().to_owned()),
        _ => Err(Refusal::invalid("model is required")),
    }
}

/// Tools in OpenAI's and Ollama's shape: `[{"type": "function", "function": {"name",
/// "description", "parameters"}}]`.
fn function_tools(body: &Value) -> Result<Vec<ToolSpec>, Refusal> {
    let Some(tools) = body["tools"].as_array() else { return Ok(Vec::new()) };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool["type"].as_str().is_some_and(|t| t != "function") {
                return Err(Refusal::invalid(format!("tools[{i}].type: only function tools are served")));
            }
            let function = &tool["function"];
            tool_spec(&function["name"], &function["description"], &function["parameters"], &format!("tools[{i}]"))
        })
        .collect()
}

/// One tool, its schema an object (none: no arguments).
fn tool_spec(name: &Value, description: &Value, schema: &Value, field: &str) -> Result<ToolSpec, Refusal> {
    let name = name
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Refusal::invalid(format!("{field}: a tool needs a name")))?;
    let parameters = match schema {
        Value::Null => serde_json::json!({"type": "object", "properties": {}}),
        Value::Object(_) => schema.clone(),
        _ => return Err(Refusal::invalid(format!("{field}: a tool's schema must be a JSON object"))),
    };
    Ok(ToolSpec {
        name: name.to_owned(),
        description: description.as_str().unwrap_or_default().to_owned(),
        parameters: parameters.to_string(),
    })
}

/// Arguments as a JSON object's text: given as text (OpenAI) or as an object (Anthropic, Ollama).
fn arguments_text(arguments: &Value, field: &str) -> Result<String, Refusal> {
    let object = match arguments {
        Value::Null => serde_json::json!({}),
        Value::String(text) if text.trim().is_empty() => serde_json::json!({}),
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map_err(|_| Refusal::invalid(format!("{field}: the arguments are not JSON")))?,
        other => other.clone(),
    };
    if !object.is_object() {
        return Err(Refusal::invalid(format!("{field}: the arguments must be a JSON object")));
    }
    Ok(object.to_string())
}

/// A tool turn answering `call_id`.
fn tool_answer(call_id: String, content: String) -> ChatMessage {
    ChatMessage { tool_call_id: call_id, ..ChatMessage::new(ChatRole::Tool, content) }
}

/// `tool_choice: "none"` (or `{"type": "none"}`): the tools are not offered.
fn tools_refused(body: &Value) -> bool {
    body["tool_choice"] == "none" || body["tool_choice"]["type"] == "none"
}

#[cfg(test)]
mod tests;
