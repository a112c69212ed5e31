//! The hub's own types for tasks and their outcomes.
//!
//! Core logic works only with these. The gRPC, HTTP and storage edges convert to and from them
//! (see `convert`), and every constructor from outside input goes through [`TaskSpec::validate`],
//! so nothing malformed reaches the queue or the database.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

/// Milliseconds since the Unix epoch. Pure code takes it as an argument and never reads a clock.
pub type UnixMs = i64;

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> UnixMs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Validation limits for submitted tasks. Generous for real work, small enough that one request
/// cannot exhaust the hub.
mod outcome;
mod reason;
mod service;
mod trace;
mod validate;
mod verification;

pub use self::outcome::{AgentStep, Exit, MAX_STEPS, Outcome, TokenPrice, Usage, WorkspaceReport};
pub use self::reason::FailureReason;
pub use self::service::{
    Probe, ProbeCheck, ProbeTimingMs, SERVICE_BACKOFF_BASE_MS, SERVICE_BACKOFF_MAX_MS, SERVICE_RESTART_LIMIT,
    ServiceRestart, ServiceState, ServiceStatus, ServiceWork,
};
pub use self::trace::{InvalidTraceParent, TaskTrace, TraceParent};
pub use self::validate::loopback_url;
pub use self::verification::{Pattern, StepReport, Verdict, Verification, VerificationReport};

pub mod limits {
    pub const MAX_NAME_BYTES: usize = 256;
    pub const MAX_KEY_BYTES: usize = 256;
    pub const MAX_ARGV_ITEMS: usize = 4096;
    pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
    pub const MAX_ENV_ITEMS: usize = 256;
    pub const MAX_ENV_BYTES: usize = 64 * 1024;
    pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;
    pub const MAX_LIST_ITEMS: usize = 256;
    pub const MAX_TEXT_BYTES: usize = 64 * 1024;
    pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
    pub const MAX_ATTEMPTS: u32 = 100;
    pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;
    pub const MAX_BACKOFF_MS: u64 = 24 * 3600 * 1000;
    pub const MIN_MEMORY_BYTES: u64 = 1024 * 1024;
    pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
    pub const MAX_PIDS: u64 = 4 * 1024 * 1024;
    /// Tools offered to a model in one request.
    pub const MAX_TOOLS: usize = 128;
    /// A tool's schema, or a call's arguments, as JSON text.
    pub const MAX_TOOL_JSON_BYTES: usize = 64 * 1024;
}

pub use self::limits::{MAX_TOOL_JSON_BYTES, MAX_TOOLS};

/// An enumeration with stable numbers: 1 and up in declaration order ([`Numbered::ALL`]), the
/// same in the wire contract and in the hub's storage format, where 0 means unset. Both
/// formats convert through these numbers, so the mapping exists once.
pub trait Numbered: Sized + Copy + PartialEq + 'static {
    const ALL: &'static [Self];

    fn number(self) -> i32 {
        Self::ALL.iter().position(|&v| v == self).expect("every value is in ALL") as i32 + 1
    }

    /// `None` for 0 (unset) and for numbers this version does not know.
    fn from_number(number: i32) -> Option<Self> {
        usize::try_from(number).ok()?.checked_sub(1).and_then(|i| Self::ALL.get(i).copied())
    }
}

/// Checks that a protobuf enum numbers `T`'s values as [`Numbered`] does: `name_of` is the
/// enum's name for a number (prost's `as_str_name`), which must end with the value's own name.
/// Each format's tests call this for each enum it stores.
pub fn check_numbering<T: Numbered>(
    name_of: impl Fn(i32) -> Option<&'static str>,
    ours: impl Fn(T) -> &'static str,
) -> Result<(), String> {
    for &value in T::ALL {
        let (number, ours) = (value.number(), ours(value));
        match name_of(number) {
            Some(name) if name.ends_with(&ours.to_ascii_uppercase()) => {}
            other => return Err(format!("{number} is {other:?} there, {ours} here")),
        }
    }
    Ok(())
}

