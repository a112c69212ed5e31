//! The HTTP JSON API (`/api/v1/...`), health probes, and task events as server-sent events.
//!
//! Request bodies are converted into the wire contract's `TaskSpec` and validated by the same
//! code as gRPC submits, so both APIs accept and refuse exactly the same tasks.

use std::collections::HashMap;
use std::convert::Infallible;

use agentcom_proto::v1 as pb;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{ApiError, list_limit};
use crate::convert;
use crate::core::Handle;
use crate::domain::now_ms;
use crate::domain::{Lane, SpecDefaults, TaskId, TaskState, Tier};
use crate::feed::{self, FeedEvent};

#[derive(Clone)]
pub struct HttpState {
    pub hub: Handle,
    pub spec_defaults: SpecDefaults,
    pub backups: crate::backup::Backups,
    pub stop: CancellationToken,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        let mut response = (self.code.http(), Json(body)).into_response();
        if matches!(self.code, super::ErrorCode::RateLimited | super::ErrorCode::ResourceExhausted) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/tasks", get(list_tasks).post(submit_task))
        .route("/api/v1/tasks/{id}", get(get_task).delete(cancel_task))
        .route("/api/v1/tasks/{id}/events", get(task_events))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{id}", get(get_agent))
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/hosts/{id}", get(get_host))
        .route("/api/v1/hosts/{id}/drain", axum::routing::post(drain_host))
        .route("/api/v1/hosts/{id}/uncordon", axum::routing::post(uncordon_host))
        .route("/api/v1/endpoints", get(list_endpoints).post(add_endpoint))
        .route("/api/v1/endpoints/{id}", axum::routing::delete(remove_endpoint))
        .route("/api/v1/queue", get(queue_stats))
        .route("/api/v1/dlq", get(list_dead_letters).delete(purge_dead_letters))
        .route("/api/v1/dlq/{id}", get(get_dead_letter))
        .route("/api/v1/dlq/{id}/retry", axum::routing::post(retry_dead_letter))
        .route("/api/v1/backups", axum::routing::post(take_backup))
        .with_state(state)
}

