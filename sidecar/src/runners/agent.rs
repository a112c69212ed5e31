//! Agent work on this sidecar's own LLM endpoints: a tool-calling loop in the task's workspace.
//!
//! The model (on a local Ollama server, an OpenAI-compatible server or the Claude API, each
//! through its native tool calling: [`agentcom_llm::tools`]) gets the goal and the workspace
//! tools of [`super::tools`]; each turn it calls tools or answers. Tool calls run in the
//! workspace (paths bound to it, commands in the shell sandbox) and their results go back to it.
//! The loop ends when the model answers without calling a tool, and is bounded by its turns,
//! the task's token and cost budgets and its time. Each tool call is an [`AgentStep`] that
//! streams to the hub as it happens; the model's text is the task's output.
//!
//! The loop keeps to the model's context window ([`context`]): learned from the server where it
//! says (llama.cpp's `/props`, vLLM's `max_model_len`, Ollama's `/api/show`, `--openai-context`),
//! or from an error that names it; each turn asks for no more output than the window leaves, old
//! tool results are trimmed (then old exchanges dropped) before the conversation would outgrow
//! it, and a `context_length_exceeded` answer is met by one trimmed retry of the turn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcom_llm::chat;
use agentcom_llm::tools::{Answer, Conversation, Entry};
use agentcom_types::domain::{AgentStep, Exit, MAX_STEPS, Outcome, Stream, Usage, Work};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{context, failed_to_start, shell, tools};
use crate::contain;
use crate::job::{Attempt, Runner, Running, Sink};
use crate::reports::{self, InFlight};
use agentcom_llm::Endpoint;

/// Turns (model replies) an attempt may take.
pub const MAX_TURNS: usize = 30;
/// One turn may take this long when the task sets no timeout.
const TURN_TIMEOUT: Duration = Duration::from_secs(300);
/// Output tokens one turn may take.
const TURN_MAX_TOKENS: u32 = 4096;

const SYSTEM: &str = "You are an agent working in a git workspace. Use the tools to read and change \
files and to run commands until the goal is met, then answer with a short summary and no tool \
call. Paths are relative to the workspace; you cannot leave it.";

pub struct AgentLoopRunner {
    pub settings: shell::Settings,
    /// The providers and their keys (keys go in request headers only).
    pub providers: reports::Settings,
    pub inventory: watch::Receiver<Option<Vec<Endpoint>>>,
    /// Requests in flight to each endpoint, shared with the model reporter.
    pub in_flight: InFlight,
    pub client: reqwest::Client,
}

