//! Enrolment: a join token traded for this sidecar's own client certificate.
//!
//! The sidecar makes its key pair here and keeps it (`STATE_DIR/identity/key.pem`, 0600); the
//! hub sees only a certificate signing request. The connection pins the CA the join token
//! names, so the token goes to that hub and no other, and the CA the hub answers with is kept
//! and pinned from then on.

use std::path::Path;
use std::sync::Arc;

use agentcom_link::connect::{Dialer, HubUrl, channel};
use agentcom_link::join::JoinToken;
use agentcom_link::pki::{Identity, Request};
use agentcom_link::tls::Pin;
use agentcom_link::{Fingerprint, error_chain};
use agentcom_proto::v1 as pb;

use crate::Error;

/// Enrols with the hub at `hub_url` and saves the identity in `state_dir`. Refuses when the
/// directory already holds one (enrolling again means a fresh directory, then revoking the old
/// id).
pub async fn enroll(hub_url: &str, join: &str, state_dir: &Path, hostname: &str) -> Result<Identity, Error> {
    agentcom_process::install_crypto_provider();
    let enrol_err = |message: String| Error::Enrol(message);
    if let Some(identity) = Identity::load(state_dir).map_err(|err| enrol_err(err.to_string()))? {
        return Err(enrol_err(format!(
            "{} already holds the identity of sidecar {}: run it, or enrol into a fresh state directory",
            state_dir.display(),
            identity.sidecar_id
        )));
    }
    let url = HubUrl::parse(hub_url).map_err(|err| enrol_err(err.to_string()))?;
    if !url.is_encrypted() {
        return Err(enrol_err(format!(
            "{hub_url} is plaintext: enrolment needs the hub's TLS (https:// or quic://), so the join token goes to that hub only"
        )));
    }
    let token = JoinToken::parse(join).map_err(|err| enrol_err(err.to_string()))?;
    let pin = Pin::prefix(&token.pin, "the join token");
    let dialer = Dialer::new(url, Some(pin), None).map_err(|err| enrol_err(err.to_string()))?;
    let channel = channel(Arc::new(dialer))
        .await
        .map_err(|err| enrol_err(format!("reaching the hub at {hub_url}: {}", error_chain(&err))))?;
    let request = Request::new(hostname).map_err(|err| enrol_err(err.to_string()))?;
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel);
    let answer = client
        .enroll(pb::EnrollRequest {
            join_token: join.trim().to_owned(),
            csr_der: request.csr_der.clone(),
            hostname: hostname.to_owned(),
        })
        .await
        .map_err(|status| enrol_err(format!("the hub refused: {}", status.message())))?
        .into_inner();
    if !token.pins(&Fingerprint::of(&answer.ca_der)) {
        return Err(enrol_err("the hub answered with a CA other than the one it serves with; not saving it".into()));
    }
    let identity = Identity::save(state_dir, &answer.sidecar_id, &request.key, &answer.certificate_der, &answer.ca_der)
        .map_err(|err| enrol_err(err.to_string()))?;
    tracing::info!(sidecar_id = identity.sidecar_id, tags = ?answer.tags, "enrolled with the hub");
    Ok(identity)
}
