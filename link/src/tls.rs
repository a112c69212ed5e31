//! TLS that trusts one authority: the hub's own.
//!
//! A client pins the hub's CA, by the fingerprint a join token or token file carries, or by the
//! CA certificate an enrolled sidecar keeps. The hub sends its CA with its serving certificate;
//! the client checks that CA against the pin, then the serving certificate against that CA,
//! for [`HUB_NAME`] and server authentication. The name in the URL is not checked: a hub has
//! many (an address, a tailnet name), and the pinned chain is what proves it is the hub.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::pki::CertifiedKey;
use crate::{Error, Fingerprint, HUB_NAME, provider};

/// ALPN for the hub's TCP listener: gRPC and HTTP/2 first, HTTP/1.1 for `curl` and browsers.
pub const TCP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Which authority a client trusts, and where that came from (for the error when it differs).
#[derive(Clone, Debug)]
pub struct Pin {
    /// The whole fingerprint, or its first bytes (a join token's).
    prefix: Vec<u8>,
    /// The CA itself, once known (an enrolled sidecar's `ca.pem`).
    ca: Option<CertificateDer<'static>>,
    /// "the join token", "the token file", ...
    source: String,
}

impl Pin {
    pub fn fingerprint(fingerprint: Fingerprint, source: impl Into<String>) -> Pin {
        Pin { prefix: fingerprint.0.to_vec(), ca: None, source: source.into() }
    }

    pub fn prefix(prefix: &[u8], source: impl Into<String>) -> Pin {
        Pin { prefix: prefix.to_vec(), ca: None, source: source.into() }
    }

    pub fn authority(ca: CertificateDer<'static>, source: impl Into<String>) -> Pin {
        Pin { prefix: Fingerprint::of(&ca).0.to_vec(), ca: Some(ca), source: source.into() }
    }

    fn matches(&self, cert: &[u8]) -> bool {
        Fingerprint::of(cert).0.starts_with(&self.prefix)
    }

    fn mismatch(&self, presented: Option<&CertificateDer<'_>>) -> rustls::Error {
        let presented = presented.map_or_else(
            || "no certificate authority".to_owned(),
            |ca| format!("certificate authority {}", Fingerprint::of(ca)),
        );
        rustls::Error::General(format!(
            "the hub presented {presented}, but {} pins one whose SHA-256 starts {}: this is not the hub it came from, or that hub's data directory was made anew. Get a new one from the hub you mean (`hubctl join-token create` for a sidecar, the hub's admin.token for hubctl); do not work around the check",
            self.source,
            hex::encode(&self.prefix),
        ))
    }
}

/// Verifies the hub's chain against a [`Pin`].
#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = match &self.pin.ca {
            Some(ca) if intermediates.iter().any(|c| c.as_ref() == ca.as_ref()) || intermediates.is_empty() => {
                ca.clone()
            }
            Some(_) => return Err(self.pin.mismatch(intermediates.last())),
            None => match intermediates.iter().find(|c| self.pin.matches(c)) {
                Some(ca) => ca.clone().into_owned(),
                None => return Err(self.pin.mismatch(intermediates.last())),
            },
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        let name = ServerName::try_from(HUB_NAME).expect("a valid DNS name");
        verifier.verify_server_cert(end_entity, &[], &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that trusts only the pinned hub, presenting `identity` if given.
pub fn client_config(
    pin: Pin,
    identity: Option<&CertifiedKey>,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, provider }));
    let mut config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The hub's server configuration: its serving chain, and client certificates issued by its
