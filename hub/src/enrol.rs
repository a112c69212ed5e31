//! Enrolment: join tokens, the sidecar identities they are traded for, and revocation.
//!
//! A join token (`acj_<id>_<secret>_<pin>`) is limited in uses and time and kept as its
//! secret's hash. A sidecar trades it, once, for a client certificate the hub's CA signs for a
//! sidecar id the hub picks; the token's tags are bound to that identity. From then on the
//! sidecar authenticates by that certificate (mTLS), which the hub knows by fingerprint. A
//! revoked identity is refused at its next connection, and its live sessions are cancelled at
//! once (the link ends its stream with `permission_denied`).
//!
//! This module decides and keeps the in-memory view; the API edges persist what it returns
//! (through the core's writer) before they answer.
//!
//! In detail:
//!
//! `enrol`: join tokens (uses, expiry, bound tags; the secret's hash kept) and the sidecar
//! identities they are traded for (by certificate fingerprint), the enrolment decision itself (the
//! token's pin must be this hub's CA, then its uses and expiry; the hub picks the sidecar id), and
//! revocation, which cancels the identity's live sessions through the `LiveSession` each holds.
//! Stored in the `fleet` table (`join/ID`, `identity/ID`); the API edges persist before they answer
//! (`Handle::persist`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcom_link::Fingerprint;
use agentcom_link::join::{JoinToken, hash_secret};
use agentcom_link::pki::Authority;
use tokio_util::sync::CancellationToken;

use crate::store::{Enrolled, JoinGrant, SidecarIdentity};

/// Why enrolment, or managing join tokens and identities, refused; `api` gives each its code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The token or the identity is not good: unknown, spent, expired or revoked.
    #[error("{0}")]
    Refused(String),
    #[error("this hub serves plaintext (--insecure-plaintext): enrolment needs its TLS, so that a sidecar can pin it")]
    NoTls,
}

/// Most uses one join token may allow, and the longest it may live.
pub const MAX_USES: u32 = 10_000;
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_TAGS: usize = 32;
const MAX_TAG_LEN: usize = 64;

/// The hub's enrolment state, shared by the HTTP and gRPC edges and the authentication layer.
#[derive(Clone)]
pub struct Enrolment {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when the hub serves plaintext: nothing can be enrolled (there is nothing to pin).
    authority: Option<Arc<Authority>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    joins: HashMap<String, JoinGrant>,
    identities: HashMap<String, SidecarIdentity>,
    /// Certificate fingerprint (hex) -> sidecar id.
    by_cert: HashMap<String, String>,
    /// Live sessions per sidecar id, each with the token that ends it and the flag that says
    /// a revocation did.
    live: HashMap<String, Vec<(u64, CancellationToken, Arc<AtomicBool>)>>,
    next_session: u64,
}

/// Whether a join token may still enrol a sidecar: the one rule enrolment and listings share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinState {
    Usable,
    UsedUp,
    Expired,
}

impl JoinState {
    pub fn of(grant: &JoinGrant, now_ms: i64) -> JoinState {
        if grant.used >= grant.uses {
            JoinState::UsedUp
        } else if grant.expires_unix_ms <= now_ms {
            JoinState::Expired
        } else {
            JoinState::Usable
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JoinState::Usable => "usable",
            JoinState::UsedUp => "used_up",
            JoinState::Expired => "expired",
        }
    }
}

/// A session of an enrolled sidecar, registered for as long as it is held: a revocation sets
/// `revoked` and cancels the session's token.
pub struct LiveSession {
    enrolment: Enrolment,
    sidecar_id: String,
    key: u64,
    pub revoked: Arc<AtomicBool>,
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let mut state = self.enrolment.lock();
        if let Some(sessions) = state.live.get_mut(&self.sidecar_id) {
            sessions.retain(|(key, _, _)| *key != self.key);
            if sessions.is_empty() {
                state.live.remove(&self.sidecar_id);
            }
        }
    }
}

/// What an enrolment made: the identity and the join token's new use count, to persist, and
/// the certificate to hand back.
pub struct Issued {
    pub identity: SidecarIdentity,
    pub grant: JoinGrant,
    pub certificate: Vec<u8>,
    pub ca: Vec<u8>,
}

