//! Conversions between the wire contract (`agentcom_proto::v1`) and the domain types: the only
//! ones, used by the hub's gRPC API, the sidecar's link and `hubctl`.
//!
//! This is where protobuf stops. Inbound conversions validate (sizes, enum values, ids) and fill
//! defaults; outbound ones cannot fail.

use std::collections::BTreeMap;

use agentcom_proto::v1 as pb;

use crate::domain::*;

pub fn lane_from_pb(value: i32) -> Result<Lane, Error> {
    match value {
        0 => Ok(Lane::Normal),
        n => Lane::from_number(n).ok_or_else(|| Error::invalid("priority", format!("{n} is not a priority"))),
    }
}

pub fn tier_from_pb(value: i32) -> Result<Option<Tier>, Error> {
    match value {
        0 => Ok(None),
        n => Tier::from_number(n).map(Some).ok_or_else(|| Error::invalid("tier", format!("{n} is not a tier"))),
    }
}

/// `None` for UNSPECIFIED (meaning "any state" in filters).
pub fn state_from_pb(value: i32) -> Result<Option<TaskState>, Error> {
    match value {
        0 => Ok(None),
        n => TaskState::from_number(n)
            .map(Some)
            .ok_or_else(|| Error::invalid("state", format!("{n} is not a task state"))),
    }
}

