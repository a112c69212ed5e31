//! Webhooks, schedules and memory of workflows: `POST /api/v1/hooks/{name}` (a delivery,
//! authenticated by its HMAC-SHA256 signature, not a token), `/api/v1/workflows/hooks`,
//! `/api/v1/workflows/schedules`, `/api/v1/workflows/memory/{workflow}`.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::dto::RunDto;
use super::workflows::checked;
use super::{ApiError, HttpState, body_error};
use crate::api::ErrorCode;
use crate::auth::Caller;
use crate::domain::now_ms;
use crate::store::{Hook, Scheduled};

/// The largest delivery a webhook takes.
pub(super) const MAX_DELIVERY_BYTES: usize = 1024 * 1024;
/// The signature header, in GitHub's form: `sha256=HEX`.
const SIGNATURE: &str = "x-hub-signature-256";
/// Delivery id headers: GitHub's, and a plain one for other senders.
const DELIVERY: [&str; 2] = ["x-github-delivery", "x-delivery-id"];

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, message.into())
}

/// A name for a hook or schedule: 1 to 64 letters, digits, `-` and `_`.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("invalid name {name:?}: 1 to 64 letters, digits, '-' and '_'")))
    }
}

/// Whether `header` (`sha256=HEX`) is the HMAC-SHA256 of `body` under `secret`, compared in
/// constant time.
pub(crate) fn signed(secret: &[u8], body: &[u8], header: &str) -> Result<(), ApiError> {
    let hex_digest = header.trim().strip_prefix("sha256=").ok_or_else(|| {
        unauthenticated(format!(
            "the {SIGNATURE} header is not sha256=HEX (the HMAC-SHA256 of the body with the hook's secret)"
        ))
    })?;
    let digest =
        hex::decode(hex_digest).map_err(|_| unauthenticated(format!("the {SIGNATURE} header's digest is not hex")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&digest)
        .map_err(|_| unauthenticated("the signature does not match the body and the hook's secret"))
}

/// `POST /api/v1/hooks/{name}`: a signed delivery starts the hook's workflow with the JSON body
/// as its `payload` input; a redelivery (the same delivery id) answers the run it started.
pub(super) async fn deliver(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("a webhook delivery is at most {MAX_DELIVERY_BYTES} bytes"),
        ),
        _ => ApiError::invalid(rejection.body_text()),
    })?;
    if body.len() > MAX_DELIVERY_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("a webhook delivery is at most {MAX_DELIVERY_BYTES} bytes; this one is {}", body.len()),
        ));
    }
    let hook = state.hub.hook(name.clone()).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no webhook named {name:?} (hubctl workflow hooks add {name} --workflow FILE)"),
        )
    })?;
    let signature = headers
        .get(SIGNATURE)
        .ok_or_else(|| unauthenticated(format!("the delivery is not signed: send {SIGNATURE}: sha256=HEX, the HMAC-SHA256 of the body with the hook's secret")))?
        .to_str()
        .map_err(|_| unauthenticated(format!("the {SIGNATURE} header is not text")))?;
    signed(&hook.secret, &body, signature)?;
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("the delivery's body is not JSON: {err}")))?;
    let delivery = DELIVERY
        .iter()
        .find_map(|h| headers.get(*h))
        .map(|v| v.to_str().map(str::to_owned).map_err(|_| ApiError::invalid("the delivery id header is not text")));
    let delivery = delivery.transpose()?.filter(|d| !d.is_empty());
    if delivery.as_ref().is_some_and(|d| d.len() > 200) {
        return Err(ApiError::invalid("the delivery id is longer than 200 characters"));
    }
    let inputs = Map::from_iter([("payload".to_owned(), payload)]);
    let mut start = checked(hook.source.clone(), &inputs, &format!("hook:{name}"))?;
    start.delivery = delivery;
    let run = state.hub.start_run(start).await?;
    let status = if run.existing { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({ "run": RunDto::of(&run, now_ms()), "existing": run.existing }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HookBody {
    name: String,
    /// The workflow file's text (YAML or JSON).
    workflow: String,
}

/// `POST /api/v1/workflows/hooks`: the secret is in this answer only.
pub(super) async fn add_hook(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<HookBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    check_name(&body.name)?;
    let definition = checked_definition(&body.workflow)?;
    match definition.inputs.get("payload") {
        Some(input) if input.kind == agentcom_workflow::file::InputType::Object => {}
        _ => {
            return Err(ApiError::invalid(
                "a webhook's workflow takes the delivery as its input payload: declare inputs: {payload: {type: object}}",
            ));
        }
    }
    let secret: [u8; 32] = rand::random();
    let hook = Hook {
        name: body.name.clone(),
        source: body.workflow,
        secret: secret.to_vec(),
        created_unix_ms: now_ms(),
        created_by: caller.as_ref().map_or_else(String::new, |c| c.token_id.clone()),
    };
    let view = hook_json(&hook, &definition.workflow.name);
    state.hub.put_hook(hook).await?;
    let mut view = view;
    view["secret"] = json!(hex::encode(secret));
    Ok((StatusCode::CREATED, Json(json!({ "hook": view }))).into_response())
}

fn hook_json(hook: &Hook, workflow: &str) -> Value {
    json!({
        "name": hook.name,
        "workflow": workflow,
        "path": format!("/api/v1/hooks/{}", hook.name),
        "created_unix_ms": hook.created_unix_ms,
        "created_by": hook.created_by,
    })
}

fn checked_definition(source: &str) -> Result<agentcom_workflow::file::Definition, ApiError> {
    agentcom_workflow::file::load(source).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        ApiError::invalid(format!("invalid workflow: {} problem(s):\n{}", lines.len(), lines.join("\n")))
    })
}

