//! Bearer tokens: minting, hashing, and deciding who may call what.
//!
//! The hub stores only SHA-256 hashes of its tokens. A plaintext token exists once, when it is
//! minted, and is handed to the operator (the bootstrap ones written to `admin.token` and
//! `join.token` with mode 0600; others shown once by `hubctl tokens create`). Roles gate the
//! API (see [`access_for`]); join tokens may only open a sidecar session.
//!
//! In detail:
//!
//! `auth`: bearer tokens, minted as `agentcom_<role>_<48 hex>`, stored as SHA-256 hashes (with, for
//! those made through `POST /api/v1/tokens`, their name and creation time); roles `viewer` <
//! `submitter` < `operator` < `admin`, and `join` for sidecar sessions; `access_for(method, path)`
//! is the one table of what each HTTP route and gRPC method needs. A session request that comes
//! with a client certificate is authenticated by it instead of a token: an enrolled, unrevoked
//! identity puts an `EnrolledPeer` in the request (the session must then say hello as that id, and
//! carries the identity's tags), a revoked one is refused with a message that begins `identity
//! revoked`. Revoking a token cancels its `Tokens::revocation`, which ends the server-sent event
//! streams and the gRPC `WatchTask` and `SubmitStream` streams it opened. The authentication layer
//! puts the `Caller` (role and token id) in the request for handlers that record admin actions in
//! the audit log (`api::audited`, a durable `Op::PutAudit` into the `audit` table, read newest
//! first off the core).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

/// What a token may do. The API roles are ranked: each may do what the ones below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Opens sidecar sessions, nothing else.
    Join,
    /// Calls the gateway's model APIs (`/v1/chat/completions`, `/v1/messages`, `/api/chat`,
    /// ...), nothing else.
    Inference,
    /// Reads everything: tasks, the fleet, metrics, the event stream.
    Viewer,
    /// Also submits and cancels tasks.
    Submitter,
    /// Also drains and uncordons hosts, retries and purges dead letters, changes endpoints, and
    /// takes backups.
    Operator,
    /// Also manages tokens and reads the audit log.
    Admin,
}

impl Role {
    /// What a refusal says is needed.
    fn needs(self) -> &'static str {
        match self {
            Role::Viewer => "a viewer token or above",
            Role::Submitter => "a submitter token or above",
            Role::Operator => "an operator or admin token",
            Role::Admin | Role::Join | Role::Inference => "an admin token",
        }
    }

    pub const API: [Role; 4] = [Role::Viewer, Role::Submitter, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
            Role::Join => "join",
            Role::Inference => "inference",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "submitter" => Some(Role::Submitter),
            "viewer" => Some(Role::Viewer),
            "join" => Some(Role::Join),
            "inference" => Some(Role::Inference),
            _ => None,
        }
    }

    /// Whether a token of this role may make a request that needs `access`.
    pub fn may(self, access: Access) -> bool {
        match access {
            Access::Open => true,
            // Admin tokens may open sessions too (a sidecar run by hand).
            Access::Sidecar => matches!(self, Role::Join | Role::Admin),
            Access::Api(needed) => !matches!(self, Role::Join | Role::Inference) && self >= needed,
            Access::Gateway => self == Role::Inference || self >= Role::Submitter,
        }
    }
}

/// What a request needs, decided by its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Open,
    /// A sidecar session: join or admin tokens.
    Sidecar,
    /// The API, with at least this role.
    Api(Role),
    /// The gateway's model APIs: an inference token, or a submitter's or above.
    Gateway,
}

pub const AGENT_LINK_PREFIX: &str = "/agentcom.v1.AgentLink/";
const ADMIN_PREFIX: &str = "/agentcom.v1.Admin/";
const ENROLL_PATH: &str = "/agentcom.v1.AgentLink/Enroll";
/// The gateway's paths (`api::gateway`), which inference tokens may call.
pub const GATEWAY_PATHS: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/models",
    "/api/chat",
    "/api/generate",
    "/api/tags",
    "/api/ps",
    "/api/version",
];