/// Answers unknown paths in the API's error shape.
pub async fn not_found() -> ApiError {
    ApiError::new(super::ErrorCode::NotFound, "no such endpoint")
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.hub.is_healthy() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable" }))).into_response()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShellBody {
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    script: String,
    #[serde(default)]
    cwd: String,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    secret_env: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmBody {
    prompt: String,
    #[serde(default)]
    system: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    max_tokens: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentBody {
    goal: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    branch: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ContextBody {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    notes: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum VerificationBody {
    FileExists(String),
    CommandSucceeds {
        argv: Vec<String>,
        #[serde(default)]
        timeout_ms: u64,
    },
    TestPasses {
        argv: Vec<String>,
        #[serde(default)]
        timeout_ms: u64,
    },
    GitClean(bool),
}

/// Limits as JSON takes them: a field left out means the hub's default, and a field given must
/// be in range (0 is refused, where protobuf's 0 can only mean "unset").
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    deadline_unix_ms: Option<i64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_cost_micros: Option<u64>,
    #[serde(default)]
    max_output_bytes: Option<u64>,
    #[serde(default)]
    max_memory_bytes: Option<u64>,
    #[serde(default)]
    max_pids: Option<u64>,
}

/// A number the JSON body gave: 0 is refused, naming the field.
fn given<T: Default + PartialEq + Copy>(field: &str, value: Option<T>) -> Result<T, ApiError> {
    match value {
        Some(v) if v == T::default() => Err(ApiError::invalid(format!("invalid {field}: must not be 0 when given"))),
        Some(v) => Ok(v),
        None => Ok(T::default()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PlacementBody {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    host: String,
    #[serde(default)]
    model: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    backoff_base_ms: Option<u64>,
    #[serde(default)]
    backoff_max_ms: Option<u64>,
    #[serde(default)]
    retry_on_exit_codes: Vec<i32>,
}

/// `POST /api/v1/tasks`. Exactly one of `shell`, `llm`, `agent`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    shell: Option<ShellBody>,
    #[serde(default)]
    llm: Option<LlmBody>,
    #[serde(default)]
    agent: Option<AgentBody>,
    #[serde(default)]
    context: Option<ContextBody>,
    #[serde(default)]
    success_criteria: Vec<String>,
    #[serde(default)]
    verification: Vec<VerificationBody>,
    #[serde(default)]
    limits: Option<LimitsBody>,
    #[serde(default)]
    placement: Option<PlacementBody>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    retry: Option<RetryBody>,
}

impl TryFrom<SubmitBody> for pb::TaskSpec {
    type Error = ApiError;

    fn try_from(body: SubmitBody) -> Result<pb::TaskSpec, ApiError> {
        let kind = match (body.shell, body.llm, body.agent) {
            (Some(shell), None, None) => pb::work::Kind::Shell(pb::ShellWork {
                argv: shell.argv,
                script: shell.script,
                cwd: shell.cwd,
                env: shell.env,
                secret_env: shell.secret_env,
            }),
            (None, Some(llm), None) => pb::work::Kind::Llm(pb::LlmWork {
                prompt: llm.prompt,
                system: llm.system,
                model: llm.model,
                max_tokens: llm.max_tokens,
            }),
            (None, None, Some(agent)) => pb::work::Kind::Agent(pb::AgentWork {
                goal: agent.goal,
                repository: agent.repository,
                branch: agent.branch,
            }),
            _ => return Err(ApiError::invalid("invalid work: give exactly one of shell, llm, agent")),
        };
        let priority = match body.priority {
            Some(p) => convert::lane_to_pb(p.parse::<Lane>()?),
            None => pb::Priority::Unspecified,
        };
        let tier = match body.tier {
            Some(t) => match t.parse::<Tier>()? {
                Tier::Trivial => pb::Tier::Trivial,
                Tier::Standard => pb::Tier::Standard,
                Tier::Complex => pb::Tier::Complex,
            },
            None => pb::Tier::Unspecified,
        };
        let context = body.context.unwrap_or_default();
        let limits = body.limits.unwrap_or_default();
        let placement = body.placement.unwrap_or_default();
        let retry = body.retry.unwrap_or_default();
        let verification = body
            .verification
            .into_iter()
            .map(|step| {
                use pb::verification_step::Kind;
                let kind = match step {
                    VerificationBody::FileExists(path) => Kind::FileExists(path),
                    VerificationBody::CommandSucceeds { argv, timeout_ms } => {
                        Kind::CommandSucceeds(pb::CommandCheck { argv, timeout_ms })
                    }
                    VerificationBody::TestPasses { argv, timeout_ms } => {
                        Kind::TestPasses(pb::CommandCheck { argv, timeout_ms })
                    }
                    VerificationBody::GitClean(flag) => Kind::GitClean(flag),
                };
                pb::VerificationStep { kind: Some(kind) }
            })
            .collect();
        Ok(pb::TaskSpec {
            name: body.name,
            idempotency_key: body.idempotency_key,
            priority: priority.into(),
            tier: tier.into(),
            work: Some(pb::Work { kind: Some(kind) }),
            context: Some(pb::TaskContext {
                repository: context.repository,
                branch: context.branch,
                files: context.files,
                env: context.env,
                notes: context.notes,
            }),
            success_criteria: body.success_criteria,
            verification,
            limits: Some(pb::Limits {
                timeout_ms: given("limits.timeout_ms", limits.timeout_ms)?,
                deadline_unix_ms: given("limits.deadline_unix_ms", limits.deadline_unix_ms)?,
                max_attempts: given("limits.max_attempts", limits.max_attempts)?,
                max_tokens: given("limits.max_tokens", limits.max_tokens)?,
                max_cost_micros: given("limits.max_cost_micros", limits.max_cost_micros)?,
                max_output_bytes: given("limits.max_output_bytes", limits.max_output_bytes)?,
                max_memory_bytes: given("limits.max_memory_bytes", limits.max_memory_bytes)?,
                max_pids: given("limits.max_pids", limits.max_pids)?,
            }),
            placement: Some(pb::Placement { tags: placement.tags, host: placement.host, model: placement.model }),
            depends_on: body.depends_on,
            labels: body.labels,
            retry: Some(pb::RetryPolicy {
                backoff_base_ms: given("retry.backoff_base_ms", retry.backoff_base_ms)?,
                backoff_max_ms: given("retry.backoff_max_ms", retry.backoff_max_ms)?,
                retry_on_exit_codes: retry.retry_on_exit_codes,
            }),
        })
    }
}

/// Reads one submit body (the JSON of `POST /api/v1/tasks`) into the wire contract's spec.
/// Validation happens where the spec is submitted; this only checks the format. `hubctl submit
/// --from-file` uses it, so a file line and an HTTP body are the same thing.
pub fn spec_from_json(json: &str) -> Result<pb::TaskSpec, ApiError> {
    let body: SubmitBody = serde_json::from_str(json).map_err(|err| ApiError::invalid(err.to_string()))?;
    pb::TaskSpec::try_from(body)
}

async fn submit_task(
    State(state): State<HttpState>,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let spec = convert::spec_from_pb(pb::TaskSpec::try_from(body)?, &state.spec_defaults)?;
    let submitted = state.hub.submit(spec).await?;
    let status = if submitted.existing { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({ "task": submitted.task, "existing": submitted.existing }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

async fn list_tasks(
    State(state): State<HttpState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let filter = query.state.map(|s| s.parse::<TaskState>()).transpose()?;
    let limit = list_limit(query.limit)?;
    let before = query.before.map(|id| id.parse::<TaskId>()).transpose()?;
    let tasks = state.hub.list_before(filter, before, limit).await?;
    Ok(Json(json!({ "tasks": tasks })))
}

async fn get_task(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.get(id.parse::<TaskId>()?).await?;
    Ok(Json(json!({ "task": task })))
}

async fn cancel_task(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.cancel(id.parse::<TaskId>()?, String::new()).await?;
    Ok(Json(json!({ "task": task })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DlqQuery {
    limit: Option<usize>,
}

async fn list_dead_letters(
    State(state): State<HttpState>,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let tasks = state.hub.list(Some(TaskState::DeadLettered), list_limit(query.limit)?).await?;
    Ok(Json(json!({ "tasks": tasks })))
}

async fn get_dead_letter(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.get(id.parse::<TaskId>()?).await?;
    if task.state != TaskState::DeadLettered {
        return Err(ApiError::new(super::ErrorCode::NotFound, format!("task {id} is not in the dead-letter queue")));
    }
    Ok(Json(json!({ "task": task })))
}

async fn retry_dead_letter(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.retry_dead_letter(id.parse::<TaskId>()?).await?;
    Ok(Json(json!({ "task": task })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    older_than_ms: Option<u64>,
}

async fn purge_dead_letters(
    State(state): State<HttpState>,
    query: Result<Query<PurgeQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let before = super::purge_cutoff(query.older_than_ms.unwrap_or(0))?;
    let purged = state.hub.purge_dead_letters(before).await?;
    Ok(Json(json!({ "purged": purged })))
}

/// `POST /api/v1/backups`: a consistent online backup into the hub's backup directory.
async fn take_backup(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let info = state
        .backups
        .take()
        .await
        .map_err(|err| ApiError::new(super::ErrorCode::Unavailable, format!("backup failed: {err}")))?;
    Ok(Json(json!({ "backup": info })))
}

/// `GET /api/v1/queue`: counts of the queue now (ready, delayed, leased, refused stale messages, ...).
async fn queue_stats(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "queue": state.hub.stats().await? })))
}

async fn list_agents(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let agents = state.hub.agents().await?;
    Ok(Json(json!({ "agents": agents })))
}

/// `GET /api/v1/agents/{id}`: the agent and its recent transitions, with their causes.
async fn get_agent(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "agent": state.hub.agent(id).await? })))
}

/// `GET /api/v1/hosts`: every host with its latest resource report.
async fn list_hosts(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "hosts": state.hub.hosts().await? })))
}

/// `GET /api/v1/hosts/{id}`: one host with its resource history (one hour at report resolution).
async fn get_host(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "host": state.hub.host(id).await? })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    /// Requeue what still runs this many milliseconds from now.
    deadline_ms: Option<u64>,
}

