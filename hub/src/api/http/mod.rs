//! The HTTP JSON API (`/api/v1/...`), health probes, and task events as server-sent events.
//!
//! Request bodies are converted into the wire contract's `TaskSpec` and validated by the same
//! code as gRPC submits, so both APIs accept and refuse exactly the same tasks. Responses are
//! the explicit shapes of [`dto`], never the serde form of a domain type.

pub mod dto;
mod enrolment;
mod hooks;
mod tokens;
mod ui;
mod usage;
mod workflows;

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

use super::{ApiError, audited, list_limit};
use crate::auth::Caller;
use crate::core::Handle;
use crate::domain::now_ms;
use crate::domain::{SpecDefaults, TaskId, TaskState};
use crate::feed::{self, FeedEvent};
use axum::Extension;
use dto::{
    AgentDto, BackupDto, DecisionDto, EndpointDto, HostDto, OutputEventDto, QueueDto, ServiceDto, StepEventDto,
    TaskDto, WhyDto,
};

/// Largest HTTP request body (a submit with a large prompt fits).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A JSON body the hub could not take: too large (413, naming the limit), or malformed.
pub(crate) fn body_error(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            super::ErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than the hub takes: at most {MAX_BODY_BYTES} bytes ({} MiB)",
                MAX_BODY_BYTES / (1024 * 1024)
            ),
        );
    }
    ApiError::invalid(rejection.body_text())
}

fn tasks_json(tasks: &[crate::domain::Task]) -> serde_json::Value {
    json!({ "tasks": tasks.iter().map(TaskDto::from).collect::<Vec<_>>() })
}
use agentcom_types::wire as convert;

#[derive(Clone)]
pub struct HttpState {
    pub hub: Handle,
    pub spec_defaults: SpecDefaults,
    pub backups: crate::backup::Backups,
    pub stop: CancellationToken,
    /// The tokens the hub accepts (token management changes them).
    pub tokens: crate::auth::Tokens,
    /// Join tokens and enrolled sidecars.
    pub enrolment: crate::enrol::Enrolment,
    /// The gateway keys' requests and tokens over the last minute.
    pub meters: crate::api::gateway::Meters,
    /// The gateway's model aliases.
    pub aliases: crate::api::gateway::Aliases,
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
        .route("/api/v1/events", get(hub_events))
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        .route("/api/v1/tasks/{id}/decision", get(task_decision))
        .route("/api/v1/tasks/{id}/why", get(task_why))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{id}", get(get_agent))
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/services", get(list_services))
        .route("/api/v1/hosts/{id}", get(get_host))
        .route("/api/v1/hosts/{id}/drain", axum::routing::post(drain_host))
        .route("/api/v1/hosts/{id}/uncordon", axum::routing::post(uncordon_host))
        .route("/api/v1/endpoints", get(list_endpoints).post(add_endpoint))
        .route("/api/v1/endpoints/{id}", axum::routing::delete(remove_endpoint))
        .route("/api/v1/queue", get(queue_stats))
        .route("/metrics", get(metrics))
        .route("/api/v1/models/stats", get(model_stats))
        .route("/api/v1/dlq", get(list_dead_letters).delete(purge_dead_letters))
        .route("/api/v1/dlq/{id}", get(get_dead_letter))
        .route("/api/v1/dlq/{id}/retry", axum::routing::post(retry_dead_letter))
        .route("/api/v1/backups", axum::routing::post(take_backup))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/api/v1/audit", get(tokens::audit))
        .route("/api/v1/usage", get(usage::usage))
        .route("/api/v1/models/aliases", get(super::gateway::aliases_list))
        .route(
            "/api/v1/models/aliases/{name}",
            axum::routing::put(super::gateway::aliases_put).delete(super::gateway::aliases_delete),
        )
        .route("/api/v1/join-tokens", get(enrolment::list).post(enrolment::create))
        .route("/api/v1/join-tokens/{id}", axum::routing::delete(enrolment::revoke))
        .route("/api/v1/sidecars", get(enrolment::list_sidecars))
        .route("/api/v1/sidecars/{id}/revoke", axum::routing::post(enrolment::revoke_sidecar))
        .route("/api/v1/workflows/runs", get(workflows::list).post(workflows::start))
        .route("/api/v1/workflows/builtin", get(workflows::builtins))
        .route("/api/v1/workflows/builtin/{name}", get(workflows::get_builtin))
        .route("/api/v1/workflows/runs/{id}", get(workflows::get))
        .route("/api/v1/workflows/runs/{id}/cancel", axum::routing::post(workflows::cancel))
        .route("/api/v1/workflows/runs/{id}/retry", axum::routing::post(workflows::retry))
        .route("/api/v1/workflows/hooks", get(hooks::list_hooks).post(hooks::add_hook))
        .route("/api/v1/workflows/hooks/{name}", axum::routing::delete(hooks::remove_hook))
        .route("/api/v1/workflows/schedules", get(hooks::list_schedules).post(hooks::add_schedule))
        .route("/api/v1/workflows/schedules/{name}", axum::routing::delete(hooks::remove_schedule))
        .route("/api/v1/workflows/memory/{workflow}", get(hooks::memory))
        .route("/api/v1/hooks/{name}", axum::routing::post(hooks::deliver))
        .with_state(state.clone())
        .merge(super::gateway::router(state))
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
        let reason = state.hub.storage_fault().unwrap_or_else(|| "the hub core has stopped".to_owned());
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "reason": reason }))).into_response()
    }
}