/// The access rule for a request. Open: health probes and the dashboard's static files. Reads
/// need a viewer; submits and cancels a submitter; fleet changes, dead letters, endpoints and
/// backups an operator; tokens and the audit log an admin. Anything not listed needs an admin.
pub fn access_for(method: &str, path: &str) -> Access {
    if path == "/healthz" || path == "/readyz" || path == "/" || path.starts_with("/ui/") {
        return Access::Open;
    }
    if method == "POST" && path.starts_with("/api/v1/hooks/") {
        // A webhook delivery: its HMAC signature is the credential, checked by the handler.
        return Access::Open;
    }
    if path == ENROLL_PATH {
        // The join token in the request is the credential.
        return Access::Open;
    }
    if path.starts_with(AGENT_LINK_PREFIX) {
        return Access::Sidecar;
    }
    if let Some(rpc) = path.strip_prefix(ADMIN_PREFIX) {
        return Access::Api(grpc_role(rpc));
    }
    if GATEWAY_PATHS.contains(&path) {
        return Access::Gateway;
    }
    Access::Api(http_role(method, path))
}

fn grpc_role(rpc: &str) -> Role {
    match rpc {
        "GetTask" | "ListTasks" | "WatchTask" | "ListAgents" | "GetAgent" | "ListHosts" | "GetHost"
        | "ListEndpoints" | "ListDeadLetters" | "ExplainTask" | "WhyTask" => Role::Viewer,
        "SubmitTask" | "SubmitStream" | "CancelTask" => Role::Submitter,
        "RetryDeadLetter" | "PurgeDeadLetters" | "Backup" | "DrainSidecar" | "UncordonSidecar" | "AddEndpoint"
        | "RemoveEndpoint" => Role::Operator,
        _ => Role::Admin,
    }
}

fn http_role(method: &str, path: &str) -> Role {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let read = matches!(method, "GET" | "HEAD");
    match (segments.as_slice(), read) {
        (["api", "v1", "tokens" | "join-tokens", ..], _) | (["api", "v1", "audit"], _) => Role::Admin,
        (["metrics"], true) | (["api", "v1", ..], true) => Role::Viewer,
        (["api", "v1", "tasks"], false) if method == "POST" => Role::Submitter,
        (["api", "v1", "models", "aliases", _], false) => Role::Operator,
        (["api", "v1", "tasks", _], false) if method == "DELETE" => Role::Submitter,
        (["api", "v1", "workflows", "runs"], false) if method == "POST" => Role::Submitter,
        (["api", "v1", "workflows", "runs", _, "cancel" | "retry"], false) if method == "POST" => Role::Submitter,
        (["api", "v1", "hosts", _, "drain" | "uncordon"], false)
        | (["api", "v1", "dlq"], false)
        | (["api", "v1", "dlq", _, "retry"], false)
        | (["api", "v1", "endpoints", ..], false)
        | (["api", "v1", "backups"], false)
        | (["api", "v1", "workflows", "hooks" | "schedules", ..], false) => Role::Operator,
        _ => Role::Admin,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("missing bearer token: send `authorization: Bearer TOKEN`")]
    Missing,
    #[error("malformed authorization header: expected `Bearer TOKEN`")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
    #[error("a {0} token cannot call this API (it needs {1})")]
    Forbidden(&'static str, &'static str),
}

/// Who made an API request: put in the request's extensions by the authentication layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// [`token_id`] of its token.
    pub token_id: String,
}

/// An enrolled sidecar, known by its client certificate: put in a session request's extensions
/// by the authentication layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledPeer {
    pub sidecar_id: String,
    /// Bound at enrolment by its join token.
    pub tags: Vec<String>,
}

