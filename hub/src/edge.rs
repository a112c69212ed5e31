//! The hub's listener: admission, timeouts and protocol limits in front of the router, so that
//! whoever can reach the port cannot take the hub down without a token.
//!
//! - **A connection is pending until its first request arrives.** Pending connections are
//!   capped per source address and overall; a connection that sends no complete request within
//!   the first-request timeout is closed (this covers HTTP/1 headers and the HTTP/2 preface
//!   alike). When the pending cap is full the oldest pending connection makes room, so a flood
//!   from many addresses slows new clients down but does not lock them out.
//! - **The total is capped well below the open-file limit**, and sidecar sessions keep a
//!   reserve: clients may hold at most `max_connections - sidecar_reserve`, sidecars all of it.
//! - **Per request:** a header size cap (431), HTTP/2 stream and header list limits, and a
//!   timeout for reading a request body (not for gRPC streams, which are long by design).
//!
//! **Architecture Invariant:** this module decides about sockets only; it never looks inside a
//! request beyond its path and header sizes, and authentication stays in `server`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

/// What the listener admits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections of every kind.
    pub max_connections: usize,
    /// Of those, kept for sidecar sessions: clients may hold only the rest.
    pub sidecar_reserve: usize,
    /// Connections that have not sent a complete first request, overall.
    pub max_pending: usize,
    /// Pending connections from one source address.
    pub max_pending_per_source: usize,
    /// How long a connection may take to send its first complete request (headers, or the
    /// HTTP/2 preface and headers), and an HTTP/1 request its headers.
    pub header_timeout: Duration,
    /// How long a (non-gRPC) request body may take to arrive.
    pub body_timeout: Duration,
    /// Request line plus headers; larger requests get 431.
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
}

impl Limits {
    /// Limits for a process that may open `open_files` descriptors: three quarters of them for
    /// connections (the rest for the database, its log, backups and the runtime), a tenth of
    /// those kept for sidecars.
    pub fn for_open_files(open_files: u64) -> Limits {
        let max_connections = ((open_files.saturating_sub(256)) * 3 / 4).clamp(64, 1 << 20) as usize;
        let sidecar_reserve = (max_connections / 10).max(16);
        Limits {
            max_connections,
            sidecar_reserve,
            max_pending: (max_connections - sidecar_reserve) / 2,
            max_pending_per_source: 256.min(max_connections / 4),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_concurrent_streams: 1024,
        }
    }

    /// Limits for this process's open-file limit.
    pub fn for_this_process() -> Limits {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        Limits::for_open_files(soft)
    }
}

/// Raises the soft open-file limit to the hard one (as Go does for every program), so the
/// connection cap can be generous. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Pending,
    Client,
    Sidecar,
}

/// Counts by class and source, and the pending connections by age (for eviction).
#[derive(Default)]
struct Admission {
    total: usize,
    pending: usize,
    clients: usize,
    sidecars: usize,
    pending_by_source: HashMap<IpAddr, usize>,
    /// Oldest first: connection number -> its eviction switch.
    pending_by_age: BTreeMap<u64, CancellationToken>,
    next_id: u64,
    refused: u64,
    evicted: u64,
}

/// One admitted connection's place in the counts.
struct Slot {
    id: u64,
    source: IpAddr,
    class: Mutex<Class>,
    established: AtomicBool,
    first_request: Notify,
    evict: CancellationToken,
    shared: Arc<Shared>,
}

struct Shared {
    limits: Limits,
    admission: Mutex<Admission>,
}

impl Shared {
    /// Admits a new connection from `source`, or says why not.
    fn admit(self: &Arc<Shared>, source: IpAddr) -> Result<Arc<Slot>, &'static str> {
        let mut a = self.admission.lock().expect("admission lock poisoned");
        let limits = &self.limits;
        if a.total >= limits.max_connections {
            a.refused += 1;
            return Err("connection limit reached");
        }
        if a.pending_by_source.get(&source).copied().unwrap_or(0) >= limits.max_pending_per_source {
            a.refused += 1;
            return Err("too many unfinished connections from this address");
        }
        if a.pending >= limits.max_pending {
            // Make room: the oldest pending connection is the likeliest to be idle.
            if let Some((_, oldest)) = a.pending_by_age.pop_first() {
                oldest.cancel();
                a.evicted += 1;
            }
        }
        let id = a.next_id;
        a.next_id += 1;
        a.total += 1;
        a.pending += 1;
        *a.pending_by_source.entry(source).or_default() += 1;
        let evict = CancellationToken::new();
        a.pending_by_age.insert(id, evict.clone());
        Ok(Arc::new(Slot {
            id,
            source,
            class: Mutex::new(Class::Pending),
            established: AtomicBool::new(false),
            first_request: Notify::new(),
            evict,
            shared: self.clone(),
        }))
    }
}