pub(super) async fn list_hooks(State(state): State<HttpState>) -> Result<Json<Value>, ApiError> {
    let hooks = state.hub.hooks().await?;
    let views: Vec<Value> = hooks
        .iter()
        .map(|h| {
            let workflow = agentcom_workflow::file::load(&h.source).map(|d| d.workflow.name).unwrap_or_default();
            hook_json(h, &workflow)
        })
        .collect();
    Ok(Json(json!({ "hooks": views })))
}

pub(super) async fn remove_hook(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.hub.delete_hook(name.clone()).await?;
    Ok(Json(json!({ "removed": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleBody {
    /// The workflow file's text; its `on.schedule` says when, its name names the schedule.
    workflow: String,
}

/// `POST /api/v1/workflows/schedules`: the workflow runs on its file's `on.schedule` from now on.
pub(super) async fn add_schedule(
    State(state): State<HttpState>,
    body: Result<Json<ScheduleBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let definition = checked_definition(&body.workflow)?;
    if definition.schedule.is_none() {
        return Err(ApiError::invalid("the workflow has no on: {schedule: \"CRON\"}, so it has no time to run"));
    }
    if let Err(problems) = definition.inputs_for(&Map::new()) {
        return Err(ApiError::invalid(format!(
            "a scheduled workflow is started with no inputs: {}",
            problems.join("; ")
        )));
    }
    let name = definition.workflow.name.clone();
    check_name(&name)?;
    let now = now_ms();
    let scheduled = Scheduled { name: name.clone(), source: body.workflow, added_unix_ms: now, last_slot_unix_ms: now };
    state.hub.put_schedule(scheduled, std::sync::Arc::new(definition)).await?;
    let schedules = state.hub.schedules().await?;
    let view = schedules.iter().find(|s| s.name == name).map(schedule_json);
    Ok((StatusCode::CREATED, Json(json!({ "schedule": view }))).into_response())
}

fn schedule_json(view: &crate::core::triggers::ScheduleView) -> Value {
    json!({
        "name": view.name,
        "schedule": view.pattern,
        "added_unix_ms": view.added_unix_ms,
        "last_slot_unix_ms": view.last_slot_unix_ms,
        "next_slot_unix_ms": view.next_slot_unix_ms,
    })
}

pub(super) async fn list_schedules(State(state): State<HttpState>) -> Result<Json<Value>, ApiError> {
    let schedules = state.hub.schedules().await?;
    Ok(Json(json!({ "schedules": schedules.iter().map(schedule_json).collect::<Vec<_>>() })))
}

pub(super) async fn remove_schedule(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.hub.delete_schedule(name.clone()).await?;
    Ok(Json(json!({ "removed": name })))
}

/// `GET /api/v1/workflows/memory/{workflow}`.
pub(super) async fn memory(
    State(state): State<HttpState>,
    Path(workflow): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let memory = state.hub.memory(workflow.clone()).await?.unwrap_or_default();
    Ok(Json(json!({ "memory": {
        "workflow": workflow,
        "values": memory.values,
        "last_run": memory.last_run.map(|r| r.to_string()),
        "last_outputs": memory.last_outputs,
        "updated_unix_ms": (memory.updated_unix_ms > 0).then_some(memory.updated_unix_ms),
    }})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_hmac_of_the_body_in_githubs_form() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let (secret, body) = (b"It's a Secret to Everybody", b"Hello, World!");
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signed(secret, body, good).is_ok());
        assert!(signed(secret, b"Hello, World?", good).is_err(), "another body");
        assert!(signed(b"another secret", body, good).is_err(), "another secret");
        assert!(signed(secret, body, "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17").is_err());
        assert!(signed(secret, body, "sha256=zz").is_err());
        assert!(signed(secret, body, "sha256=757107").is_err(), "a prefix of the digest is not the digest");
    }
}
