//! LLM work that offers tools, or carries a conversation with tool calls in it (the gateway's
//! requests with `tools`): one turn on the endpoint's native tool calling
//! (`agentcom_llm::tools`), not streamed. The reply's text is the output and its calls go back in
//! `Outcome::tool_calls`, for the hub to render in the caller's API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcom_llm::chat;
use agentcom_llm::tools::{self, Answer, Call, Conversation, Entry, Tool};
use agentcom_types::domain::{ChatRole, Exit, LlmWork, Outcome, Stream, ToolCall, Usage};
use serde_json::{Value, json};

use super::llm::{Choice, MAX_RETRIES, retry_pause};
use crate::job::Sink;

/// Whether `work` needs a turn with tools rather than a streamed chat.
pub(super) fn wanted(work: &LlmWork) -> bool {
    !work.tools.is_empty() || work.messages.iter().any(|m| m.role == ChatRole::Tool || !m.tool_calls.is_empty())
}

/// The JSON a tool's schema or a call's arguments hold: an object (validated at submit).
fn object(json: &str) -> Value {
    serde_json::from_str::<Value>(json).ok().filter(Value::is_object).unwrap_or_else(|| json!({}))
}

/// `work`'s conversation in the provider-neutral shape the tool turns take: tool turns that
/// follow one another are the answers to the assistant's calls before them.
pub(super) fn conversation(work: &LlmWork, model: &str) -> Conversation {
    let mut entries: Vec<Entry> = Vec::new();
    let mut calls_by_id: Vec<(String, String)> = Vec::new();
    for message in work.turns() {
        match message.role {
            ChatRole::User => entries.push(Entry::User(message.content)),
            ChatRole::Assistant => {
                let calls: Vec<Call> = message
                    .tool_calls
                    .iter()
                    .map(|c| Call { id: c.id.clone(), name: c.name.clone(), arguments: object(&c.arguments) })
                    .collect();
                calls_by_id.extend(calls.iter().map(|c| (c.id.clone(), c.name.clone())));
                entries.push(Entry::Assistant { text: message.content, calls });
            }
            ChatRole::Tool => {
                let name = calls_by_id
                    .iter()
                    .find(|(id, _)| *id == message.tool_call_id)
                    .map(|(_, name)| name.clone())
                    .unwrap_or_default();
                let answer = Answer { call_id: message.tool_call_id, name, content: message.content, is_error: false };
                match entries.last_mut() {
                    Some(Entry::Answers(answers)) => answers.push(answer),
                    _ => entries.push(Entry::Answers(vec![answer])),
                }
            }
        }
    }
    Conversation {
        model: model.to_owned(),
        system: work.system.clone(),
        entries,
        tools: work
            .tools
            .iter()
            .map(|t| Tool {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: object(&t.parameters),
            })
            .collect(),
        max_tokens: work.max_tokens,
    }
}

/// One turn, retried while the provider says it is busy.
pub(super) async fn run(
    client: &reqwest::Client,
    target: &chat::Target,
    work: &LlmWork,
    choice: &Choice,
    sink: Arc<dyn Sink>,
    timeout: Option<Duration>,
) -> Outcome {
    let started = Instant::now();
    sink.started(0);
    let conversation = conversation(work, &choice.model);
    let limit = timeout.unwrap_or(Duration::from_secs(600));
    let mut retries = 0;
    let reply = loop {
        match tools::turn(client, target, &conversation, limit.saturating_sub(started.elapsed())).await {
            Err(err) if err.is_transient() && retries < MAX_RETRIES => {
                retries += 1;
                let pause = retry_pause(&err, retries);
                sink.progress(true, &format!("{err}; retrying in {} ms", pause.as_millis()));
                tokio::time::sleep(pause).await;
            }
            reply => break reply,
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let reply = match reply {
        Ok(reply) => reply,
        Err(err) => return Outcome { duration_ms, error: Some(err.describe()), ..Outcome::empty() },
    };
    if !reply.text.is_empty() {
        sink.output(Stream::Stdout, 0, reply.text.as_bytes());
    }
    let stop_reason = match (reply.calls.is_empty(), reply.truncated) {
        (false, _) => "tool_calls",
        (true, true) => "length",
        (true, false) => "stop",
    };
    let usage = Usage {
        provider: target.provider.as_str().to_owned(),
        endpoint_id: choice.endpoint_id.clone(),
        model: if reply.model.is_empty() { choice.model.clone() } else { reply.model.clone() },
        input_tokens: reply.input_tokens,
        output_tokens: reply.output_tokens,
        cached_input_tokens: reply.cached_input_tokens,
        cache_write_tokens: reply.cache_write_tokens,
        ttft_ms: Some(duration_ms),
        output_tokens_per_s: None,
        load_ms: None,
        cost_micros: None,
        estimated: false,
        stop_reason: stop_reason.to_owned(),
    };
    let tool_calls = reply
        .calls
        .into_iter()
        .map(|c| ToolCall { id: c.id, name: c.name, arguments: c.arguments.to_string() })
        .collect();
    Outcome {
        exit: Exit::Code(0),
        duration_ms,
        stdout_total_bytes: reply.text.len() as u64,
        stdout: reply.text.into_bytes(),
        usage: Some(usage),
        tool_calls,
        ..Outcome::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcom_types::domain::{ChatMessage, ToolSpec};

    #[test]
    fn tool_turns_become_the_answers_to_the_calls_before_them() {
        let mut work = LlmWork::prompt("");
        work.system = "be brief".into();
        work.tools = vec![ToolSpec {
            name: "get_weather".into(),
            description: "the weather in a city".into(),
            parameters: r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
        }];
        let mut asked = ChatMessage::new(ChatRole::Assistant, "");
        asked.tool_calls = vec![
            ToolCall { id: "c1".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
            ToolCall { id: "c2".into(), name: "get_weather".into(), arguments: r#"{"city":"Oslo"}"#.into() },
        ];
        let answer =
            |id: &str, text: &str| ChatMessage { tool_call_id: id.into(), ..ChatMessage::new(ChatRole::Tool, text) };
        work.messages =
            vec![ChatMessage::new(ChatRole::User, "weather?"), asked, answer("c1", "sunny"), answer("c2", "snow")];
        assert!(wanted(&work));
        let conversation = conversation(&work, "m");
        assert_eq!(conversation.tools[0].parameters["properties"]["city"]["type"], "string");
        assert_eq!(conversation.entries.len(), 3);
        let Entry::Answers(answers) = &conversation.entries[2] else { panic!("{:?}", conversation.entries) };
        assert_eq!(
            answers.iter().map(|a| (a.call_id.as_str(), a.name.as_str(), a.content.as_str())).collect::<Vec<_>>(),
            [("c1", "get_weather", "sunny"), ("c2", "get_weather", "snow")]
        );
        let Entry::Assistant { calls, .. } = &conversation.entries[1] else { panic!() };
        assert_eq!(calls[1].arguments, json!({"city": "Oslo"}));
        assert!(!wanted(&LlmWork::prompt("hi")));
    }
}