impl Slot {
    /// Moves a pending connection to its class at its first request; false when clients are
    /// at their cap (the request is then refused).
    fn classify(&self, is_sidecar: bool) -> bool {
        if self.established.load(Ordering::Acquire) {
            return true;
        }
        let mut a = self.shared.admission.lock().expect("admission lock poisoned");
        let mut class = self.class.lock().expect("class lock poisoned");
        if *class != Class::Pending {
            return true;
        }
        let limits = &self.shared.limits;
        if !is_sidecar && a.clients >= limits.max_connections - limits.sidecar_reserve {
            return false;
        }
        leave_pending(&mut a, self.id, self.source);
        if is_sidecar {
            a.sidecars += 1;
            *class = Class::Sidecar;
        } else {
            a.clients += 1;
            *class = Class::Client;
        }
        self.established.store(true, Ordering::Release);
        self.first_request.notify_one();
        true
    }
}

fn leave_pending(a: &mut Admission, id: u64, source: IpAddr) {
    a.pending -= 1;
    a.pending_by_age.remove(&id);
    if let Some(n) = a.pending_by_source.get_mut(&source) {
        *n -= 1;
        if *n == 0 {
            a.pending_by_source.remove(&source);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.shared.admission.lock().expect("admission lock poisoned");
        a.total -= 1;
        match *self.class.lock().expect("class lock poisoned") {
            Class::Pending => leave_pending(&mut a, self.id, self.source),
            Class::Client => a.clients -= 1,
            Class::Sidecar => a.sidecars -= 1,
        }
    }
}

/// Counts the listener keeps (read through `Hub::edge`; not yet in any API response).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub connections: usize,
    pub pending: usize,
    pub clients: usize,
    pub sidecars: usize,
    pub refused: u64,
    pub evicted: u64,
}

/// A handle to read the listener's counts.
#[derive(Clone)]
pub struct Edge {
    shared: Arc<Shared>,
}

impl Edge {
    pub fn new(limits: Limits) -> Edge {
        Edge { shared: Arc::new(Shared { limits, admission: Mutex::new(Admission::default()) }) }
    }

    pub fn stats(&self) -> Stats {
        let a = self.shared.admission.lock().expect("admission lock poisoned");
        Stats {
            connections: a.total,
            pending: a.pending,
            clients: a.clients,
            sidecars: a.sidecars,
            refused: a.refused,
            evicted: a.evicted,
        }
    }

    /// Serves `router` on `listener` until `stop`, then lets open connections finish for up to
    /// `drain` (HTTP/2 connections get a GOAWAY, HTTP/1 ones close after their request). With
    /// `tls`, each connection's handshake must finish within the first-request timeout, and a
    /// client certificate it presents goes with each of its requests as a [`PeerCertificate`].
    pub async fn serve(
        self,
        listener: TcpListener,
        router: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
        stop: CancellationToken,
        drain: Duration,
    ) {
        let connections = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors or a transient error: back off instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let slot = match self.shared.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    debug!(%peer, why, "connection refused");
                    drop(tcp);
                    continue;
                }
            };
            // Tokens travel on these sockets: no Nagle delay.
            let _ = tcp.set_nodelay(true);
            let (router, shutdown) = (router.clone(), shutdown.clone());
            match &acceptor {
                None => connections.spawn(serve_connection(TokioIo::new(tcp), peer, slot, router, shutdown, None)),
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    connections.spawn(async move {
                        let Some(tls) = handshaken(handshake, &slot, peer).await else { return };
                        let cert = agentcom_link::tls::peer_fingerprint(tls.get_ref().1.peer_certificates());
                        serve_connection(TokioIo::new(tls), peer, slot, router, shutdown, cert.map(PeerCertificate))
                            .await
                    })
                }
            };
        }
        drop(listener);
        finish(connections, shutdown, drain).await;
    }

    /// Serves `router` over QUIC: each connection carries one bidirectional stream of HTTP/2,
    /// admitted and limited like a TCP connection. quinn follows a client whose address
    /// changes (connection migration); its session goes on.
    pub async fn serve_quic(self, endpoint: quinn::Endpoint, router: Router, stop: CancellationToken, drain: Duration) {
        let connections = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => incoming,
                _ = stop.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let peer = incoming.remote_address();
            let slot = match self.shared.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    debug!(%peer, why, "quic connection refused");
                    incoming.refuse();
                    continue;
                }
            };
            let (router, shutdown) = (router.clone(), shutdown.clone());
            connections.spawn(async move {
                let stream = async {
                    let connection = incoming.await.map_err(|err| err.to_string())?;
                    let (send, recv) = connection.accept_bi().await.map_err(|err| err.to_string())?;
                    Ok::<_, String>(agentcom_link::quic::BiStream { send, recv, connection })
                };
                let Some(stream) = handshaken(stream, &slot, peer).await else { return };
                let certs = stream
                    .connection
                    .peer_identity()
                    .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok());
                let cert = agentcom_link::tls::peer_fingerprint(certs.as_deref().map(Vec::as_slice));
                serve_connection(TokioIo::new(stream), peer, slot, router, shutdown, cert.map(PeerCertificate)).await
            });
        }
        endpoint.close(0u32.into(), b"the hub is stopping");
        finish(connections, shutdown, drain).await;
    }
}

