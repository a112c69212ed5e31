//! Why an attempt failed, when the work never reached its own end: the words an outcome's
//! `error` begins with (`truncated: openai: the stream ended without a finish_reason`), so a
//! person reads them and the hub decides retries by them.
//!
//! Work that ran and failed (an exit code, a failed check, a budget) has its own reasons; these
//! are the infrastructure's, and the retryable ones are retried by the task's policy like a lost
//! lease, never recorded as success.

use std::fmt;

/// One failure reason of LLM and agent work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The endpoint was down or unreachable before any of the work was done.
    EndpointDown,
    /// The connection broke in the middle of a reply.
    StreamBroken,
    /// The reply ended without its API's end marker: cut short (a server that interrupts a
    /// generation for another request ends the stream early but cleanly).
    Truncated,
    /// The request did not fit the model's context window.
    ContextLengthExceeded,
    /// The server refuses tool calling for this model.
    ToolsUnsupported,
}

impl FailureReason {
    pub const ALL: [FailureReason; 5] = [
        FailureReason::EndpointDown,
        FailureReason::StreamBroken,
        FailureReason::Truncated,
        FailureReason::ContextLengthExceeded,
        FailureReason::ToolsUnsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::EndpointDown => "endpoint_down",
            FailureReason::StreamBroken => "stream_broken",
            FailureReason::Truncated => "truncated",
            FailureReason::ContextLengthExceeded => "context_length_exceeded",
            FailureReason::ToolsUnsupported => "tools_unsupported",
        }
    }

    /// Another attempt may succeed: the endpoint may come back, the stream may run whole. A
    /// request too long for its model, or tools its server refuses, fails the same way again.
    pub fn retryable(self) -> bool {
        matches!(self, FailureReason::EndpointDown | FailureReason::StreamBroken | FailureReason::Truncated)
    }

    /// The reason an outcome's error begins with, if it is one of these.
    pub fn of(error: &str) -> Option<FailureReason> {
        let word = error.split_once(':').map_or(error, |(word, _)| word);
        FailureReason::ALL.into_iter().find(|r| r.as_str() == word)
    }

    /// `REASON: detail`, as an outcome's error.
    pub fn error(self, detail: impl fmt::Display) -> String {
        format!("{}: {detail}", self.as_str())
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_reads_back_from_the_error_it_begins() {
        for reason in FailureReason::ALL {
            assert_eq!(FailureReason::of(&reason.error("openai: no finish_reason")), Some(reason));
            assert_eq!(FailureReason::of(reason.as_str()), Some(reason));
        }
        assert_eq!(FailureReason::of("exit code 3"), None);
        assert_eq!(FailureReason::of("truncatedx: y"), None);
        assert_eq!(FailureReason::of("budget_exceeded: 10 tokens, limit 5"), None);
        let retryable: Vec<_> = FailureReason::ALL.into_iter().filter(|r| r.retryable()).collect();
        assert_eq!(retryable, [FailureReason::EndpointDown, FailureReason::StreamBroken, FailureReason::Truncated]);
    }
}
