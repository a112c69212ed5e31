//! `/api/v1/workflows/runs`: start a workflow run, read one or the newest, cancel, retry.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::dto::RunDto;
use super::{ApiError, HttpState, body_error};
use crate::api::list_limit;
use crate::core::workflows::StartRun;
use crate::domain::now_ms;

/// `POST /api/v1/workflows/runs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartBody {
    /// The workflow file's text (YAML or JSON), or the workflow as JSON.
    workflow: Value,
    #[serde(default)]
    inputs: Map<String, Value>,
}

/// A run of the workflow file `source` with `inputs`, checked: every problem of the file or
/// the inputs in one error.
pub(crate) fn checked(source: String, inputs: &Map<String, Value>, trigger: &str) -> Result<StartRun, ApiError> {
    let definition = agentcom_workflow::file::load(&source).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        ApiError::invalid(format!("invalid workflow: {} problem(s):\n{}", lines.len(), lines.join("\n")))
    })?;
    let inputs = definition.inputs_for(inputs).map_err(|problems| ApiError::invalid(problems.join("; ")))?;
    let mut start = StartRun::new(std::sync::Arc::new(definition), source, inputs);
    start.trigger = trigger.to_owned();
    Ok(start)
}

pub(super) async fn start(
    State(state): State<HttpState>,
    body: Result<Json<StartBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let source = match body.workflow {
        Value::String(text) => text,
        workflow @ Value::Object(_) => serde_json::to_string_pretty(&workflow).expect("JSON values serialize"),
        _ => {
            return Err(ApiError::invalid(
                "invalid workflow: give the workflow file's text, or the workflow as a JSON object",
            ));
        }
    };
    let start = checked(source, &body.inputs, "api")?;
    let run = state.hub.start_run(start).await?;
    Ok((StatusCode::CREATED, Json(json!({ "run": RunDto::of(&run, now_ms()) }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<usize>,
}

pub(super) async fn list(
    State(state): State<HttpState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let runs = state.hub.runs(list_limit(query.limit)?).await?;
    let now = now_ms();
    Ok(Json(json!({ "runs": runs.iter().map(|run| RunDto::of(run, now)).collect::<Vec<_>>() })))
}

fn run_id(id: &str) -> Result<ulid::Ulid, ApiError> {
    id.parse().map_err(|_| ApiError::invalid(format!("invalid run id {id:?}: a run id is a ULID (26 characters)")))
}

pub(super) async fn get(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let run = state.hub.run(run_id(&id)?).await?;
    Ok(Json(json!({ "run": RunDto::of(&run, now_ms()) })))
}

pub(super) async fn cancel(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let run = state.hub.cancel_run(run_id(&id)?).await?;
    Ok(Json(json!({ "run": RunDto::of(&run, now_ms()) })))
}

pub(super) async fn retry(State(state): State<HttpState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let run = state.hub.retry_run(run_id(&id)?).await?;
    Ok(Json(json!({ "run": RunDto::of(&run, now_ms()) })))
}