impl Runner for AgentLoopRunner {
    fn capability(&self) -> &'static str {
        "agent"
    }

    fn advertises(&self) -> Vec<String> {
        vec!["agent".to_owned(), "agent-loop".to_owned()]
    }

    fn run(&self, attempt: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let (settings, providers) = (self.settings.clone(), self.providers.clone());
        let (mut inventory, client) = (self.inventory.clone(), self.client.clone());
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let Work::Agent(work) = &attempt.assignment.spec.work else {
                return failed_to_start(format!(
                    "{} work is not agent work",
                    attempt.assignment.spec.work.capability()
                ));
            };
            let Some(root) = attempt.workspace.clone() else {
                return failed_to_start(
                    "agent work needs a repository (work.agent.repository or context.repository)".into(),
                );
            };
            let _ = tokio::time::timeout(super::llm::FIRST_INVENTORY, inventory.wait_for(Option::is_some)).await;
            let mut endpoints = inventory.borrow().clone().unwrap_or_default();
            if attempt.assignment.spec.placement.local_only {
                endpoints.retain(|e| !agentcom_types::fleet::is_cloud(e)); // Private work stays here.
            }
            let wanted = match (attempt.assignment.spec.placement.model.as_str(), attempt.assignment.model.as_deref()) {
                ("", Some(model)) => model.to_owned(),
                (named, _) => named.to_owned(),
            };
            let choice = match super::llm::choose(&endpoints, &wanted) {
                Ok(choice) => choice,
                Err(why) => return failed_to_start(format!("the agent loop has no model: {why}")),
            };
            let target = super::llm::target(&providers, &choice);
            let configured =
                providers.openai.as_ref().filter(|o| o.base_url == choice.target_url).and_then(|o| o.context);
            let mut window = match configured {
                Some(tokens) => Some(tokens),
                None => context::window_of(&client, &target, &choice.model, &choice.target_url, &in_flight).await,
            };
            let limits = &attempt.assignment.spec.limits;
            let deadline = limits.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
            let workspace = tools::Workspace {
                root: &root,
                settings: &settings,
                key: &attempt.key,
                limits: contain::Limits { max_memory_bytes: limits.max_memory_bytes, max_pids: limits.max_pids },
                cancel: &cancel,
            };
            let mut transcript = Transcript { sink: sink.clone(), text: Vec::new(), steps: Vec::new() };
            let mut conversation = Conversation {
                model: choice.model.clone(),
                system: SYSTEM.to_owned(),
                entries: vec![Entry::User(work.goal.clone())],
                tools: tools::definitions(),
                max_tokens: TURN_MAX_TOKENS,
            };
            let mut used = Usage {
                provider: choice.provider.as_str().to_owned(),
                endpoint_id: choice.endpoint_id.clone(),
                model: choice.model.clone(),
                ..Usage::default()
            };
            let price = attempt.assignment.price_of(&choice.model);
            let spent = |used: &Usage| {
                let tokens = used.input_tokens + used.output_tokens + used.cached_input_tokens;
                let cost = price.map(|p| p.micros(used.input_tokens, used.output_tokens));
                limits.max_tokens.is_some_and(|max| tokens >= max)
                    || limits.max_cost_micros.zip(cost).is_some_and(|(max, cost)| cost >= max as f64)
            };
            let started = Instant::now();
            let trace = attempt.assignment.trace.as_ref();
            let (mut error, mut budget_exceeded) = (None, false);
            let mut retried_trimmed = false;
            // The server's count of a turn's input over the estimate of it.
            let mut counted_scale = 1.0;
            let mut asked_estimate;
            sink.started(0); // No process: the hub only needs to know the attempt began.
            transcript.line(&format!("[agent] started ({} on {})", choice.model, choice.endpoint_id));
            for turn in 0.. {
                if turn == MAX_TURNS {
                    error = Some(format!("the agent took {MAX_TURNS} turns without finishing"));
                    break;
                }
                if spent(&used) {
                    budget_exceeded = true;
                    break;
                }
                if let Some(window) = window {
                    let trimmed = context::fit(&mut conversation, window, TURN_MAX_TOKENS, counted_scale);
                    if trimmed > 0 {
                        transcript
                            .line(&format!("[agent] trimmed {trimmed} earlier tool results to fit {window} tokens"));
                    }
                }
                let reply = match deadline {
                    Some(at) if at <= Instant::now() => {
                        error = Some(format!("timed out after {} ms", started.elapsed().as_millis()));
                        break;
                    }
                    _ => {
                        let span = crate::spans::llm_call(trace, choice.provider.as_str(), &conversation.model);
                        asked_estimate = context::estimate(&conversation);
                        let asking = in_flight.enter(&choice.target_url);
                        let asked = ask(&client, &target, &conversation, deadline, sink.as_ref());
                        let reply = tokio::select! {
                            reply = asked => reply,
                            _ = cancel.cancelled() => Err(Failed::Said("cancelled".to_owned())),
                        };
                        drop(asking);
                        match &reply {
                            Ok(r) => crate::spans::llm_answered(span, &r.model, r.input_tokens, r.output_tokens, None),
                            Err(failed) => crate::spans::llm_answered(span, "", 0, 0, Some(&failed.describe())),
                        }
                        reply
                    }
                };
                let reply = match reply {
                    Ok(reply) => {
                        retried_trimmed = false; // Each turn may overflow once.
                        let counted = reply.input_tokens + reply.cached_input_tokens + reply.cache_write_tokens;
                        counted_scale = context::scale(counted, asked_estimate);
                        reply
                    }
                    // Too long for the model: learn its window and try the turn once more, trimmed.
                    Err(Failed::Provider(err))
                        if err.reason() == Some(chat::FailureReason::ContextLengthExceeded) && !retried_trimmed =>
                    {
                        retried_trimmed = true;
                        let asked = (context::estimate(&conversation) as f64 * counted_scale) as u64
                            + u64::from(conversation.max_tokens);
                        let learned = err.context_window().unwrap_or(asked * 3 / 4);
                        window = Some(window.map_or(learned, |w| w.min(learned)));
                        transcript.line(&format!("[agent] {err}; trimming to {learned} tokens and asking again"));
                        continue;
                    }
                    Err(failed) => {
                        error = Some(failed.describe());
                        break;
                    }
                };
                used.input_tokens += reply.input_tokens;
                used.output_tokens += reply.output_tokens;
                used.cached_input_tokens += reply.cached_input_tokens;
                used.cache_write_tokens += reply.cache_write_tokens;
                if !reply.model.is_empty() {
                    used.model.clone_from(&reply.model);
                }
                if !reply.text.trim().is_empty() {
                    transcript.line(reply.text.trim());
                }
                if reply.calls.is_empty() {
                    transcript.line(&format!("[agent] done after {} turns", turn + 1));
                    break;
                }
                let mut answers = Vec::with_capacity(reply.calls.len());
                for (n, call) in reply.calls.iter().enumerate() {
                    let span = crate::spans::child(trace, format!("{} {}", crate::spans::EXECUTE_TOOL, call.name));
                    let (ok, content) = tools::run(&call.name, &call.arguments, &workspace).await;
                    if let Some(span) = span {
                        let span = span
                            .attr("gen_ai.operation.name", crate::spans::EXECUTE_TOOL)
                            .attr("gen_ai.tool.name", call.name.clone());
                        if ok { span.end() } else { span.error("the tool failed").end() }
                    }
                    let first = n == 0;
                    transcript.step(AgentStep {
                        round: 0,
                        tool: call.name.clone(),
                        summary: tools::summarize(&call.arguments),
                        result_bytes: content.len() as u64,
                        ok,
                        input_tokens: if first { reply.input_tokens + reply.cached_input_tokens } else { 0 },
                        output_tokens: if first { reply.output_tokens } else { 0 },
                    });
                    answers.push(Answer { call_id: call.id.clone(), name: call.name.clone(), content, is_error: !ok });
                }
                conversation.entries.push(Entry::Assistant { text: reply.text, calls: reply.calls });
                conversation.entries.push(Entry::Answers(answers));
            }
            // An estimate for the rounds' budget; the hub prices the result with its own table.
            used.cost_micros = price.map(|p| p.micros(used.input_tokens, used.output_tokens).round() as u64);
            let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
            let total = transcript.text.len() as u64;
            let mut stdout = transcript.text;
            stdout.truncate(cap);
            let ended_well = error.is_none() && !budget_exceeded;
            Outcome {
                exit: if ended_well { Exit::Code(0) } else { Exit::Unknown },
                duration_ms: started.elapsed().as_millis() as u64,
                stdout,
                stdout_total_bytes: total,
                timed_out: error.as_deref().is_some_and(|e| e.starts_with("timed out")),
                error,
                usage: Some(used),
                budget_exceeded,
                steps: transcript.steps,
                ..Outcome::empty()
            }
        })
    }
}

