//! How records are stored: the hub's own format (`proto/agentcom/storage/v1/storage.proto`),
//! separate from the wire contract, and the changes a write-ahead log record holds.
//!
//! This is the only code that encodes or decodes stored bytes. Encoding takes records by move
//! (the writer owns its copy); decoding checks the structure (enum values, ids) and fails with
//! a reason rather than guess. Version 1 of the format (a stored `agentcom.v1.Task`, fleet
//! settings as JSON) is read here too, once, by the migration.

use prost::Message;
use ulid::Ulid;

use crate::domain::*;
use crate::fleet::{Cordon, Endpoint, EndpointKind, Model, Owner};
use work::{work_from, work_into};

/// Generated code for `agentcom.storage.v1`.
#[allow(unreachable_pub, clippy::all, rust_2018_idioms)] // Reason: generated code; prost's style.
mod pb {
    // Checked in; proto/tests/generated.rs makes it from hub/proto and checks it.
    include!("generated/agentcom.storage.v1.rs");
}

/// The format this hub writes, recorded in the database's `meta` table.
pub(super) const FORMAT_VERSION: u64 = 2;

// ---- Tasks ----

pub(super) fn encode_task(task: Task) -> Vec<u8> {
    task_into_pb(task).encode_to_vec()
}

pub(super) fn decode_task(bytes: &[u8]) -> Result<Task, String> {
    let record = pb::Task::decode(bytes).map_err(|err| err.to_string())?;
    task_from_pb(record)
}

fn id_bytes(id: TaskId) -> Vec<u8> {
    id.0.to_bytes().to_vec()
}

fn id_from_bytes(bytes: &[u8]) -> Result<TaskId, String> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| format!("a task id of {} bytes, not 16", bytes.len()))?;
    Ok(TaskId(Ulid::from_bytes(bytes)))
}

/// Lanes, tiers and states are stored as their stable numbers (`Numbered`), 0 for an unset tier.
fn known<T: Numbered>(what: &str, number: i32) -> Result<T, String> {
    T::from_number(number).ok_or_else(|| format!("{what} {number} is unknown"))
}

