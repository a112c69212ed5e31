//! Streaming chat against the three kinds of provider: Ollama's `/api/chat` (NDJSON), the
//! Anthropic Messages API (SSE) and OpenAI-compatible chat completions (SSE).
//!
//! Each provider has a pure, incremental parser ([`OllamaStream`], [`AnthropicStream`],
//! [`OpenAiStream`]) that takes the response body in whatever pieces the network delivers and
//! yields [`Delta`]s; [`stream`] drives one request through it. The parsers are tested with the
//! exact bytes the servers send (`../shared/REFERENCE.md`), including an error after HTTP 200.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

pub use agentcom_types::domain::FailureReason;

mod error;
pub use self::error::Error;
use self::error::cut_short;

/// Which API an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Ollama,
    Anthropic,
    OpenAi,
}

impl Provider {
    /// The name in usage records and OpenTelemetry's `gen_ai.provider.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Ollama => "ollama",
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
        }
    }
}

/// The Anthropic API version requests pin (it accepts `temperature`).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// `user`, `assistant` (or `system` for providers that take it in the list).
    pub role: String,
    pub content: String,
}

/// One chat completion to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub model: String,
    pub system: String,
    pub messages: Vec<Message>,
    /// 0: the provider's default (Anthropic requires one: 1,024 is sent).
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub stop: Vec<String>,
    /// Ask for a JSON object.
    pub json: bool,
    /// Ollama only: how long the model stays loaded (`"10m"`, `"-1"`).
    pub keep_alive: Option<String>,
}

/// The default `max_tokens` sent to Anthropic, which requires one.
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 1024;

impl Request {
    /// The request body for `provider`, streaming.
    pub fn body(&self, provider: Provider) -> Value {
        let mut messages: Vec<Value> = Vec::new();
        if provider != Provider::Anthropic && !self.system.is_empty() {
            messages.push(json!({ "role": "system", "content": self.system }));
        }
        messages.extend(self.messages.iter().map(|m| json!({ "role": m.role, "content": m.content })));
        match provider {
            Provider::Ollama => {
                let mut options = serde_json::Map::new();
                if self.max_tokens > 0 {
                    options.insert("num_predict".into(), json!(self.max_tokens));
                }
                if let Some(t) = self.temperature {
                    options.insert("temperature".into(), json!(t));
                }
                if !self.stop.is_empty() {
                    options.insert("stop".into(), json!(self.stop));
                }
                let mut body = json!({ "model": self.model, "messages": messages, "stream": true, "options": options });
                if self.json {
                    body["format"] = json!("json");
                }
                if let Some(keep_alive) = &self.keep_alive {
                    body["keep_alive"] = crate::keep_alive_json(keep_alive);
                }
                body
            }
            Provider::Anthropic => {
                let max_tokens = if self.max_tokens > 0 { self.max_tokens } else { ANTHROPIC_DEFAULT_MAX_TOKENS };
                let mut body =
                    json!({ "model": self.model, "max_tokens": max_tokens, "messages": messages, "stream": true });
                if !self.system.is_empty() {
                    body["system"] = json!(self.system);
                }
                if let Some(t) = self.temperature {
                    body["temperature"] = json!(t);
                }
                if !self.stop.is_empty() {
                    body["stop_sequences"] = json!(self.stop);
                }
                body
            }
            Provider::OpenAi => {
                let mut body = json!({
                    "model": self.model,
                    "messages": messages,
                    "stream": true,
                    "stream_options": { "include_usage": true },
                });
                if self.max_tokens > 0 {
                    body["max_tokens"] = json!(self.max_tokens);
                }
                if let Some(t) = self.temperature {
                    body["temperature"] = json!(t);
                }
                if !self.stop.is_empty() {
                    body["stop"] = json!(self.stop);
                }
                if self.json {
                    body["response_format"] = json!({ "type": "json_object" });
                }
                body
            }
        }
    }
}

/// What the provider counted. Fields it does not report stay 0 or `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// The model that answered, as the provider names it.
    pub model: String,
    /// Input tokens, cached ones excluded.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens read from (or written to) the provider's prompt cache.
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    /// Ollama: loading the model, and generating the output.
    pub load_ns: Option<u64>,
    pub eval_ns: Option<u64>,
    /// Why generation stopped (`stop`, `length`, `end_turn`, `max_tokens`, ...).
    pub stop_reason: String,
}

