//! Agent work on Claude Code: `claude -p GOAL --output-format stream-json --verbose` in the
//! task's workspace, in the shell sandbox (contained, timed out, the environment allowlist; the
//! CLI uses its own login, never a key of the sidecar's).
//!
//! The CLI prints one JSON object per line: a `system`/`init` line, `assistant` messages (text
//! and `tool_use` blocks), `user` messages (`tool_result` blocks), and a final `result` with
//! `total_cost_usd`, `usage`, `num_turns` and `is_error`. The runner turns them, as they come,
//! into a readable transcript that streams as the task's output (the assistant's text, a line at
//! the start and at the end), each `tool_use` and its `tool_result` into an [`AgentStep`] that
//! streams to the hub, and the `result` into the outcome's usage. Unknown line types are
//! ignored; a line that is not JSON is kept as it is.
//!
//! In detail:
//!
//! `runners/claude`: agent work on Claude Code. `claude -p GOAL --output-format stream-json
//! --verbose` runs through `shell::run` in the workspace; a `Transcript` sink parses its JSON lines
//! as they stream (`describe`: init, assistant text and `tool_use`, `tool_result`, `result`;
//! unknown types ignored) into the task's output (the assistant's text), `AgentStep`s (a `tool_use`
//! with its `tool_result`, through `Sink::step`, which the link sends as a `TaskProgress` with a
//! step and the hub appends to the task's feed), and the `result` into `Usage` (provider
//! `claude-code`, `total_cost_usd` as the cost, which the hub keeps). `Runners::run` drives the
//! rounds for agent work (and for LLM work with `fix_rounds`, whose next round is the conversation
//! with the failed reply and what failed: `fix_reply`): work, verify, and while a step fails and
//! `fix_rounds` are left, again with a goal that carries the failed steps' evidence (`fix_goal`);
//! each round is a `Round` in the outcome (its `diff_stat` from a snapshot tree written through a
//! private index), the usage is summed, and spent rounds make the verdict `partial`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcom_types::domain::{AgentStep, MAX_STEPS, Outcome, Stream, Usage, Work};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{failed_to_start, shell};
use crate::contain;
use crate::job::{Attempt, Runner, Running, Sink};

/// The raw stream kept from the CLI, at most (the transcript is capped by the task's limit).
const RAW_BYTES: usize = 16 * 1024 * 1024;

pub struct ClaudeCodeRunner {
    pub settings: shell::Settings,
    pub program: PathBuf,
}

impl Runner for ClaudeCodeRunner {
    fn capability(&self) -> &'static str {
        "agent"
    }

    fn advertises(&self) -> Vec<String> {
        vec!["agent".to_owned(), "claude-code".to_owned()]
    }

    fn run(&self, attempt: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let (settings, program) = (self.settings.clone(), self.program.clone());
        Box::pin(async move {
            let Work::Agent(agent) = &attempt.assignment.spec.work else {
                return failed_to_start(format!(
                    "{} work is not agent work",
                    attempt.assignment.spec.work.capability()
                ));
            };
            let Some(dir) = attempt.workspace.clone() else {
                return failed_to_start(
                    "agent work needs a repository (work.agent.repository or context.repository)".into(),
                );
            };
            let argv = vec![
                program.to_string_lossy().into_owned(),
                "-p".to_owned(),
                agent.goal.clone(),
                "--output-format".to_owned(),
                "stream-json".to_owned(),
                "--verbose".to_owned(),
                "--permission-mode".to_owned(),
                "acceptEdits".to_owned(),
            ];
            let limits = &attempt.assignment.spec.limits;
            let job = shell::ShellJob {
                key: attempt.key.clone(),
                program: shell::Program::Argv(argv),
                cwd: Some(dir),
                env: vec![("AGENTCOM_ATTEMPT".to_owned(), attempt.assignment.attempt.to_string())],
                secret_env: Vec::new(),
                timeout: limits.timeout_ms.map(Duration::from_millis),
                max_output_bytes: RAW_BYTES,
                limits: contain::Limits { max_memory_bytes: limits.max_memory_bytes, max_pids: limits.max_pids },
            };
            let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
            let transcript = Arc::new(Transcript::new(sink, cap));
            let ran = shell::run(&job, &settings, transcript.clone(), cancel).await;
            transcript.outcome_of(ran)
        })
    }
}

