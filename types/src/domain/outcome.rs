//! How an attempt ended: its exit, output, usage, agent steps and workspace.

use super::*;

/// How the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The work never ran as a process (spawn failure) or its end is unknown.
    Unknown,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub exit: Exit,
    pub duration_ms: u64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_total_bytes: u64,
    pub stderr_total_bytes: u64,
    pub timed_out: bool,
    pub error: Option<String>,
    /// What LLM work used; `None` for shell work.
    pub usage: Option<Usage>,
    /// Stopped at its token or cost budget, with the output so far kept.
    pub budget_exceeded: bool,
    /// The checks run after the work, when the task has any and the work succeeded.
    pub verification: Option<VerificationReport>,
    /// Work that ran in a git workspace (`context.repository`): what it changed.
    pub workspace: Option<WorkspaceReport>,
    /// Agent work: each round of work and verification, the fixes included.
    pub rounds: Vec<Round>,
    /// Agent work: the tools the model called, in order, every round's (the first
    /// [`MAX_STEPS`] of them).
    pub steps: Vec<AgentStep>,
    /// When the hub dropped the output by its retention (`--retain-output`,
    /// `--retain-output-bytes`); the rest of the outcome stays.
    pub output_dropped_unix_ms: Option<UnixMs>,
    /// LLM work with tools: the calls the reply asked for (the gateway relays them; not stored).
    pub tool_calls: Vec<super::ToolCall>,
}

/// Steps of agent work an outcome keeps.
pub const MAX_STEPS: usize = 1000;

/// One step of agent work: a tool the model called, and what came of it. Each streams to the
/// hub as it happens and the outcome keeps them all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStep {
    /// The round it belongs to (1, then the fix rounds).
    pub round: u32,
    pub tool: String,
    /// The arguments in a few words: the path, command or text they name.
    pub summary: String,
    /// Bytes of the tool's result, as the model was given it.
    pub result_bytes: u64,
    /// The tool did what was asked (a command that exits non-zero still ran: true).
    pub ok: bool,
    /// Tokens of the model's turn that asked for it (on the turn's first call; 0 on the rest).
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What work in a git workspace changed, and where the change was kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceReport {
    pub repository: String,
    /// The commit the workspace was made at.
    pub base: String,
    /// On success with changes: the branch (`agentcom/TASK_ID`) and commit holding them, in the
    /// sidecar's clone of the repository.
    pub branch: Option<String>,
    pub commit: Option<String>,
    /// `git diff --stat` of the changes against `base`.
    pub diff_stat: String,
    /// The diff itself, up to the cap.
    pub diff: String,
    /// Bytes of the whole diff (more than `diff` holds when it was cut).
    pub diff_total_bytes: u64,
    /// Where a failed attempt's workspace is kept on the sidecar, for a while.
    pub kept_at: Option<String>,
    /// The branch was pushed to the repository it came from (`--push-branches`): its URL.
    pub pushed_to: Option<String>,
    /// The push was tried and failed: why (the change is still on the branch in the clone).
    pub push_error: Option<String>,
}

/// What one LLM attempt used and how fast it ran, measured at the sidecar; the hub prices it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// `ollama`, `anthropic` or `openai`.
    pub provider: String,
    pub endpoint_id: String,
    /// The model that answered.
    pub model: String,
    /// Input tokens, those read from the provider's cache excluded.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic prices them higher).
    pub cache_write_tokens: u64,
    /// From the request to the first token.
    pub ttft_ms: Option<u64>,
    pub output_tokens_per_s: Option<f64>,
    /// Loading the model first (Ollama's `load_duration`).
    pub load_ms: Option<u64>,
    /// What the attempt cost in millionths of a dollar, from the hub's price table.
    pub cost_micros: Option<u64>,
    /// The token counts are the sidecar's (a tokenizer endpoint, or the streamed pieces), not
    /// the server's: it sent none.
    pub estimated: bool,
    /// Why generation ended, in the API's words (`stop`, `length`, `end_turn`, `tool_calls`).
    pub stop_reason: String,
}

/// What a model's tokens cost, in dollars per million tokens, which is millionths of a dollar per
/// token (prompt-cache factors left out: this is what a runner budgets with while it streams).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenPrice {
    pub input: f64,
    pub output: f64,
}

impl TokenPrice {
    /// Millionths of a dollar for these tokens.
    pub fn micros(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        input_tokens as f64 * self.input + output_tokens as f64 * self.output
    }
}

impl Outcome {
    /// An outcome with nothing in it yet: no exit status, no output, no error, no usage.
    pub fn empty() -> Outcome {
        Outcome {
            exit: Exit::Unknown,
            duration_ms: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_total_bytes: 0,
            stderr_total_bytes: 0,
            timed_out: false,
            error: None,
            usage: None,
            budget_exceeded: false,
            verification: None,
            workspace: None,
            rounds: Vec::new(),
            steps: Vec::new(),
            output_dropped_unix_ms: None,
            tool_calls: Vec::new(),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.exit == Exit::Code(0) && !self.timed_out && self.error.is_none() && !self.budget_exceeded
    }
}