impl Enrolment {
    pub fn new(authority: Option<Arc<Authority>>, stored: Enrolled) -> Enrolment {
        let mut state = State::default();
        for grant in stored.joins {
            state.joins.insert(grant.id.clone(), grant);
        }
        for identity in stored.identities {
            state.by_cert.insert(identity.cert_sha256.clone(), identity.sidecar_id.clone());
            state.identities.insert(identity.sidecar_id.clone(), identity);
        }
        Enrolment { inner: Arc::new(Inner { authority, state: Mutex::new(state) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("enrolment lock poisoned")
    }

    /// The hub CA's fingerprint, when it serves TLS.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.inner.authority.as_ref().map(|ca| ca.fingerprint())
    }

    fn authority(&self) -> Result<&Arc<Authority>, Error> {
        self.inner.authority.as_ref().ok_or(Error::NoTls)
    }

    /// A new join token. Its secret is in the returned token and nowhere else.
    pub fn create_join(
        &self,
        uses: u32,
        ttl: Duration,
        tags: Vec<String>,
        created_by: &str,
        now_ms: i64,
    ) -> Result<(JoinToken, JoinGrant), Error> {
        let ca = self.authority()?.fingerprint();
        if !(1..=MAX_USES).contains(&uses) {
            return Err(Error::Invalid(format!("uses must be between 1 and {MAX_USES}, not {uses}")));
        }
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            return Err(Error::Invalid(format!("ttl must be between 1 s and {} days", MAX_TTL.as_secs() / 86_400)));
        }
        let tags = check_tags(tags)?;
        let token = JoinToken::mint(&ca);
        let grant = JoinGrant {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            uses,
            used: 0,
            expires_unix_ms: now_ms + ttl.as_millis() as i64,
            tags,
            created_unix_ms: now_ms,
            created_by: created_by.to_owned(),
        };
        self.lock().joins.insert(grant.id.clone(), grant.clone());
        Ok((token, grant))
    }

    /// Every join token, newest first.
    pub fn joins(&self) -> Vec<JoinGrant> {
        let mut joins: Vec<JoinGrant> = self.lock().joins.values().cloned().collect();
        joins.sort_by(|a, b| (b.created_unix_ms, &b.id).cmp(&(a.created_unix_ms, &a.id)));
        joins
    }

    pub fn remove_join(&self, id: &str) -> Result<JoinGrant, Error> {
        self.lock().joins.remove(id).ok_or_else(|| Error::NotFound(format!("no join token {id}")))
    }

    /// Checks a join token, takes one of its uses, and signs the sidecar's request. The caller
    /// persists the identity and the grant before answering, and calls [`Enrolment::undo`] if
    /// that fails.
    pub fn enrol(&self, token: &str, csr_der: &[u8], hostname: &str, now_ms: i64) -> Result<Issued, Error> {
        let authority = self.authority()?.clone();
        let refused = |message: String| Error::Refused(message);
        let token = JoinToken::parse(token).map_err(|err| Error::Invalid(err.to_string()))?;
        if !token.pins(&authority.fingerprint()) {
            return Err(refused(format!(
                "join token {} is for another hub (its CA pin differs from this hub's {})",
                token.id,
                authority.fingerprint()
            )));
        }
        let hostname = sanitize_hostname(hostname);
        let mut state = self.lock();
        let grant = state.joins.get_mut(&token.id).filter(|g| g.secret_sha256 == hash_secret(&token.secret));
        let Some(grant) = grant else {
            return Err(refused(format!(
                "unknown or revoked join token {}: make a new one with `hubctl join-token create`",
                token.id
            )));
        };
        match JoinState::of(grant, now_ms) {
            JoinState::Usable => {}
            JoinState::UsedUp => {
                return Err(refused(format!(
                    "join token {} has been used {} of {} times: make a new one with `hubctl join-token create`",
                    token.id, grant.used, grant.uses
                )));
            }
            JoinState::Expired => {
                return Err(refused(format!(
                    "join token {} has expired: make a new one with `hubctl join-token create`",
                    token.id
                )));
            }
        }
        let sidecar_id = loop {
            let id = format!("{hostname}-{}", hex::encode(rand::random::<[u8; 4]>()));
            if !state.identities.contains_key(&id) {
                break id;
            }
        };
        let certificate = authority
            .sign_sidecar(csr_der, &sidecar_id)
            .map_err(|err| Error::Invalid(format!("csr_der: not a valid certificate signing request: {err}")))?;
        let grant = state.joins.get_mut(&token.id).expect("checked above");
        grant.used += 1;
        let grant = grant.clone();
        let identity = SidecarIdentity {
            sidecar_id: sidecar_id.clone(),
            cert_sha256: Fingerprint::of(&certificate).hex(),
            hostname,
            tags: grant.tags.clone(),
            join_token_id: grant.id.clone(),
            enrolled_unix_ms: now_ms,
            revoked_unix_ms: 0,
        };
        state.by_cert.insert(identity.cert_sha256.clone(), sidecar_id.clone());
        state.identities.insert(sidecar_id, identity.clone());
        Ok(Issued { identity, grant, certificate: certificate.to_vec(), ca: authority.cert().to_vec() })
    }

    /// Takes back an enrolment that could not be made durable.
    pub fn undo(&self, enrolled: &Issued) {
        let mut state = self.lock();
        state.by_cert.remove(&enrolled.identity.cert_sha256);
        state.identities.remove(&enrolled.identity.sidecar_id);
        if let Some(grant) = state.joins.get_mut(&enrolled.grant.id) {
            grant.used = grant.used.saturating_sub(1);
        }
    }

    /// Every enrolled sidecar, oldest first.
    pub fn identities(&self) -> Vec<SidecarIdentity> {
        let mut all: Vec<SidecarIdentity> = self.lock().identities.values().cloned().collect();
        all.sort_by(|a, b| (a.enrolled_unix_ms, &a.sidecar_id).cmp(&(b.enrolled_unix_ms, &b.sidecar_id)));
        all
    }

    /// The identity a client certificate belongs to.
    pub fn resolve(&self, cert: &Fingerprint) -> Option<SidecarIdentity> {
        let state = self.lock();
        state.by_cert.get(&cert.hex()).and_then(|id| state.identities.get(id)).cloned()
    }

    /// Refuses the identity from now on and ends its live sessions. The caller persists the
    /// returned record.
    pub fn revoke(&self, sidecar_id: &str, now_ms: i64) -> Result<SidecarIdentity, Error> {
        let mut state = self.lock();
        let identity = state.identities.get_mut(sidecar_id).ok_or_else(|| {
            Error::NotFound(format!("no enrolled sidecar {sidecar_id} (`hubctl sidecars ls` lists them)"))
        })?;
        if identity.revoked_unix_ms == 0 {
            identity.revoked_unix_ms = now_ms;
        }
        let identity = identity.clone();
        for (_, session, revoked) in state.live.remove(sidecar_id).unwrap_or_default() {
            revoked.store(true, Ordering::Release);
            session.cancel();
        }
        Ok(identity)
    }

    /// Whether the sidecar has a session now.
    pub fn is_connected(&self, sidecar_id: &str) -> bool {
        self.lock().live.contains_key(sidecar_id)
    }

    /// Registers a session of an enrolled sidecar: `session` is cancelled if it is revoked
    /// (at once, if that has already happened).
    pub fn attach(&self, sidecar_id: &str, session: CancellationToken) -> LiveSession {
        let revoked = Arc::new(AtomicBool::new(false));
        let mut state = self.lock();
        let key = state.next_session;
        state.next_session += 1;
        if state.identities.get(sidecar_id).is_some_and(|i| i.revoked_unix_ms != 0) {
            revoked.store(true, Ordering::Release);
            session.cancel();
        }
        state.live.entry(sidecar_id.to_owned()).or_default().push((key, session, revoked.clone()));
        drop(state);
        LiveSession { enrolment: self.clone(), sidecar_id: sidecar_id.to_owned(), key, revoked }
    }
}

fn check_tags(tags: Vec<String>) -> Result<Vec<String>, Error> {
    if tags.len() > MAX_TAGS {
        return Err(Error::Invalid(format!("at most {MAX_TAGS} tags")));
    }
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.trim().to_owned();
        let fine = !tag.is_empty()
            && tag.len() <= MAX_TAG_LEN
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '='));
        if !fine {
            return Err(Error::Invalid(format!("tag {tag:?}: 1 to {MAX_TAG_LEN} of letters, digits and - _ . : =")));
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// A host name as the start of a sidecar id: lowercase letters, digits and `-`, at most 40.
fn sanitize_hostname(hostname: &str) -> String {
    let mut name: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    name = name.trim_matches('-').to_owned();
    if name.is_empty() { "sidecar".to_owned() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcom_link::pki::Request;

    fn enrolment() -> (tempfile::TempDir, Enrolment) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        (dir, Enrolment::new(Some(Arc::new(ca)), Enrolled::default()))
    }

    #[test]
    fn a_join_token_enrols_as_often_as_it_allows_and_until_it_expires() {
        let (_dir, e) = enrolment();
        let (token, grant) = e.create_join(1, Duration::from_secs(60), vec!["gpu".into()], "tok-a", 1_000).unwrap();
        assert_eq!(grant.used, 0);
        let csr = Request::new("GPU box 1").unwrap().csr_der;
        let first = e.enrol(&token.to_string(), &csr, "GPU box 1", 2_000).unwrap();
        assert!(first.identity.sidecar_id.starts_with("gpu-box-1-"), "{}", first.identity.sidecar_id);
        assert_eq!(first.identity.tags, vec!["gpu".to_owned()]);
        assert_eq!(first.grant.used, 1);
        let again = e.enrol(&token.to_string(), &csr, "b", 2_000).err().unwrap();
        assert!(matches!(again, Error::Refused(_)), "{again:?}");
        assert!(again.to_string().contains("used 1 of 1"), "{again}");

        let (token, _) = e.create_join(5, Duration::from_secs(1), vec![], "tok-a", 1_000).unwrap();
        let expired = e.enrol(&token.to_string(), &csr, "b", 2_000).err().unwrap();
        assert!(expired.to_string().contains("expired"), "{expired}");
        let wrong_secret = token.to_string().replace(&token.secret, &"0".repeat(48));
        assert!(e.enrol(&wrong_secret, &csr, "b", 1_500).err().unwrap().to_string().contains("unknown"));
        assert!(e.enrol("nope", &csr, "b", 1_500).is_err());

        let (_other_dir, other) = enrolment();
        let (foreign, _) = other.create_join(1, Duration::from_secs(60), vec![], "tok-a", 1_000).unwrap();
        assert!(e.enrol(&foreign.to_string(), &csr, "b", 1_500).err().unwrap().to_string().contains("another hub"));
    }

    #[test]
    fn a_revoked_identity_ends_its_sessions_and_resolves_as_revoked() {
        let (_dir, e) = enrolment();
        let (token, _) = e.create_join(2, Duration::from_secs(60), vec![], "tok-a", 0).unwrap();
        let enrolled = e.enrol(&token.to_string(), &Request::new("h").unwrap().csr_der, "h", 1).unwrap();
        let id = enrolled.identity.sidecar_id.clone();
        let cert = Fingerprint::of(&enrolled.certificate);
        assert_eq!(e.resolve(&cert).unwrap().revoked_unix_ms, 0);
        let token = CancellationToken::new();
        let session = e.attach(&id, token.clone());
        assert!(!token.is_cancelled() && e.is_connected(&id));
        e.revoke(&id, 5).unwrap();
        assert!(token.is_cancelled() && session.revoked.load(Ordering::Acquire));
        assert_eq!(e.resolve(&cert).unwrap().revoked_unix_ms, 5);
        let late = CancellationToken::new();
        assert!(e.attach(&id, late.clone()).revoked.load(Ordering::Acquire), "a session that races the revocation");
        assert!(late.is_cancelled());
        drop(session);
        assert!(e.revoke("nobody", 5).is_err());
    }

    #[test]
    fn limits_and_tags_are_checked_and_plaintext_hubs_enrol_nobody() {
        let (_dir, e) = enrolment();
        let ttl = Duration::from_secs(60);
        assert!(e.create_join(0, ttl, vec![], "t", 0).is_err());
        assert!(e.create_join(1, Duration::ZERO, vec![], "t", 0).is_err());
        assert!(e.create_join(1, ttl, vec!["has space".into()], "t", 0).is_err());
        let (_, grant) = e.create_join(1, ttl, vec!["a".into(), "a".into(), "zone=eu".into()], "t", 0).unwrap();
        assert_eq!(grant.tags, vec!["a".to_owned(), "zone=eu".to_owned()]);
        let plain = Enrolment::new(None, Enrolled::default());
        assert_eq!(plain.create_join(1, ttl, vec![], "t", 0).err(), Some(Error::NoTls));
        assert_eq!(sanitize_hostname("--Büro.Box_1--"), "b-ro-box-1");
        assert_eq!(sanitize_hostname("***"), "sidecar");
    }
}
