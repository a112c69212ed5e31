//! Chat turns with tools, on each provider's native tool calling: Ollama's `tools` and
//! `message.tool_calls`, the Anthropic Messages API's `tools` and `tool_use`/`tool_result`
//! blocks, and OpenAI-compatible `tools`, `tool_calls` and `tool` messages.
//!
//! A [`Conversation`] is kept in one provider-neutral shape and rendered for the provider at
//! each turn ([`Conversation::body`]); a reply is read back by [`parse_reply`]. Both are pure
//! and tested with the exact JSON the servers take and send. Turns are not streamed: an agent
//! acts on whole replies. [`turn`] sends one.

use std::time::Duration;

use serde_json::{Value, json};

use crate::chat::{ANTHROPIC_DEFAULT_MAX_TOKENS, Error, Provider, Target};

/// A tool the model may call: its name, what it does, and its arguments as a JSON schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// One call the model asked for. Ollama gives calls no id: they are numbered here.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub id: String,
    pub name: String,
    /// An object; a string that is not JSON (a model's mistake) is kept as `{"_raw": text}`.
    pub arguments: Value,
}

/// What one tool call gave back.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub call_id: String,
    pub name: String,
    pub content: String,
    pub is_error: bool,
}

/// One entry of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    User(String),
    Assistant {
        text: String,
        calls: Vec<Call>,
    },
    /// The answers to the calls of the assistant entry before.
    Answers(Vec<Answer>),
}

/// A conversation with tools, as the agent keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub model: String,
    pub system: String,
    pub entries: Vec<Entry>,
    pub tools: Vec<Tool>,
    /// Most output tokens a turn may take (0: the provider's default; Anthropic requires one).
    pub max_tokens: u32,
}

/// One reply: what the model said, the calls it asked for (none: it is done), and its counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    pub calls: Vec<Call>,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    /// The model stopped at its output limit, not by choice.
    pub truncated: bool,
}

impl Conversation {
    /// The request body for `provider`, not streamed.
    pub fn body(&self, provider: Provider) -> Value {
        match provider {
            Provider::Ollama => json!({
                "model": self.model,
                "messages": self.chat_messages(provider),
                "tools": self.function_tools(),
                "stream": false,
                "options": if self.max_tokens > 0 { json!({ "num_predict": self.max_tokens }) } else { json!({}) },
            }),
            Provider::OpenAi => {
                let mut body = json!({
                    "model": self.model,
                    "messages": self.chat_messages(provider),
                    "tools": self.function_tools(),
                    "stream": false,
                });
                if self.max_tokens > 0 {
                    body["max_tokens"] = json!(self.max_tokens);
                }
                // Servers differ on what a missing tool_choice means: llama.cpp's takes it as
                // "none", and the model then never sees the tools.
                if !self.tools.is_empty() {
                    body["tool_choice"] = json!("auto");
                }
                body
            }
            Provider::Anthropic => {
                let tools: Vec<Value> = self
                    .tools
                    .iter()
                    .map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.parameters }))
                    .collect();
                let max_tokens = if self.max_tokens > 0 { self.max_tokens } else { ANTHROPIC_DEFAULT_MAX_TOKENS };
                let mut body = json!({
                    "model": self.model,
                    "max_tokens": max_tokens,
                    "messages": self.anthropic_messages(),
                    "tools": tools,
                });
                if !self.system.is_empty() {
                    body["system"] = json!(self.system);
                }
                body
            }
        }
    }

    /// Tools as Ollama and OpenAI-compatible servers take them.
    fn function_tools(&self) -> Vec<Value> {
        self.tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": { "name": t.name, "description": t.description, "parameters": t.parameters },
                })
            })
            .collect()
    }

    /// Ollama's and OpenAI's message list: the system prompt first, a `tool` message per answer.
    fn chat_messages(&self, provider: Provider) -> Vec<Value> {
        let mut messages = Vec::with_capacity(self.entries.len() + 1);
        if !self.system.is_empty() {
            messages.push(json!({ "role": "system", "content": self.system }));
        }
        for entry in &self.entries {
            match entry {
                Entry::User(text) => messages.push(json!({ "role": "user", "content": text })),
                Entry::Assistant { text, calls } => {
                    let mut message = json!({ "role": "assistant", "content": text });
                    if !calls.is_empty() {
                        let calls: Vec<Value> = calls
                            .iter()
                            .map(|c| match provider {
                                // Ollama takes arguments as an object, and no id.
                                Provider::Ollama => json!({ "function": { "name": c.name, "arguments": c.arguments } }),
                                // OpenAI's are a JSON string.
                                _ => json!({
                                    "id": c.id,
                                    "type": "function",
                                    "function": { "name": c.name, "arguments": c.arguments.to_string() },
                                }),
                            })
                            .collect();
                        message["tool_calls"] = Value::Array(calls);
                    }
                    messages.push(message);
                }
                Entry::Answers(answers) => {
                    for a in answers {
                        messages.push(match provider {
                            Provider::Ollama => json!({ "role": "tool", "tool_name": a.name, "content": a.content }),
                            _ => json!({ "role": "tool", "tool_call_id": a.call_id, "content": a.content }),
                        });
                    }
                }
            }
        }
        messages
    }

    /// The Messages API's list: content blocks, answers as `tool_result` blocks of a user turn.
    fn anthropic_messages(&self) -> Vec<Value> {
        self.entries
            .iter()
            .map(|entry| match entry {
                Entry::User(text) => json!({ "role": "user", "content": text }),
                Entry::Assistant { text, calls } => {
                    let mut blocks = Vec::with_capacity(calls.len() + 1);
                    if !text.is_empty() {
                        blocks.push(json!({ "type": "text", "text": text }));
                    }
                    blocks.extend(
                        calls
                            .iter()
                            .map(|c| json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments })),
                    );
                    json!({ "role": "assistant", "content": blocks })
                }
                Entry::Answers(answers) => {
                    let blocks: Vec<Value> = answers
                        .iter()
                        .map(|a| {
                            let mut block =
                                json!({ "type": "tool_result", "tool_use_id": a.call_id, "content": a.content });
                            if a.is_error {
                                block["is_error"] = json!(true);
                            }
                            block
                        })
                        .collect();
                    json!({ "role": "user", "content": blocks })
                }
            })
            .collect()
    }
}

