//! Why a chat failed ([`Error`]), and reading the providers' error answers: the failure reason
//! an attempt records for each (`truncated`, `stream_broken`, `endpoint_down`,
//! `context_length_exceeded`, `tools_unsupported`), and the context window an error names.

use std::time::Duration;

use serde_json::Value;

use super::{FailureReason, Provider};

/// Why a chat failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The provider said so: an HTTP error status, or an error in the stream after 200.
    #[error("{provider}: {message}")]
    Provider {
        provider: &'static str,
        status: Option<u16>,
        kind: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The request did not get through: the endpoint is down or unreachable.
    #[error("{0}")]
    Transport(String),
    /// The connection broke in the middle of the reply.
    #[error("{0}")]
    StreamBroken(String),
    /// The reply ended cleanly but without its API's end marker (OpenAI's `finish_reason`,
    /// Anthropic's `message_stop` with a `stop_reason`, Ollama's `done: true`): cut short.
    #[error("{0}")]
    Truncated(String),
    /// The server sent what no server of its API sends.
    #[error("{0}")]
    Protocol(String),
}

impl Error {
    /// The provider's error answer (`status`, its body, its `retry-after`).
    pub(crate) fn from_body(provider: Provider, status: u16, retry_after: Option<Duration>, body: &[u8]) -> Error {
        let (kind, message) = error_body(body);
        let message = if message.is_empty() { format!("HTTP {status}") } else { message };
        Error::Provider { provider: provider.as_str(), status: Some(status), kind, message, retry_after }
    }

    /// The failure reason an attempt records for this error, if it is one of the
    /// infrastructure's (others are the provider's own words).
    pub fn reason(&self) -> Option<FailureReason> {
        match self {
            Error::Transport(_) => Some(FailureReason::EndpointDown),
            Error::StreamBroken(_) => Some(FailureReason::StreamBroken),
            Error::Truncated(_) => Some(FailureReason::Truncated),
            Error::Provider { kind, message, .. } if context_exceeded(kind, message) => {
                Some(FailureReason::ContextLengthExceeded)
            }
            Error::Provider { status: Some(400..=499), message, .. } if tools_refused(message) => {
                Some(FailureReason::ToolsUnsupported)
            }
            Error::Provider { .. } | Error::Protocol(_) => None,
        }
    }

    /// The error as an attempt records it: `REASON: detail` when it has a reason.
    pub fn describe(&self) -> String {
        match self.reason() {
            Some(reason) => reason.error(self),
            None => self.to_string(),
        }
    }

    /// The model's context window, when the error says it (llama.cpp: "Requested tokens (2100)
    /// exceed context window of 2048"; OpenAI: "This model's maximum context length is 8192
    /// tokens"; vLLM and llama-server: "... context length of 4096 ...").
    pub fn context_window(&self) -> Option<u64> {
        let Error::Provider { message, .. } = self else { return None };
        let lower = message.to_ascii_lowercase();
        ["context window of", "maximum context length is", "context length of", "n_ctx", "context size"]
            .iter()
            .find_map(|marker| {
                let at = lower.find(marker)? + marker.len();
                let digits: String = lower[at..]
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok().filter(|&n| n > 0)
            })
    }

    /// Worth retrying after a pause: Anthropic's 429, 500 and 529 (`overloaded_error`), and
    /// 503 from a full Ollama queue.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Provider { status: Some(status), .. } => matches!(status, 429 | 500 | 503 | 529),
            Error::Provider { kind, .. } => kind == "overloaded_error" || kind == "rate_limit_error",
            _ => false,
        }
    }
}

/// What the body ended in the middle of: a line or event that does not parse was cut short.
pub(super) fn cut_short(err: Error) -> Error {
    match err {
        Error::Protocol(why) => Error::Truncated(format!("{why} (the body ended in the middle of it)")),
        other => other,
    }
}

/// A provider's error that says the request is longer than the model's context.
fn context_exceeded(kind: &str, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    kind == "context_length_exceeded"
        || kind == "exceed_context_size_error"
        || message.contains("context_length_exceeded")
        || message.contains("exceed context window")
        || message.contains("maximum context length")
        || message.contains("exceeds the available context size")
        || (message.contains("prompt is too long") && message.contains("token"))
}

/// A provider's error that says it does not do tool calling (Ollama: "llama3 does not support
/// tools"; vLLM: `"auto" tool choice requires --enable-auto-tool-choice`).
fn tools_refused(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("does not support tools")
        || message.contains("tool choice requires")
        || message.contains("tools are not supported")
        || message.contains("tool_choice")
}

/// `(error type, message)` from an error body of any of the three providers.
pub(super) fn error_body(body: &[u8]) -> (String, String) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return (String::new(), String::from_utf8_lossy(body).chars().take(300).collect());
    };
    match &value["error"] {
        Value::String(message) => (String::new(), message.clone()),
        error @ Value::Object(_) => (
            error["type"].as_str().unwrap_or_default().to_owned(),
            error["message"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => (String::new(), String::new()),
    }
}