/// A task's identity: a ULID, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub Ulid);

impl TaskId {
    /// A new id at `now`, its random part drawn here.
    pub fn new(now: UnixMs) -> TaskId {
        TaskId::from_parts(now, rand::random())
    }

    /// The id at `now` with the random part given (its low 80 bits are used).
    pub fn from_parts(now: UnixMs, random: u128) -> TaskId {
        TaskId(Ulid::from_parts(now.max(0) as u64, random))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

impl FromStr for TaskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<TaskId, Error> {
        Ulid::from_string(s)
            .map(TaskId)
            .map_err(|_| Error::invalid("id", format!("{s:?} is not a task id (a 26-character ULID)")))
    }
}

/// Priority lane. Declared in dispatch order: `Interactive` (the gateway's requests, a person
/// waiting on each token) sorts first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Lane {
    Interactive,
    Urgent,
    High,
    #[default]
    Normal,
    Low,
}

impl Numbered for Lane {
    // Numbered in the order the lanes were added, so stored numbers keep their meaning.
    const ALL: &'static [Lane] = &[Lane::Urgent, Lane::High, Lane::Normal, Lane::Low, Lane::Interactive];
}

impl Lane {
    /// Every lane, in dispatch order.
    pub const ALL: [Lane; 5] = [Lane::Interactive, Lane::Urgent, Lane::High, Lane::Normal, Lane::Low];
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Urgent => "urgent",
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
        }
    }
}

impl FromStr for Lane {
    type Err = Error;
    fn from_str(s: &str) -> Result<Lane, Error> {
        Lane::ALL.into_iter().find(|lane| lane.as_str() == s).ok_or_else(|| {
            Error::invalid("priority", format!("{s:?} is not one of interactive, urgent, high, normal, low"))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Trivial,
    Standard,
    Complex,
}

impl Numbered for Tier {
    const ALL: &'static [Tier] = &Tier::ALL;
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Trivial, Tier::Standard, Tier::Complex];
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Trivial => "trivial",
            Tier::Standard => "standard",
            Tier::Complex => "complex",
        }
    }
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Tier, Error> {
        Tier::ALL
            .into_iter()
            .find(|tier| tier.as_str() == s)
            .ok_or_else(|| Error::invalid("tier", format!("{s:?} is not one of trivial, standard, complex")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    Queued,
    Waiting,
    Ready,
    Dispatched,
    Running,
    Verifying,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
    DeadLettered,
}

impl Numbered for TaskState {
    const ALL: &'static [TaskState] = &TaskState::ALL;
}

impl TaskState {
    pub const ALL: [TaskState; 11] = [
        TaskState::Queued,
        TaskState::Waiting,
        TaskState::Ready,
        TaskState::Dispatched,
        TaskState::Running,
        TaskState::Verifying,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Expired,
        TaskState::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Waiting => "waiting",
            TaskState::Ready => "ready",
            TaskState::Dispatched => "dispatched",
            TaskState::Running => "running",
            TaskState::Verifying => "verifying",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
            TaskState::DeadLettered => "dead_lettered",
        }
    }

    /// A final state: nothing more will happen to the task.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::Failed
                | TaskState::Cancelled
                | TaskState::Expired
                | TaskState::DeadLettered
        )
    }

    /// Holds a lease on an agent.
    pub fn is_leased(self) -> bool {
        matches!(self, TaskState::Dispatched | TaskState::Running | TaskState::Verifying)
    }
}

impl FromStr for TaskState {
    type Err = Error;
    fn from_str(s: &str) -> Result<TaskState, Error> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::invalid("state", format!("{s:?} is not a task state")))
    }
}