/// Arguments as sent: an object, or a string holding one (OpenAI; some Ollama builds).
fn arguments(value: &Value) -> Value {
    match value {
        Value::String(text) if text.trim().is_empty() => json!({}),
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => json!({ "_raw": text }),
        },
        Value::Null => json!({}),
        other => other.clone(),
    }
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// `tool_calls` as Ollama and OpenAI-compatible servers send them (`{id?, function: {name,
/// arguments}}`); a call without an id is numbered.
fn function_calls(calls: &Value) -> Result<Vec<Call>, String> {
    calls
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(n, call)| {
            let function = &call["function"];
            let name = function["name"].as_str().ok_or("a tool call without a name")?;
            let id = call["id"].as_str().map_or_else(|| format!("call_{n}"), str::to_owned);
            Ok(Call { id, name: name.to_owned(), arguments: arguments(&function["arguments"]) })
        })
        .collect()
}

/// A whole reply of `provider`, read strictly enough to trust what it calls: a call needs a
/// name, everything else defaults.
pub fn parse_reply(provider: Provider, reply: &Value) -> Result<Reply, String> {
    let model = reply["model"].as_str().unwrap_or_default().to_owned();
    match provider {
        Provider::Ollama => {
            let message = &reply["message"];
            let calls = function_calls(&message["tool_calls"])?;
            Ok(Reply {
                text: message["content"].as_str().unwrap_or_default().to_owned(),
                calls,
                model,
                input_tokens: count(&reply["prompt_eval_count"]),
                output_tokens: count(&reply["eval_count"]),
                truncated: reply["done_reason"] == "length",
                ..Reply::default()
            })
        }
        Provider::OpenAi => {
            let choice = reply["choices"].get(0).ok_or("a reply with no choices")?;
            let message = &choice["message"];
            let calls = function_calls(&message["tool_calls"])?;
            let usage = &reply["usage"];
            let cached = count(&usage["prompt_tokens_details"]["cached_tokens"]);
            Ok(Reply {
                text: message["content"].as_str().unwrap_or_default().to_owned(),
                calls,
                model,
                // OpenAI's prompt count includes the cached part.
                input_tokens: count(&usage["prompt_tokens"]).saturating_sub(cached),
                output_tokens: count(&usage["completion_tokens"]),
                cached_input_tokens: cached,
                truncated: choice["finish_reason"] == "length",
                ..Reply::default()
            })
        }
        Provider::Anthropic => {
            let blocks = reply["content"].as_array().ok_or("a reply with no content")?;
            let mut text = String::new();
            let mut calls = Vec::new();
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
                    Some("tool_use") => {
                        let name = block["name"].as_str().ok_or("a tool_use block without a name")?;
                        let id = block["id"].as_str().ok_or("a tool_use block without an id")?;
                        calls.push(Call {
                            id: id.to_owned(),
                            name: name.to_owned(),
                            arguments: arguments(&block["input"]),
                        });
                    }
                    _ => {} // thinking, and blocks not known yet
                }
            }
            let usage = &reply["usage"];
            Ok(Reply {
                text,
                calls,
                model,
                input_tokens: count(&usage["input_tokens"]),
                output_tokens: count(&usage["output_tokens"]),
                cached_input_tokens: count(&usage["cache_read_input_tokens"]),
                cache_write_tokens: count(&usage["cache_creation_input_tokens"]),
                truncated: reply["stop_reason"] == "max_tokens",
            })
        }
    }
}

/// Sends one turn of `conversation` to `target` and reads the reply, within `timeout`.
/// Errors are [`chat::Error`](crate::chat::Error)s, so a caller can retry the transient ones.
pub async fn turn(
    client: &reqwest::Client,
    target: &Target,
    conversation: &Conversation,
    timeout: Duration,
) -> Result<Reply, Error> {
    let provider = target.provider;
    let http =
        crate::chat::authorized(client.post(target.url()).timeout(timeout), target).json(&conversation.body(provider));
    let transport = |err: reqwest::Error| Error::Transport(format!("{}: {}", provider.as_str(), crate::describe(&err)));
    let response = http.send().await.map_err(transport)?;
    let status = response.status();
    let retry_after = crate::chat::retry_after(response.headers());
    let bytes = response.bytes().await.map_err(|err| {
        Error::StreamBroken(format!("{}: the reply broke off: {}", provider.as_str(), crate::describe(&err)))
    })?;
    let value = serde_json::from_slice::<Value>(&bytes);
    // Ollama can answer 200 with `{"error": ...}`.
    let error_inside = value.as_ref().is_ok_and(|v| v.get("error").is_some_and(|e| !e.is_null()));
    if !status.is_success() || error_inside {
        return Err(Error::from_body(provider, status.as_u16(), retry_after, &bytes));
    }
    let value = value.map_err(|err| Error::Protocol(format!("{}: the reply is not JSON: {err}", provider.as_str())))?;
    parse_reply(provider, &value).map_err(|why| Error::Protocol(format!("{}: {why}", provider.as_str())))
}

#[cfg(test)]
mod tests;