/// At most 256 bytes, cut at a character boundary.
fn clip(text: String) -> String {
    clip_to(text, 256)
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn clip_to(mut text: String, max: usize) -> String {
    if text.len() > max {
        let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
    }
    text
}

/// Rounds an outcome from a sidecar may list.
pub const MAX_ROUNDS: usize = 32;

/// Bytes of a workspace's diff, and of its `--stat`, an outcome keeps.
pub const MAX_DIFF_BYTES: usize = 256 * 1024;
pub const MAX_DIFF_STAT_BYTES: usize = 16 * 1024;

/// Steps a verification report from a sidecar may hold, and bytes of each step's evidence.
pub const MAX_REPORTED_STEPS: usize = 64;
pub const MAX_EVIDENCE_BYTES: usize = 4096;

/// A report from a sidecar: bounded and clipped rather than trusted; an unknown verdict counts
/// as failed.
pub fn report_from_pb(report: pb::VerificationReport) -> VerificationReport {
    VerificationReport {
        verdict: Verdict::parse(&report.verdict).unwrap_or(Verdict::Failed),
        steps: report
            .steps
            .into_iter()
            .take(MAX_REPORTED_STEPS)
            .map(|s| StepReport {
                kind: clip(s.kind),
                target: clip_to(s.target, 1024),
                passed: s.passed,
                duration_ms: s.duration_ms,
                evidence: clip_to(s.evidence, MAX_EVIDENCE_BYTES),
                summary: s.summary.map(|line| clip_to(line, 1024)),
            })
            .collect(),
    }
}

pub fn report_into_pb(report: VerificationReport) -> pb::VerificationReport {
    pb::VerificationReport {
        verdict: report.verdict.as_str().to_owned(),
        steps: report
            .steps
            .into_iter()
            .map(|s| pb::StepReport {
                kind: s.kind,
                target: s.target,
                passed: s.passed,
                duration_ms: s.duration_ms,
                evidence: s.evidence,
                summary: s.summary,
            })
            .collect(),
    }
}

pub fn verification_from_pb(step: pb::VerificationStep) -> Result<Verification, Error> {
    use pb::verification_step::Kind;
    Ok(match step.kind {
        Some(Kind::FileExists(path)) => Verification::FileExists(path),
        Some(Kind::CommandSucceeds(c)) => Verification::CommandSucceeds { argv: c.argv, timeout_ms: c.timeout_ms },
        Some(Kind::TestPasses(c)) => Verification::TestPasses { argv: c.argv, timeout_ms: c.timeout_ms },
        Some(Kind::GitClean(_)) => Verification::GitClean,
        Some(Kind::OutputContains(pattern)) => Verification::OutputContains(match pattern.pattern {
            Some(pb::output_pattern::Pattern::Text(text)) => Pattern::Text(text),
            Some(pb::output_pattern::Pattern::Regex(regex)) => Pattern::Regex(regex),
            None => return Err(Error::invalid("verification", "output_contains needs text or regex")),
        }),
        Some(Kind::HttpOk(url)) => Verification::HttpOk(url),
        Some(Kind::LlmJudge(judge)) => Verification::LlmJudge { model: judge.model },
        None => return Err(Error::invalid("verification", "a step has no kind")),
    })
}

pub fn verification_into_pb(step: Verification) -> pb::VerificationStep {
    use pb::verification_step::Kind;
    let kind = match step {
        Verification::FileExists(path) => Kind::FileExists(path),
        Verification::CommandSucceeds { argv, timeout_ms } => {
            Kind::CommandSucceeds(pb::CommandCheck { argv, timeout_ms })
        }
        Verification::TestPasses { argv, timeout_ms } => Kind::TestPasses(pb::CommandCheck { argv, timeout_ms }),
        Verification::GitClean => Kind::GitClean(true),
        Verification::OutputContains(pattern) => Kind::OutputContains(pb::OutputPattern {
            pattern: Some(match pattern {
                Pattern::Text(text) => pb::output_pattern::Pattern::Text(text),
                Pattern::Regex(regex) => pb::output_pattern::Pattern::Regex(regex),
            }),
        }),
        Verification::HttpOk(url) => Kind::HttpOk(url),
        Verification::LlmJudge { model } => Kind::LlmJudge(pb::LlmJudge { model }),
    };
    pb::VerificationStep { kind: Some(kind) }
}

fn opt_nonzero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

fn nonempty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn btree(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// Converts and validates a submitted spec, filling unset fields from `defaults`.
pub fn spec_from_pb(spec: pb::TaskSpec, defaults: &SpecDefaults) -> Result<TaskSpec, Error> {
    let spec = spec_from_pb_unchecked(spec, defaults)?;
    spec.validate()?;
    Ok(spec)
}

/// Converts without the size checks: for records this hub stored after validating them.
fn spec_from_pb_unchecked(spec: pb::TaskSpec, defaults: &SpecDefaults) -> Result<TaskSpec, Error> {
    let work = match spec.work.and_then(|w| w.kind) {
        None => return Err(Error::invalid("work", "is required (shell, llm, agent or service)")),
        Some(pb::work::Kind::Shell(shell)) => Work::Shell(shell_from_pb(shell, "work.shell")?),
        Some(pb::work::Kind::Service(service)) => Work::Service(Box::new(service::work_from_pb(service)?)),
        Some(pb::work::Kind::Llm(llm)) => {
            let messages = llm
                .messages
                .into_iter()
                .map(|m| {
                    Ok(ChatMessage {
                        role: m.role.parse()?,
                        content: m.content,
                        tool_calls: m.tool_calls.into_iter().map(tool_call_from_pb).collect(),
                        tool_call_id: m.tool_call_id,
                    })
                })
                .collect::<Result<_, Error>>()?;
            Work::Llm(LlmWork {
                prompt: llm.prompt,
                system: llm.system,
                messages,
                model: llm.model,
                max_tokens: llm.max_tokens,
                temperature: llm.temperature,
                stop: llm.stop,
                json: llm.json,
                keep_alive: nonempty(llm.keep_alive),
                fix_rounds: llm.fix_rounds,
                redact: llm.redact,
                tools: llm
                    .tools
                    .into_iter()
                    .map(|t| ToolSpec { name: t.name, description: t.description, parameters: t.parameters_json })
                    .collect(),
            })
        }
        Some(pb::work::Kind::Agent(agent)) => Work::Agent(AgentWork {
            goal: agent.goal,
            repository: agent.repository,
            branch: agent.branch,
            fix_rounds: agent.fix_rounds,
        }),
    };
    let context = spec.context.unwrap_or_default();
    let environment = Environment::parse(&context.environment).ok_or_else(|| {
        Error::invalid("context.environment", format!("{:?} is not keep or fresh", context.environment))
    })?;
    let limits = spec.limits.unwrap_or_default();
    let placement = spec.placement.unwrap_or_default();
    let retry = spec.retry.unwrap_or_default();
    let verification = spec.verification.into_iter().map(verification_from_pb).collect::<Result<Vec<_>, _>>()?;
    let depends_on = spec.depends_on.iter().map(|id| id.parse()).collect::<Result<Vec<TaskId>, _>>()?;
    let trace_parent = match spec.traceparent.as_str() {
        "" => None,
        given => Some(given.parse::<TraceParent>().map_err(|err| Error::invalid("traceparent", err.to_string()))?),
    };
    let spec = TaskSpec {
        name: spec.name,
        idempotency_key: nonempty(spec.idempotency_key),
        priority: lane_from_pb(spec.priority)?,
        tier: tier_from_pb(spec.tier)?,
        work,
        context: TaskContext {
            repository: context.repository,
            branch: context.branch,
            files: context.files,
            env: btree(context.env),
            notes: context.notes,
            environment,
        },
        success_criteria: spec.success_criteria,
        verification,
        limits: Limits {
            timeout_ms: opt_nonzero(limits.timeout_ms),
            deadline_unix_ms: (limits.deadline_unix_ms != 0).then_some(limits.deadline_unix_ms),
            max_attempts: if limits.max_attempts == 0 { defaults.max_attempts } else { limits.max_attempts },
            max_tokens: opt_nonzero(limits.max_tokens),
            max_cost_micros: opt_nonzero(limits.max_cost_micros),
            max_output_bytes: opt_nonzero(limits.max_output_bytes).unwrap_or(defaults.max_output_bytes),
            max_memory_bytes: opt_nonzero(limits.max_memory_bytes),
            max_pids: opt_nonzero(limits.max_pids),
        },
        placement: Placement {
            tags: placement.tags,
            host: placement.host,
            model: placement.model,
            local_only: placement.local_only,
        },
        depends_on,
        labels: btree(spec.labels),
        retry: RetryPolicy {
            backoff_base_ms: opt_nonzero(retry.backoff_base_ms).unwrap_or(defaults.backoff_base_ms),
            backoff_max_ms: opt_nonzero(retry.backoff_max_ms)
                .unwrap_or(defaults.backoff_max_ms.max(retry.backoff_base_ms)),
            retry_on_exit_codes: retry.retry_on_exit_codes,
        },
        trace_parent,
    };
    Ok(spec)
}

fn shell_from_pb(shell: pb::ShellWork, field: &'static str) -> Result<ShellWork, Error> {
    let command = match (shell.argv.is_empty(), shell.script.is_empty()) {
        (false, true) => ShellCommand::Argv(shell.argv),
        (true, false) => ShellCommand::Script(shell.script),
        (true, true) => return Err(Error::invalid(field, "needs argv or script")),
        (false, false) => return Err(Error::invalid(field, "takes argv or script, not both")),
    };
    Ok(ShellWork { command, cwd: nonempty(shell.cwd), env: btree(shell.env), secret_env: shell.secret_env })
}

fn shell_into_pb(shell: ShellWork) -> pb::ShellWork {
    let (argv, script) = match shell.command {
        ShellCommand::Argv(argv) => (argv, String::new()),
        ShellCommand::Script(script) => (Vec::new(), script),
    };
    pb::ShellWork {
        argv,
        script,
        cwd: shell.cwd.unwrap_or_default(),
        env: shell.env.into_iter().collect(),
        secret_env: shell.secret_env,
    }
}

pub fn spec_to_pb(spec: &TaskSpec) -> pb::TaskSpec {
    spec_into_pb(spec.clone())
}

/// Converts by moving: the storage writer's path, which owns its copy already.
pub fn spec_into_pb(spec: TaskSpec) -> pb::TaskSpec {
    let work = match spec.work {
        Work::Shell(shell) => pb::work::Kind::Shell(shell_into_pb(shell)),
        Work::Service(service) => pb::work::Kind::Service(service::work_into_pb(*service)),
        Work::Llm(llm) => pb::work::Kind::Llm(pb::LlmWork {
            prompt: llm.prompt,
            system: llm.system,
            model: llm.model,
            max_tokens: llm.max_tokens,
            messages: llm
                .messages
                .into_iter()
                .map(|m| pb::ChatMessage {
                    role: m.role.as_str().to_owned(),
                    content: m.content,
                    tool_calls: m.tool_calls.into_iter().map(tool_call_into_pb).collect(),
                    tool_call_id: m.tool_call_id,
                })
                .collect(),
            temperature: llm.temperature,
            stop: llm.stop,
            json: llm.json,
            keep_alive: llm.keep_alive.unwrap_or_default(),
            fix_rounds: llm.fix_rounds,
            redact: llm.redact,
            tools: llm
                .tools
                .into_iter()
                .map(|t| pb::ToolSpec { name: t.name, description: t.description, parameters_json: t.parameters })
                .collect(),
        }),
        Work::Agent(agent) => pb::work::Kind::Agent(pb::AgentWork {
            goal: agent.goal,
            repository: agent.repository,
            branch: agent.branch,
            fix_rounds: agent.fix_rounds,
        }),
    };
    let verification = spec.verification.into_iter().map(verification_into_pb).collect();
    pb::TaskSpec {
        name: spec.name,
        idempotency_key: spec.idempotency_key.unwrap_or_default(),
        priority: spec.priority.number(),
        tier: spec.tier.map_or(0, Numbered::number),
        work: Some(pb::Work { kind: Some(work) }),
        context: Some(pb::TaskContext {
            repository: spec.context.repository,
            branch: spec.context.branch,
            files: spec.context.files,
            env: spec.context.env.into_iter().collect(),
            notes: spec.context.notes,
            environment: spec.context.environment.as_str().to_owned(),
        }),
        success_criteria: spec.success_criteria,
        verification,
        limits: Some(pb::Limits {
            timeout_ms: spec.limits.timeout_ms.unwrap_or(0),
            deadline_unix_ms: spec.limits.deadline_unix_ms.unwrap_or(0),
            max_attempts: spec.limits.max_attempts,
            max_tokens: spec.limits.max_tokens.unwrap_or(0),
            max_cost_micros: spec.limits.max_cost_micros.unwrap_or(0),
            max_output_bytes: spec.limits.max_output_bytes,
            max_memory_bytes: spec.limits.max_memory_bytes.unwrap_or(0),
            max_pids: spec.limits.max_pids.unwrap_or(0),
        }),
        placement: Some(pb::Placement {
            tags: spec.placement.tags,
            host: spec.placement.host,
            model: spec.placement.model,
            local_only: spec.placement.local_only,
        }),
        depends_on: spec.depends_on.iter().map(|id| id.to_string()).collect(),
        labels: spec.labels.into_iter().collect(),
        retry: Some(pb::RetryPolicy {
            backoff_base_ms: spec.retry.backoff_base_ms,
            backoff_max_ms: spec.retry.backoff_max_ms,
            retry_on_exit_codes: spec.retry.retry_on_exit_codes,
        }),
        traceparent: spec.trace_parent.map(|p| p.to_string()).unwrap_or_default(),
    }
}

/// A price from the hub. Refused unless both are finite and not negative.
pub fn price_from_pb(price: pb::Price) -> Option<TokenPrice> {
    let fine = |v: f64| v.is_finite() && v >= 0.0;
    (fine(price.input) && fine(price.output)).then_some(TokenPrice { input: price.input, output: price.output })
}

pub fn price_into_pb(price: TokenPrice) -> pb::Price {
    pb::Price { input: price.input, output: price.output }
}

pub fn outcome_from_pb(outcome: pb::TaskOutcome) -> Outcome {
    let exit = match outcome.exit {
        Some(pb::task_outcome::Exit::ExitCode(code)) => Exit::Code(code),
        Some(pb::task_outcome::Exit::Signal(signal)) => Exit::Signal(signal),
        None => Exit::Unknown,
    };
    Outcome {
        exit,
        duration_ms: outcome.duration_ms,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        stdout_total_bytes: outcome.stdout_total_bytes,
        stderr_total_bytes: outcome.stderr_total_bytes,
        timed_out: outcome.timed_out,
        error: nonempty(outcome.error),
        // From a sidecar: names are clipped rather than trusted.
        usage: outcome.usage.map(|u| Usage {
            provider: clip(u.provider),
            endpoint_id: clip(u.endpoint_id),
            model: clip(u.model),
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
            cache_write_tokens: u.cache_write_tokens,
            ttft_ms: u.ttft_ms,
            output_tokens_per_s: u.output_tokens_per_s.filter(|r| r.is_finite() && *r >= 0.0),
            load_ms: u.load_ms,
            cost_micros: u.cost_micros,
            estimated: u.estimated,
            stop_reason: clip(u.stop_reason),
        }),
        budget_exceeded: outcome.budget_exceeded,
        verification: outcome.verification.map(report_from_pb),
        workspace: outcome.workspace.map(|w| WorkspaceReport {
            repository: clip_to(w.repository, 4096),
            base: clip(w.base),
            branch: w.branch.map(clip),
            commit: w.commit.map(clip),
            diff_stat: clip_to(w.diff_stat, MAX_DIFF_STAT_BYTES),
            diff: clip_to(w.diff, MAX_DIFF_BYTES),
            diff_total_bytes: w.diff_total_bytes,
            kept_at: w.kept_at.map(|p| clip_to(p, 4096)),
            pushed_to: w.pushed_to.map(|p| clip_to(p, 4096)),
            push_error: w.push_error.map(|e| clip_to(e, MAX_EVIDENCE_BYTES)),
        }),
        rounds: outcome
            .rounds
            .into_iter()
            .take(MAX_ROUNDS)
            .map(|r| Round {
                number: r.number,
                verdict: clip(r.verdict),
                failed: r.failed.into_iter().take(MAX_REPORTED_STEPS).map(|f| clip_to(f, 1024)).collect(),
                diff_stat: clip_to(r.diff_stat, MAX_DIFF_STAT_BYTES),
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_micros: r.cost_micros,
            })
            .collect(),
        steps: outcome.steps.into_iter().take(MAX_STEPS).map(step_from_pb).collect(),
        output_dropped_unix_ms: Some(outcome.output_dropped_unix_ms).filter(|&ms| ms > 0),
        // From a sidecar: bounded as a spec's tools are.
        tool_calls: outcome
            .tool_calls
            .into_iter()
            .take(crate::domain::MAX_TOOLS)
            .map(|c| ToolCall {
                id: clip(c.id),
                name: clip(c.name),
                arguments: clip_to(c.arguments_json, crate::domain::MAX_TOOL_JSON_BYTES),
            })
            .collect(),
    }
}

pub fn tool_call_from_pb(call: pb::ToolCall) -> ToolCall {
    ToolCall { id: call.id, name: call.name, arguments: call.arguments_json }
}

pub fn tool_call_into_pb(call: ToolCall) -> pb::ToolCall {
    pb::ToolCall { id: call.id, name: call.name, arguments_json: call.arguments }
}

/// An agent's step from a sidecar, its text clipped.
pub fn step_from_pb(step: pb::AgentStep) -> AgentStep {
    AgentStep {
        round: step.round,
        tool: clip_to(step.tool, 128),
        summary: clip_to(step.summary, 512),
        result_bytes: step.result_bytes,
        ok: step.ok,
        input_tokens: step.input_tokens,
        output_tokens: step.output_tokens,
    }
}

pub fn step_into_pb(step: AgentStep) -> pb::AgentStep {
    pb::AgentStep {
        round: step.round,
        tool: step.tool,
        summary: step.summary,
        result_bytes: step.result_bytes,
        ok: step.ok,
        input_tokens: step.input_tokens,
        output_tokens: step.output_tokens,
    }
}

pub fn outcome_to_pb(outcome: &Outcome) -> pb::TaskOutcome {
    outcome_into_pb(outcome.clone())
}

pub fn outcome_into_pb(outcome: Outcome) -> pb::TaskOutcome {
    let exit = match outcome.exit {
        Exit::Code(code) => Some(pb::task_outcome::Exit::ExitCode(code)),
        Exit::Signal(signal) => Some(pb::task_outcome::Exit::Signal(signal)),
        Exit::Unknown => None,
    };
    pb::TaskOutcome {
        exit,
        duration_ms: outcome.duration_ms,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        stdout_total_bytes: outcome.stdout_total_bytes,
        stderr_total_bytes: outcome.stderr_total_bytes,
        timed_out: outcome.timed_out,
        error: outcome.error.unwrap_or_default(),
        usage: outcome.usage.map(|u| pb::Usage {
            provider: u.provider,
            endpoint_id: u.endpoint_id,
            model: u.model,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
            cache_write_tokens: u.cache_write_tokens,
            ttft_ms: u.ttft_ms,
            output_tokens_per_s: u.output_tokens_per_s,
            load_ms: u.load_ms,
            cost_micros: u.cost_micros,
            estimated: u.estimated,
            stop_reason: u.stop_reason,
        }),
        budget_exceeded: outcome.budget_exceeded,
        verification: outcome.verification.map(report_into_pb),
        workspace: outcome.workspace.map(|w| pb::WorkspaceReport {
            repository: w.repository,
            base: w.base,
            branch: w.branch,
            commit: w.commit,
            diff_stat: w.diff_stat,
            diff: w.diff,
            diff_total_bytes: w.diff_total_bytes,
            kept_at: w.kept_at,
            pushed_to: w.pushed_to,
            push_error: w.push_error,
        }),
        rounds: outcome
            .rounds
            .into_iter()
            .map(|r| pb::Round {
                number: r.number,
                verdict: r.verdict,
                failed: r.failed,
                diff_stat: r.diff_stat,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_micros: r.cost_micros,
            })
            .collect(),
        steps: outcome.steps.into_iter().map(step_into_pb).collect(),
        output_dropped_unix_ms: outcome.output_dropped_unix_ms.unwrap_or(0),
        tool_calls: outcome.tool_calls.into_iter().map(tool_call_into_pb).collect(),
    }
}

pub fn task_to_pb(task: &Task) -> pb::Task {
    task_into_pb(task.clone())
}

/// Converts by moving: the storage writer's path, which owns its copy already.
pub fn task_into_pb(task: Task) -> pb::Task {
    pb::Task {
        id: task.id.to_string(),
        spec: Some(spec_into_pb(task.spec)),
        state: task.state.number(),
        state_reason: task.state_reason,
        attempt: task.attempt,
        lease_generation: task.lease_generation,
        agent_id: task.agent_id.unwrap_or_default(),
        sidecar_id: task.sidecar_id.unwrap_or_default(),
        created_unix_ms: task.created_unix_ms,
        updated_unix_ms: task.updated_unix_ms,
        started_unix_ms: task.started_unix_ms.unwrap_or(0),
        finished_unix_ms: task.finished_unix_ms.unwrap_or(0),
        outcome: task.outcome.map(outcome_into_pb),
    }
}

/// Reads a stored task back. Stored tasks were validated on the way in, so the spec defaults
/// are only a fallback for records written by an older version.
pub fn task_from_pb(task: pb::Task) -> Result<Task, Error> {
    let spec = task.spec.ok_or_else(|| Error::invalid("spec", "is missing"))?;
    let state = state_from_pb(task.state)?.ok_or_else(|| Error::invalid("state", "is missing"))?;
    Ok(Task {
        id: task.id.parse()?,
        // Validated when it was submitted; the decode itself still checks the structure.
        spec: spec_from_pb_unchecked(spec, &SpecDefaults::default())?,
        state,
        state_reason: task.state_reason,
        attempt: task.attempt,
        lease_generation: task.lease_generation,
        agent_id: nonempty(task.agent_id),
        sidecar_id: nonempty(task.sidecar_id),
        created_unix_ms: task.created_unix_ms,
        updated_unix_ms: task.updated_unix_ms,
        started_unix_ms: (task.started_unix_ms != 0).then_some(task.started_unix_ms),
        finished_unix_ms: (task.finished_unix_ms != 0).then_some(task.finished_unix_ms),
        outcome: task.outcome.map(outcome_from_pb),
        service: None,
    })
}

pub fn stream_to_pb(stream: Stream) -> pb::OutputStream {
    match stream {
        Stream::Stdout => pb::OutputStream::Stdout,
        Stream::Stderr => pb::OutputStream::Stderr,
    }
}

pub fn stream_from_pb(value: i32) -> Option<Stream> {
    match pb::OutputStream::try_from(value) {
        Ok(pb::OutputStream::Stdout) => Some(Stream::Stdout),
        Ok(pb::OutputStream::Stderr) => Some(Stream::Stderr),
        _ => None,
    }
}

mod fleet;
pub mod link;
pub mod service;
pub use self::fleet::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentState;

    #[test]
    fn a_task_survives_the_round_trip_through_protobuf() {
        let mut spec = TaskSpec::shell(vec!["echo".into(), "hi".into()], &SpecDefaults::default());
        spec.priority = Lane::High;
        spec.tier = Some(Tier::Standard);
        spec.idempotency_key = Some("k1".into());
        spec.labels.insert("team".into(), "infra".into());
        spec.verification = vec![
            Verification::FileExists("out.txt".into()),
            Verification::GitClean,
            Verification::OutputContains(Pattern::Text("done".into())),
            Verification::OutputContains(Pattern::Regex("^ok".into())),
            Verification::HttpOk("http://127.0.0.1:8080/".into()),
            Verification::LlmJudge { model: "llama3.2:3b".into() },
            Verification::TestPasses { argv: vec!["cargo".into(), "test".into()], timeout_ms: 60_000 },
        ];
        spec.limits.timeout_ms = Some(5_000);
        spec.retry.retry_on_exit_codes = vec![75];
        let mut task = Task::new(TaskId::new(42), spec, 42);
        task.set_state(TaskState::Failed, "exit code 3", 50);
        task.outcome = Some(Outcome {
            exit: Exit::Code(3),
            duration_ms: 8,
            stdout: b"out".to_vec(),
            stderr: vec![0xff, 0x00],
            stdout_total_bytes: 3,
            stderr_total_bytes: 2,
            timed_out: false,
            error: None,
            usage: None,
            budget_exceeded: true,
            verification: Some(VerificationReport {
                verdict: Verdict::Failed,
                steps: vec![StepReport {
                    kind: "test_passes".into(),
                    target: "cargo test".into(),
                    passed: false,
                    duration_ms: 812,
                    evidence: "test it_works ... FAILED".into(),
                    summary: Some("test result: FAILED. 0 passed; 1 failed".into()),
                }],
            }),
            workspace: Some(WorkspaceReport {
                repository: "/srv/repos/app".into(),
                base: "3f2a".into(),
                branch: Some("agentcom/01M7".into()),
                commit: Some("9c1d".into()),
                diff_stat: " a.txt | 1 +".into(),
                diff: "+x".into(),
                diff_total_bytes: 2,
                kept_at: None,
                pushed_to: Some("/srv/repos/app".into()),
                push_error: None,
            }),
            rounds: vec![Round {
                number: 1,
                verdict: "failed".into(),
                failed: vec!["test_passes cargo test".into()],
                diff_stat: " a.txt | 1 +".into(),
                input_tokens: 10,
                output_tokens: 5,
                cost_micros: Some(120),
            }],
            steps: vec![AgentStep {
                round: 1,
                tool: "edit_file".into(),
                summary: "a.txt".into(),
                result_bytes: 9,
                ok: false,
                input_tokens: 300,
                output_tokens: 20,
            }],
            output_dropped_unix_ms: Some(1_700_000_000_000),
            tool_calls: vec![ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: "{}".into() }],
        });
        assert_eq!(task_from_pb(task_to_pb(&task)), Ok(task));
    }

    /// Lanes, tiers and states go through their stable numbers: those must be the contract's.
    #[test]
    fn stable_numbers_are_the_contracts_enum_values() {
        let name = |n| pb::Priority::try_from(n).ok().map(|e| e.as_str_name());
        check_numbering(name, Lane::as_str).unwrap();
        check_numbering(|n| pb::Tier::try_from(n).ok().map(|e| e.as_str_name()), Tier::as_str).unwrap();
        check_numbering(|n| pb::TaskState::try_from(n).ok().map(|e| e.as_str_name()), TaskState::as_str).unwrap();
        check_numbering(|n| pb::AgentState::try_from(n).ok().map(|e| e.as_str_name()), AgentState::as_str).unwrap();
        assert_eq!((Lane::from_number(0), Lane::from_number(6), Lane::from_number(-1)), (None, None, None));
        assert_eq!(Lane::from_number(5), Some(Lane::Interactive), "added last, numbered last");
    }

    #[test]
    fn a_spec_without_work_is_refused() {
        let err = spec_from_pb(pb::TaskSpec::default(), &SpecDefaults::default()).unwrap_err();
        assert_eq!(err.field, "work");
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let spec = pb::TaskSpec {
            priority: 99,
            work: Some(pb::Work {
                kind: Some(pb::work::Kind::Shell(pb::ShellWork { argv: vec!["true".into()], ..Default::default() })),
            }),
            ..Default::default()
        };
        assert_eq!(spec_from_pb(spec, &SpecDefaults::default()).unwrap_err().field, "priority");
    }

    #[test]
    fn unset_limits_take_the_defaults() {
        let spec = pb::TaskSpec {
            work: Some(pb::Work {
                kind: Some(pb::work::Kind::Shell(pb::ShellWork { script: "true".into(), ..Default::default() })),
            }),
            ..Default::default()
        };
        let defaults = SpecDefaults { max_attempts: 7, max_output_bytes: 99, ..SpecDefaults::default() };
        let spec = spec_from_pb(spec, &defaults).unwrap();
        assert_eq!((spec.limits.max_attempts, spec.limits.max_output_bytes), (7, 99));
        assert_eq!(spec.priority, Lane::Normal);
    }
}