/// What a stream yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Text(String),
    /// The stream ended normally, with the final counts.
    Done(Counts),
}

/// Splits a body into lines, across the pieces it arrives in.
#[derive(Default, Debug)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    fn feed<'a>(&'a mut self, bytes: &[u8]) -> impl Iterator<Item = String> + 'a {
        self.pending.extend_from_slice(bytes);
        std::iter::from_fn(move || {
            let at = self.pending.iter().position(|&b| b == b'\n')?;
            let line: Vec<u8> = self.pending.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line[..at]).trim_end_matches('\r').to_owned();
            Some(line)
        })
    }

    /// What is left without a newline at the end of the body.
    fn rest(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let text = String::from_utf8_lossy(&rest).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }
}

/// Ollama's `/api/chat` stream: one JSON object per line; the last has `done: true` and the
/// timings; an `{"error": ...}` line ends it (also after HTTP 200).
#[derive(Default, Debug)]
pub struct OllamaStream {
    lines: Lines,
    done: bool,
}

#[derive(Deserialize)]
struct OllamaChunk {
    #[serde(default)]
    model: String,
    #[serde(default)]
    message: Option<OllamaMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: String,
    #[serde(default)]
    load_duration: u64,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    #[serde(default)]
    eval_duration: u64,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct OllamaMessage {
    #[serde(default)]
    content: String,
}

impl OllamaStream {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Delta>, Error> {
        let lines: Vec<String> = self.lines.feed(bytes).collect();
        let mut out = Vec::new();
        for line in lines {
            self.line(&line, &mut out)?;
        }
        Ok(out)
    }

    /// The body ended: a last line without a newline counts; no `done` is an error.
    pub fn finish(&mut self) -> Result<Vec<Delta>, Error> {
        let mut out = Vec::new();
        if let Some(line) = self.lines.rest() {
            self.line(&line, &mut out).map_err(cut_short)?;
        }
        if !self.done {
            return Err(Error::Truncated("ollama: the stream ended before its last message (done: true)".into()));
        }
        Ok(out)
    }

    fn line(&mut self, line: &str, out: &mut Vec<Delta>) -> Result<(), Error> {
        if line.trim().is_empty() || self.done {
            return Ok(());
        }
        let chunk: OllamaChunk = serde_json::from_str(line)
            .map_err(|err| Error::Protocol(format!("ollama sent a line that is not a chat chunk: {err}")))?;
        if let Some(message) = chunk.error {
            return Err(Error::Provider {
                provider: "ollama",
                status: None,
                kind: String::new(),
                message,
                retry_after: None,
            });
        }
        if let Some(message) = chunk.message
            && !message.content.is_empty()
        {
            out.push(Delta::Text(message.content));
        }
        if chunk.done {
            self.done = true;
            out.push(Delta::Done(Counts {
                model: chunk.model,
                input_tokens: chunk.prompt_eval_count,
                output_tokens: chunk.eval_count,
                load_ns: Some(chunk.load_duration),
                eval_ns: Some(chunk.eval_duration),
                stop_reason: chunk.done_reason,
                ..Counts::default()
            }));
        }
        Ok(())
    }
}

/// Server-sent events: `event:` and `data:` lines, an empty line ends an event.
#[derive(Default, Debug)]
struct Sse {
    lines: Lines,
    event: String,
    data: String,
}

impl Sse {
    /// Complete events in `bytes`: (event name, data).
    fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        let lines: Vec<String> = self.lines.feed(bytes).collect();
        let mut events = Vec::new();
        for line in lines {
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    events.push((std::mem::take(&mut self.event), std::mem::take(&mut self.data)));
                }
            } else if let Some(name) = line.strip_prefix("event:") {
                self.event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(data.strip_prefix(' ').unwrap_or(data));
            }
            // Comments (`:`), `id:` and `retry:` carry nothing here.
        }
        events
    }

    /// An event the body ended in the middle of (no closing empty line).
    fn rest(&mut self) -> Option<(String, String)> {
        if let Some(line) = self.lines.rest() {
            self.feed(format!("{line}\n").as_bytes());
        }
        (!self.data.is_empty()).then(|| (std::mem::take(&mut self.event), std::mem::take(&mut self.data)))
    }
}