/// What a revoked sidecar is told; it starts with `REVOKED`, which the sidecar looks for.
pub fn revoked_message(sidecar_id: &str) -> String {
    format!(
        "{REVOKED}: sidecar {sidecar_id} was revoked by an admin; enrol it again with a new join token (`hubctl join-token create`) into a fresh state directory"
    )
}

pub use agentcom_link::REVOKED;

/// A token's public name: `tok-` and the first 12 hex digits of its hash.
pub fn token_id(hash: &str) -> String {
    format!("tok-{}", &hash[..hash.len().min(12)])
}

/// A freshly minted token: the plaintext to hand out and the hash to store.
pub struct Minted {
    pub token: String,
    pub hash: String,
}

pub fn mint(role: Role) -> Minted {
    let bytes: [u8; 24] = rand::random();
    let token = format!("agentcom_{}_{}", role.as_str(), hex::encode(bytes));
    let hash = hash(&token);
    Minted { token, hash }
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a key may do at the gateway, beyond its role: its rates, budgets and models. Each unset
/// limit is no limit.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyLimits {
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (read and written) per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Dollars per UTC day, priced by the hub's price table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
    /// Dollars per UTC month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    /// The models (or aliases) it may ask for; empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Never sent to a cloud provider.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
    /// Keep the prompts and replies of its requests (they are not stored otherwise).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub store: bool,
}

impl KeyLimits {
    pub fn is_none(&self) -> bool {
        *self == KeyLimits::default()
    }

    /// Why these limits cannot be: a budget that is not a positive amount, a rate of 0.
    pub fn check(&self) -> Result<(), String> {
        for (name, usd) in
            [("daily_budget_usd", self.daily_budget_usd), ("monthly_budget_usd", self.monthly_budget_usd)]
        {
            if usd.is_some_and(|usd| !(usd.is_finite() && usd > 0.0)) {
                return Err(format!("{name} must be a positive amount of dollars"));
            }
        }
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err("rpm and tpm must be above 0 (leave one out for no limit)".into());
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err("models must not hold an empty name".into());
        }
        Ok(())
    }
}

/// A token the hub accepts, as `tokens ls` shows it (never its secret).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenInfo {
    /// [`token_id`] of its hash.
    pub id: String,
    pub role: Role,
    pub name: String,
    /// 0 for the bootstrap tokens (`admin.token`, `join.token`).
    pub created_unix_ms: i64,
    /// Its gateway limits (`inference` keys, mostly).
    pub limits: KeyLimits,
}

/// The hashes the hub accepts, shared by the HTTP and gRPC layers.
#[derive(Clone, Default)]
pub struct Tokens {
    by_hash: Arc<RwLock<HashMap<String, TokenInfo>>>,
    /// By token id: cancelled when the token is revoked, which ends the streams opened with it.
    revocations: Arc<std::sync::Mutex<HashMap<String, tokio_util::sync::CancellationToken>>>,
}

impl Tokens {
    pub fn from_stored(stored: Vec<crate::store::StoredToken>) -> Tokens {
        let tokens = Tokens::default();
        for token in stored {
            match Role::parse(&token.role) {
                Some(role) => {
                    let info = TokenInfo {
                        id: token_id(&token.hash),
                        role,
                        name: token.name,
                        created_unix_ms: token.created_unix_ms,
                        limits: token.limits,
                    };
                    tokens.insert_info(token.hash, info);
                }
                None => tracing::warn!(role = token.role, "ignoring a stored token with an unknown role"),
            }
        }
        tokens
    }

    /// A bootstrap token.
    pub fn insert(&self, hash: String, role: Role) {
        self.insert_named(hash, role, String::new(), 0);
    }

    pub fn insert_named(&self, hash: String, role: Role, name: String, created_unix_ms: i64) {
        let info = TokenInfo { id: token_id(&hash), role, name, created_unix_ms, limits: KeyLimits::default() };
        self.insert_info(hash, info);
    }