fn verification_into(step: Verification) -> pb::Verification {
    use pb::verification::Kind;
    let kind = match step {
        Verification::FileExists(path) => Kind::FileExists(path),
        Verification::CommandSucceeds { argv, timeout_ms } => Kind::CommandSucceeds(pb::Check { argv, timeout_ms }),
        Verification::TestPasses { argv, timeout_ms } => Kind::TestPasses(pb::Check { argv, timeout_ms }),
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
    pb::Verification { kind: Some(kind) }
}

fn verification_from(step: pb::Verification) -> Result<Verification, String> {
    use pb::verification::Kind;
    Ok(match step.kind.ok_or("a verification step has no kind")? {
        Kind::FileExists(path) => Verification::FileExists(path),
        Kind::CommandSucceeds(c) => Verification::CommandSucceeds { argv: c.argv, timeout_ms: c.timeout_ms },
        Kind::TestPasses(c) => Verification::TestPasses { argv: c.argv, timeout_ms: c.timeout_ms },
        Kind::GitClean(_) => Verification::GitClean,
        Kind::OutputContains(pattern) => Verification::OutputContains(match pattern.pattern {
            Some(pb::output_pattern::Pattern::Text(text)) => Pattern::Text(text),
            Some(pb::output_pattern::Pattern::Regex(regex)) => Pattern::Regex(regex),
            None => return Err("an output_contains step has no pattern".into()),
        }),
        Kind::HttpOk(url) => Verification::HttpOk(url),
        Kind::LlmJudge(judge) => Verification::LlmJudge { model: judge.model },
    })
}

fn report_into(report: VerificationReport) -> pb::VerificationReport {
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

fn report_from(report: pb::VerificationReport) -> VerificationReport {
    VerificationReport {
        verdict: Verdict::parse(&report.verdict).unwrap_or(Verdict::Failed),
        steps: report
            .steps
            .into_iter()
            .map(|s| StepReport {
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

fn spec_into(spec: TaskSpec) -> pb::Spec {
    let limits = spec.limits;
    pb::Spec {
        name: spec.name,
        idempotency_key: spec.idempotency_key,
        lane: spec.priority.number(),
        tier: spec.tier.map_or(0, Numbered::number),
        work: Some(work_into(spec.work)),
        context: Some(pb::Context {
            repository: spec.context.repository,
            branch: spec.context.branch,
            files: spec.context.files,
            env: spec.context.env,
            notes: spec.context.notes,
            environment: spec.context.environment.as_str().to_owned(),
        }),
        success_criteria: spec.success_criteria,
        verification: spec.verification.into_iter().map(verification_into).collect(),
        limits: Some(pb::Limits {
            timeout_ms: limits.timeout_ms,
            deadline_unix_ms: limits.deadline_unix_ms,
            max_attempts: limits.max_attempts,
            max_tokens: limits.max_tokens,
            max_cost_micros: limits.max_cost_micros,
            max_output_bytes: limits.max_output_bytes,
            max_memory_bytes: limits.max_memory_bytes,
            max_pids: limits.max_pids,
        }),
        placement: Some(pb::Placement {
            tags: spec.placement.tags,
            host: spec.placement.host,
            model: spec.placement.model,
            local_only: spec.placement.local_only,
        }),
        depends_on: spec.depends_on.into_iter().map(id_bytes).collect(),
        labels: spec.labels,
        retry: Some(pb::Retry {
            backoff_base_ms: spec.retry.backoff_base_ms,
            backoff_max_ms: spec.retry.backoff_max_ms,
            retry_on_exit_codes: spec.retry.retry_on_exit_codes,
        }),
        traceparent: spec.trace_parent.map(|p| p.to_string()).unwrap_or_default(),
    }
}

fn spec_from(spec: pb::Spec) -> Result<TaskSpec, String> {
    let context = spec.context.unwrap_or_default();
    let limits = spec.limits.ok_or("the spec has no limits")?;
    let placement = spec.placement.unwrap_or_default();
    let retry = spec.retry.ok_or("the spec has no retry policy")?;
    Ok(TaskSpec {
        name: spec.name,
        idempotency_key: spec.idempotency_key,
        priority: known("lane", spec.lane)?,
        tier: if spec.tier == 0 { None } else { Some(known("tier", spec.tier)?) },
        work: work_from(spec.work)?,
        context: TaskContext {
            repository: context.repository,
            branch: context.branch,
            files: context.files,
            env: context.env,
            notes: context.notes,
            environment: Environment::parse(&context.environment)
                .ok_or_else(|| format!("{:?} is not an environment", context.environment))?,
        },
        success_criteria: spec.success_criteria,
        verification: spec.verification.into_iter().map(verification_from).collect::<Result<_, _>>()?,
        limits: Limits {
            timeout_ms: limits.timeout_ms,
            deadline_unix_ms: limits.deadline_unix_ms,
            max_attempts: limits.max_attempts,
            max_tokens: limits.max_tokens,
            max_cost_micros: limits.max_cost_micros,
            max_output_bytes: limits.max_output_bytes,
            max_memory_bytes: limits.max_memory_bytes,
            max_pids: limits.max_pids,
        },
        placement: Placement {
            tags: placement.tags,
            host: placement.host,
            model: placement.model,
            local_only: placement.local_only,
        },
        depends_on: spec.depends_on.iter().map(|id| id_from_bytes(id)).collect::<Result<_, _>>()?,
        labels: spec.labels,
        retry: RetryPolicy {
            backoff_base_ms: retry.backoff_base_ms,
            backoff_max_ms: retry.backoff_max_ms,
            retry_on_exit_codes: retry.retry_on_exit_codes,
        },
        trace_parent: match spec.traceparent.as_str() {
            "" => None,
            stored => Some(stored.parse().map_err(|err: InvalidTraceParent| err.to_string())?),
        },
    })
}

fn outcome_into(outcome: Outcome) -> pb::Outcome {
    pb::Outcome {
        exit: match outcome.exit {
            Exit::Code(code) => Some(pb::outcome::Exit::Code(code)),
            Exit::Signal(signal) => Some(pb::outcome::Exit::Signal(signal)),
            Exit::Unknown => None,
        },
        duration_ms: outcome.duration_ms,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        stdout_total_bytes: outcome.stdout_total_bytes,
        stderr_total_bytes: outcome.stderr_total_bytes,
        timed_out: outcome.timed_out,
        error: outcome.error,
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
        verification: outcome.verification.map(report_into),
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
        steps: outcome
            .steps
            .into_iter()
            .map(|s| pb::AgentStep {
                round: s.round,
                tool: s.tool,
                summary: s.summary,
                result_bytes: s.result_bytes,
                ok: s.ok,
                input_tokens: s.input_tokens,
                output_tokens: s.output_tokens,
            })
            .collect(),
        output_dropped_unix_ms: outcome.output_dropped_unix_ms.unwrap_or(0),
    }
}

fn outcome_from(outcome: pb::Outcome) -> Outcome {
    Outcome {
        exit: match outcome.exit {
            Some(pb::outcome::Exit::Code(code)) => Exit::Code(code),
            Some(pb::outcome::Exit::Signal(signal)) => Exit::Signal(signal),
            None => Exit::Unknown,
        },
        duration_ms: outcome.duration_ms,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        stdout_total_bytes: outcome.stdout_total_bytes,
        stderr_total_bytes: outcome.stderr_total_bytes,
        timed_out: outcome.timed_out,
        error: outcome.error,
        usage: outcome.usage.map(|u| Usage {
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
        verification: outcome.verification.map(report_from),
        workspace: outcome.workspace.map(|w| WorkspaceReport {
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
            .map(|r| Round {
                number: r.number,
                verdict: r.verdict,
                failed: r.failed,
                diff_stat: r.diff_stat,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_micros: r.cost_micros,
            })
            .collect(),
        steps: outcome
            .steps
            .into_iter()
            .map(|s| AgentStep {
                round: s.round,
                tool: s.tool,
                summary: s.summary,
                result_bytes: s.result_bytes,
                ok: s.ok,
                input_tokens: s.input_tokens,
                output_tokens: s.output_tokens,
            })
            .collect(),
        output_dropped_unix_ms: Some(outcome.output_dropped_unix_ms).filter(|&ms| ms > 0),
        // A reply's tool calls are relayed to the gateway's caller, never stored.
        tool_calls: Vec::new(),
    }
}

fn task_into_pb(task: Task) -> pb::Task {
    pb::Task {
        id: id_bytes(task.id),
        spec: Some(spec_into(task.spec)),
        state: task.state.number(),
        state_reason: task.state_reason,
        attempt: task.attempt,
        lease_generation: task.lease_generation,
        agent_id: task.agent_id,
        sidecar_id: task.sidecar_id,
        created_unix_ms: task.created_unix_ms,
        updated_unix_ms: task.updated_unix_ms,
        started_unix_ms: task.started_unix_ms,
        finished_unix_ms: task.finished_unix_ms,
        outcome: task.outcome.map(outcome_into),
    }
}

fn task_from_pb(task: pb::Task) -> Result<Task, String> {
    Ok(Task {
        id: id_from_bytes(&task.id)?,
        spec: spec_from(task.spec.ok_or("the task has no spec")?)?,
        state: known("state", task.state)?,
        state_reason: task.state_reason,
        attempt: task.attempt,
        lease_generation: task.lease_generation,
        agent_id: task.agent_id,
        sidecar_id: task.sidecar_id,
        created_unix_ms: task.created_unix_ms,
        updated_unix_ms: task.updated_unix_ms,
        started_unix_ms: task.started_unix_ms,
        finished_unix_ms: task.finished_unix_ms,
        outcome: task.outcome.map(outcome_from),
        service: None,
    })
}

// ---- Fleet settings ----

pub(super) fn encode_audit(entry: &crate::store::AuditEntry) -> Vec<u8> {
    pb::AuditEntry {
        at_unix_ms: entry.at_unix_ms,
        actor: entry.actor.clone(),
        role: entry.role.clone(),
        action: entry.action.clone(),
        target: entry.target.clone(),
        detail: entry.detail.clone(),
    }
    .encode_to_vec()
}

/// An audit record and its key.
pub(super) fn decode_audit(key: u128, bytes: &[u8]) -> Result<crate::store::AuditEntry, String> {
    let e = pb::AuditEntry::decode(bytes).map_err(|err| err.to_string())?;
    Ok(crate::store::AuditEntry {
        id: Ulid::from(key),
        at_unix_ms: e.at_unix_ms,
        actor: e.actor,
        role: e.role,
        action: e.action,
        target: e.target,
        detail: e.detail,
    })
}

pub(super) fn encode_join_grant(grant: &crate::store::JoinGrant) -> Vec<u8> {
    pb::JoinGrant {
        secret_sha256: grant.secret_sha256.clone(),
        uses: grant.uses,
        used: grant.used,
        expires_unix_ms: grant.expires_unix_ms,
        tags: grant.tags.clone(),
        created_unix_ms: grant.created_unix_ms,
        created_by: grant.created_by.clone(),
    }
    .encode_to_vec()
}

pub(super) fn decode_join_grant(id: &str, bytes: &[u8]) -> Result<crate::store::JoinGrant, String> {
    let g = pb::JoinGrant::decode(bytes).map_err(|err| err.to_string())?;
    Ok(crate::store::JoinGrant {
        id: id.to_owned(),
        secret_sha256: g.secret_sha256,
        uses: g.uses,
        used: g.used,
        expires_unix_ms: g.expires_unix_ms,
        tags: g.tags,
        created_unix_ms: g.created_unix_ms,
        created_by: g.created_by,
    })
}

pub(super) fn encode_identity(identity: &crate::store::SidecarIdentity) -> Vec<u8> {
    pb::SidecarIdentity {
        cert_sha256: identity.cert_sha256.clone(),
        hostname: identity.hostname.clone(),
        tags: identity.tags.clone(),
        join_token_id: identity.join_token_id.clone(),
        enrolled_unix_ms: identity.enrolled_unix_ms,
        revoked_unix_ms: identity.revoked_unix_ms,
    }
    .encode_to_vec()
}

pub(super) fn decode_identity(sidecar_id: &str, bytes: &[u8]) -> Result<crate::store::SidecarIdentity, String> {
    let i = pb::SidecarIdentity::decode(bytes).map_err(|err| err.to_string())?;
    Ok(crate::store::SidecarIdentity {
        sidecar_id: sidecar_id.to_owned(),
        cert_sha256: i.cert_sha256,
        hostname: i.hostname,
        tags: i.tags,
        join_token_id: i.join_token_id,
        enrolled_unix_ms: i.enrolled_unix_ms,
        revoked_unix_ms: i.revoked_unix_ms,
    })
}

/// A token's stored value: its role alone (the bootstrap tokens, and every token of format 1),
/// `ROLE\tCREATED_UNIX_MS\tNAME` for one made through the API, and `\tLIMITS` (JSON) after that
/// for a key with gateway limits. A name holds no tab (no control character).
pub fn encode_token(role: &str, created_unix_ms: i64, name: &str, limits: &crate::auth::KeyLimits) -> String {
    if !limits.is_none() {
        let limits = serde_json::to_string(limits).expect("limits serialize");
        return format!("{role}\t{created_unix_ms}\t{name}\t{limits}");
    }
    if created_unix_ms == 0 && name.is_empty() { role.to_owned() } else { format!("{role}\t{created_unix_ms}\t{name}") }
}

pub(super) fn decode_token(hash: &str, value: &str) -> crate::store::StoredToken {
    let mut parts = value.splitn(4, '\t');
    let role = parts.next().unwrap_or_default().to_owned();
    let created_unix_ms = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let name = parts.next().unwrap_or_default().to_owned();
    let limits = match parts.next() {
        None => crate::auth::KeyLimits::default(),
        Some(json) => serde_json::from_str(json).unwrap_or_else(|err| {
            // Refuse everything rather than lift its limits: an admin can make the key again.
            tracing::warn!(%err, "a stored token's limits do not decode; it may use no model");
            crate::auth::KeyLimits { models: vec![String::from("(limits unreadable)")], ..Default::default() }
        }),
    };
    crate::store::StoredToken { hash: hash.to_owned(), role, created_unix_ms, name, limits }
}

pub(super) fn encode_cordon(cordon: &Cordon) -> Vec<u8> {
    pb::Cordon { since_unix_ms: cordon.since_unix_ms, deadline_unix_ms: cordon.deadline_unix_ms }.encode_to_vec()
}

pub(super) fn decode_cordon(bytes: &[u8]) -> Result<Cordon, String> {
    let cordon = pb::Cordon::decode(bytes).map_err(|err| err.to_string())?;
    Ok(Cordon { since_unix_ms: cordon.since_unix_ms, deadline_unix_ms: cordon.deadline_unix_ms })
}

pub(super) fn encode_endpoint(endpoint: &Endpoint) -> Vec<u8> {
    let models = endpoint
        .models
        .iter()
        .map(|m| pb::Model {
            name: m.name.clone(),
            size_bytes: m.size_bytes,
            family: m.family.clone(),
            parameter_size: m.parameter_size.clone(),
            quantization: m.quantization.clone(),
            loaded: m.loaded,
            size_vram_bytes: m.size_vram_bytes,
            expires_unix_ms: m.expires_unix_ms,
        })
        .collect();
    pb::Endpoint {
        id: endpoint.id.clone(),
        url: endpoint.url.clone(),
        kind: endpoint.kind.as_str().to_owned(),
        owner: Some(match &endpoint.owner {
            Owner::Sidecar(id) => pb::endpoint::Owner::SidecarId(id.clone()),
            Owner::Hub => pb::endpoint::Owner::Hub(true),
        }),
        healthy: endpoint.healthy,
        version: endpoint.version.clone(),
        error: endpoint.error.clone(),
        models,
        checked_unix_ms: endpoint.checked_unix_ms,
        parallel: endpoint.parallel,
    }
    .encode_to_vec()
}

pub(super) fn decode_endpoint(bytes: &[u8]) -> Result<Endpoint, String> {
    let endpoint = pb::Endpoint::decode(bytes).map_err(|err| err.to_string())?;
    let kind =
        EndpointKind::parse(&endpoint.kind).ok_or_else(|| format!("endpoint kind {:?} is unknown", endpoint.kind))?;
    let owner = match endpoint.owner.ok_or("the endpoint has no owner")? {
        pb::endpoint::Owner::SidecarId(id) => Owner::Sidecar(id),
        pb::endpoint::Owner::Hub(_) => Owner::Hub,
    };
    let models = endpoint
        .models
        .into_iter()
        .map(|m| Model {
            name: m.name,
            size_bytes: m.size_bytes,
            family: m.family,
            parameter_size: m.parameter_size,
            quantization: m.quantization,
            loaded: m.loaded,
            size_vram_bytes: m.size_vram_bytes,
            expires_unix_ms: m.expires_unix_ms,
        })
        .collect();
    Ok(Endpoint {
        id: endpoint.id,
        url: endpoint.url,
        kind,
        owner,
        healthy: endpoint.healthy,
        version: endpoint.version,
        error: endpoint.error,
        models,
        checked_unix_ms: endpoint.checked_unix_ms,
        parallel: endpoint.parallel,
    })
}

// ---- Format 1, read once by the migration ----

/// A task stored by format 1 (an encoded `agentcom.v1.Task`), in this format.
pub(super) fn task_from_v1(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let record = agentcom_proto::v1::Task::decode(bytes).map_err(|err| err.to_string())?;
    let task = agentcom_types::wire::task_from_pb(record).map_err(|err| err.to_string())?;
    Ok(encode_task(task))
}

/// A fleet setting stored by format 1 (JSON), in this format.
pub(super) fn fleet_from_v1(key: &str, value: &[u8]) -> Result<Vec<u8>, String> {
    // Format 1 was the serde form of these types, as they were then: these mirror it.
    #[derive(serde::Deserialize)]
    #[serde(remote = "Cordon")]
    struct CordonV1 {
        since_unix_ms: i64,
        deadline_unix_ms: Option<i64>,
    }
    #[derive(serde::Deserialize)]
    #[serde(remote = "Model")]
    struct ModelV1 {
        name: String,
        size_bytes: u64,
        family: String,
        parameter_size: String,
        quantization: String,
        loaded: bool,
        size_vram_bytes: u64,
        expires_unix_ms: Option<i64>,
    }
    #[derive(serde::Deserialize)]
    #[serde(remote = "Owner", rename_all = "snake_case", tag = "by", content = "sidecar_id")]
    enum OwnerV1 {
        Sidecar(String),
        Hub,
    }
    #[derive(serde::Deserialize)]
    #[serde(remote = "EndpointKind", rename_all = "snake_case")]
    enum KindV1 {
        Ollama,
        Anthropic,
        Openai,
    }
    #[derive(serde::Deserialize)]
    struct Models(#[serde(with = "ModelV1")] Model);
    #[derive(serde::Deserialize)]
    #[serde(remote = "Endpoint")]
    struct EndpointV1 {
        id: String,
        url: String,
        #[serde(with = "KindV1")]
        kind: EndpointKind,
        #[serde(with = "OwnerV1")]
        owner: Owner,
        healthy: bool,
        version: String,
        error: Option<String>,
        #[serde(deserialize_with = "models")]
        models: Vec<Model>,
        checked_unix_ms: i64,
        /// Not in format 1.
        #[serde(default)]
        parallel: u32,
    }
    fn models<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Model>, D::Error> {
        let models: Vec<Models> = serde::Deserialize::deserialize(deserializer)?;
        Ok(models.into_iter().map(|Models(m)| m).collect())
    }
    let json_error = |err: serde_json::Error| err.to_string();
    if key.starts_with(super::CORDON_PREFIX) {
        let cordon = CordonV1::deserialize(&mut serde_json::Deserializer::from_slice(value)).map_err(json_error)?;
        return Ok(encode_cordon(&cordon));
    }
    if key.starts_with(super::ENDPOINT_PREFIX) {
        let endpoint = EndpointV1::deserialize(&mut serde_json::Deserializer::from_slice(value)).map_err(json_error)?;
        return Ok(encode_endpoint(&endpoint));
    }
    Err(format!("{key:?} is not a fleet setting"))
}

mod log;
mod work;
pub(super) use self::log::*;
pub(super) mod workflow;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// Whatever bytes a stored record holds (damage, or a format this code does not know),
        /// reading it fails with a reason or succeeds; it never panics.
        #[test]
        fn stored_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_task(&bytes);
            let _ = decode_cordon(&bytes);
            let _ = decode_endpoint(&bytes);
            let _ = task_from_v1(&bytes);
            let _ = fleet_from_v1("endpoint/x", &bytes);
        }

        /// A record that decodes encodes back to the same task.
        #[test]
        fn decoded_records_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(task) = decode_task(&bytes) {
                prop_assert_eq!(decode_task(&encode_task(task.clone())), Ok(task));
            }
        }
    }
}
