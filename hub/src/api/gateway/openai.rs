//! OpenAI's chat completions: `POST /v1/chat/completions`, streamed as server-sent events of
//! `chat.completion.chunk`s ending with `data: [DONE]` (a usage chunk before it when asked with
//! `stream_options.include_usage`), or one `chat.completion`.

use serde_json::{Value, json};

use super::{Chat, Finish, Kind, Refusal, Stop};
use crate::domain::{ChatMessage, ChatRole, ToolCall};

pub(super) fn parse(body: &Value) -> Result<Chat, Refusal> {
    if body["functions"].as_array().is_some_and(|f| !f.is_empty()) {
        return Err(Refusal::invalid("functions: the legacy functions are not served; send tools"));
    }
    if body["n"].as_u64().is_some_and(|n| n != 1) {
        return Err(Refusal::invalid("n: this gateway answers with one choice"));
    }
    let Some(messages) = body["messages"].as_array() else {
        return Err(Refusal::invalid("messages is required: a list of messages"));
    };
    let mut chat = Chat { model: super::required_model(body)?, ..Chat::default() };
    let mut system = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}].content");
        let text = super::content_text(&message["content"], &field)?;
        let role = match message["role"].as_str() {
            Some("system" | "developer") => {
                system.push(text);
                continue;
            }
            Some("user") => ChatRole::User,
            Some("assistant") => {
                let mut turn = ChatMessage::new(ChatRole::Assistant, text);
                for (j, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
                    let field = format!("messages[{i}].tool_calls[{j}]");
                    let function = &call["function"];
                    turn.tool_calls.push(ToolCall {
                        id: call["id"].as_str().unwrap_or_default().to_owned(),
                        name: function["name"].as_str().unwrap_or_default().to_owned(),
                        arguments: super::arguments_text(&function["arguments"], &field)?,
                    });
                }
                chat.messages.push(turn);
                continue;
            }
            Some("tool") => {
                let Some(call_id) = message["tool_call_id"].as_str() else {
                    return Err(Refusal::invalid(format!("messages[{i}].tool_call_id is required")));
                };
                chat.messages.push(super::tool_answer(call_id.to_owned(), text));
                continue;
            }
            Some("function") => {
                return Err(Refusal::invalid(format!("messages[{i}]: legacy function results are not served")));
            }
            Some(other) => {
                return Err(Refusal::invalid(format!(
                    "messages[{i}].role: {other:?} is not system, developer, user, assistant or tool"
                )));
            }
            None => return Err(Refusal::invalid(format!("messages[{i}].role is required"))),
        };
        chat.messages.push(ChatMessage::new(role, text));
    }
    if !super::tools_refused(body) {
        chat.tools = super::function_tools(body)?;
    }
    if chat.messages.is_empty() {
        return Err(Refusal::invalid("messages: at least one user message is required"));
    }
    chat.system = system.join("\n\n");
    chat.max_tokens = match super::u32_field(body, "max_completion_tokens")? {
        Some(n) => n,
        None => super::u32_field(body, "max_tokens")?.unwrap_or(0),
    };
    chat.temperature = super::temperature(&body["temperature"], "temperature")?;
    chat.stop = super::stop_list(&body["stop"], "stop")?;
    chat.json = matches!(body["response_format"]["type"].as_str(), Some("json_object" | "json_schema"));
    chat.stream = body["stream"].as_bool().unwrap_or(false);
    chat.usage_chunk = chat.stream && body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    Ok(chat)
}

pub(super) fn error(refusal: &Refusal) -> Value {
    let (kind, code) = match refusal.kind {
        Kind::Invalid => ("invalid_request_error", Value::Null),
        Kind::Unauthenticated => ("invalid_request_error", json!("invalid_api_key")),
        Kind::Forbidden => ("invalid_request_error", json!("permission_denied")),
        Kind::NotFound => ("invalid_request_error", json!("model_not_found")),
        Kind::RateLimited => ("rate_limit_error", json!("rate_limit_exceeded")),
        Kind::Unavailable | Kind::Upstream | Kind::Timeout | Kind::Internal => ("server_error", Value::Null),
    };
    json!({ "error": { "message": refusal.message, "type": kind, "param": null, "code": code } })
}

fn finish_reason(stop: Stop) -> &'static str {
    match stop {
        Stop::End | Stop::Sequence => "stop",
        Stop::Length => "length",
        Stop::ToolUse => "tool_calls",
    }
}

/// Calls as OpenAI writes them: arguments as JSON text; in a stream, each with its index.
fn tool_calls(calls: &[ToolCall], indexed: bool) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut call =
                json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } });
            if indexed {
                call["index"] = json!(i);
            }
            call
        })
        .collect();
    Value::Array(calls)
}

fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.input_tokens,
        "completion_tokens": finish.output_tokens,
        "total_tokens": finish.input_tokens + finish.output_tokens,
    })
}

fn chunk(id: &str, created: u64, model: &str, choices: Value) -> Value {
    json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices })
}

/// The first chunk: the assistant's role.
pub(super) fn head(id: &str, created: u64, model: &str) -> Value {
    chunk(
        id,
        created,
        model,
        json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]),
    )
}

pub(super) fn piece(id: &str, created: u64, model: &str, text: &str) -> Value {
    chunk(id, created, model, json!([{ "index": 0, "delta": { "content": text }, "finish_reason": null }]))
}

/// The last chunks: the calls, the finish reason, then the usage if asked for.
pub(super) fn end(id: &str, created: u64, finish: &Finish, usage_chunk: bool) -> Vec<Value> {
    let mut chunks = Vec::new();
    if !finish.tool_calls.is_empty() {
        let delta = json!({ "tool_calls": tool_calls(&finish.tool_calls, true) });
        chunks.push(chunk(id, created, &finish.model, json!([{ "index": 0, "delta": delta, "finish_reason": null }])));
    }
    chunks.push(chunk(
        id,
        created,
        &finish.model,
        json!([{ "index": 0, "delta": {}, "finish_reason": finish_reason(finish.stop) }]),
    ));
    if usage_chunk {
        let mut last = chunk(id, created, &finish.model, json!([]));
        last["usage"] = usage(finish);
        chunks.push(last);
    }
    chunks
}

pub(super) fn whole(id: &str, created: u64, text: String, finish: &Finish) -> Value {
    let mut message = json!({ "role": "assistant", "content": text });
    if !finish.tool_calls.is_empty() {
        if message["content"].as_str().is_none_or(str::is_empty) {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = tool_calls(&finish.tool_calls, false);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": finish.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(finish.stop),
        }],
        "usage": usage(finish),
    })
}

/// `GET /v1/models`.
pub(super) fn models(names: &[String]) -> Value {
    let data: Vec<Value> = names
        .iter()
        .map(|name| json!({ "id": name, "object": "model", "created": 0, "owned_by": "agentcom" }))
        .collect();
    json!({ "object": "list", "data": data })
}