/// The Anthropic Messages stream: `message_start`, content blocks with `text_delta`s,
/// `message_delta` (cumulative usage, the stop reason), `message_stop`. `ping` and unknown
/// events are ignored; an `error` event (also after HTTP 200) ends it.
#[derive(Default, Debug)]
pub struct AnthropicStream {
    sse: Sse,
    counts: Counts,
    done: bool,
}

#[derive(Deserialize, Default)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicStream {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Delta>, Error> {
        let events = self.sse.feed(bytes);
        let mut out = Vec::new();
        for (event, data) in events {
            self.event(&event, &data, &mut out)?;
        }
        Ok(out)
    }

    pub fn finish(&mut self) -> Result<Vec<Delta>, Error> {
        let mut out = Vec::new();
        if let Some((event, data)) = self.sse.rest() {
            self.event(&event, &data, &mut out).map_err(cut_short)?;
        }
        if !self.done {
            return Err(Error::Truncated("anthropic: the stream ended before message_stop".into()));
        }
        Ok(out)
    }

    fn usage(&mut self, usage: AnthropicUsage) {
        let counts = &mut self.counts;
        // Counts are cumulative: the latest value of each wins.
        counts.input_tokens = usage.input_tokens.unwrap_or(counts.input_tokens);
        counts.output_tokens = usage.output_tokens.unwrap_or(counts.output_tokens);
        counts.cache_write_tokens = usage.cache_creation_input_tokens.unwrap_or(counts.cache_write_tokens);
        counts.cached_input_tokens = usage.cache_read_input_tokens.unwrap_or(counts.cached_input_tokens);
    }

    fn event(&mut self, event: &str, data: &str, out: &mut Vec<Delta>) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(_) if event == "ping" || data.is_empty() => return Ok(()),
            Err(err) => return Err(Error::Protocol(format!("anthropic sent an event that is not JSON: {err}"))),
        };
        let kind = value["type"].as_str().unwrap_or(event);
        match kind {
            "message_start" => {
                let message = &value["message"];
                self.counts.model = message["model"].as_str().unwrap_or_default().to_owned();
                if let Ok(usage) = serde_json::from_value::<AnthropicUsage>(message["usage"].clone()) {
                    self.usage(usage);
                }
            }
            "content_block_delta" => {
                if value["delta"]["type"] == "text_delta"
                    && let Some(text) = value["delta"]["text"].as_str()
                    && !text.is_empty()
                {
                    out.push(Delta::Text(text.to_owned()));
                }
            }
            "message_delta" => {
                if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                    self.counts.stop_reason = reason.to_owned();
                }
                if let Ok(usage) = serde_json::from_value::<AnthropicUsage>(value["usage"].clone()) {
                    self.usage(usage);
                }
            }
            "message_stop" => {
                if self.counts.stop_reason.is_empty() {
                    return Err(Error::Truncated("anthropic: message_stop came without a stop_reason".into()));
                }
                self.done = true;
                out.push(Delta::Done(std::mem::take(&mut self.counts)));
            }
            "error" => {
                let error = &value["error"];
                return Err(Error::Provider {
                    provider: "anthropic",
                    status: None,
                    kind: error["type"].as_str().unwrap_or_default().to_owned(),
                    message: error["message"].as_str().unwrap_or("an error event with no message").to_owned(),
                    retry_after: None,
                });
            }
            _ => {} // ping, content_block_start/stop, and whatever comes later.
        }
        Ok(())
    }
}

/// An OpenAI-compatible chat completions stream: `data: {chunk}` events ending with
/// `data: [DONE]`; with `include_usage` the last chunk has the usage (and `choices: []`, or
/// `null` from some servers). A reply is whole only when a choice gave its `finish_reason`:
/// llama.cpp's server ends an interrupted generation with `[DONE]` and none.
#[derive(Default, Debug)]
pub struct OpenAiStream {
    sse: Sse,
    counts: Counts,
    done: bool,
}

