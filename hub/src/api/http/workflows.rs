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
    #[serde(default)]
    workflow: Option<Value>,
    /// Or the name of a workflow shipped with the hub (`repo-up`).
    #[serde(default)]
    builtin: Option<String>,
    #[serde(default)]
    inputs: Map<String, Value>,
}

/// A workflow shipped with the hub, by name.
fn builtin(name: &str) -> Result<&'static str, ApiError> {
    agentcom_workflow::BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, text)| *text).ok_or_else(|| {
        let names: Vec<&str> = agentcom_workflow::BUILTIN.iter().map(|(n, _)| *n).collect();
        ApiError::new(
            crate::api::ErrorCode::NotFound,
            format!("no built-in workflow named {name:?} (there are: {})", names.join(", ")),
        )
    })
}

/// `GET /api/v1/workflows/builtin`: the workflows shipped with the hub, with their files.
pub(super) async fn builtins() -> Json<Value> {
    let list: Vec<Value> =
        agentcom_workflow::BUILTIN.iter().map(|(name, text)| json!({"name": name, "source": text})).collect();
    Json(json!({ "workflows": list }))
}

/// `GET /api/v1/workflows/builtin/{name}`: one, with its file.
pub(super) async fn get_builtin(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "workflow": {"name": name, "source": builtin(&name)?} })))
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
    let source = match (body.workflow, body.builtin) {
        (Some(Value::String(text)), None) => text,
        (Some(workflow @ Value::Object(_)), None) => {
            serde_json::to_string_pretty(&workflow).expect("JSON values serialize")
        }
        (None, Some(name)) => builtin(&name)?.to_owned(),
        (Some(_), Some(_)) => return Err(ApiError::invalid("invalid workflow: give workflow or builtin, not both")),
        _ => {
            return Err(ApiError::invalid(
                "invalid workflow: give the workflow file's text, the workflow as a JSON object, or builtin: NAME",
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
