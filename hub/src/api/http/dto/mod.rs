//! The HTTP API's JSON, as its own types: what each response looks like is written here, field
//! by field, and documented in `docs/api.md` ("JSON shapes"). The domain types do not
//! serialize at all, so a change inside the domain cannot change the contract by accident;
//! the test in `tests.rs` fails when a shape here and its documentation disagree.
//!
//! The request half (the submit body) is `agentcom_types::json`, shared with `hubctl`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::agent::Transition;
use crate::core::QueueStats;
use crate::domain::{
    Exit, Limits, Outcome, Pattern, Placement, RetryPolicy, ShellCommand, ShellWork, Task, TaskContext, TaskSpec,
    Usage, Verification, VerificationReport, Work,
};
use crate::fleet::{AgentDetail, AgentView, Cordon, Endpoint, HostView, Model, Owner, Resources, Sample};

pub use agentcom_types::json::SubmitBody;

fn skip_empty<T>(items: &[T]) -> bool {
    items.is_empty()
}

fn is_empty_string(text: &str) -> bool {
    text.is_empty()
}

#[derive(Serialize, Debug, PartialEq)]
pub struct TaskDto {
    pub id: String,
    pub spec: SpecDto,
    pub state: &'static str,
    pub state_reason: String,
    pub attempt: u32,
    pub lease_generation: u64,
    pub agent_id: Option<String>,
    pub sidecar_id: Option<String>,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    pub outcome: Option<OutcomeDto>,
    /// The trace its spans belong to (hex): the submitter's, or the task's own.
    pub trace_id: String,
    /// Service work: where the service stands, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceStatusDto>,
}