/// Why a turn got no reply.
enum Failed {
    /// The provider or the link to it: the error says which reason it is.
    Provider(chat::Error),
    /// Out of time, or cancelled: said in words.
    Said(String),
}

impl Failed {
    /// As the attempt records it (`REASON: detail` where the error has a reason).
    fn describe(&self) -> String {
        match self {
            Failed::Provider(err) => err.describe(),
            Failed::Said(why) => why.clone(),
        }
    }
}

/// One turn, retried while the provider is busy (429, 529, a full queue), within the deadline.
async fn ask(
    client: &reqwest::Client,
    target: &chat::Target,
    conversation: &Conversation,
    deadline: Option<Instant>,
    sink: &dyn Sink,
) -> Result<agentcom_llm::tools::Reply, Failed> {
    let mut retries = 0;
    loop {
        let timeout = deadline.map_or(TURN_TIMEOUT, |at| at.saturating_duration_since(Instant::now()));
        match agentcom_llm::tools::turn(client, target, conversation, timeout).await {
            Ok(reply) => {
                if retries > 0 {
                    sink.progress(false, "the provider answers again");
                }
                return Ok(reply);
            }
            Err(err) if err.is_transient() && retries < super::llm::MAX_RETRIES => {
                retries += 1;
                let pause = super::llm::retry_pause(&err, retries);
                if deadline.is_some_and(|at| Instant::now() + pause >= at) {
                    return Err(Failed::Provider(err));
                }
                sink.progress(true, &format!("{err}; retrying in {} ms", pause.as_millis()));
                tokio::time::sleep(pause).await;
            }
            Err(chat::Error::Transport(why)) if why.contains("timed out") || timeout.is_zero() => {
                return Err(Failed::Said(format!("timed out: {why}")));
            }
            Err(err) => return Err(Failed::Provider(err)),
        }
    }
}

/// The model's text as the task's output, and the steps it took.
struct Transcript {
    sink: Arc<dyn Sink>,
    text: Vec<u8>,
    steps: Vec<AgentStep>,
}

impl Transcript {
    fn line(&mut self, line: &str) {
        let bytes = format!("{line}\n").into_bytes();
        self.sink.output(Stream::Stdout, self.text.len() as u64, &bytes);
        self.text.extend_from_slice(&bytes);
    }

    fn step(&mut self, step: AgentStep) {
        self.sink.step(&step);
        if self.steps.len() < MAX_STEPS {
            self.steps.push(step);
        }
    }
}
