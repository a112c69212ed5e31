//! Anthropic's Messages API: `POST /v1/messages`, streamed as server-sent events
//! (`message_start`, `content_block_start`, `content_block_delta`..., `content_block_stop`,
//! `message_delta` with the stop reason and usage, `message_stop`), or one `message`.

use serde_json::{Value, json};

use super::{Chat, Finish, Kind, Refusal, Stop};
use crate::domain::{ChatMessage, ChatRole};

pub(super) fn parse(body: &Value) -> Result<Chat, Refusal> {
    super::refuse_tools(body, "tools")?;
    let Some(messages) = body["messages"].as_array() else {
        return Err(Refusal::invalid("messages: Field required"));
    };
    let mut chat = Chat { model: super::required_model(body)?, ..Chat::default() };
    chat.max_tokens = match super::u32_field(body, "max_tokens")? {
        Some(n) if n > 0 => n,
        _ => return Err(Refusal::invalid("max_tokens: Field required (a whole number above 0)")),
    };
    chat.system = super::content_text(&body["system"], "system")?;
    for (i, message) in messages.iter().enumerate() {
        let role = match message["role"].as_str() {
            Some("user") => ChatRole::User,
            Some("assistant") => ChatRole::Assistant,
            other => {
                return Err(Refusal::invalid(format!("messages.{i}.role: {other:?} is not user or assistant")));
            }
        };
        let content = message["content"].as_array().map(|parts| {
            parts.iter().find_map(|p| match p["type"].as_str() {
                Some("tool_use" | "tool_result") => Some(p["type"].as_str().unwrap_or_default().to_owned()),
                _ => None,
            })
        });
        if let Some(Some(kind)) = content {
            return Err(Refusal::invalid(format!(
                "messages.{i}.content: {kind} blocks: tool use is not served by this gateway yet"
            )));
        }
        let text = super::content_text(&message["content"], &format!("messages.{i}.content"))?;
        chat.messages.push(ChatMessage { role, content: text });
    }
    if chat.messages.is_empty() {
        return Err(Refusal::invalid("messages: at least one message is required"));
    }
    chat.temperature = super::temperature(&body["temperature"], "temperature")?;
    chat.stop = super::stop_list(&body["stop_sequences"], "stop_sequences")?;
    chat.stream = body["stream"].as_bool().unwrap_or(false);
    Ok(chat)
}

pub(super) fn error(refusal: &Refusal) -> Value {
    let kind = match refusal.kind {
        Kind::Invalid => "invalid_request_error",
        Kind::Unauthenticated => "authentication_error",
        Kind::Forbidden => "permission_error",
        Kind::NotFound => "not_found_error",
        Kind::RateLimited => "rate_limit_error",
        Kind::Unavailable => "overloaded_error",
        Kind::Upstream | Kind::Timeout | Kind::Internal => "api_error",
    };
    json!({ "type": "error", "error": { "type": kind, "message": refusal.message } })
}

fn stop_reason(stop: Stop) -> &'static str {
    match stop {
        Stop::End => "end_turn",
        Stop::Length => "max_tokens",
        Stop::Sequence => "stop_sequence",
    }
}

/// The events that open a stream: the message, then its one text block.
pub(super) fn head(id: &str, model: &str) -> Vec<(&'static str, Value)> {
    vec![
        (
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": null, "stop_sequence": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 },
                },
            }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
    ]
}

pub(super) fn piece(text: &str) -> (&'static str, Value) {
    (
        "content_block_delta",
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } }),
    )
}

/// The events that close a stream. The input tokens are known only now: `message_delta`'s
/// usage carries them too.
pub(super) fn end(finish: &Finish) -> Vec<(&'static str, Value)> {
    vec![
        ("content_block_stop", json!({ "type": "content_block_stop", "index": 0 })),
        (
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason(finish.stop), "stop_sequence": null },
                "usage": { "input_tokens": finish.input_tokens, "output_tokens": finish.output_tokens },
            }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ]
}

pub(super) fn whole(id: &str, text: String, finish: &Finish) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": finish.model,
        "content": [{ "type": "text", "text": text }],
        "stop_reason": stop_reason(finish.stop),
        "stop_sequence": null,
        "usage": { "input_tokens": finish.input_tokens, "output_tokens": finish.output_tokens },
    })
}

/// `GET /v1/models` as Anthropic's clients read it.
pub(super) fn models(names: &[String]) -> Value {
    let data: Vec<Value> = names
        .iter()
        .map(|name| json!({ "type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z" }))
        .collect();
    json!({ "data": data, "has_more": false, "first_id": names.first(), "last_id": names.last() })
}
