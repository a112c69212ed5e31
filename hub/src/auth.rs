//! Bearer tokens: minting, hashing, and deciding who may call what.
//!
//! The hub stores only SHA-256 hashes of its tokens. A plaintext token exists once, when it is
//! minted, and is handed to the operator (in `dev` mode, written to `admin.token` and
//! `join.token` with mode 0600). Admin tokens may call everything; join tokens may only open a
//! sidecar session.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Join,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Join => "join",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "join" => Some(Role::Join),
            _ => None,
        }
    }
}

/// What a request needs, decided by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Open,
    /// A sidecar session: join or admin tokens.
    Sidecar,
    Admin,
}

pub const AGENT_LINK_PREFIX: &str = "/agentcom.v1.AgentLink/";

/// The access rule for a request path. Open: health probes and the dashboard's static files.
pub fn access_for(path: &str) -> Access {
    if path == "/healthz" || path == "/readyz" || path == "/" || path.starts_with("/ui/") {
        Access::Open
    } else if path.starts_with(AGENT_LINK_PREFIX) {
        Access::Sidecar
    } else {
        Access::Admin
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
    #[error("a {0} token cannot call this API")]
    Forbidden(&'static str),
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

/// The hashes the hub accepts, shared by the HTTP and gRPC layers.
#[derive(Clone, Default)]
pub struct Tokens {
    by_hash: Arc<RwLock<HashMap<String, Role>>>,
}

impl Tokens {
    pub fn from_stored(stored: Vec<(String, String)>) -> Tokens {
        let tokens = Tokens::default();
        for (hash, role) in stored {
            match Role::parse(&role) {
                Some(role) => tokens.insert(hash, role),
                None => tracing::warn!(role, "ignoring a stored token with an unknown role"),
            }
        }
        tokens
    }

    pub fn insert(&self, hash: String, role: Role) {
        self.by_hash.write().expect("token lock poisoned").insert(hash, role);
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.by_hash.read().expect("token lock poisoned").values().any(|r| *r == role)
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
        let role = *self.by_hash.read().expect("token lock poisoned").get(&token_hash).ok_or(Error::Unknown)?;
        match (access, role) {
            (Access::Admin, Role::Join) => Err(Error::Forbidden("join")),
            _ => Ok(Some((role, token_hash))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authorize_by_role_and_path() {
        let tokens = Tokens::default();
        let admin = mint(Role::Admin);
        let join = mint(Role::Join);
        tokens.insert(admin.hash.clone(), Role::Admin);
        tokens.insert(join.hash.clone(), Role::Join);
        let bearer = |t: &str| format!("Bearer {t}");

        let check = |header: Option<&str>, path: &str| tokens.authorize(header, access_for(path));
        assert_eq!(check(None, "/healthz"), Ok(None));
        assert_eq!(check(None, "/api/v1/tasks"), Err(Error::Missing));
        assert_eq!(check(Some("Basic abc"), "/api/v1/tasks"), Err(Error::Malformed));
        assert_eq!(check(Some("Bearer nope"), "/api/v1/tasks"), Err(Error::Unknown));
        assert_eq!(check(Some(&bearer(&admin.token)), "/api/v1/tasks"), Ok(Some(Role::Admin)));
        assert_eq!(check(Some(&bearer(&join.token)), "/api/v1/tasks"), Err(Error::Forbidden("join")));
        assert_eq!(check(Some(&bearer(&join.token)), "/agentcom.v1.Admin/SubmitTask"), Err(Error::Forbidden("join")));
        assert_eq!(check(Some(&bearer(&join.token)), "/agentcom.v1.AgentLink/Session"), Ok(Some(Role::Join)));
        assert_eq!(check(None, "/metrics"), Err(Error::Missing));
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