/// `POST /api/v1/tasks`; a W3C `traceparent` header makes the task's spans part of the caller's trace.
async fn submit_task(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<agentcom_types::json::SubmitBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let mut spec = pb::TaskSpec::try_from(body).map_err(|err| ApiError::invalid(err.0))?;
    if let Some(parent) = headers.get("traceparent") {
        spec.traceparent = parent.to_str().map_err(|_| ApiError::invalid("invalid traceparent header"))?.to_owned();
    }
    let spec = convert::spec_from_pb(spec, &state.spec_defaults)?;
    let submitted = state.hub.submit(spec).await?;
    let status = if submitted.existing { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({ "task": TaskDto::from(&submitted.task), "existing": submitted.existing })))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
    /// `KEY=VALUE`: only tasks with that label (`workflow_run=RUN`: a run's step tasks).
    label: Option<String>,
}

async fn list_tasks(
    State(state): State<HttpState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let filter = query.state.map(|s| s.parse::<TaskState>()).transpose()?;
    let limit = list_limit(query.limit)?;
    let before = query.before.map(|id| id.parse::<TaskId>()).transpose()?;
    let tasks = match query.label {
        Some(label) => {
            let (key, value) = label
                .split_once('=')
                .ok_or_else(|| ApiError::invalid(format!("invalid label {label:?}: write KEY=VALUE")))?;
            state.hub.list_labelled(filter, before, (key.to_owned(), value.to_owned()), limit).await?
        }
        None => state.hub.list_before(filter, before, limit).await?,
    };
    Ok(Json(tasks_json(&tasks)))
}

async fn get_task(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.get(id.parse::<TaskId>()?).await?;
    Ok(Json(json!({ "task": TaskDto::from(&task) })))
}

/// `GET /api/v1/tasks/{id}/decision`: the placement decisions kept for the task, oldest first.
async fn task_decision(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let decisions = state.hub.explain(id.parse::<TaskId>()?).await?;
    Ok(Json(json!({ "decisions": decisions.iter().map(DecisionDto::from).collect::<Vec<_>>() })))
}

/// `GET /api/v1/tasks/{id}/why`: why the task waits, or that it does not.
async fn task_why(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let why = state.hub.why(id.parse::<TaskId>()?).await?;
    Ok(Json(json!({ "why": WhyDto::from(&why) })))
}

async fn cancel_task(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.cancel(id.parse::<TaskId>()?, String::new()).await?;
    Ok(Json(json!({ "task": TaskDto::from(&task) })))
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
    Ok(Json(tasks_json(&tasks)))
}

async fn get_dead_letter(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.get(id.parse::<TaskId>()?).await?;
    if task.state != TaskState::DeadLettered {
        return Err(ApiError::new(super::ErrorCode::NotFound, format!("task {id} is not in the dead-letter queue")));
    }
    Ok(Json(json!({ "task": TaskDto::from(&task) })))
}