/// How a shell task names its program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellCommand {
    /// Run directly: `argv[0]` is looked up on the allowlisted `PATH`.
    Argv(Vec<String>),
    /// Run through `sh -c`.
    Script(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellWork {
    pub command: ShellCommand,
    pub cwd: Option<String>,
    /// Visible in every API response and stored with the task; secrets go in `secret_env`.
    pub env: BTreeMap<String, String>,
    /// Names the sidecar fills in from its own secret files; the values never reach the hub.
    pub secret_env: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlmWork {
    /// A single user turn; with `messages`, it comes after them.
    pub prompt: String,
    pub system: String,
    /// The conversation so far, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Empty: the scheduler or the sidecar picks one.
    pub model: String,
    /// 0: the provider's default.
    pub max_tokens: u32,
    /// 0 to 2.
    pub temperature: Option<f32>,
    pub stop: Vec<String>,
    /// Ask the model for one JSON object.
    pub json: bool,
    /// Ollama: how long the model stays loaded afterwards (`"10m"`, `"-1"` for ever).
    pub keep_alive: Option<String>,
    /// Rounds of fixing after a failed verification, each given the reply and what failed
    /// (`None`: 0).
    pub fix_rounds: Option<u32>,
    /// The prompt and the reply are kept out of storage and off the API's task views: only
    /// usage, timing and placement are recorded (the gateway's requests, unless the key asks to
    /// store them). The hub holds the prompt in memory while the task runs; a hub that restarts
    /// meanwhile fails the task, having nothing to run it again with.
    pub redact: bool,
    /// Tools the model may call; its calls come back in `Outcome::tool_calls` (the work runs one
    /// turn, not streamed).
    pub tools: Vec<ToolSpec>,
}

impl LlmWork {
    /// A plain prompt with every other field at its default.
    pub fn prompt(prompt: impl Into<String>) -> LlmWork {
        LlmWork {
            prompt: prompt.into(),
            system: String::new(),
            messages: Vec::new(),
            model: String::new(),
            max_tokens: 0,
            temperature: None,
            stop: Vec::new(),
            json: false,
            keep_alive: None,
            fix_rounds: None,
            redact: false,
            tools: Vec::new(),
        }
    }

    /// The turns to send: `messages`, then `prompt` as a user turn if there is one.
    pub fn turns(&self) -> Vec<ChatMessage> {
        let mut turns = self.messages.clone();
        if !self.prompt.is_empty() {
            turns.push(ChatMessage::new(ChatRole::User, self.prompt.clone()));
        }
        turns
    }
}

/// Who said a turn of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatRole {
    User,
    Assistant,
    /// What a tool the assistant called gave back (`ChatMessage::tool_call_id` says which call).
    Tool,
}

impl Numbered for ChatRole {
    const ALL: &'static [ChatRole] = &[ChatRole::User, ChatRole::Assistant, ChatRole::Tool];
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
        }
    }
}

impl FromStr for ChatRole {
    type Err = Error;
    fn from_str(s: &str) -> Result<ChatRole, Error> {
        match s {
            "user" => Ok(ChatRole::User),
            "assistant" => Ok(ChatRole::Assistant),
            "tool" => Ok(ChatRole::Tool),
            _ => Err(Error::invalid(
                "work.llm.messages.role",
                format!("{s:?} is not user, assistant or tool (the system prompt goes in system)"),
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
    /// An assistant turn's calls of the tools it was offered.
    pub tool_calls: Vec<ToolCall>,
    /// A tool turn: the call it answers.
    pub tool_call_id: String,
}

impl ChatMessage {
    /// A turn of text.
    pub fn new(role: ChatRole, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: String::new() }
    }
}

/// A tool the model may call (`LlmWork::tools`): its name, what it does, and its arguments as a
/// JSON schema (JSON text: an object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: String,
}

/// A model's call of a tool: its id (the provider's, or one made up for those that give none),
/// the tool, and the arguments (JSON text: an object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentWork {
    pub goal: String,
    pub repository: String,
    pub branch: String,
    /// Rounds of fixing after a failed verification; `None`: the default (2).
    pub fix_rounds: Option<u32>,
}

/// Fix rounds agent work gets when it sets none.
pub const DEFAULT_FIX_ROUNDS: u32 = 2;

/// One round of agent work: the work, then its verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// 1 for the first attempt at the goal, 2 for the first fix, ...
    pub number: u32,
    /// Its verification's verdict; `failed` too when the work itself failed.
    pub verdict: String,
    /// The steps that failed (`kind target`), or why the work failed.
    pub failed: Vec<String>,
    /// `git diff --stat` of what this round changed.
    pub diff_stat: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    Shell(ShellWork),
    Llm(LlmWork),
    Agent(AgentWork),
    Service(Box<ServiceWork>),
}