impl OpenAiStream {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Delta>, Error> {
        let events = self.sse.feed(bytes);
        let mut out = Vec::new();
        for (_, data) in events {
            self.data(&data, &mut out)?;
        }
        Ok(out)
    }

    pub fn finish(&mut self) -> Result<Vec<Delta>, Error> {
        let mut out = Vec::new();
        if let Some((_, data)) = self.sse.rest() {
            self.data(&data, &mut out).map_err(cut_short)?;
        }
        if !self.done {
            // Some servers end at the finish_reason without a [DONE]: the reply is whole.
            if self.counts.stop_reason.is_empty() {
                return Err(Error::Truncated(
                    "openai: the stream ended before [DONE] and without a finish_reason".into(),
                ));
            }
            self.done = true;
            out.push(Delta::Done(std::mem::take(&mut self.counts)));
        }
        Ok(out)
    }

    fn data(&mut self, data: &str, out: &mut Vec<Delta>) -> Result<(), Error> {
        if self.done || data.is_empty() {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            if self.counts.stop_reason.is_empty() {
                return Err(Error::Truncated(
                    "openai: [DONE] came without a finish_reason (the server cut the reply short)".into(),
                ));
            }
            self.done = true;
            out.push(Delta::Done(std::mem::take(&mut self.counts)));
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|err| Error::Protocol(format!("openai sent an event that is not JSON: {err}")))?;
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            return Err(Error::Provider {
                provider: "openai",
                status: None,
                kind: error["type"].as_str().unwrap_or_default().to_owned(),
                message: error["message"].as_str().unwrap_or("an error with no message").to_owned(),
                retry_after: None,
            });
        }
        if let Some(model) = value["model"].as_str()
            && self.counts.model.is_empty()
        {
            self.counts.model = model.to_owned();
        }
        for choice in value["choices"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let Some(text) = choice["delta"]["content"].as_str()
                && !text.is_empty()
            {
                out.push(Delta::Text(text.to_owned()));
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.counts.stop_reason = reason.to_owned();
            }
        }
        let usage = &value["usage"];
        if usage.is_object() {
            let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
            self.counts.input_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0).saturating_sub(cached);
            self.counts.cached_input_tokens = cached;
            self.counts.output_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
        }
        Ok(())
    }
}

/// One of the three parsers, as [`stream`] drives it.
enum Parser {
    Ollama(OllamaStream),
    Anthropic(AnthropicStream),
    OpenAi(OpenAiStream),
}