/// The `claude` executable on `path` (a `PATH` value), if there is one.
pub fn find_on_path(path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|dir| dir.join("claude")).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// What the stream said, beside the transcript.
#[derive(Debug, Default)]
pub struct Parsed {
    pub model: String,
    pub tool_calls: u32,
    /// The `result` line, when it came.
    pub result: Option<Value>,
    /// Tool calls waiting for their result, by `tool_use` id.
    calls: std::collections::HashMap<String, AgentStep>,
    /// The steps finished so far (a call and its result), in order.
    pub steps: Vec<AgentStep>,
}

/// Turns the CLI's JSON lines into transcript lines as they arrive, and streams those.
struct Transcript {
    inner: Arc<dyn Sink>,
    cap: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A line not yet ended.
    pending: Vec<u8>,
    text: Vec<u8>,
    total: u64,
    parsed: Parsed,
    /// Steps already handed to the sink.
    stepped: usize,
}

impl Transcript {
    fn new(inner: Arc<dyn Sink>, cap: usize) -> Transcript {
        Transcript { inner, cap, state: Mutex::new(State::default()) }
    }

    fn add(&self, state: &mut State, line: &str) {
        let offset = state.total;
        let bytes = format!("{line}\n").into_bytes();
        state.total += bytes.len() as u64;
        let room = self.cap.saturating_sub(state.text.len());
        state.text.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.inner.output(Stream::Stdout, offset, &bytes);
    }

    /// Hands the steps finished since the last call to the sink.
    fn steps(&self, state: &mut State) {
        for step in &state.parsed.steps[state.stepped..] {
            self.inner.step(step);
        }
        state.stepped = state.parsed.steps.len();
    }

    /// The outcome of the CLI's run: its exit, the transcript as stdout, the usage and cost of
    /// its `result`, and its error when it reported one (or ended without a result).
    fn outcome_of(&self, mut ran: Outcome) -> Outcome {
        let mut state = self.state.lock().expect("lock");
        if !state.pending.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut state.pending)).into_owned();
            let shown = describe(&rest, &mut state.parsed);
            if let Some(shown) = shown {
                self.add(&mut state, &shown);
            }
            self.steps(&mut state);
        }
        ran.stdout = std::mem::take(&mut state.text);
        ran.steps = std::mem::take(&mut state.parsed.steps);
        ran.stdout_total_bytes = state.total;
        let parsed = &state.parsed;
        let result = parsed.result.as_ref();
        let usage = result.map(|r| &r["usage"]);
        let count = |name: &str| usage.and_then(|u| u[name].as_u64()).unwrap_or(0);
        ran.usage = Some(Usage {
            provider: "claude-code".to_owned(),
            endpoint_id: String::new(),
            model: parsed.model.clone(),
            input_tokens: count("input_tokens"),
            output_tokens: count("output_tokens"),
            cached_input_tokens: count("cache_read_input_tokens"),
            cache_write_tokens: count("cache_creation_input_tokens"),
            ttft_ms: None,
            output_tokens_per_s: None,
            load_ms: None,
            cost_micros: result.and_then(|r| r["total_cost_usd"].as_f64()).map(|usd| (usd * 1e6).round() as u64),
            estimated: false,
            stop_reason: result.and_then(|r| r["subtype"].as_str()).unwrap_or_default().to_owned(),
        });
        if ran.error.is_none() && !ran.timed_out {
            match result {
                Some(r) if r["is_error"] == true => {
                    let subtype = r["subtype"].as_str().unwrap_or("error");
                    let said = r["result"].as_str().unwrap_or("").chars().take(500).collect::<String>();
                    ran.error = Some(format!(
                        "claude: {subtype}{}",
                        if said.is_empty() { String::new() } else { format!(": {said}") }
                    ));
                }
                None if ran.exit == agentcom_types::domain::Exit::Code(0) => {
                    ran.error = Some("claude ended without a result line".to_owned());
                }
                _ => {}
            }
        }
        ran
    }
}

