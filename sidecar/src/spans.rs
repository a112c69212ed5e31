//! The sidecar's spans of a task's trace (see `agentcom_metrics::trace`): `execute` for the
//! attempt, under the hub's `dispatch` span the assignment names; under it, one span per LLM
//! call with the OpenTelemetry GenAI attributes, one per tool an agent runs, and `verify`.
//!
//! The GenAI conventions are still marked development and their names still move: they are
//! written here and nowhere else.
//!
//! In detail:
//!
//! `spans`: the sidecar's spans, under the hub's `dispatch` span its assignment names: `execute`
//! for the attempt (its id goes to the runners in `Assignment::trace`), `chat MODEL` per LLM call
//! with the OpenTelemetry GenAI attributes (the LLM runner, each agent turn, the judge),
//! `execute_tool NAME` per agent tool, and `verify`. The GenAI names live in this module only. The
//! link also runs each attempt inside a `task` tracing span, so its log lines carry `task_id`.

use std::time::SystemTime;

use agentcom_metrics::trace::{self, Kind, Span};
use agentcom_types::domain::{Outcome, TraceParent};

/// `gen_ai.operation.name` values.
pub(crate) const CHAT: &str = "chat";
pub(crate) const EXECUTE_TOOL: &str = "execute_tool";

/// A span under `parent` (the attempt's `execute` span), or nothing when traces are off or the
/// assignment came without a context.
pub(crate) fn child(parent: Option<&TraceParent>, name: impl Into<std::borrow::Cow<'static, str>>) -> Option<Span> {
    let parent = parent.filter(|_| trace::enabled())?;
    Some(Span::new(name, parent.trace_id, Some(parent.span_id), SystemTime::now()))
}

/// An LLM call: `chat MODEL`, kind client, with the request's attributes.
pub(crate) fn llm_call(parent: Option<&TraceParent>, provider: &'static str, model: &str) -> Option<Span> {
    let span = child(parent, format!("{CHAT} {model}"))?;
    Some(
        span.kind(Kind::Client)
            .attr("gen_ai.operation.name", CHAT)
            .attr("gen_ai.provider.name", provider)
            .attr("gen_ai.request.model", model.to_owned()),
    )
}

/// Ends an LLM call's span with what the provider answered: the model, tokens, time to first
/// token, or the error.
pub(crate) fn llm_answered(
    span: Option<Span>,
    model: &str,
    input_tokens: u64,
    output_tokens: u64,
    error: Option<&str>,
) {
    let Some(mut span) = span else { return };
    if !model.is_empty() {
        span.set("gen_ai.response.model", model.to_owned());
    }
    span.set("gen_ai.usage.input_tokens", input_tokens as i64);
    span.set("gen_ai.usage.output_tokens", output_tokens as i64);
    if let Some(error) = error {
        span = span.attr("error.type", error_type(error)).error(agentcom_process::logging::redactor().scrub(error));
    }
    span.end();
}

/// Ends an LLM call's span from the attempt's outcome.
pub(crate) fn llm_finished(span: Option<Span>, outcome: &Outcome) {
    let Some(mut span) = span else { return };
    let usage = outcome.usage.as_ref();
    if let Some(ttft) = usage.and_then(|u| u.ttft_ms) {
        span.set("gen_ai.server.time_to_first_token", ttft as f64 / 1000.0);
    }
    let (model, input, output) = usage.map_or(("", 0, 0), |u| (u.model.as_str(), u.input_tokens, u.output_tokens));
    llm_answered(Some(span), model, input, output, outcome.error.as_deref());
}

/// A short class of an error for `error.type`: the HTTP status when there is one.
fn error_type(error: &str) -> String {
    if error == "cancelled" {
        return "cancelled".into();
    }
    let status =
        error.split(|c: char| !c.is_ascii_digit()).find(|n| n.len() == 3 && (n.starts_with('4') || n.starts_with('5')));
    status.map_or_else(|| "_OTHER".to_owned(), str::to_owned)
}

/// Ends the attempt's `execute` span with how the work ended.
pub(crate) fn executed(span: Option<Span>, outcome: &Outcome) {
    let Some(mut span) = span else { return };
    match outcome.exit {
        agentcom_types::domain::Exit::Code(code) => span.set("process.exit.code", i64::from(code)),
        agentcom_types::domain::Exit::Signal(signal) => span.set("agentcom.exit.signal", i64::from(signal)),
        agentcom_types::domain::Exit::Unknown => {}
    }
    if let Some(report) = &outcome.verification {
        span.set("agentcom.verification.verdict", report.verdict.as_str());
    }
    let failed = match outcome.exit {
        agentcom_types::domain::Exit::Code(0) => outcome.error.clone(),
        _ => Some(outcome.error.clone().unwrap_or_else(|| "the work failed".to_owned())),
    };
    if let Some(why) = failed {
        span = span.error(agentcom_process::logging::redactor().scrub(&why));
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_statuses_or_other() {
        assert_eq!(error_type("the provider answered 429 Too Many Requests"), "429");
        assert_eq!(error_type("HTTP 503: overloaded"), "503");
        assert_eq!(error_type("connection refused (port 11434)"), "_OTHER");
        assert_eq!(error_type("cancelled"), "cancelled");
    }

    #[test]
    fn without_traces_nothing_is_built() {
        let parent = TraceParent { trace_id: [1; 16], span_id: [2; 8], sampled: true };
        assert!(child(Some(&parent), "x").is_none());
        assert!(llm_call(Some(&parent), "ollama", "m").is_none());
    }
}