/// `POST /api/v1/hosts/{id}/drain` with an optional `{"deadline_ms": N}`: no new work goes to
/// the sidecar; what still runs at the deadline is requeued.
async fn drain_host(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: DrainBody = if body.iter().all(u8::is_ascii_whitespace) {
        DrainBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|err| ApiError::invalid(format!("invalid drain body: {err}")))?
    };
    let deadline = match body.deadline_ms {
        Some(ms) if ms > 30 * 24 * 3600 * 1000 => return Err(ApiError::invalid("deadline_ms is more than 30 days")),
        Some(ms) => Some(now_ms() + ms as i64),
        None => None,
    };
    Ok(Json(json!({ "host": state.hub.drain(id, deadline).await? })))
}

/// `POST /api/v1/hosts/{id}/uncordon`: the sidecar takes work again.
async fn uncordon_host(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "host": state.hub.uncordon(id).await? })))
}

/// An endpoint as JSON, each model marked `warm` or `cold`.
fn endpoint_json(endpoint: &crate::fleet::Endpoint) -> serde_json::Value {
    let mut value = json!(endpoint);
    if let Some(models) = value.get_mut("models").and_then(|m| m.as_array_mut()) {
        for (json, model) in models.iter_mut().zip(&endpoint.models) {
            json["state"] = json!(model.warmth());
        }
    }
    value
}