impl Sink for Transcript {
    fn started(&self, pid: u32) {
        self.inner.started(pid);
    }

    fn output(&self, stream: Stream, offset: u64, data: &[u8]) {
        if stream != Stream::Stdout {
            self.inner.output(stream, offset, data);
            return;
        }
        let mut state = self.state.lock().expect("lock");
        state.pending.extend_from_slice(data);
        while let Some(end) = state.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = state.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if let Some(shown) = describe(&line, &mut state.parsed) {
                self.add(&mut state, &shown);
            }
            self.steps(&mut state);
        }
    }

    fn progress(&self, blocked: bool, message: &str) {
        self.inner.progress(blocked, message);
    }
}

/// The transcript line for one line of the CLI's stream (`None` for those not shown).
pub fn describe(line: &str, parsed: &mut Parsed) -> Option<String> {
    if line.trim().is_empty() {
        return None;
    }
    let Ok(event) = serde_json::from_str::<Value>(line) else { return Some(line.to_owned()) };
    match event["type"].as_str() {
        Some("system") if event["subtype"] == "init" => {
            parsed.model = event["model"].as_str().unwrap_or_default().to_owned();
            Some(format!(
                "[claude-code] started ({})",
                if parsed.model.is_empty() { "default model" } else { &parsed.model }
            ))
        }
        Some("assistant") => {
            let message = &event["message"];
            let blocks = message["content"].as_array()?;
            // The message's tokens go on its first call.
            let mut usage = Some((
                message["usage"]["input_tokens"].as_u64().unwrap_or(0)
                    + message["usage"]["cache_read_input_tokens"].as_u64().unwrap_or(0),
                message["usage"]["output_tokens"].as_u64().unwrap_or(0),
            ));
            let mut lines = Vec::new();
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or_default().trim();
                        if !text.is_empty() {
                            lines.push(text.to_owned());
                        }
                    }
                    Some("tool_use") => {
                        parsed.tool_calls += 1;
                        let (input_tokens, output_tokens) = usage.take().unwrap_or_default();
                        let step = AgentStep {
                            round: 0,
                            tool: block["name"].as_str().unwrap_or("?").chars().take(128).collect(),
                            summary: super::tools::summarize(&block["input"]),
                            input_tokens,
                            output_tokens,
                            ..AgentStep::default()
                        };
                        let id = block["id"].as_str().unwrap_or_default().to_owned();
                        if parsed.calls.len() < MAX_STEPS {
                            parsed.calls.insert(id, step);
                        }
                    }
                    _ => {}
                }
            }
            (!lines.is_empty()).then(|| lines.join("\n"))
        }
        Some("user") => {
            let blocks = event["message"]["content"].as_array()?;
            for block in blocks.iter().filter(|b| b["type"] == "tool_result") {
                let Some(mut step) = block["tool_use_id"].as_str().and_then(|id| parsed.calls.remove(id)) else {
                    continue;
                };
                step.result_bytes = match &block["content"] {
                    Value::String(text) => text.len(),
                    Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).map(str::len).sum(),
                    other => other.to_string().len(),
                } as u64;
                step.ok = block["is_error"] != true;
                if parsed.steps.len() < MAX_STEPS {
                    parsed.steps.push(step);
                }
            }
            None
        }
        Some("result") => {
            let turns = event["num_turns"].as_u64().unwrap_or(0);
            let cost = event["total_cost_usd"].as_f64().map(|c| format!(", ${c:.4}")).unwrap_or_default();
            let subtype = event["subtype"].as_str().unwrap_or("?").to_owned();
            parsed.result = Some(event);
            Some(format!("[claude-code] {subtype} after {turns} turns, {} tool calls{cost}", parsed.tool_calls))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Claude Code prints them (recorded shapes, trimmed).
    const STREAM: &str = r#"{"type":"system","subtype":"init","session_id":"s1","cwd":"/w","model":"claude-sonnet-4-5","tools":["Read","Edit","Bash"]}
{"type":"assistant","message":{"content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"t1","name":"Read","input":{"file_path":"answer.txt"}}],"usage":{"input_tokens":10,"output_tokens":5}}}
{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","is_error":false,"content":"0\n"}]}}
{"type":"stream_event","event":{"type":"content_block_delta"}}
{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t2","name":"Edit","input":{"file_path":"answer.txt","old_string":"0","new_string":"42"}}]}}
{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t2","is_error":true,"content":[{"type":"text","text":"denied"}]}]}}
{"type":"result","subtype":"success","is_error":false,"duration_ms":900,"num_turns":3,"result":"Done.","session_id":"s1","total_cost_usd":0.0123,"usage":{"input_tokens":120,"output_tokens":45,"cache_creation_input_tokens":7,"cache_read_input_tokens":300}}"#;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>, Mutex<Vec<AgentStep>>);

    impl Sink for Recorder {
        fn started(&self, _pid: u32) {}
        fn output(&self, _stream: Stream, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
        fn step(&self, step: &AgentStep) {
            self.1.lock().unwrap().push(step.clone());
        }
    }

    #[test]
    fn the_stream_becomes_a_transcript_and_the_result_usage_and_cost() {
        let recorder = Arc::new(Recorder::default());
        let transcript = Transcript::new(recorder.clone(), 1 << 20);
        // Chunks cut anywhere, as a pipe delivers them.
        for chunk in STREAM.as_bytes().chunks(37) {
            transcript.output(Stream::Stdout, 0, chunk);
        }
        let outcome =
            transcript.outcome_of(Outcome { exit: agentcom_types::domain::Exit::Code(0), ..Outcome::empty() });
        let text = String::from_utf8(outcome.stdout.clone()).unwrap();
        assert_eq!(
            text,
            "[claude-code] started (claude-sonnet-4-5)\nLet me look.\n\
             [claude-code] success after 3 turns, 2 tool calls, $0.0123\n"
        );
        // Each call with its result is a step, streamed as it finished and kept in the outcome.
        let read = AgentStep {
            round: 0,
            tool: "Read".into(),
            summary: "answer.txt".into(),
            result_bytes: 2,
            ok: true,
            input_tokens: 10,
            output_tokens: 5,
        };
        let edit = AgentStep {
            tool: "Edit".into(),
            result_bytes: 6,
            ok: false,
            input_tokens: 0,
            output_tokens: 0,
            ..read.clone()
        };
        assert_eq!(outcome.steps, vec![read, edit]);
        assert_eq!(*recorder.1.lock().unwrap(), outcome.steps);
        // What streamed is the transcript, at consecutive offsets.
        let streamed = recorder.0.lock().unwrap().clone();
        let mut at = 0;
        for (offset, data) in &streamed {
            assert_eq!(*offset, at);
            at += data.len() as u64;
        }
        assert_eq!(at as usize, text.len());
        let usage = outcome.usage.unwrap();
        assert_eq!((usage.provider.as_str(), usage.model.as_str()), ("claude-code", "claude-sonnet-4-5"));
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_tokens),
            (120, 45, 300, 7)
        );
        assert_eq!(usage.cost_micros, Some(12_300));
        assert_eq!(outcome.error, None);
    }

    #[test]
    fn an_error_result_or_no_result_fails_the_run() {
        let run = |stream: &str| {
            let transcript = Transcript::new(Arc::new(Recorder::default()), 1 << 20);
            transcript.output(Stream::Stdout, 0, stream.as_bytes());
            transcript.outcome_of(Outcome { exit: agentcom_types::domain::Exit::Code(0), ..Outcome::empty() })
        };
        let maxed = run(r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":10}"#);
        assert_eq!(maxed.error.as_deref(), Some("claude: error_max_turns"));
        let silent = run("{\"type\":\"system\",\"subtype\":\"init\",\"model\":\"m\"}\n");
        assert_eq!(silent.error.as_deref(), Some("claude ended without a result line"));
        let noise = run("warning: something\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false}\n");
        assert!(String::from_utf8_lossy(&noise.stdout).starts_with("warning: something\n"));
        assert_eq!(noise.error, None);
    }
}
