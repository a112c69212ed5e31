//! A task's outcome as JSON: exit, output, usage, the verification report, the workspace and
//! the agent's rounds.

use super::*;

#[derive(Serialize, Debug, PartialEq)]
pub struct OutcomeDto {
    pub exit: ExitDto,
    pub duration_ms: u64,
    /// Output as text; bytes that are not UTF-8 show as U+FFFD.
    pub stdout: String,
    pub stderr: String,
    pub stdout_total_bytes: u64,
    pub stderr_total_bytes: u64,
    pub timed_out: bool,
    /// Stopped at its token or cost budget; the output so far is kept.
    pub budget_exceeded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// LLM work only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageDto>,
    /// The checks run after the work, when the task has verification steps and the work succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationReportDto>,
    /// Work in a git workspace: what it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceDto>,
    /// Agent work: each round of work and verification.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RoundDto>,
    /// Agent work: the tools the model called, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepDto>,
    /// When retention dropped the output; left out while it is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dropped_unix_ms: Option<i64>,
}

/// One step of agent work.
#[derive(Serialize, Debug, PartialEq)]
pub struct StepDto {
    pub round: u32,
    pub tool: String,
    pub summary: String,
    pub result_bytes: u64,
    pub ok: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl From<&crate::domain::AgentStep> for StepDto {
    fn from(s: &crate::domain::AgentStep) -> StepDto {
        StepDto {
            round: s.round,
            tool: s.tool.clone(),
            summary: s.summary.clone(),
            result_bytes: s.result_bytes,
            ok: s.ok,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
        }
    }
}

/// `event: step` of a task's event stream.
#[derive(Serialize, Debug, PartialEq)]
pub struct StepEventDto {
    pub attempt: u32,
    /// The attempt's steps before this one.
    pub number: usize,
    pub step: StepDto,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct RoundDto {
    pub number: u32,
    pub verdict: String,
    pub failed: Vec<String>,
    pub diff_stat: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: Option<u64>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct WorkspaceDto {
    pub repository: String,
    pub base: String,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub diff_stat: String,
    pub diff: String,
    pub diff_total_bytes: u64,
    pub kept_at: Option<String>,
    pub pushed_to: Option<String>,
    pub push_error: Option<String>,
}

impl From<&crate::domain::WorkspaceReport> for WorkspaceDto {
    fn from(w: &crate::domain::WorkspaceReport) -> WorkspaceDto {
        WorkspaceDto {
            repository: w.repository.clone(),
            base: w.base.clone(),
            branch: w.branch.clone(),
            commit: w.commit.clone(),
            diff_stat: w.diff_stat.clone(),
            diff: w.diff.clone(),
            diff_total_bytes: w.diff_total_bytes,
            kept_at: w.kept_at.clone(),
            pushed_to: w.pushed_to.clone(),
            push_error: w.push_error.clone(),
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct UsageDto {
    pub provider: String,
    pub endpoint_id: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub ttft_ms: Option<u64>,
    pub output_tokens_per_s: Option<f64>,
    pub load_ms: Option<u64>,
    pub cost_micros: Option<u64>,
    pub estimated: bool,
    pub stop_reason: String,
}

impl From<&Usage> for UsageDto {
    fn from(u: &Usage) -> UsageDto {
        UsageDto {
            provider: u.provider.clone(),
            endpoint_id: u.endpoint_id.clone(),
            model: u.model.clone(),
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
            cache_write_tokens: u.cache_write_tokens,
            ttft_ms: u.ttft_ms,
            output_tokens_per_s: u.output_tokens_per_s,
            load_ms: u.load_ms,
            cost_micros: u.cost_micros,
            estimated: u.estimated,
            stop_reason: u.stop_reason.clone(),
        }
    }
}

impl From<&Outcome> for OutcomeDto {
    fn from(outcome: &Outcome) -> OutcomeDto {
        OutcomeDto {
            exit: match outcome.exit {
                Exit::Code(code) => ExitDto::Code(code),
                Exit::Signal(signal) => ExitDto::Signal(signal),
                Exit::Unknown => ExitDto::Unknown,
            },
            duration_ms: outcome.duration_ms,
            stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
            stdout_total_bytes: outcome.stdout_total_bytes,
            stderr_total_bytes: outcome.stderr_total_bytes,
            timed_out: outcome.timed_out,
            budget_exceeded: outcome.budget_exceeded,
            error: outcome.error.clone(),
            usage: outcome.usage.as_ref().map(UsageDto::from),
            verification: outcome.verification.as_ref().map(VerificationReportDto::from),
            workspace: outcome.workspace.as_ref().map(WorkspaceDto::from),
            rounds: outcome
                .rounds
                .iter()
                .map(|r| RoundDto {
                    number: r.number,
                    verdict: r.verdict.clone(),
                    failed: r.failed.clone(),
                    diff_stat: r.diff_stat.clone(),
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cost_micros: r.cost_micros,
                })
                .collect(),
            steps: outcome.steps.iter().map(StepDto::from).collect(),
            output_dropped_unix_ms: outcome.output_dropped_unix_ms,
        }
    }
}

/// `{"code": N}`, `{"signal": N}` or `"unknown"`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ExitDto {
    Code(i32),
    Signal(i32),
    Unknown,
}

/// `{"verdict": "passed" | "failed" | "partial", "steps": [...]}`.
#[derive(Serialize, Debug, PartialEq)]
pub struct VerificationReportDto {
    pub verdict: &'static str,
    pub steps: Vec<StepReportDto>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct StepReportDto {
    pub kind: String,
    pub target: String,
    pub passed: bool,
    pub duration_ms: u64,
    pub evidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl From<&VerificationReport> for VerificationReportDto {
    fn from(report: &VerificationReport) -> VerificationReportDto {
        VerificationReportDto {
            verdict: report.verdict.as_str(),
            steps: report
                .steps
                .iter()
                .map(|s| StepReportDto {
                    kind: s.kind.clone(),
                    target: s.target.clone(),
                    passed: s.passed,
                    duration_ms: s.duration_ms,
                    evidence: s.evidence.clone(),
                    summary: s.summary.clone(),
                })
                .collect(),
        }
    }
}
