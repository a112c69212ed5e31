//! Ollama's API: `POST /api/chat` and `POST /api/generate`, streamed (the default) as one JSON
//! object per line ending with `"done": true` and the counts, or one object; `GET /api/tags`,
//! `/api/ps` and `/api/version` (in `models`).

use serde_json::{Value, json};

use super::{Chat, Finish, Refusal, Stop};
use crate::domain::{ChatMessage, ChatRole, ToolCall};

/// The options both endpoints share: `format`, `options`, `keep_alive`, `stream`.
fn common(body: &Value, chat: &mut Chat) -> Result<(), Refusal> {
    chat.model = super::required_model(body)?;
    chat.stream = body["stream"].as_bool().unwrap_or(true);
    // `"json"` or a JSON schema: either way, one JSON object.
    chat.json = matches!(&body["format"], Value::String(f) if f == "json") || body["format"].is_object();
    let options = &body["options"];
    chat.max_tokens = match &options["num_predict"] {
        Value::Null => 0,
        // -1: until the model stops.
        n if n.as_i64().is_some_and(|n| n < 0) => 0,
        _ => super::u32_field(options, "num_predict")?.unwrap_or(0),
    };
    chat.temperature = super::temperature(&options["temperature"], "options.temperature")?;
    chat.stop = super::stop_list(&options["stop"], "options.stop")?;
    chat.keep_alive = match &body["keep_alive"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => return Err(Refusal::invalid("keep_alive must be a duration (\"5m\") or a number of seconds")),
    };
    Ok(())
}

pub(super) fn parse_chat(body: &Value) -> Result<Chat, Refusal> {
    let mut chat = Chat::default();
    common(body, &mut chat)?;
    let Some(messages) = body["messages"].as_array() else {
        return Err(Refusal::invalid("messages is required"));
    };
    let mut system = Vec::new();
    // Ollama's calls have no ids: they are numbered, and its tool turns answer them in order
    // (or by `tool_name`).
    let mut numbered = 0;
    let mut unanswered: Vec<ToolCall> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        if message["images"].as_array().is_some_and(|images| !images.is_empty()) {
            return Err(Refusal::invalid(format!("messages[{i}].images: images are not served by this gateway")));
        }
        let content = message["content"].as_str().unwrap_or_default().to_owned();
        let role = match message["role"].as_str() {
            Some("system") => {
                system.push(content);
                continue;
            }
            Some("user") => ChatRole::User,
            Some("assistant") => {
                let mut turn = ChatMessage::new(ChatRole::Assistant, content);
                for (j, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
                    let function = &call["function"];
                    numbered += 1;
                    let id = call["id"].as_str().map_or_else(|| format!("call_{numbered}"), str::to_owned);
                    let field = format!("messages[{i}].tool_calls[{j}].function.arguments");
                    turn.tool_calls.push(ToolCall {
                        id,
                        name: function["name"].as_str().unwrap_or_default().to_owned(),
                        arguments: super::arguments_text(&function["arguments"], &field)?,
                    });
                }
                unanswered = turn.tool_calls.clone();
                chat.messages.push(turn);
                continue;
            }
            Some("tool") => {
                let named = message["tool_name"].as_str().and_then(|n| unanswered.iter().position(|c| c.name == n));
                let Some(at) = named.or((!unanswered.is_empty()).then_some(0)) else {
                    return Err(Refusal::invalid(format!("messages[{i}]: a tool result with no call before it")));
                };
                let call = unanswered.remove(at);
                chat.messages.push(super::tool_answer(call.id, content));
                continue;
            }
            other => {
                return Err(Refusal::invalid(format!(
                    "messages[{i}].role: {other:?} is not system, user, assistant or tool"
                )));
            }
        };
        chat.messages.push(ChatMessage::new(role, content));
    }
    if chat.messages.is_empty() {
        return Err(Refusal::invalid("messages: at least one user message is required"));
    }
    chat.system = system.join("\n\n");
    chat.tools = super::function_tools(body)?;
    Ok(chat)
}

pub(super) fn parse_generate(body: &Value) -> Result<Chat, Refusal> {
    let mut chat = Chat { generate: true, ..Chat::default() };
    common(body, &mut chat)?;
    if body["images"].as_array().is_some_and(|images| !images.is_empty()) {
        return Err(Refusal::invalid("images are not served by this gateway"));
    }
    let prompt = body["prompt"].as_str().unwrap_or_default();
    if prompt.is_empty() {
        return Err(Refusal::invalid(
            "prompt is required (loading a model with an empty prompt is not served by this gateway: the scheduler loads models where they are needed)",
        ));
    }
    chat.system = body["system"].as_str().unwrap_or_default().to_owned();
    chat.messages.push(ChatMessage::new(ChatRole::User, prompt.to_owned()));
    Ok(chat)
}

pub(super) fn error(refusal: &Refusal) -> Value {
    json!({ "error": refusal.message })
}

/// An RFC 3339 time with nanoseconds, as Ollama writes `created_at`.
pub(super) fn created_at(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

pub(super) fn piece(model: &str, created_at: &str, generate: bool, text: &str) -> Value {
    if generate {
        json!({ "model": model, "created_at": created_at, "response": text, "done": false })
    } else {
        json!({
            "model": model, "created_at": created_at,
            "message": { "role": "assistant", "content": text }, "done": false,
        })
    }
}

/// The last line of a stream (`text` empty) or the whole answer: `done`, why, and the counts.
pub(super) fn end(created_at: &str, generate: bool, text: String, finish: &Finish) -> Value {
    let mut last = if generate {
        json!({ "model": finish.model, "created_at": created_at, "response": text })
    } else {
        json!({ "model": finish.model, "created_at": created_at, "message": { "role": "assistant", "content": text } })
    };
    if !finish.tool_calls.is_empty() && !generate {
        let calls: Vec<Value> = finish
            .tool_calls
            .iter()
            .map(|c| {
                let arguments = serde_json::from_str::<Value>(&c.arguments).unwrap_or_else(|_| json!({}));
                json!({ "function": { "name": c.name, "arguments": arguments } })
            })
            .collect();
        last["message"]["tool_calls"] = Value::Array(calls);
    }
    let ns = |ms: u64| ms.saturating_mul(1_000_000);
    let fields = json!({
        "done": true,
        "done_reason": match finish.stop { Stop::Length => "length", _ => "stop" },
        "total_duration": ns(finish.duration_ms),
        "load_duration": ns(finish.load_ms.unwrap_or(0)),
        "prompt_eval_count": finish.input_tokens,
        "eval_count": finish.output_tokens,
    });
    if let (Some(last), Value::Object(fields)) = (last.as_object_mut(), fields) {
        last.extend(fields);
    }
    last
}