/// `GET /api/v1/endpoints`: the LLM registry.
async fn list_endpoints(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let endpoints = state.hub.endpoints().await?;
    Ok(Json(json!({ "endpoints": endpoints.iter().map(endpoint_json).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    url: String,
    #[serde(default)]
    kind: String,
}

/// `POST /api/v1/endpoints` `{"url": ..., "kind": "ollama"}`: an endpoint the hub probes itself.
async fn add_endpoint(
    State(state): State<HttpState>,
    body: Result<Json<EndpointBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let kind = super::endpoint_kind(&body.kind)?;
    let endpoint = state.hub.add_endpoint(body.url, kind).await?;
    Ok(Json(json!({ "endpoint": endpoint_json(&endpoint) })))
}

/// `DELETE /api/v1/endpoints/{id}`.
async fn remove_endpoint(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "endpoint": endpoint_json(&state.hub.remove_endpoint(id).await?) })))
}

/// `GET /api/v1/tasks/{id}/events`: `snapshot` events carry the task, `output` events carry
/// `{attempt, stream, offset, data_base64}`. The stream ends after the task's final snapshot.
async fn task_events(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let feed = state.hub.watch(id.parse::<TaskId>()?).await?;
    let events = feed::events(feed, state.stop.clone()).map(|event| {
        let sse = match event {
            FeedEvent::Snapshot(task) => SseEvent::default().event("snapshot").json_data(&*task),
            FeedEvent::Output { attempt, stream, offset, data } => {
                SseEvent::default().event("output").json_data(json!({
                    "attempt": attempt,
                    "stream": stream,
                    "offset": offset,
                    "data_base64": base64::engine::general_purpose::STANDARD.encode(&data),
                }))
            }
        };
        Ok::<_, Infallible>(sse.expect("task events serialize"))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}
