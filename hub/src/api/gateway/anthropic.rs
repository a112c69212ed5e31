//! Anthropic's Messages API: `POST /v1/messages`, streamed as server-sent events
//! (`message_start`, `content_block_start`, `content_block_delta`..., `content_block_stop`,
//! `message_delta` with the stop reason and usage, `message_stop`), or one `message`.

use serde_json::{Value, json};

use super::{Chat, Finish, Kind, Refusal, Stop};
use crate::domain::{ChatMessage, ChatRole, ToolCall, ToolSpec};

pub(super) fn parse(body: &Value) -> Result<Chat, Refusal> {
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
        let field = format!("messages.{i}.content");
        let Some(blocks) = message["content"].as_array() else {
            let text = super::content_text(&message["content"], &field)?;
            chat.messages.push(ChatMessage::new(role, text));
            continue;
        };
        // Text blocks make the turn's text; tool_use blocks an assistant's calls; tool_result
        // blocks a user turn's answers, each a tool turn of its own, before any text.
        let (mut text, mut calls, mut answers) = (String::new(), Vec::new(), Vec::new());
        for (j, block) in blocks.iter().enumerate() {
            let field = format!("{field}.{j}");
            match (block["type"].as_str(), role) {
                (Some("text"), _) => text.push_str(block["text"].as_str().unwrap_or_default()),
                (Some("tool_use"), ChatRole::Assistant) => calls.push(ToolCall {
                    id: block["id"].as_str().unwrap_or_default().to_owned(),
                    name: block["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: super::arguments_text(&block["input"], &field)?,
                }),
                (Some("tool_result"), ChatRole::User) => {
                    let content = super::content_text(&block["content"], &format!("{field}.content"))?;
                    let call_id = block["tool_use_id"].as_str().unwrap_or_default().to_owned();
                    let content = if block["is_error"] == true { format!("error: {content}") } else { content };
                    answers.push(super::tool_answer(call_id, content));
                }
                (Some(kind), _) => {
                    return Err(Refusal::invalid(format!(
                        "{field}: {kind} blocks are not served by this gateway in a {} turn",
                        role.as_str()
                    )));
                }
                (None, _) => return Err(Refusal::invalid(format!("{field}: a block has no type"))),
            }
        }
        chat.messages.extend(answers);
        if !text.is_empty() || !calls.is_empty() || role == ChatRole::Assistant {
            chat.messages.push(ChatMessage { tool_calls: calls, ..ChatMessage::new(role, text) });
        }
    }
    if !super::tools_refused(body) {
        chat.tools = anthropic_tools(body)?;
    }
    if chat.messages.is_empty() {
        return Err(Refusal::invalid("messages: at least one message is required"));
    }
    chat.temperature = super::temperature(&body["temperature"], "temperature")?;
    chat.stop = super::stop_list(&body["stop_sequences"], "stop_sequences")?;
    chat.stream = body["stream"].as_bool().unwrap_or(false);
    Ok(chat)
}

/// `[{"name", "description", "input_schema"}]`; the server tools (a `type` such as
/// `web_search_20250305`) run at Anthropic only, and are refused.
fn anthropic_tools(body: &Value) -> Result<Vec<ToolSpec>, Refusal> {
    let Some(tools) = body["tools"].as_array() else { return Ok(Vec::new()) };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool["type"].as_str().is_some_and(|t| t != "custom") {
                return Err(Refusal::invalid(format!("tools.{i}: server tools run at Anthropic only")));
            }
            super::tool_spec(&tool["name"], &tool["description"], &tool["input_schema"], &format!("tools.{i}"))
        })
        .collect()
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
        Stop::ToolUse => "tool_use",
    }
}

/// A call's arguments as the object `input` is.
fn input(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}))
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
    let mut events = vec![("content_block_stop", json!({ "type": "content_block_stop", "index": 0 }))];
    // Each call a block after the text's: its input streamed as one piece of JSON.
    for (i, call) in finish.tool_calls.iter().enumerate() {
        let index = i + 1;
        let block = json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": {} });
        let delta = json!({ "type": "input_json_delta", "partial_json": input(call).to_string() });
        events.push((
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": block }),
        ));
        events.push(("content_block_delta", json!({ "type": "content_block_delta", "index": index, "delta": delta })));
        events.push(("content_block_stop", json!({ "type": "content_block_stop", "index": index })));
    }
    events.extend([
        (
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason(finish.stop), "stop_sequence": null },
                "usage": { "input_tokens": finish.input_tokens, "output_tokens": finish.output_tokens },
            }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ]);
    events
}

pub(super) fn whole(id: &str, text: String, finish: &Finish) -> Value {
    let mut content = Vec::new();
    if !text.is_empty() || finish.tool_calls.is_empty() {
        content.push(json!({ "type": "text", "text": text }));
    }
    content.extend(
        finish.tool_calls.iter().map(|c| json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": input(c) })),
    );
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": finish.model,
        "content": content,
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
