//! The hub's edges: gRPC (admin and sidecar link) and the HTTP JSON API, on one listener.
//!
//! Both speak the same error vocabulary: one [`ErrorCode`] maps to a `tonic::Code` and an HTTP
//! status, so a client sees the same code whichever protocol it uses.
//!
//! In detail:
//!
//! `api`: the edges. `grpc` implements `Admin` and `AgentLink` (converting through
//! `agentcom_types::wire`); `http` the JSON API and server-sent events (a task's, and the hub's
//! `GET /api/v1/events`); `ErrorCode` maps to both `tonic::Code` and HTTP status. Endpoint URLs and
//! errors are shown with their passwords masked (`agentcom_types::fleet::without_password`).
//!
//! `api/http/ui.rs` and `api/http/ui/` are the fleet dashboard: HTML, CSS and six ES modules, no
//! build step, embedded with `include_str!` and served at `/` and `/ui/FILE` without a token, under
//! a strict content security policy (`'self'` only, no inline script). `app.js` signs in (a token
//! kept in session storage; `#token=` in the URL logs in and is removed), routes (`#/fleet`,
//! `#/queue`, `#/tasks`, `#/tasks/ID`, `#/llm`), keeps the store and follows `/api/v1/events` and a
//! task's events through `sse.js` (server-sent events read with `fetch`, which can send the token,
//! reconnecting with backoff); `views.js` draws, `charts.js` is the SVG sparklines, gauges and
//! charts (no chart library), `api.js` the fetch wrapper, `util.js` escaping and formatting. A test
//! keeps the JS and CSS under 150 KiB and checks every file the page loads is served.
//!
//! `api/http/dto/` is the JSON contract, written out: a response shape per resource (task, agent,
//! host, endpoint, queue, backup, output event), built from the domain by `From` (a task's outcome
//! in `outcome.rs`, placement decisions and `why` in `placement.rs`), and the request half
//! re-exported from `agentcom_types::json`. The domain types do not implement `Serialize`, so
//! nothing reaches a response except through a DTO; a test compares every shape with its example in
//! `docs/api.md` ("JSON shapes") and names the fields that differ.

pub mod gateway;
pub mod grpc;
pub mod http;

use crate::{auth, core};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    /// The path exists, the method does not (HTTP only; gRPC says unimplemented).
    MethodNotAllowed,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    /// The request contradicts what the hub already holds (an idempotency key reused).
    Conflict,
    /// Too many requests from this caller: retry after a while.
    RateLimited,
    /// The hub is saturated (storage behind, connections full): retry after a while.
    ResourceExhausted,
    /// The request body is larger than the hub takes.
    PayloadTooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Conflict => tonic::Code::AlreadyExists,
            ErrorCode::RateLimited | ErrorCode::ResourceExhausted | ErrorCode::PayloadTooLarge => {
                tonic::Code::ResourceExhausted
            }
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    pub fn http(self) -> ::http::StatusCode {
        use ::http::StatusCode as S;
        match self {
            ErrorCode::InvalidArgument => S::BAD_REQUEST,
            ErrorCode::NotFound => S::NOT_FOUND,
            ErrorCode::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            ErrorCode::FailedPrecondition => S::CONFLICT,
            ErrorCode::Unauthenticated => S::UNAUTHORIZED,
            ErrorCode::PermissionDenied => S::FORBIDDEN,
            ErrorCode::Conflict => S::CONFLICT,
            ErrorCode::RateLimited => S::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted => S::SERVICE_UNAVAILABLE,
            ErrorCode::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => S::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error as the APIs report it.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }
}

