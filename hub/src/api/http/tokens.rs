//! Admin tokens and the audit log: `POST /api/v1/tokens` (a token shown once), `GET` and
//! `DELETE /api/v1/tokens/{id}`, and `GET /api/v1/audit`. An admin token is needed for all of
//! them (see `auth::access_for`).

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use super::dto::{AuditDto, TokenDto};
use crate::api::{ApiError, ErrorCode, audited, list_limit};
use crate::auth::{self, Caller, Role};
use crate::store::{Op, encode_token};

/// Longest token name.
const MAX_NAME: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    role: String,
    #[serde(default)]
    name: String,
    /// The gateway's limits for this key (`auth::KeyLimits`).
    #[serde(default)]
    limits: auth::KeyLimits,
}

/// `POST /api/v1/tokens` `{"role": "viewer", "name": "grafana"}`: a new token, whose secret
/// is in this answer and nowhere else (the hub keeps its hash).
pub(super) async fn create(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(super::body_error)?;
    let role = Role::parse(&body.role).filter(|r| Role::API.contains(r) || *r == Role::Inference).ok_or_else(|| {
        ApiError::invalid(format!("invalid role {:?}: one of admin, operator, submitter, viewer, inference", body.role))
    })?;
    let name = body.name.trim().to_owned();
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("invalid name: at most {MAX_NAME} characters, no control characters")));
    }
    body.limits.check().map_err(|why| ApiError::invalid(format!("invalid limits: {why}")))?;
    let minted = auth::mint(role);
    let created = crate::domain::now_ms();
    let value = encode_token(role.as_str(), created, &name, &body.limits);
    state.hub.persist(vec![Op::PutToken { hash: minted.hash.clone(), value }]).await?;
    let id = auth::token_id(&minted.hash);
    let info =
        auth::TokenInfo { id: id.clone(), role, name: name.clone(), created_unix_ms: created, limits: body.limits };
    state.tokens.insert_info(minted.hash.clone(), info);
    audited(&state.hub, caller.as_deref(), "token.create", &id, format!("role {}, name {name:?}", role.as_str()))
        .await?;
    let (_, info) = state.tokens.find(&id).expect("the token just added");
    let body = json!({ "token": TokenDto::from(&info), "secret": minted.token });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /api/v1/tokens`: every token the hub accepts, without secrets.
pub(super) async fn list(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(json!({ "tokens": state.tokens.list().iter().map(TokenDto::from).collect::<Vec<_>>() }))
}

/// `DELETE /api/v1/tokens/{id}`: the token is refused from its next request on. The last admin
/// token cannot go (nobody could make another).
pub(super) async fn revoke(
    State(state): State<HttpState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (hash, info) =
        state.tokens.find(&id).ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no token {id}")))?;
    if info.role == Role::Admin && state.tokens.count(Role::Admin) == 1 {
        return Err(ApiError::new(
            ErrorCode::FailedPrecondition,
            format!("{id} is the last admin token: make another first"),
        ));
    }
    state.hub.persist(vec![Op::DeleteToken { hash: hash.clone() }]).await?;
    state.tokens.remove(&hash);
    audited(&state.hub, caller.as_deref(), "token.revoke", &id, format!("role {}", info.role.as_str())).await?;
    Ok(Json(json!({ "token": TokenDto::from(&info) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/audit?limit=N`: admin actions, newest first.
pub(super) async fn audit(
    State(state): State<HttpState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let entries = state.hub.audit_log(list_limit(query.limit)?).await?;
    Ok(Json(json!({ "entries": entries.iter().map(AuditDto::from).collect::<Vec<_>>() })))
}