impl Work {
    /// The sidecar capability this work needs.
    pub fn capability(&self) -> &'static str {
        match self {
            Work::Shell(_) => "shell",
            Work::Llm(_) => "llm",
            Work::Agent(_) => "agent",
            Work::Service(_) => "service",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskContext {
    pub repository: String,
    pub branch: String,
    pub files: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub notes: String,
    /// Where work in the repository runs.
    pub environment: Environment,
}

/// Where work in a repository runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Environment {
    /// A workspace made for the attempt: its changes committed to `agentcom/TASK_ID`, then removed.
    #[default]
    Workspace,
    /// The repository's kept environment at the commit: made on first use, kept for the work
    /// after it (installs, services, fixes), its changes committed where they are.
    Keep,
    /// That environment made anew.
    Fresh,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Workspace => "",
            Environment::Keep => "keep",
            Environment::Fresh => "fresh",
        }
    }

    pub fn parse(text: &str) -> Option<Environment> {
        match text {
            "" => Some(Environment::Workspace),
            "keep" => Some(Environment::Keep),
            "fresh" => Some(Environment::Fresh),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub timeout_ms: Option<u64>,
    pub deadline_unix_ms: Option<UnixMs>,
    pub max_attempts: u32,
    pub max_tokens: Option<u64>,
    pub max_cost_micros: Option<u64>,
    pub max_output_bytes: u64,
    pub max_memory_bytes: Option<u64>,
    pub max_pids: Option<u64>,
}

/// When a failed attempt is retried, and after how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Exit codes that count as transient; other failures of the command are final.
    pub retry_on_exit_codes: Vec<i32>,
}