/// CA accepted but not required (people and tools authenticate with bearer tokens instead).
pub fn server_config(
    serving: &CertifiedKey,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|err| Error::Verifier(err.to_string()))?;
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13_only { &[&rustls::version::TLS13] } else { rustls::DEFAULT_VERSIONS };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(clients)
        .with_single_cert(serving.chain.clone(), serving.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The fingerprint of the client certificate a connection presented (the hub's key for the
/// sidecar identity it belongs to).
pub fn peer_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<Fingerprint> {
    certs.and_then(|certs| certs.first()).map(|cert| Fingerprint::of(cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Authority, Request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS handshake over an in-memory pipe; the server's view of the client certificate.
    async fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> Result<Option<Fingerprint>, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
            let peer = peer_fingerprint(tls.get_ref().1.peer_certificates());
            let mut buf = [0; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(peer)
        });
        let name = ServerName::try_from("anything.example").unwrap();
        let result = connector.connect(name, a).await;
        match result {
            Ok(mut tls) => {
                tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
                tls.flush().await.unwrap();
                server.await.unwrap()
            }
            Err(err) => Err(crate::error_chain(&err)),
        }
    }

    fn hub() -> (tempfile::TempDir, Authority, CertifiedKey) {
        agentcom_process::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        let serving = ca.serving(dir.path(), &[]).unwrap();
        (dir, ca, serving)
    }

    #[tokio::test]
    async fn a_client_pinning_the_hub_connects_under_any_name_and_a_wrong_pin_says_what_to_do() {
        let (_dir, ca, serving) = hub();
        let server = || server_config(&serving, ca.cert(), &TCP_ALPN, false).unwrap();
        let by_fingerprint = Pin::fingerprint(ca.fingerprint(), "the token file");
        let client = client_config(by_fingerprint, None, &[], false).unwrap();
        assert_eq!(handshake(server(), client).await, Ok(None));
        let by_prefix = Pin::prefix(&ca.fingerprint().0[..16], "the join token");
        assert!(handshake(server(), client_config(by_prefix, None, &[], true).unwrap()).await.is_ok());

        let (_other_dir, other, _) = hub();
        let wrong = Pin::fingerprint(other.fingerprint(), "the join token");
        let err = handshake(server(), client_config(wrong, None, &[], false).unwrap()).await.unwrap_err();
        assert!(err.contains(&ca.fingerprint().hex()), "names what the hub presented: {err}");
        assert!(err.contains("the join token pins one whose SHA-256 starts"), "{err}");
        assert!(err.contains("Get a new one"), "{err}");
    }

    #[tokio::test]
    async fn a_sidecar_certificate_identifies_its_connection_and_cannot_pose_as_the_hub() {
        let (_dir, ca, serving) = hub();
        let request = Request::new("gpu-1").unwrap();
        let cert = ca.sign_sidecar(&request.csr_der, "sc-1").unwrap();
        let identity = CertifiedKey {
            chain: vec![cert.clone()],
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(request.key.serialize_der()).into(),
        };
        let pin = Pin::authority(ca.cert().clone(), "the sidecar's enrolment");
        let client = client_config(pin.clone(), Some(&identity), &[], false).unwrap();
        let server = server_config(&serving, ca.cert(), &TCP_ALPN, false).unwrap();
        assert_eq!(handshake(server, client).await, Ok(Some(Fingerprint::of(&cert))));

        // A server using a sidecar's certificate (client authentication only) is refused.
        let posing = CertifiedKey { chain: vec![cert, ca.cert().clone()], key: identity.key.clone_key() };
        let server = server_config(&posing, ca.cert(), &TCP_ALPN, false).unwrap();
        let err = handshake(server, client_config(pin, None, &[], false).unwrap()).await.unwrap_err();
        assert!(!err.is_empty());

        // A client certificate from another CA is refused by the hub.
        let (_other_dir, other, _) = hub();
        let request = Request::new("x").unwrap();
        let stranger_cert = other.sign_sidecar(&request.csr_der, "sc-x").unwrap();
        let identity = CertifiedKey {
            chain: vec![stranger_cert],
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(request.key.serialize_der()).into(),
        };
        let client =
            client_config(Pin::fingerprint(ca.fingerprint(), "the token file"), Some(&identity), &[], false).unwrap();
        let server = server_config(&serving, ca.cert(), &TCP_ALPN, false).unwrap();
        assert!(handshake(server, client).await.is_err());
    }
}