async fn retry_dead_letter(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let task = state.hub.retry_dead_letter(id.parse::<TaskId>()?).await?;
    audited(&state.hub, caller.as_deref(), "dlq.retry", &id, String::new()).await?;
    Ok(Json(json!({ "task": TaskDto::from(&task) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    older_than_ms: Option<u64>,
}

async fn purge_dead_letters(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<PurgeQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let before = super::purge_cutoff(query.older_than_ms.unwrap_or(0))?;
    let purged = state.hub.purge_dead_letters(before).await?;
    let detail = format!("{purged} purged, older than {} ms", query.older_than_ms.unwrap_or(0));
    audited(&state.hub, caller.as_deref(), "dlq.purge", "dlq", detail).await?;
    Ok(Json(json!({ "purged": purged })))
}

/// `POST /api/v1/backups`: a consistent online backup into the hub's backup directory.
async fn take_backup(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let info = state
        .backups
        .take()
        .await
        .map_err(|err| ApiError::new(super::ErrorCode::Unavailable, format!("backup failed: {err}")))?;
    Ok(Json(json!({ "backup": BackupDto::from(&info) })))
}

/// `GET /api/v1/queue`: counts of the queue now (ready, delayed, leased, refused stale messages, ...).
async fn queue_stats(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "queue": QueueDto::from(&state.hub.stats().await?) })))
}

/// `GET /metrics`: the Prometheus text format (version 0.0.4), an admin token required.
async fn metrics(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let text = state.hub.metrics().await?;
    Ok(([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// `GET /api/v1/models/stats`: verdicts of verified results by model, kind of work and tier.
async fn model_stats(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let stats = state.hub.model_stats().await?;
    Ok(Json(json!({ "models": stats.iter().map(dto::ModelStatDto::from).collect::<Vec<_>>() })))
}

async fn list_agents(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let agents = state.hub.agents().await?;
    Ok(Json(json!({ "agents": agents.iter().map(AgentDto::from).collect::<Vec<_>>() })))
}

/// `GET /api/v1/agents/{id}`: the agent and its recent transitions, with their causes.
async fn get_agent(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "agent": AgentDto::from(&state.hub.agent(id).await?) })))
}

/// `GET /api/v1/hosts`: every host with its latest resource report.
async fn list_hosts(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let hosts = state.hub.hosts().await?;
    Ok(Json(json!({ "hosts": hosts.iter().map(HostDto::from).collect::<Vec<_>>() })))
}

/// `GET /api/v1/services`: service tasks that have not ended, with their ports and health.
async fn list_services(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let services = state.hub.services().await?;
    let services: Vec<ServiceDto> = services.into_iter().map(|(task, host)| ServiceDto::of(&task, host)).collect();
    Ok(Json(json!({ "services": services })))
}

/// `GET /api/v1/hosts/{id}`: one host with its resource history (one hour at report resolution).
async fn get_host(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "host": HostDto::from(&state.hub.host(id).await?) })))
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
    caller: Option<Extension<Caller>>,
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
    let host = state.hub.drain(id.clone(), deadline).await?;
    let detail = body.deadline_ms.map(|ms| format!("deadline in {ms} ms")).unwrap_or_default();
    audited(&state.hub, caller.as_deref(), "drain", &id, detail).await?;
    Ok(Json(json!({ "host": HostDto::from(&host) })))
}

/// `POST /api/v1/hosts/{id}/uncordon`: the sidecar takes work again.
async fn uncordon_host(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let host = state.hub.uncordon(id.clone()).await?;
    audited(&state.hub, caller.as_deref(), "uncordon", &id, String::new()).await?;
    Ok(Json(json!({ "host": HostDto::from(&host) })))
}

/// `GET /api/v1/endpoints`: the LLM registry.
async fn list_endpoints(State(state): State<HttpState>) -> Result<Json<serde_json::Value>, ApiError> {
    let endpoints = state.hub.endpoint_listing().await?;
    Ok(Json(json!({ "endpoints": listing(&endpoints) })))
}

/// The registry as `GET /api/v1/endpoints` and `event: endpoints` show it.
fn listing(endpoints: &[(crate::fleet::Endpoint, Option<u32>)]) -> Vec<EndpointDto> {
    let listed = |(e, learned): &(_, Option<u32>)| EndpointDto { parallel_learned: *learned, ..EndpointDto::from(e) };
    endpoints.iter().map(listed).collect()
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
    caller: Option<Extension<Caller>>,
    body: Result<Json<EndpointBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let kind = super::endpoint_kind(&body.kind)?;
    let endpoint = state.hub.add_endpoint(body.url, kind).await?;
    let url = crate::fleet::without_password(&endpoint.url);
    audited(&state.hub, caller.as_deref(), "endpoint.add", &endpoint.id, url).await?;
    Ok(Json(json!({ "endpoint": EndpointDto::from(&endpoint) })))
}