/// Defaults for fields a submitter leaves unset; they come from the hub's configuration.
#[derive(Clone, Debug)]
pub struct SpecDefaults {
    pub max_attempts: u32,
    pub max_output_bytes: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for SpecDefaults {
    fn default() -> SpecDefaults {
        SpecDefaults { max_attempts: 3, max_output_bytes: 1024 * 1024, backoff_base_ms: 1_000, backoff_max_ms: 60_000 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub tags: Vec<String>,
    pub host: String,
    pub model: String,
    /// Private work: never sent to a cloud provider (see `fleet::is_cloud`).
    pub local_only: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub idempotency_key: Option<String>,
    pub priority: Lane,
    /// Explicit tier; `None` lets the scheduler infer one.
    pub tier: Option<Tier>,
    pub work: Work,
    pub context: TaskContext,
    pub success_criteria: Vec<String>,
    pub verification: Vec<Verification>,
    pub limits: Limits,
    pub placement: Placement,
    pub depends_on: Vec<TaskId>,
    pub labels: BTreeMap<String, String>,
    pub retry: RetryPolicy,
    /// The submitter's trace context (a `traceparent` header or field), which the task's spans
    /// join; `None`: the task is a trace of its own.
    pub trace_parent: Option<TraceParent>,
}

impl TaskSpec {
    /// The repository the work runs in, in a workspace of its own: agent work's own, else the
    /// context's for shell and agent work (LLM work reads no repository).
    pub fn workspace_repository(&self) -> Option<&str> {
        let repository = match &self.work {
            Work::Agent(agent) if !agent.repository.is_empty() => &agent.repository,
            Work::Shell(_) | Work::Agent(_) | Work::Service(_) => &self.context.repository,
            Work::Llm(_) => return None,
        };
        (!repository.is_empty()).then_some(repository.as_str())
    }

    /// A shell task with every other field at its default.
    pub fn shell(argv: Vec<String>, defaults: &SpecDefaults) -> TaskSpec {
        TaskSpec {
            name: String::new(),
            idempotency_key: None,
            priority: Lane::Normal,
            tier: None,
            work: Work::Shell(ShellWork {
                command: ShellCommand::Argv(argv),
                cwd: None,
                env: BTreeMap::new(),
                secret_env: Vec::new(),
            }),
            context: TaskContext::default(),
            success_criteria: Vec::new(),
            verification: Vec::new(),
            limits: Limits {
                timeout_ms: None,
                deadline_unix_ms: None,
                max_attempts: defaults.max_attempts,
                max_tokens: None,
                max_cost_micros: None,
                max_output_bytes: defaults.max_output_bytes,
                max_memory_bytes: None,
                max_pids: None,
            },
            placement: Placement::default(),
            depends_on: Vec::new(),
            labels: BTreeMap::new(),
            retry: RetryPolicy {
                backoff_base_ms: defaults.backoff_base_ms,
                backoff_max_ms: defaults.backoff_max_ms,
                retry_on_exit_codes: Vec::new(),
            },
            trace_parent: None,
        }
    }
}

/// A task as the hub records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    pub state_reason: String,
    pub attempt: u32,
    pub lease_generation: u64,
    pub agent_id: Option<String>,
    pub sidecar_id: Option<String>,
    pub created_unix_ms: UnixMs,
    pub updated_unix_ms: UnixMs,
    pub started_unix_ms: Option<UnixMs>,
    pub finished_unix_ms: Option<UnixMs>,
    pub outcome: Option<Outcome>,
    /// Service work: where the running service stands, as its sidecar last reported it (kept
    /// in memory only; the sidecar reports it again every few seconds).
    pub service: Option<Box<ServiceStatus>>,
}

impl Task {
    /// Where the task's spans hang.
    pub fn trace(&self) -> TaskTrace {
        TaskTrace::of(self.id, self.spec.trace_parent.as_ref())
    }

    pub fn new(id: TaskId, spec: TaskSpec, now: UnixMs) -> Task {
        Task {
            id,
            spec,
            state: TaskState::Queued,
            state_reason: String::new(),
            attempt: 0,
            lease_generation: 0,
            agent_id: None,
            sidecar_id: None,
            created_unix_ms: now,
            updated_unix_ms: now,
            started_unix_ms: None,
            finished_unix_ms: None,
            outcome: None,
            service: None,
        }
    }

    pub fn set_state(&mut self, state: TaskState, reason: impl Into<String>, now: UnixMs) {
        self.state = state;
        self.state_reason = reason.into();
        self.updated_unix_ms = now;
        if state.is_terminal() {
            self.finished_unix_ms = Some(now);
        }
    }
}

/// Which output stream a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Invalid input, named by the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct Error {
    pub field: &'static str,
    pub message: String,
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Error {
        Error { field, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_their_names() {
        for lane in Lane::ALL {
            assert_eq!(lane.as_str().parse::<Lane>(), Ok(lane));
        }
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
        }
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert!("urgentish".parse::<Lane>().is_err());
    }

    #[test]
    fn task_ids_sort_by_time_and_parse_back() {
        let a = TaskId::new(1_000);
        let b = TaskId::new(2_000);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<TaskId>(), Ok(a));
        assert!("not-a-ulid".parse::<TaskId>().is_err());
    }
}
