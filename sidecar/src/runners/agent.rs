//! Agent work on this sidecar's own LLM endpoints: a tool-calling loop in the task's workspace.
//!
//! The model (on a local Ollama server, through its native tool calling) gets the goal and the
//! workspace tools of [`super::tools`]; each turn it calls tools or answers. Tool calls run in
//! the workspace (paths bound to it, commands in the shell sandbox) and their results go back
//! as `tool` messages. The loop ends when the model answers without calling a tool, and is
//! bounded by its turns, the task's token budget and its time. Each step is a transcript line
//! of the task's output (`[tool] write_file answer.txt`, `[tool result] 12 bytes`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcom_types::domain::{Exit, Outcome, Stream, Usage, Work};
use agentcom_types::fleet::EndpointKind;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Assignment, Runner, Running, Sink, failed_to_start, shell, tools};
use crate::contain;
use agentcom_llm::Endpoint;

/// Turns (model replies) an attempt may take.
pub const MAX_TURNS: usize = 30;
/// One turn may take this long when the task sets no timeout.
const TURN_TIMEOUT: Duration = Duration::from_secs(300);

const SYSTEM: &str = "You are an agent working in a git workspace. Use the tools to read and change \
files and to run commands until the goal is met, then answer with a short summary and no tool \
call. Paths are relative to the workspace; you cannot leave it.";

pub struct AgentLoopRunner {
    pub settings: shell::Settings,
    pub inventory: watch::Receiver<Option<Vec<Endpoint>>>,
    pub client: reqwest::Client,
}

impl Runner for AgentLoopRunner {
    fn capability(&self) -> &'static str {
        "agent"
    }

    fn advertises(&self) -> Vec<String> {
        vec!["agent".to_owned(), "agent-loop".to_owned()]
    }

    fn run(&self, assignment: Assignment, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let (settings, inventory, client) = (self.settings.clone(), self.inventory.clone(), self.client.clone());
        Box::pin(async move {
            let Work::Agent(work) = &assignment.spec.work else {
                return failed_to_start(format!("{} work is not agent work", assignment.spec.work.capability()));
            };
            let Some(root) = assignment.workspace.clone() else {
                return failed_to_start(
                    "agent work needs a repository (work.agent.repository or context.repository)".into(),
                );
            };
            // Native tool calling runs on this sidecar's Ollama servers.
            let endpoints: Vec<Endpoint> = inventory
                .borrow()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.kind == EndpointKind::Ollama)
                .collect();
            let wanted = match (assignment.spec.placement.model.as_str(), assignment.model.as_deref()) {
                ("", Some(model)) => model.to_owned(),
                (named, _) => named.to_owned(),
            };
            let choice = match super::llm::choose(&endpoints, &wanted) {
                Ok(choice) => choice,
                Err(why) => return failed_to_start(format!("the agent loop runs on a local Ollama model: {why}")),
            };
            let limits = &assignment.spec.limits;
            let deadline = limits.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
            let workspace = tools::Workspace {
                root: &root,
                settings: &settings,
                key: &assignment.key,
                limits: contain::Limits { max_memory_bytes: limits.max_memory_bytes, max_pids: limits.max_pids },
                cancel: &cancel,
            };
            let mut transcript = Transcript { sink, text: Vec::new() };
            let mut messages =
                vec![json!({ "role": "system", "content": SYSTEM }), json!({ "role": "user", "content": work.goal })];
            let (mut input, mut output) = (0u64, 0u64);
            let started = Instant::now();
            let mut error = None;
            transcript.line(&format!("[agent] started ({} on {})", choice.model, choice.endpoint_id));
            for turn in 0.. {
                if turn == MAX_TURNS {
                    error = Some(format!("the agent took {MAX_TURNS} turns without finishing"));
                    break;
                }
                if limits.max_tokens.is_some_and(|max| input + output >= max) {
                    error = Some(format!("the agent used its {} tokens", input + output));
                    break;
                }
                let timeout = match deadline {
                    Some(at) if at <= Instant::now() => {
                        error = Some(format!("timed out after {} ms", started.elapsed().as_millis()));
                        break;
                    }
                    Some(at) => at - Instant::now(),
                    None => TURN_TIMEOUT,
                };
                let body = json!({
                    "model": choice.model,
                    "messages": messages,
                    "tools": tools::definitions(),
                    "stream": false,
                });
                let asked = agentcom_llm::ollama_tool_turn(&client, &choice.target_url, &body, timeout);
                let reply = tokio::select! {
                    reply = asked => reply,
                    _ = cancel.cancelled() => {
                        error = Some("cancelled".to_owned());
                        break;
                    }
                };
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(why) => {
                        error = Some(why);
                        break;
                    }
                };
                input += reply.input_tokens;
                output += reply.output_tokens;
                if !reply.content.trim().is_empty() {
                    transcript.line(reply.content.trim());
                }
                if reply.tool_calls.is_empty() {
                    transcript.line(&format!("[agent] done after {} turns", turn + 1));
                    break;
                }
                let calls: Vec<Value> = reply
                    .tool_calls
                    .iter()
                    .map(|(name, arguments)| json!({ "function": { "name": name, "arguments": arguments } }))
                    .collect();
                messages.push(json!({ "role": "assistant", "content": reply.content, "tool_calls": calls }));
                for (name, arguments) in &reply.tool_calls {
                    transcript.line(&format!("[tool] {name} {}", tools::summarize(arguments)));
                    let (ok, result) = tools::run(name, arguments, &workspace).await;
                    let failed = if ok { "" } else { ", an error" };
                    transcript.line(&format!("[tool result] {} bytes{failed}", result.len()));
                    messages.push(json!({ "role": "tool", "tool_name": name, "content": result }));
                }
            }
            let usage = Usage {
                provider: "ollama".to_owned(),
                endpoint_id: choice.endpoint_id.clone(),
                model: choice.model.clone(),
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            };
            let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
            let total = transcript.text.len() as u64;
            let mut stdout = transcript.text;
            stdout.truncate(cap);
            Outcome {
                exit: if error.is_none() { Exit::Code(0) } else { Exit::Unknown },
                duration_ms: started.elapsed().as_millis() as u64,
                stdout,
                stdout_total_bytes: total,
                timed_out: error.as_deref().is_some_and(|e| e.starts_with("timed out")),
                error,
                usage: Some(usage),
                ..Outcome::empty()
            }
        })
    }
}

/// The agent's steps as lines of the task's output.
struct Transcript {
    sink: Arc<dyn Sink>,
    text: Vec<u8>,
}

impl Transcript {
    fn line(&mut self, line: &str) {
        let bytes = format!("{line}\n").into_bytes();
        self.sink.output(Stream::Stdout, self.text.len() as u64, &bytes);
        self.text.extend_from_slice(&bytes);
    }
}
