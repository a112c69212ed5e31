//! The link between the hub and its sidecars, and between `hubctl` and the hub: the hub's own
//! certificate authority and the certificates it issues (`pki`), TLS that pins that authority
//! instead of trusting a public one (`tls`), join tokens that carry its fingerprint (`join`),
//! QUIC with the settings a Tailscale tailnet needs (`quic`), and the connector tonic dials
//! through for `http://`, `https://` and `quic://` hub URLs (`connect`).
//!
//! One crypto provider, *ring*, for every crate in the build: `agentcom_process::
//! install_crypto_provider` runs first in each binary (and in the libraries' entry points, for
//! tests), so rustls never has to guess between two.
//!
//! In detail:
//!
//! The link between hub and sidecars, and between `hubctl` and the hub, shared by all three:
//!
//! `pki`: the hub's CA (`ca.pem`, `ca.key` 0600 in the data directory, made on first start; one
//! without the other refuses to start rather than silently making a new CA), the serving
//! certificate issued at every start for `agentcom-hub`, loopback and `--tls-name`s (`hub.pem`,
//! `hub.key`), and a sidecar's certificate signed from its signing request (the request proves the
//! key; name, usage and validity are the hub's: client authentication only, so it can never serve
//! as the hub). A sidecar's `Identity` lives in `STATE_DIR/identity/` (key 0600, written first; the
//! id file last).
//!
//! `tls`: rustls configurations that trust one authority. A client pins the hub's CA by fingerprint
//! (a join token's 16-byte prefix, a token file's whole SHA-256) or by the CA itself (an enrolled
//! sidecar), then checks the serving certificate against it for `agentcom-hub` and server
//! authentication, never the URL's name; a mismatch says which CA was presented, which was pinned
//! and by what, and what to do. The server accepts, but does not require, client certificates of
//! its CA.
//!
//! `join`: join tokens `acj_<id>_<secret>_<pin>`; `token_file`: a token and its `ca-sha256=` pin in
//! one file.
//!
//! `quic`: quinn settings for a tailnet (path MTU at most 1,232 bytes, keep-alive 10 s, idle 30 s,
//! migration on), the endpoints, and `BiStream`, one bidirectional QUIC stream as the byte stream
//! HTTP/2 runs in.
//!
//! `connect`: `HubUrl` (`http`, `https`, `quic`), the `Dialer` and the tonic `Connector` over it,
//! so the sidecar's link and `hubctl` dial every transport the same way.

pub mod connect;
pub mod join;
pub mod pki;
pub mod quic;
pub mod tls;
pub mod token_file;

use sha2::{Digest, Sha256};

/// The name every certificate the hub serves carries, and the one its clients verify: a hub
/// is reached by many names (an address, a tailnet name, a container's name), and what proves
/// it is the hub is its chain to the pinned authority, not the name in the URL.
pub const HUB_NAME: &str = "agentcom-hub";

/// How a hub's refusal of a revoked sidecar begins; the sidecar stops (and does not reconnect)
/// when it reads it.
pub const REVOKED: &str = "identity revoked";

/// The provider every configuration here is built with.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate's SHA-256 (of its DER), the fingerprint people compare and tokens carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Lowercase hex, 64 digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (colons, as `openssl x509 -fingerprint` prints them, allowed).
    pub fn parse(text: &str) -> Result<Fingerprint, Error> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&digits).map_err(|_| Error::BadFingerprint(text.trim().to_owned()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| Error::BadFingerprint(text.trim().to_owned()))?;
        Ok(Fingerprint(bytes))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.hex())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not a SHA-256 fingerprint (64 hex digits)")]
    BadFingerprint(String),
    #[error("{0}")]
    JoinToken(String),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Verifier(String),
    #[error("hub url {url:?}: {message}")]
    Url { url: String, message: String },
}

/// An error and every cause under it, joined with ": ", so the cause that tells the user what
/// to do (a pin that does not match, a revoked identity) is not lost behind "transport error".
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_as_hex() {
        let fp = Fingerprint::of(b"certificate");
        assert_eq!(fp.hex().len(), 64);
        assert_eq!(Fingerprint::parse(&fp.hex()).unwrap(), fp);
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")).unwrap(), fp);
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"zz".repeat(32)).is_err());
    }
}
