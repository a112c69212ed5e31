//! QUIC for the sidecar link, set for a Tailscale tailnet: packets never larger than its
//! 1280-byte interface MTU allows, keep-alives well inside the idle timeout (so NAT bindings stay
//! open and a dead path is noticed in 30 s), and connection migration, so a sidecar whose
//! address changes keeps its session. The gRPC service is carried as tonic's HTTP/2 inside one
//! bidirectional QUIC stream ([`BiStream`]); TLS 1.3 with the same pinned identities as TCP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Error;

/// The application protocol a QUIC connection to the hub speaks.
pub const ALPN: &[u8] = b"agentcom-h2";
/// Tailscale's 1280-byte interface MTU less the IPv6 and UDP headers.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// QUIC's own minimum, and where path MTU discovery starts.
pub const MIN_UDP_PAYLOAD: u16 = 1200;
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

// Checked when this compiles: a full packet fits a 1280-byte MTU with IPv6 and UDP headers, and
// a keep-alive is sent at least twice within the idle timeout.
const _: () = assert!(MAX_UDP_PAYLOAD as usize + 40 + 8 <= 1280);
const _: () = assert!(KEEP_ALIVE.as_secs() * 2 < IDLE_TIMEOUT.as_secs());

/// The transport settings both ends use.
pub fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    transport
        .initial_mtu(MIN_UDP_PAYLOAD)
        .min_mtu(MIN_UDP_PAYLOAD)
        .mtu_discovery_config(Some(mtu))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("30 s is a valid idle timeout")));
    transport
}

/// The hub's QUIC endpoint on `addr`, serving `tls` (TLS 1.3, [`ALPN`]).
pub fn server(addr: SocketAddr, tls: rustls::ServerConfig) -> Result<quinn::Endpoint, Error> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| Error::Verifier(format!("the TLS configuration cannot serve QUIC: {err}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    config.migration(true);
    quinn::Endpoint::server(config, addr).map_err(|source| Error::Io { path: format!("udp {addr}").into(), source })
}

/// A client configuration from a pinned TLS configuration (TLS 1.3, [`ALPN`]).
pub fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, Error> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|err| Error::Verifier(format!("the TLS configuration cannot dial QUIC: {err}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the address family of `peer`.
pub fn client_endpoint(peer: SocketAddr) -> io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if peer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    quinn::Endpoint::client(bind)
}

/// One bidirectional QUIC stream as a byte stream (for HTTP/2), holding its connection.
pub struct BiStream {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub connection: quinn::Connection,
}

impl AsyncRead for BiStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for BiStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Authority;
    use crate::tls::{Pin as TlsPin, client_config as tls_client, server_config};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream keeps flowing when the client's socket is replaced mid-transfer (a laptop that
    /// changed networks): the server sees a new address and the same connection.
    #[tokio::test]
    async fn a_stream_survives_the_client_rebinding_its_socket() {
        agentcom_process::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        let serving = ca.serving(dir.path(), &[]).unwrap();
        let tls = server_config(&serving, ca.cert(), &[ALPN], true).unwrap();
        let server = server(([127, 0, 0, 1], 0).into(), tls).unwrap();
        let server_addr = server.local_addr().unwrap();

        let accepted = tokio::spawn(async move {
            let connection = server.accept().await.unwrap().await.unwrap();
            let (send, recv) = connection.accept_bi().await.unwrap();
            let first = connection.remote_address();
            let mut stream = BiStream { send, recv, connection: connection.clone() };
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                stream.write_all(&buf[..n]).await.unwrap();
            }
            let last = connection.remote_address();
            stream.shutdown().await.unwrap();
            let _ = connection.closed().await;
            (got, first, last)
        });

        let pin = TlsPin::fingerprint(ca.fingerprint(), "test");
        let client_tls = tls_client(pin, None, &[ALPN], true).unwrap();
        let mut endpoint = client_endpoint(server_addr).unwrap();
        endpoint.set_default_client_config(client_config(client_tls).unwrap());
        let connection = endpoint.connect(server_addr, crate::HUB_NAME).unwrap().await.unwrap();
        let (send, recv) = connection.open_bi().await.unwrap();
        let mut stream = BiStream { send, recv, connection };
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut echoed = Vec::new();
        for (i, chunk) in data.chunks(1_000).enumerate() {
            if i == 10 {
                endpoint.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
            }
            stream.write_all(chunk).await.unwrap();
            let mut back = vec![0; chunk.len()];
            stream.read_exact(&mut back).await.unwrap();
            echoed.extend_from_slice(&back);
        }
        stream.shutdown().await.unwrap();
        assert_eq!(stream.read(&mut [0u8; 1]).await.unwrap(), 0);
        stream.connection.close(0u32.into(), b"done");
        let (got, first, last) = accepted.await.unwrap();
        assert_eq!(got, data);
        assert_eq!(echoed, data);
        assert_ne!(first.port(), last.port(), "the server saw the client move");
    }
}
