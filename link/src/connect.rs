//! Dialing the hub: `http://` (plaintext, for loopback and `dev`), `https://` (TLS over TCP)
//! and `quic://` (HTTP/2 inside one QUIC stream), each behind the same tonic connector, so the
//! sidecar's link and `hubctl` do not care which.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin as StdPin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::pki::CertifiedKey;
use crate::tls::Pin;
use crate::{Error, HUB_NAME, quic};

/// The hub's HTTP and gRPC port, and its QUIC port.
pub const DEFAULT_PORT: u16 = 7420;
pub const DEFAULT_QUIC_PORT: u16 = 7421;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    Quic,
}

/// A hub URL, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubUrl {
    pub scheme: Scheme,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl HubUrl {
    pub fn parse(url: &str) -> Result<HubUrl, Error> {
        let bad = |message: &str| Error::Url { url: url.to_owned(), message: message.to_owned() };
        let uri: http::Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some("quic") => Scheme::Quic,
            _ => return Err(bad("it must start with https://, quic:// or (plaintext) http://")),
        };
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("it must name only the hub (scheme, host and port), no path"));
        }
        let host = uri.host().ok_or_else(|| bad("it has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if scheme == Scheme::Quic { DEFAULT_QUIC_PORT } else { DEFAULT_PORT });
        Ok(HubUrl { scheme, host, port })
    }

    /// What tonic is given: the connector does the dialing, tonic only needs an authority.
    pub fn channel_uri(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    pub fn is_encrypted(&self) -> bool {
        self.scheme != Scheme::Http
    }
}

/// A connection to the hub, whichever transport carries it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Dials one hub URL; shared by every connection a client makes to it.
pub struct Dialer {
    url: HubUrl,
    tls: Option<tokio_rustls::TlsConnector>,
    quic: Option<QuicDialer>,
}

struct QuicDialer {
    config: quinn::ClientConfig,
    /// Made on first dial, for the address family of the hub's address, and kept for the
    /// next connections (one UDP socket per dialer).
    endpoint: Mutex<Option<quinn::Endpoint>>,
}

impl Dialer {
    /// `pin` is required for `https://` and `quic://`; `identity` is the client certificate an
    /// enrolled sidecar presents.
    pub fn new(url: HubUrl, pin: Option<Pin>, identity: Option<&CertifiedKey>) -> Result<Dialer, Error> {
        let need_pin = || {
            Error::Url {
            url: url.channel_uri(),
            message: "an encrypted hub URL needs the hub's CA fingerprint to pin (a join token, a token file with its ca-sha256 line, or --ca-fingerprint)".into(),
        }
        };
        let (tls, quic) = match url.scheme {
            Scheme::Http => (None, None),
            Scheme::Https => {
                let config = crate::tls::client_config(pin.ok_or_else(need_pin)?, identity, &[b"h2"], false)?;
                (Some(tokio_rustls::TlsConnector::from(Arc::new(config))), None)
            }
            Scheme::Quic => {
                let config = crate::tls::client_config(pin.ok_or_else(need_pin)?, identity, &[quic::ALPN], true)?;
                (None, Some(QuicDialer { config: quic::client_config(config)?, endpoint: Mutex::new(None) }))
            }
        };
        Ok(Dialer { url, tls, quic })
    }

    pub fn url(&self) -> &HubUrl {
        &self.url
    }

    pub async fn dial(&self) -> io::Result<Box<dyn Io>> {
        let (host, port) = (self.url.host.as_str(), self.url.port);
        if let Some(quic) = &self.quic {
            let addr = resolve(host, port).await?;
            let endpoint = {
                let mut slot = quic.endpoint.lock().expect("endpoint lock poisoned");
                match slot.as_ref() {
                    Some(endpoint) if endpoint.local_addr()?.is_ipv4() == addr.is_ipv4() => endpoint.clone(),
                    _ => slot.insert(quic::client_endpoint(addr)?).clone(),
                }
            };
            let connecting = endpoint.connect_with(quic.config.clone(), addr, HUB_NAME).map_err(io::Error::other)?;
            let connection = connecting.await.map_err(io::Error::other)?;
            let (send, recv) = connection.open_bi().await.map_err(io::Error::other)?;
            return Ok(Box::new(quic::BiStream { send, recv, connection }));
        }
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        // Tokens and small messages travel here: no Nagle delay.
        tcp.set_nodelay(true)?;
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(HUB_NAME).expect("a valid DNS name");
                Ok(Box::new(tls.connect(name, tcp).await?))
            }
            None => Ok(Box::new(tcp)),
        }
    }
}

async fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))
}

/// A gRPC channel to the hub through `dialer` (connected now, so a wrong pin fails here).
pub async fn channel(dialer: Arc<Dialer>) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(dialer.url().channel_uri())
        .expect("a host and a port make a valid URI")
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_with_connector(Connector(dialer))
        .await
}

/// The tonic connector over a [`Dialer`]: `Endpoint::connect_with_connector(Connector(..))`.
#[derive(Clone)]
pub struct Connector(pub Arc<Dialer>);

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = StdPin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let dialer = self.0.clone();
        Box::pin(async move { dialer.dial().await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_name_a_scheme_a_host_and_a_port() {
        let url = HubUrl::parse("https://hub.tail1234.ts.net").unwrap();
        assert_eq!((url.scheme, url.host.as_str(), url.port), (Scheme::Https, "hub.tail1234.ts.net", DEFAULT_PORT));
        let url = HubUrl::parse("quic://100.64.0.7").unwrap();
        assert_eq!((url.scheme, url.port), (Scheme::Quic, DEFAULT_QUIC_PORT));
        let url = HubUrl::parse("quic://[fd7a:115c::1]:9000").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("fd7a:115c::1", 9000));
        assert_eq!(url.channel_uri(), "http://[fd7a:115c::1]:9000");
        assert!(!HubUrl::parse("http://127.0.0.1:7420/").unwrap().is_encrypted());
        for bad in ["hub:7420", "ftp://hub", "https://hub/api", ""] {
            assert!(HubUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_encrypted_url_without_a_pin_is_refused() {
        let err = Dialer::new(HubUrl::parse("https://hub").unwrap(), None, None).err().unwrap().to_string();
        assert!(err.contains("CA fingerprint"), "{err}");
        assert!(Dialer::new(HubUrl::parse("http://hub").unwrap(), None, None).is_ok());
    }
}
