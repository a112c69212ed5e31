//! Join tokens and enrolled sidecars: `POST/GET /api/v1/join-tokens`, `DELETE
//! /api/v1/join-tokens/{id}`, `GET /api/v1/sidecars` and `POST /api/v1/sidecars/{id}/revoke`.
//! The join token's secret is in the answer to its `POST` and nowhere else.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use super::dto::{JoinTokenDto, SidecarIdentityDto};
use crate::api::{ApiError, audited};
use crate::auth::Caller;
use crate::store::Op;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    #[serde(default = "one")]
    uses: u32,
    #[serde(default = "an_hour")]
    ttl_seconds: u64,
    #[serde(default)]
    tags: Vec<String>,
}

fn one() -> u32 {
    1
}

fn an_hour() -> u64 {
    3600
}

/// `POST /api/v1/join-tokens` `{"uses": 1, "ttl_seconds": 3600, "tags": ["gpu"]}`.
pub(super) async fn create(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(super::body_error)?;
    let now = crate::domain::now_ms();
    let by = caller.as_ref().map_or_else(String::new, |c| c.token_id.clone());
    let ttl = Duration::from_secs(body.ttl_seconds);
    let (token, grant) = state.enrolment.create_join(body.uses, ttl, body.tags, &by, now)?;
    if let Err(err) = state.hub.persist(vec![Op::PutJoinGrant(Box::new(grant.clone()))]).await {
        let _ = state.enrolment.remove_join(&grant.id);
        return Err(err.into());
    }
    let detail = format!("uses {}, ttl {} s, tags {:?}", grant.uses, body.ttl_seconds, grant.tags);
    audited(&state.hub, caller.as_deref(), "join_token.create", &grant.id, detail).await?;
    let body = json!({
        "join_token": JoinTokenDto::new(&grant, now),
        "token": token.to_string(),
        "ca_sha256": state.enrolment.fingerprint().map(|f| f.hex()),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api/v1/join-tokens`: never their secrets.
pub(super) async fn list(State(state): State<HttpState>) -> Json<serde_json::Value> {
    let now = crate::domain::now_ms();
    let joins: Vec<JoinTokenDto> = state.enrolment.joins().iter().map(|g| JoinTokenDto::new(g, now)).collect();
    Json(json!({ "join_tokens": joins, "ca_sha256": state.enrolment.fingerprint().map(|f| f.hex()) }))
}

/// `DELETE /api/v1/join-tokens/{id}`: no more enrolments with it (identities it made stay).
pub(super) async fn revoke(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let grant = state.enrolment.remove_join(&id)?;
    state.hub.persist(vec![Op::DeleteJoinGrant { id: id.clone() }]).await?;
    audited(&state.hub, caller.as_deref(), "join_token.revoke", &id, String::new()).await?;
    Ok(Json(json!({ "join_token": JoinTokenDto::new(&grant, crate::domain::now_ms()) })))
}

/// `GET /api/v1/sidecars`: every enrolled sidecar, and whether it is connected.
pub(super) async fn list_sidecars(State(state): State<HttpState>) -> Json<serde_json::Value> {
    let sidecars: Vec<SidecarIdentityDto> = state
        .enrolment
        .identities()
        .iter()
        .map(|identity| SidecarIdentityDto::new(identity, state.enrolment.is_connected(&identity.sidecar_id)))
        .collect();
    Json(json!({ "sidecars": sidecars }))
}

/// `POST /api/v1/sidecars/{id}/revoke`: its stream is closed now and it cannot connect again;
/// its leases lapse as those of any sidecar that went away.
pub(super) async fn revoke_sidecar(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let identity = state.enrolment.revoke(&id, crate::domain::now_ms())?;
    state.hub.persist(vec![Op::PutIdentity(Box::new(identity.clone()))]).await?;
    audited(&state.hub, caller.as_deref(), "sidecar.revoke", &id, format!("host {:?}", identity.hostname)).await?;
    Ok(Json(json!({ "sidecar": SidecarIdentityDto::new(&identity, false) })))
}