    pub fn insert_info(&self, hash: String, info: TokenInfo) {
        self.by_hash.write().expect("token lock poisoned").insert(hash, info);
    }

    /// Every token, oldest first (the bootstrap ones first).
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self.by_hash.read().expect("token lock poisoned").values().cloned().collect();
        all.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        all
    }

    /// The hash and the token with this id.
    pub fn find(&self, id: &str) -> Option<(String, TokenInfo)> {
        let tokens = self.by_hash.read().expect("token lock poisoned");
        tokens.iter().find(|(_, info)| info.id == id).map(|(hash, info)| (hash.clone(), info.clone()))
    }

    /// A revoked token is refused from its next request on, and the streams it opened end.
    pub fn remove(&self, hash: &str) {
        self.by_hash.write().expect("token lock poisoned").remove(hash);
        if let Some(revoked) = self.revocations.lock().expect("revocation lock poisoned").remove(&token_id(hash)) {
            revoked.cancel();
        }
    }

    /// Cancelled when the token with this id is revoked: a long-lived stream (server-sent
    /// events) opened with it ends then, instead of going on for a token that no longer exists.
    pub fn revocation(&self, token_id: &str) -> tokio_util::sync::CancellationToken {
        // One entry per token that opened a stream (tokens are few), gone when it is revoked.
        let mut revocations = self.revocations.lock().expect("revocation lock poisoned");
        revocations.entry(token_id.to_owned()).or_default().clone()
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.count(role) > 0
    }

    pub fn count(&self, role: Role) -> usize {
        self.by_hash.read().expect("token lock poisoned").values().filter(|t| t.role == role).count()
    }

    /// Checks an `authorization` header value against what `access` needs.
    pub fn authorize(&self, header: Option<&str>, access: Access) -> Result<Option<Role>, Error> {
        self.authorize_keyed(header, access).map(|found| found.map(|(role, _)| role))
    }

    /// Like [`Tokens::authorize`], also returning the token's hash (a key for per-token limits).
    pub fn authorize_keyed(&self, header: Option<&str>, access: Access) -> Result<Option<(Role, String)>, Error> {
        if access == Access::Open {
            return Ok(None);
        }
        let header = header.ok_or(Error::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Malformed)?;
        let token_hash = hash(token);
        let role = self.by_hash.read().expect("token lock poisoned").get(&token_hash).ok_or(Error::Unknown)?.role;
        if role.may(access) {
            Ok(Some((role, token_hash)))
        } else {
            let needed = match access {
                Access::Api(needed) => needed.needs(),
                Access::Gateway => "an inference token, or a submitter token or above",
                _ => "a join or admin token",
            };
            Err(Error::Forbidden(role.as_str(), needed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authorize_by_role_method_and_path() {
        let tokens = Tokens::default();
        let minted: Vec<(Role, Minted)> = [Role::Admin, Role::Operator, Role::Submitter, Role::Viewer, Role::Join]
            .into_iter()
            .map(|role| (role, mint(role)))
            .collect();
        for (role, m) in &minted {
            tokens.insert(m.hash.clone(), *role);
        }
        let bearer = |role: Role| format!("Bearer {}", minted.iter().find(|(r, _)| *r == role).unwrap().1.token);
        let check = |role: Option<Role>, method: &str, path: &str| {
            let header = role.map(bearer);
            tokens.authorize(header.as_deref(), access_for(method, path)).map(|_| ())
        };
        assert_eq!(check(None, "GET", "/healthz"), Ok(()));
        assert_eq!(check(None, "GET", "/ui/app.js"), Ok(()));
        assert_eq!(check(None, "GET", "/api/v1/tasks"), Err(Error::Missing));
        assert_eq!(tokens.authorize(Some("Basic abc"), access_for("GET", "/api/v1/tasks")), Err(Error::Malformed));
        assert_eq!(tokens.authorize(Some("Bearer nope"), access_for("GET", "/api/v1/tasks")), Err(Error::Unknown));
        assert_eq!(check(None, "GET", "/metrics"), Err(Error::Missing));
        assert_eq!(check(Some(Role::Viewer), "GET", "/metrics"), Ok(()));
        assert_eq!(check(Some(Role::Viewer), "GET", "/api/v1/events"), Ok(()));
        let viewer_submits = check(Some(Role::Viewer), "POST", "/api/v1/tasks");
        assert_eq!(viewer_submits, Err(Error::Forbidden("viewer", "a submitter token or above")));
        assert_eq!(check(Some(Role::Submitter), "POST", "/api/v1/tasks"), Ok(()));
        assert_eq!(check(Some(Role::Submitter), "DELETE", "/api/v1/tasks/01M7Y9VFDHQ7Q41RY49FHBT5Z0"), Ok(()));
        assert_eq!(check(Some(Role::Submitter), "POST", "/api/v1/workflows/runs"), Ok(()));
        assert_eq!(check(Some(Role::Submitter), "POST", "/api/v1/workflows/runs/R/retry"), Ok(()));
        assert!(check(Some(Role::Viewer), "POST", "/api/v1/workflows/runs/R/cancel").is_err());
        assert_eq!(check(Some(Role::Viewer), "GET", "/api/v1/workflows/runs/R"), Ok(()));
        assert!(check(Some(Role::Submitter), "POST", "/api/v1/workflows/hooks").is_err());
        assert_eq!(check(Some(Role::Operator), "POST", "/api/v1/workflows/hooks"), Ok(()));
        assert_eq!(
            access_for("POST", "/api/v1/hooks/github"),
            Access::Open,
            "a delivery's signature is its credential"
        );
        assert_ne!(access_for("GET", "/api/v1/hooks/github"), Access::Open);
        assert!(check(Some(Role::Submitter), "POST", "/api/v1/hosts/h/drain").is_err());
        assert_eq!(check(Some(Role::Operator), "POST", "/api/v1/hosts/h/drain"), Ok(()));
        assert!(check(Some(Role::Operator), "GET", "/api/v1/audit").is_err());
        assert!(check(Some(Role::Operator), "POST", "/api/v1/tokens").is_err());
        assert_eq!(check(Some(Role::Admin), "POST", "/api/v1/tokens"), Ok(()));
        assert_eq!(check(Some(Role::Viewer), "POST", "/agentcom.v1.Admin/ListTasks"), Ok(()));
        assert!(check(Some(Role::Viewer), "POST", "/agentcom.v1.Admin/SubmitTask").is_err());
        assert!(check(Some(Role::Submitter), "POST", "/agentcom.v1.Admin/DrainSidecar").is_err());
        assert!(check(Some(Role::Operator), "POST", "/agentcom.v1.Admin/Unknown").is_err(), "unlisted: admins only");
        // Join tokens open sessions and nothing else; API tokens other than admin open none.
        assert_eq!(check(Some(Role::Join), "POST", "/agentcom.v1.AgentLink/Session"), Ok(()));
        assert_eq!(check(Some(Role::Admin), "POST", "/agentcom.v1.AgentLink/Session"), Ok(()));
        assert!(check(Some(Role::Operator), "POST", "/agentcom.v1.AgentLink/Session").is_err());
        assert!(check(Some(Role::Join), "GET", "/api/v1/tasks").is_err());
        assert!(check(Some(Role::Join), "POST", "/agentcom.v1.Admin/SubmitTask").is_err());
    }

    #[test]
    fn minted_tokens_are_distinct_and_only_their_hash_matches() {
        let a = mint(Role::Admin);
        let b = mint(Role::Admin);
        assert_ne!(a.token, b.token);
        assert_eq!(hash(&a.token), a.hash);
        assert!(!a.hash.contains(&a.token));
        assert!(a.token.starts_with("agentcom_admin_"));
    }
}