impl From<core::Error> for ApiError {
    fn from(err: core::Error) -> ApiError {
        let code = match &err {
            core::Error::Invalid(_) => ErrorCode::InvalidArgument,
            core::Error::NotFound(_) => ErrorCode::NotFound,
            core::Error::AlreadyFinal { .. } | core::Error::NotDeadLettered { .. } => ErrorCode::FailedPrecondition,
            core::Error::Storage(_) | core::Error::ShuttingDown => ErrorCode::Unavailable,
            core::Error::UnknownName(_) => ErrorCode::NotFound,
            core::Error::NotAllowed(_) => ErrorCode::PermissionDenied,
            core::Error::Conflict(_) => ErrorCode::FailedPrecondition,
            core::Error::KeyReused { .. } => ErrorCode::Conflict,
            core::Error::Overloaded | core::Error::StorageFault(_) | core::Error::NoRoom(_) => {
                ErrorCode::ResourceExhausted
            }
        };
        ApiError::new(code, err.to_string())
    }
}

impl From<crate::enrol::Error> for ApiError {
    fn from(err: crate::enrol::Error) -> ApiError {
        let code = match &err {
            crate::enrol::Error::Invalid(_) => ErrorCode::InvalidArgument,
            crate::enrol::Error::NotFound(_) => ErrorCode::NotFound,
            crate::enrol::Error::Refused(_) => ErrorCode::PermissionDenied,
            crate::enrol::Error::NoTls => ErrorCode::FailedPrecondition,
        };
        ApiError::new(code, err.to_string())
    }
}

impl From<crate::domain::Error> for ApiError {
    fn from(err: crate::domain::Error) -> ApiError {
        ApiError::invalid(err.to_string())
    }
}

impl From<auth::Error> for ApiError {
    fn from(err: auth::Error) -> ApiError {
        let code = match err {
            auth::Error::Forbidden(..) => ErrorCode::PermissionDenied,
            _ => ErrorCode::Unauthenticated,
        };
        ApiError::new(code, err.to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> tonic::Status {
        tonic::Status::new(err.code.grpc(), err.message)
    }
}

/// Records an admin action in the audit log (durably) once it has been done: who (the caller's
/// token), what and on what.
async fn audited(
    hub: &core::Handle,
    caller: Option<&auth::Caller>,
    action: &str,
    target: &str,
    detail: String,
) -> Result<(), ApiError> {
    let (actor, role) = caller.map_or(("unknown".to_owned(), ""), |c| (c.token_id.clone(), c.role.as_str()));
    let entry = crate::store::AuditEntry {
        id: ulid::Ulid::new(),
        at_unix_ms: crate::domain::now_ms(),
        actor,
        role: role.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    };
    tracing::info!(action, target, actor = entry.actor, role, "admin action");
    hub.persist(vec![crate::store::Op::PutAudit(entry)]).await?;
    Ok(())
}

/// An endpoint kind as the admin APIs take it: empty means Ollama.
fn endpoint_kind(kind: &str) -> Result<crate::fleet::EndpointKind, ApiError> {
    if kind.is_empty() {
        return Ok(crate::fleet::EndpointKind::Ollama);
    }
    crate::fleet::EndpointKind::parse(kind)
        .ok_or_else(|| ApiError::invalid(format!("kind {kind:?} is not one of ollama, openai, anthropic")))
}

/// Largest page a list returns.
pub const MAX_LIST_LIMIT: usize = 1000;
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The page size a list asks for: absent means the default; 0 and more than the maximum are
/// refused.
fn list_limit(requested: Option<usize>) -> Result<usize, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIST_LIMIT),
        Some(0) => Err(ApiError::invalid(format!("invalid limit: must be between 1 and {MAX_LIST_LIMIT}"))),
        Some(n) if n > MAX_LIST_LIMIT => {
            Err(ApiError::invalid(format!("invalid limit: must be between 1 and {MAX_LIST_LIMIT}")))
        }
        Some(n) => Ok(n),
    }
}

/// The finish time before which dead letters are purged: `older_than_ms` ago (0: all of them).
fn purge_cutoff(older_than_ms: u64) -> Result<i64, ApiError> {
    if older_than_ms > 10 * 365 * 24 * 3600 * 1000 {
        return Err(ApiError::invalid("older_than_ms is more than ten years"));
    }
    let now = crate::domain::now_ms();
    Ok(if older_than_ms == 0 { i64::MAX } else { now - older_than_ms as i64 })
}