impl Parser {
    fn new(provider: Provider) -> Parser {
        match provider {
            Provider::Ollama => Parser::Ollama(OllamaStream::default()),
            Provider::Anthropic => Parser::Anthropic(AnthropicStream::default()),
            Provider::OpenAi => Parser::OpenAi(OpenAiStream::default()),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Delta>, Error> {
        match self {
            Parser::Ollama(p) => p.feed(bytes),
            Parser::Anthropic(p) => p.feed(bytes),
            Parser::OpenAi(p) => p.feed(bytes),
        }
    }

    /// Input tokens (cached ones included), when the provider says so before the end (Anthropic,
    /// at `message_start`).
    fn input_so_far(&self) -> Option<u64> {
        match self {
            Parser::Anthropic(p) if !p.counts.model.is_empty() => {
                let c = &p.counts;
                Some(c.input_tokens + c.cached_input_tokens + c.cache_write_tokens)
            }
            _ => None,
        }
    }

    /// What the provider has counted before the end (Anthropic: the input, at `message_start`).
    fn counts_so_far(&self) -> Counts {
        match self {
            Parser::Ollama(_) => Counts::default(),
            Parser::Anthropic(p) => p.counts.clone(),
            Parser::OpenAi(p) => p.counts.clone(),
        }
    }

    fn finish(&mut self) -> Result<Vec<Delta>, Error> {
        match self {
            Parser::Ollama(p) => p.finish(),
            Parser::Anthropic(p) => p.finish(),
            Parser::OpenAi(p) => p.finish(),
        }
    }
}

/// Where a chat goes: the provider, its base URL (`http://127.0.0.1:11434`,
/// `https://api.anthropic.com`, an OpenAI-compatible `.../v1`) and its key, if any.
#[derive(Clone)]
pub struct Target {
    pub provider: Provider,
    pub base_url: String,
    pub api_key: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Target {
    pub(crate) fn url(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        match self.provider {
            Provider::Ollama => format!("{base}/api/chat"),
            Provider::Anthropic => format!("{base}/v1/messages"),
            Provider::OpenAi => format!("{base}/chat/completions"),
        }
    }
}

/// What a finished chat measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub counts: Counts,
    /// From sending the request to the first text.
    pub ttft: Option<Duration>,
    pub elapsed: Duration,
    /// `on_text` stopped the stream before its end; `counts` are what the provider had counted
    /// by then (often only the input, or nothing).
    pub stopped: bool,
}

/// A client for chats: no overall timeout (a generation takes as long as it takes; the caller
/// bounds it), short connects, no proxy, `TCP_NODELAY` so the first token is not held back.
pub fn client() -> reqwest::Client {
    agentcom_process::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .expect("a reqwest client with plain settings builds")
}

/// Runs one streaming chat, calling `on_text` with each piece of text as it arrives and the input
/// tokens if the provider has said by then; `on_text` may stop it (a budget), which closes the
/// connection. Dropping the returned future closes it
/// too, which is how a cancel or a timeout aborts the upstream request.
pub async fn stream(
    client: &reqwest::Client,
    target: &Target,
    request: &Request,
    mut on_text: impl FnMut(&str, Option<u64>) -> ControlFlow<()>,
) -> Result<Finished, Error> {
    let started = Instant::now();
    let provider = target.provider;
    let http = authorized(client.post(target.url()), target).json(&request.body(provider));
    let response = http
        .send()
        .await
        .map_err(|err| Error::Transport(format!("{}: {}", provider.as_str(), crate::describe(&err))))?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        return Err(Error::from_body(provider, status.as_u16(), retry_after, &body));
    }
    let mut parser = Parser::new(provider);
    let mut ttft = None;
    let mut body = response.bytes_stream();
    let mut done = None;
    // Hands text on until `on_text` says stop; `Break` then.
    let mut deliver = |deltas: Vec<Delta>, input: Option<u64>, ttft: &mut Option<Duration>| {
        for delta in deltas {
            match delta {
                Delta::Text(text) => {
                    ttft.get_or_insert_with(|| started.elapsed());
                    on_text(&text, input)?;
                }
                Delta::Done(counts) => done = Some(counts),
            }
        }
        ControlFlow::Continue(())
    };
    let mut stopped = false;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|err| {
            Error::StreamBroken(format!("{}: the stream broke: {}", provider.as_str(), crate::describe(&err)))
        })?;
        let deltas = parser.feed(&piece)?;
        if deliver(deltas, parser.input_so_far(), &mut ttft).is_break() {
            stopped = true;
            break;
        }
    }
    if !stopped {
        let deltas = parser.finish()?;
        stopped = deliver(deltas, parser.input_so_far(), &mut ttft).is_break();
    }
    let counts = match done {
        Some(counts) => counts,
        // Dropping the body closes the connection: the provider stops generating.
        None if stopped => parser.counts_so_far(),
        None => {
            return Err(Error::Truncated(format!("{}: the stream ended without its final message", provider.as_str())));
        }
    };
    Ok(Finished { counts, ttft, elapsed: started.elapsed(), stopped })
}

/// A request with the provider's authentication: Anthropic's key and pinned version, else a
/// bearer token if there is a key.
pub(crate) fn authorized(http: reqwest::RequestBuilder, target: &Target) -> reqwest::RequestBuilder {
    match (target.provider, &target.api_key) {
        (Provider::Anthropic, Some(key)) => {
            http.header("x-api-key", key).header("anthropic-version", ANTHROPIC_VERSION)
        }
        (Provider::Anthropic, None) => http.header("anthropic-version", ANTHROPIC_VERSION),
        (_, Some(key)) => http.bearer_auth(key),
        (_, None) => http,
    }
}

/// A `retry-after` header in seconds, capped at an hour.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

#[cfg(test)]
mod tests;