/// A connection's TLS (or QUIC) handshake, bounded by the first-request timeout and cut short
/// by eviction, as a connection that never sends a request is.
async fn handshaken<T, E: std::fmt::Display>(
    handshake: impl std::future::Future<Output = Result<T, E>>,
    slot: &Slot,
    peer: SocketAddr,
) -> Option<T> {
    let timeout = slot.shared.limits.header_timeout;
    tokio::select! {
        done = tokio::time::timeout(timeout, handshake) => match done {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(err)) => {
                debug!(%peer, error = %err, "handshake failed");
                None
            }
            Err(_) => {
                debug!(%peer, "no handshake in time; closing");
                None
            }
        },
        _ = slot.evict.cancelled() => None,
    }
}

/// Lets open connections finish for up to `drain` once the listener has stopped.
async fn finish(connections: tokio_util::task::TaskTracker, shutdown: CancellationToken, drain: Duration) {
    shutdown.cancel();
    connections.close();
    if tokio::time::timeout(drain, connections.wait()).await.is_err() {
        warn!("connections did not close in time; leaving them");
    }
}

/// The fingerprint of the client certificate a connection presented, in each of its requests'
/// extensions (the authentication layer maps it to an enrolled sidecar).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCertificate(pub agentcom_link::Fingerprint);

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    slot: Arc<Slot>,
    router: Router,
    shutdown: CancellationToken,
    cert: Option<PeerCertificate>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = slot.shared.limits.clone();
    let service = {
        let slot = slot.clone();
        // The checks run before the request's future is made, so a long-lived request (a sidecar
        // session) holds the router's future and nothing of the edge's.
        hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            use futures_util::future::{Either, FutureExt, ready};
            if let Some(cert) = cert {
                request.extensions_mut().insert(cert);
            }
            match admit_request(request, &slot) {
                Ok(request) => Either::Left(router.clone().oneshot(request)),
                Err(refusal) => Either::Right(ready(Ok(*refusal))),
            }
            .map(|result: Result<Response<Body>, std::convert::Infallible>| result)
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Large enough to read a header block past the cap whole, so the answer is a 431 and
        // not a reset; larger ones are refused by hyper itself.
        .max_buf_size(limits.max_header_bytes.max(8192) * 33);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let first_request = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(first_request);
    let mut draining = false;
    loop {
        let established = slot.established.load(Ordering::Acquire);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(%peer, error = %err, "connection ended with an error");
                }
                break;
            }
            _ = &mut first_request, if !established => {
                if !slot.established.load(Ordering::Acquire) {
                    debug!(%peer, "no complete request in time; closing");
                    break;
                }
            }
            _ = slot.first_request.notified(), if !established => {}
            _ = slot.evict.cancelled(), if !established => {
                if !slot.established.load(Ordering::Acquire) {
                    debug!(%peer, "evicted while pending");
                    break;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Classifies the connection at its first request and checks the request's headers; the
/// request to pass on (its body under a timeout unless it is gRPC), or the refusal to send.
fn admit_request(request: Request<hyper::body::Incoming>, slot: &Slot) -> Result<Request<Body>, Box<Response<Body>>> {
    let limits = &slot.shared.limits;
    let is_grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let is_sidecar = request.uri().path().starts_with("/agentcom.v1.AgentLink/");
    if !slot.classify(is_sidecar) {
        return Err(Box::new(refuse(
            is_grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            "resource_exhausted",
            "the hub has as many client connections as it takes; retry shortly",
            true,
        )));
    }
    let header_bytes = request.uri().path().len()
        + request.uri().query().map_or(0, str::len)
        + request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if header_bytes > limits.max_header_bytes {
        return Err(Box::new(refuse(
            is_grpc,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_argument",
            &format!("request headers are {header_bytes} bytes, at most {} allowed", limits.max_header_bytes),
            false,
        )));
    }
    Ok(if is_grpc {
        request.map(Body::new)
    } else {
        let limit = limits.body_timeout;
        request.map(|body| {
            Body::new(TimedBody { inner: Body::new(body), deadline: Box::pin(tokio::time::sleep(limit)), limit })
        })
    })
}

/// An error answer from the edge, in the caller's protocol.
fn refuse(is_grpc: bool, status: StatusCode, code: &str, message: &str, retry: bool) -> Response<Body> {
    if is_grpc {
        let mut status = tonic::Status::new(
            if retry { tonic::Code::ResourceExhausted } else { tonic::Code::InvalidArgument },
            message.to_owned(),
        );
        if retry {
            status.metadata_mut().insert("retry-after", tonic::metadata::MetadataValue::from_static("1"));
        }
        return status.into_http();
    }
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut response = Response::builder()
        .status(status)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a static response");
    if retry {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    }
    response
}

/// A request body that must arrive within its time.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() && !this.inner.is_end_stream() {
            let message = format!("the request body did not arrive within {} s", this.limit.as_secs());
            return Poll::Ready(Some(Err(axum::Error::new(message))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(limits: Limits) -> Arc<Shared> {
        Arc::new(Shared { limits, admission: Mutex::new(Admission::default()) })
    }

    fn small() -> Limits {
        Limits {
            max_connections: 10,
            sidecar_reserve: 3,
            max_pending: 4,
            max_pending_per_source: 2,
            ..Limits::for_open_files(1024)
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_source_cannot_hold_more_than_its_share_of_pending_connections() {
        let edge = shared(small());
        let a1 = edge.admit(ip(2)).unwrap();
        let _a2 = edge.admit(ip(2)).unwrap();
        assert!(edge.admit(ip(2)).is_err(), "third pending connection from one address");
        let _b = edge.admit(ip(3)).unwrap();
        // Once its first request arrived, a connection no longer counts as pending.
        assert!(a1.classify(false));
        let _a3 = edge.admit(ip(2)).unwrap();
    }

    #[test]
    fn a_full_pending_set_evicts_its_oldest_member() {
        let edge = shared(small());
        let slots: Vec<_> = (2..6).map(|n| edge.admit(ip(n)).unwrap()).collect();
        assert!(!slots[0].evict.is_cancelled());
        let _newest = edge.admit(ip(9)).unwrap();
        assert!(slots[0].evict.is_cancelled(), "the oldest pending connection makes room");
        assert!(!slots[1].evict.is_cancelled());
    }

    #[test]
    fn clients_leave_the_reserve_to_sidecars() {
        let edge = shared(Limits { max_pending: 10, max_pending_per_source: 10, ..small() });
        let clients: Vec<_> = (0..7).map(|_| edge.admit(ip(2)).unwrap()).collect();
        assert!(clients.iter().all(|slot| slot.classify(false)));
        let extra = edge.admit(ip(2)).unwrap();
        assert!(!extra.classify(false), "an eighth client would eat into the sidecar reserve");
        assert!(extra.classify(true), "a sidecar may use the reserve");
        let _more: Vec<_> = (0..2).map(|_| edge.admit(ip(4)).unwrap()).collect();
        assert!(edge.admit(ip(5)).is_err(), "ten connections in all");
        drop(clients);
        let stats = Edge { shared: edge.clone() }.stats();
        assert_eq!((stats.connections, stats.clients, stats.sidecars, stats.pending), (3, 0, 1, 2));
    }

    #[test]
    fn limits_follow_the_open_file_limit() {
        let limits = Limits::for_open_files(20_000);
        assert_eq!(limits.max_connections, 14_808);
        assert!(limits.max_pending + limits.sidecar_reserve < limits.max_connections);
        assert_eq!(Limits::for_open_files(100).max_connections, 64);
    }
}