impl From<&Task> for TaskDto {
    fn from(task: &Task) -> TaskDto {
        TaskDto {
            id: task.id.to_string(),
            spec: SpecDto::from(&task.spec),
            state: task.state.as_str(),
            state_reason: task.state_reason.clone(),
            attempt: task.attempt,
            lease_generation: task.lease_generation,
            agent_id: task.agent_id.clone(),
            sidecar_id: task.sidecar_id.clone(),
            created_unix_ms: task.created_unix_ms,
            updated_unix_ms: task.updated_unix_ms,
            started_unix_ms: task.started_unix_ms,
            finished_unix_ms: task.finished_unix_ms,
            outcome: task.outcome.as_ref().map(OutcomeDto::from),
            trace_id: task.trace().trace_id_hex(),
            service: task.service.as_deref().map(ServiceStatusDto::from),
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct SpecDto {
    pub name: String,
    pub idempotency_key: Option<String>,
    pub priority: &'static str,
    pub tier: Option<&'static str>,
    pub work: WorkDto,
    pub context: ContextDto,
    pub success_criteria: Vec<String>,
    pub verification: Vec<VerificationDto>,
    pub limits: LimitsDto,
    pub placement: PlacementDto,
    pub depends_on: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub retry: RetryDto,
}

impl From<&TaskSpec> for SpecDto {
    fn from(spec: &TaskSpec) -> SpecDto {
        SpecDto {
            name: spec.name.clone(),
            idempotency_key: spec.idempotency_key.clone(),
            priority: spec.priority.as_str(),
            tier: spec.tier.map(|t| t.as_str()),
            work: WorkDto::from(&spec.work),
            context: ContextDto::from(&spec.context),
            success_criteria: spec.success_criteria.clone(),
            verification: spec.verification.iter().map(VerificationDto::from).collect(),
            limits: LimitsDto::from(&spec.limits),
            placement: PlacementDto::from(&spec.placement),
            depends_on: spec.depends_on.iter().map(|id| id.to_string()).collect(),
            labels: spec.labels.clone(),
            retry: RetryDto::from(&spec.retry),
        }
    }
}

/// `{"shell": {...}}`, `{"llm": {...}}` or `{"agent": {...}}`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum WorkDto {
    Shell(ShellDto),
    Llm(LlmDto),
    Agent(AgentWorkDto),
    Service(Box<ServiceWorkDto>),
}

impl From<&Work> for WorkDto {
    fn from(work: &Work) -> WorkDto {
        match work {
            Work::Shell(shell) => WorkDto::Shell(ShellDto::from(shell)),
            Work::Service(service) => WorkDto::Service(Box::new(ServiceWorkDto::from(&**service))),
            // A redacted prompt is shown as stored: not at all.
            Work::Llm(llm) => WorkDto::Llm(LlmDto {
                prompt: if llm.redact { String::new() } else { llm.prompt.clone() },
                system: if llm.redact { String::new() } else { llm.system.clone() },
                messages: llm
                    .messages
                    .iter()
                    .filter(|_| !llm.redact)
                    .map(|m| MessageDto { role: m.role.as_str(), content: m.content.clone() })
                    .collect(),
                model: llm.model.clone(),
                max_tokens: llm.max_tokens,
                temperature: llm.temperature,
                stop: llm.stop.clone(),
                format: llm.json.then_some("json"),
                keep_alive: llm.keep_alive.clone(),
                fix_rounds: llm.fix_rounds.unwrap_or(0),
            }),
            Work::Agent(agent) => WorkDto::Agent(AgentWorkDto {
                goal: agent.goal.clone(),
                repository: agent.repository.clone(),
                branch: agent.branch.clone(),
                fix_rounds: agent.fix_rounds.unwrap_or(crate::domain::DEFAULT_FIX_ROUNDS),
            }),
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct ShellDto {
    pub command: CommandDto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "skip_empty")]
    pub secret_env: Vec<String>,
}

impl From<&ShellWork> for ShellDto {
    fn from(shell: &ShellWork) -> ShellDto {
        ShellDto {
            command: match &shell.command {
                ShellCommand::Argv(argv) => CommandDto::Argv(argv.clone()),
                ShellCommand::Script(script) => CommandDto::Script(script.clone()),
            },
            cwd: shell.cwd.clone(),
            env: shell.env.clone(),
            secret_env: shell.secret_env.clone(),
        }
    }
}

/// `{"argv": [...]}` or `{"script": "..."}`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum CommandDto {
    Argv(Vec<String>),
    Script(String),
}

#[derive(Serialize, Debug, PartialEq)]
pub struct LlmDto {
    pub prompt: String,
    #[serde(skip_serializing_if = "is_empty_string")]
    pub system: String,
    #[serde(skip_serializing_if = "skip_empty")]
    pub messages: Vec<MessageDto>,
    #[serde(skip_serializing_if = "is_empty_string")]
    pub model: String,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "skip_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    /// Fix rounds after a failed verification (0 when not set).
    pub fix_rounds: u32,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct MessageDto {
    pub role: &'static str,
    pub content: String,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct AgentWorkDto {
    pub goal: String,
    pub repository: String,
    #[serde(skip_serializing_if = "is_empty_string")]
    pub branch: String,
    /// Fix rounds after a failed verification (the default, 2, when not set).
    pub fix_rounds: u32,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct ContextDto {
    pub repository: String,
    pub branch: String,
    pub files: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub notes: String,
    /// `keep` or `fresh`; left out for a workspace of the attempt's own.
    #[serde(skip_serializing_if = "is_empty_string")]
    pub environment: String,
}

impl From<&TaskContext> for ContextDto {
    fn from(context: &TaskContext) -> ContextDto {
        ContextDto {
            repository: context.repository.clone(),
            branch: context.branch.clone(),
            files: context.files.clone(),
            env: context.env.clone(),
            notes: context.notes.clone(),
            environment: context.environment.as_str().to_owned(),
        }
    }
}

/// `{"file_exists": "path"}`, `{"command_succeeds": {"argv", "timeout_ms"}}`,
/// `{"test_passes": {"argv", "timeout_ms"}}`, `"git_clean"`,
/// `{"output_contains": {"text": T}}` or `{"output_contains": {"regex": R}}`, `{"http_ok": URL}`,
/// `{"llm_judge": {"model": M}}`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum VerificationDto {
    FileExists(String),
    CommandSucceeds { argv: Vec<String>, timeout_ms: u64 },
    TestPasses { argv: Vec<String>, timeout_ms: u64 },
    GitClean,
    OutputContains(PatternDto),
    HttpOk(String),
    LlmJudge { model: String },
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum PatternDto {
    Text(String),
    Regex(String),
}

impl From<&Verification> for VerificationDto {
    fn from(step: &Verification) -> VerificationDto {
        match step {
            Verification::FileExists(path) => VerificationDto::FileExists(path.clone()),
            Verification::CommandSucceeds { argv, timeout_ms } => {
                VerificationDto::CommandSucceeds { argv: argv.clone(), timeout_ms: *timeout_ms }
            }
            Verification::TestPasses { argv, timeout_ms } => {
                VerificationDto::TestPasses { argv: argv.clone(), timeout_ms: *timeout_ms }
            }
            Verification::GitClean => VerificationDto::GitClean,
            Verification::OutputContains(Pattern::Text(text)) => {
                VerificationDto::OutputContains(PatternDto::Text(text.clone()))
            }
            Verification::OutputContains(Pattern::Regex(regex)) => {
                VerificationDto::OutputContains(PatternDto::Regex(regex.clone()))
            }
            Verification::HttpOk(url) => VerificationDto::HttpOk(url.clone()),
            Verification::LlmJudge { model } => VerificationDto::LlmJudge { model: model.clone() },
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct LimitsDto {
    pub timeout_ms: Option<u64>,
    pub deadline_unix_ms: Option<i64>,
    pub max_attempts: u32,
    pub max_tokens: Option<u64>,
    pub max_cost_micros: Option<u64>,
    pub max_output_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pids: Option<u64>,
}

impl From<&Limits> for LimitsDto {
    fn from(limits: &Limits) -> LimitsDto {
        LimitsDto {
            timeout_ms: limits.timeout_ms,
            deadline_unix_ms: limits.deadline_unix_ms,
            max_attempts: limits.max_attempts,
            max_tokens: limits.max_tokens,
            max_cost_micros: limits.max_cost_micros,
            max_output_bytes: limits.max_output_bytes,
            max_memory_bytes: limits.max_memory_bytes,
            max_pids: limits.max_pids,
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct PlacementDto {
    pub tags: Vec<String>,
    pub host: String,
    pub model: String,
    pub local_only: bool,
}

impl From<&Placement> for PlacementDto {
    fn from(placement: &Placement) -> PlacementDto {
        PlacementDto {
            tags: placement.tags.clone(),
            host: placement.host.clone(),
            model: placement.model.clone(),
            local_only: placement.local_only,
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct RetryDto {
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_on_exit_codes: Vec<i32>,
}

impl From<&RetryPolicy> for RetryDto {
    fn from(retry: &RetryPolicy) -> RetryDto {
        RetryDto {
            backoff_base_ms: retry.backoff_base_ms,
            backoff_max_ms: retry.backoff_max_ms,
            retry_on_exit_codes: retry.retry_on_exit_codes.clone(),
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct QueueDto {
    pub tasks: usize,
    pub ready: usize,
    pub blocked: usize,
    pub delayed: usize,
    pub waiting_on_dependencies: usize,
    pub leased: usize,
    pub dead_lettered: usize,
    pub stale_messages_refused: u64,
    pub tier_fallbacks: u64,
    pub prewarms: u64,
    pub escalations: u64,
    pub ready_by_lane: LanesDto,
    pub oldest_ready_unix_ms: Option<i64>,
}

/// Counts by lane.
#[derive(Serialize, Debug, PartialEq)]
pub struct LanesDto {
    pub interactive: usize,
    pub urgent: usize,
    pub high: usize,
    pub normal: usize,
    pub low: usize,
}

/// A token the hub accepts (`GET /api/v1/tokens`): never its secret.
#[derive(Serialize, Debug, PartialEq)]
pub struct TokenDto {
    pub id: String,
    pub role: &'static str,
    pub name: String,
    /// `null` for the bootstrap tokens (`admin.token`, `join.token`).
    pub created_unix_ms: Option<i64>,
    /// The gateway's limits for this key; `null`: none.
    pub limits: Option<KeyLimitsDto>,
}

/// What a gateway key spent (`GET /api/v1/usage`): one day, key and model, or a sum over the
/// fields that are `null`.
#[derive(Serialize, Debug, PartialEq)]
pub struct UsageDto {
    pub day: Option<String>,
    pub key: Option<String>,
    /// The key's name, as `tokens ls` shows it.
    pub key_name: Option<String>,
    pub model: Option<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Priced by the hub's price table (0 for a model it has no price for).
    pub cost_usd: f64,
}

impl UsageDto {
    pub fn of(
        day: Option<String>,
        key: Option<(Option<String>, String)>,
        model: Option<String>,
        spend: crate::usage::Spend,
    ) -> UsageDto {
        let (key_name, key) = match key {
            Some((name, key)) => (name, Some(key)),
            None => (None, None),
        };
        UsageDto {
            day,
            key,
            key_name,
            model,
            requests: spend.requests,
            input_tokens: spend.input_tokens,
            output_tokens: spend.output_tokens,
            cost_usd: spend.cost_micros as f64 / 1e6,
        }
    }
}

/// A key's gateway limits (`docs/gateway.md`); each field left out is no limit.
#[derive(Serialize, Debug, PartialEq)]
pub struct KeyLimitsDto {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    pub local_only: bool,
    pub store: bool,
}

impl From<&crate::auth::TokenInfo> for TokenDto {
    fn from(t: &crate::auth::TokenInfo) -> TokenDto {
        let l = &t.limits;
        TokenDto {
            id: t.id.clone(),
            role: t.role.as_str(),
            name: t.name.clone(),
            created_unix_ms: (t.created_unix_ms != 0).then_some(t.created_unix_ms),
            limits: (!l.is_none()).then(|| KeyLimitsDto {
                rpm: l.rpm,
                tpm: l.tpm,
                daily_budget_usd: l.daily_budget_usd,
                monthly_budget_usd: l.monthly_budget_usd,
                models: l.models.clone(),
                local_only: l.local_only,
                store: l.store,
            }),
        }
    }
}

/// A join token (`GET /api/v1/join-tokens`): never its secret.
#[derive(Serialize, Debug, PartialEq)]
pub struct JoinTokenDto {
    pub id: String,
    pub uses: u32,
    pub used: u32,
    pub tags: Vec<String>,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    /// The token that made it.
    pub created_by: String,
    /// `usable`, `used_up` or `expired`.
    pub state: &'static str,
}

impl JoinTokenDto {
    pub fn new(g: &crate::store::JoinGrant, now_ms: i64) -> JoinTokenDto {
        let state = crate::enrol::JoinState::of(g, now_ms).as_str();
        JoinTokenDto {
            id: g.id.clone(),
            uses: g.uses,
            used: g.used,
            tags: g.tags.clone(),
            created_unix_ms: g.created_unix_ms,
            expires_unix_ms: g.expires_unix_ms,
            created_by: g.created_by.clone(),
            state,
        }
    }
}

/// An enrolled sidecar (`GET /api/v1/sidecars`).
#[derive(Serialize, Debug, PartialEq)]
pub struct SidecarIdentityDto {
    pub id: String,
    pub hostname: String,
    pub tags: Vec<String>,
    pub join_token_id: String,
    pub cert_sha256: String,
    pub enrolled_unix_ms: i64,
    /// `null` while it may connect.
    pub revoked_unix_ms: Option<i64>,
    /// Whether it has a session now.
    pub connected: bool,
}

impl SidecarIdentityDto {
    pub fn new(i: &crate::store::SidecarIdentity, connected: bool) -> SidecarIdentityDto {
        SidecarIdentityDto {
            id: i.sidecar_id.clone(),
            hostname: i.hostname.clone(),
            tags: i.tags.clone(),
            join_token_id: i.join_token_id.clone(),
            cert_sha256: i.cert_sha256.clone(),
            enrolled_unix_ms: i.enrolled_unix_ms,
            revoked_unix_ms: (i.revoked_unix_ms != 0).then_some(i.revoked_unix_ms),
            connected,
        }
    }
}

/// One admin action (`GET /api/v1/audit`).
#[derive(Serialize, Debug, PartialEq)]
pub struct AuditDto {
    pub id: String,
    pub at_unix_ms: i64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl From<&crate::store::AuditEntry> for AuditDto {
    fn from(e: &crate::store::AuditEntry) -> AuditDto {
        AuditDto {
            id: e.id.to_string(),
            at_unix_ms: e.at_unix_ms,
            actor: e.actor.clone(),
            role: e.role.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// One row of `GET /api/v1/models/stats`.
#[derive(Serialize, Debug, PartialEq)]
pub struct ModelStatDto {
    pub model: String,
    pub kind: &'static str,
    pub tier: &'static str,
    pub passed: u64,
    pub failed: u64,
    pub pass_rate: f64,
}

impl From<&crate::core::ModelStat> for ModelStatDto {
    fn from(s: &crate::core::ModelStat) -> ModelStatDto {
        ModelStatDto {
            model: s.model.clone(),
            kind: s.kind,
            tier: s.tier,
            passed: s.passed,
            failed: s.failed,
            pass_rate: (s.pass_rate * 1000.0).round() / 1000.0,
        }
    }
}

impl From<&QueueStats> for QueueDto {
    fn from(q: &QueueStats) -> QueueDto {
        QueueDto {
            tasks: q.tasks,
            ready: q.ready,
            blocked: q.blocked,
            delayed: q.delayed,
            waiting_on_dependencies: q.waiting_on_dependencies,
            leased: q.leased,
            dead_lettered: q.dead_lettered,
            stale_messages_refused: q.stale_messages_refused,
            tier_fallbacks: q.tier_fallbacks,
            prewarms: q.prewarms,
            escalations: q.escalations,
            ready_by_lane: LanesDto {
                interactive: q.ready_by_lane[0],
                urgent: q.ready_by_lane[1],
                high: q.ready_by_lane[2],
                normal: q.ready_by_lane[3],
                low: q.ready_by_lane[4],
            },
            oldest_ready_unix_ms: q.oldest_ready_unix_ms,
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct BackupDto {
    pub path: PathBuf,
    pub tasks: u64,
    pub bytes: u64,
}

impl From<&crate::backup::BackupInfo> for BackupDto {
    fn from(b: &crate::backup::BackupInfo) -> BackupDto {
        BackupDto { path: b.path.clone(), tasks: b.tasks, bytes: b.bytes }
    }
}

/// `event: output` of a task's event stream.
#[derive(Serialize, Debug, PartialEq)]
pub struct OutputEventDto {
    pub attempt: u32,
    pub stream: &'static str,
    pub offset: u64,
    pub data_base64: String,
}

mod fleet;
mod outcome;
mod placement;
mod service;
#[cfg(test)]
mod tests;
mod workflow;

pub use self::fleet::*;
pub use self::outcome::*;
pub use self::placement::*;
pub use self::service::*;
pub use self::workflow::*;