/// `DELETE /api/v1/endpoints/{id}`.
async fn remove_endpoint(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let endpoint = state.hub.remove_endpoint(id.clone()).await?;
    let url = crate::fleet::without_password(&endpoint.url);
    audited(&state.hub, caller.as_deref(), "endpoint.remove", &id, url).await?;
    Ok(Json(json!({ "endpoint": EndpointDto::from(&endpoint) })))
}

/// `GET /api/v1/tasks/{id}/events`: `snapshot` events carry the task, `output` events carry
/// `{attempt, stream, offset, data_base64}`, `step` events an agent's step
/// `{attempt, number, step}`. The stream ends after the task's final snapshot.
async fn task_events(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let feed = state.hub.watch(id.parse::<TaskId>()?).await?;
    let events = feed::events(feed, state.stop.clone()).map(|event| {
        let sse = match event {
            FeedEvent::Snapshot(task) => SseEvent::default().event("snapshot").json_data(TaskDto::from(&*task)),
            FeedEvent::Output { attempt, stream, offset, data } => {
                SseEvent::default().event("output").json_data(OutputEventDto {
                    attempt,
                    stream: stream.as_str(),
                    offset,
                    data_base64: base64::engine::general_purpose::STANDARD.encode(&data),
                })
            }
            FeedEvent::Step { attempt, number, step } => {
                SseEvent::default().event("step").json_data(StepEventDto { attempt, number, step: (&step).into() })
            }
            FeedEvent::Failed(message) => SseEvent::default().event("error").json_data(json!({ "message": message })),
        };
        Ok::<_, Infallible>(sse.expect("task events serialize"))
    });
    let revoked = revoked(&state, caller.as_deref());
    let events = events.take_until(async move { revoked.cancelled().await });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// Cancelled when the token that opened a stream is revoked (never for a request without one).
fn revoked(state: &HttpState, caller: Option<&Caller>) -> CancellationToken {
    caller.map(|caller| state.tokens.revocation(&caller.token_id)).unwrap_or_default()
}

/// `GET /api/v1/events`: the hub's changes as server-sent events: `ready` once the subscription
/// is live (fetch what you show after it, and nothing is missed), then `task`, `agent`, `host`,
/// `endpoints`, `queue` and `run` (a workflow run, as lists show it) as they change (coalesced, at most every 100 ms), and `resync` when
/// the client fell behind and must fetch everything again.
async fn hub_events(State(state): State<HttpState>, caller: Option<Extension<Caller>>) -> Response {
    use crate::core::Change;
    use tokio_stream::wrappers::BroadcastStream;
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    let changes = BroadcastStream::new(state.hub.changes()).map(|change| {
        let event = match change {
            Ok(change) => match &*change {
                Change::Task(task) => SseEvent::default().event("task").json_data(TaskDto::from(&**task)),
                Change::Agent(agent) => SseEvent::default().event("agent").json_data(AgentDto::from(agent)),
                Change::Host(host) => SseEvent::default().event("host").json_data(HostDto::from(host)),
                Change::Endpoints(endpoints) => {
                    SseEvent::default().event("endpoints").json_data(json!({ "endpoints": listing(endpoints) }))
                }
                Change::Queue(stats) => SseEvent::default().event("queue").json_data(QueueDto::from(stats)),
                Change::Run(run) => {
                    SseEvent::default().event("run").json_data(json!({ "run": dto::RunDto::of(run, now_ms()) }))
                }
            },
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                SseEvent::default().event("resync").json_data(json!({ "missed": missed }))
            }
        };
        Ok::<_, Infallible>(event.expect("hub events serialize"))
    });
    let ready = futures_util::stream::once(async { Ok(SseEvent::default().event("ready").data("{}")) });
    let stop = state.stop.clone();
    let revoked = revoked(&state, caller.as_deref());
    let events = ready.chain(changes).take_until(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = revoked.cancelled() => {}
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
