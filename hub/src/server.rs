//! Serving the hub: one listener for gRPC and HTTP, authentication in front of both, and an
//! orderly shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future (mini-redis style), so tests bind
//! `127.0.0.1:0` and run many hubs in one process.
//!
//! In detail:
//!
//! `server`: `DataDir::tls` makes or loads the CA and issues the serving certificate;
//! `ensure_tokens` writes `admin.token` with the CA's pin. `Hub::start` loads the queue (failing
//! before it serves anything if storage is damaged) and serves gRPC and HTTP on one listener (tonic
//! routes merged into an axum router, JSON answers for unknown paths and methods) behind one
//! authentication and rate-limit layer, through `edge`; `Hub::stop` shuts down in order (backups,
//! core, streams, connections). Also data-directory and token bootstrap.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentcom_proto::v1 as pb;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::grpc::{AdminService, AgentLinkService, MAX_MESSAGE_BYTES};
use crate::api::http::{self, HttpState};
use crate::api::{ApiError, ErrorCode};
use crate::auth::{self, Role, Tokens};
use crate::backup;
use crate::core::{self, Core};
use crate::edge;
use crate::enrol::Enrolment;
use crate::ratelimit::{self, Limiter};
use crate::store::{self, Op, Store};

use crate::api::http::MAX_BODY_BYTES;
/// How long open connections get to finish after the core has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The CA, a certificate, a key file or a listener of the link.
    #[error(transparent)]
    Link(#[from] agentcom_link::Error),
    #[error("{0}")]
    Config(String),
}

/// The data directory's files.
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("hub.redb")
    }

    /// Where a running hub writes the URL it serves (`http://127.0.0.1:7420`), for the tools
    /// given only the data directory (`agentcom-hub backup`, `hubctl`); removed when it stops.
    pub fn url_file(&self) -> PathBuf {
        self.root.join("hub.url")
    }

    pub fn backups(&self) -> PathBuf {
        self.root.join("backups")
    }

    pub fn token_file(&self, role: Role) -> PathBuf {
        self.root.join(format!("{}.token", role.as_str()))
    }

    /// The hub's TLS: its CA (made on first start, `ca.pem` and `ca.key`), and a serving
    /// certificate issued at this start (`hub.pem`, `hub.key`) for `names` as well as
    /// `agentcom-hub`, `localhost` and the loopback addresses.
    pub fn tls(&self, names: &[String]) -> Result<LinkTls, Error> {
        agentcom_process::install_crypto_provider();
        let authority = agentcom_link::pki::Authority::load_or_create(&self.root)?;
        let serving = authority.serving(&self.root, names)?;
        let tcp = agentcom_link::tls::server_config(&serving, authority.cert(), &agentcom_link::tls::TCP_ALPN, false)?;
        let quic = agentcom_link::tls::server_config(&serving, authority.cert(), &[agentcom_link::quic::ALPN], true)?;
        Ok(LinkTls { authority: Arc::new(authority), tcp: Arc::new(tcp), quic: Arc::new(quic) })
    }

    /// Creates the directory (mode 0700) and opens the database.
    pub fn open(&self) -> Result<Store, Error> {
        std::fs::create_dir_all(&self.root).map_err(|source| Error::Io { path: self.root.clone(), source })?;
        restrict(&self.root, 0o700)?;
        Ok(Store::open(&self.database())?)
    }
}

fn restrict(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| Error::Io { path: path.to_owned(), source })
}

/// The hub's TLS, made by [`DataDir::tls`].
#[derive(Clone)]
pub struct LinkTls {
    pub authority: Arc<agentcom_link::pki::Authority>,
    /// For the TCP listener (TLS 1.2 and 1.3; h2 and http/1.1).
    pub tcp: Arc<rustls::ServerConfig>,
    /// For QUIC (TLS 1.3).
    pub quic: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls").field("ca", &self.authority.fingerprint()).finish_non_exhaustive()
    }
}

/// Makes sure an admin and a join token exist and their plaintext is in the data directory.
/// A token file whose hash the hub knows is kept; otherwise a new token is minted, its hash
/// stored, and the file (mode 0600) rewritten. The hub never stores a plaintext token itself.
/// With `ca` (a hub that serves TLS), `admin.token` also pins the hub's CA (its `ca-sha256=`
/// line), so `hubctl` given that file trusts this hub and no other.
pub fn ensure_tokens(
    data_dir: &DataDir,
    store: &Store,
    ca: Option<agentcom_link::Fingerprint>,
) -> Result<Tokens, Error> {
    use agentcom_link::token_file::TokenFile;
    let tokens = Tokens::from_stored(store.load_tokens()?);
    for role in [Role::Admin, Role::Join] {
        let path = data_dir.token_file(role);
        let pin = if role == Role::Admin { ca } else { None };
        let file = std::fs::read_to_string(&path).ok().and_then(|text| TokenFile::parse(&text).ok());
        let known = file
            .as_ref()
            .filter(|f| tokens.authorize(Some(&format!("Bearer {}", f.token)), access_for_role(role)).is_ok());
        match known {
            Some(file) if file.ca == pin => continue,
            Some(file) => {
                // The same token, pinning what the hub serves now.
                agentcom_link::pki::write_private(&path, &TokenFile { token: file.token.clone(), ca: pin }.render())?;
                continue;
            }
            None => {}
        }
        let minted = auth::mint(role);
        store.apply(vec![Op::PutToken { hash: minted.hash.clone(), value: role.as_str().to_owned() }])?;
        tokens.insert(minted.hash, role);
        agentcom_link::pki::write_private(&path, &TokenFile { token: minted.token, ca: pin }.render())?;
        info!(path = %path.display(), role = role.as_str(), "minted a token");
    }
    Ok(tokens)
}

fn access_for_role(role: Role) -> auth::Access {
    match role {
        Role::Join => auth::Access::Sidecar,
        api => auth::Access::Api(api),
    }
}

/// What the authentication layer needs: the tokens and the per-token rate limits.
#[derive(Clone)]
struct Gate {
    tokens: Tokens,
    limiter: Arc<Limiter>,
    enrolment: Enrolment,
    /// The name of the token gateway requests without a key act as.
    keyless_gateway: Option<String>,
}

/// Checks the bearer token before any handler runs, and the token's rate on the admin API,
/// answering in the caller's protocol.
async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let access = auth::access_for(request.method().as_str(), request.uri().path());
    let mut header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // Anthropic's clients send their key as `x-api-key`.
    let api_key = (access == auth::Access::Gateway && header.is_none())
        .then(|| request.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(|key| format!("Bearer {key}")))
        .flatten();
    if api_key.is_some() {
        header = api_key.as_deref();
    }
    // A gateway request with no key at all, where the operator named a token for those.
    if access == auth::Access::Gateway
        && header.is_none()
        && let Some(name) = &gate.keyless_gateway
        && let Some(token) = gate.tokens.list().into_iter().find(|t| &t.name == name && t.role.may(access))
    {
        request.extensions_mut().insert(auth::Caller { role: token.role, token_id: token.id });
        return next.run(request).await;
    }
    let is_grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    // An enrolled sidecar is known by its client certificate; it needs no token.
    if access == auth::Access::Sidecar
        && let Some(crate::edge::PeerCertificate(cert)) = request.extensions().get().copied()
    {
        let refusal = match gate.enrolment.resolve(&cert) {
            Some(identity) if identity.revoked_unix_ms == 0 => {
                request
                    .extensions_mut()
                    .insert(auth::EnrolledPeer { sidecar_id: identity.sidecar_id, tags: identity.tags });
                return next.run(request).await;
            }
            Some(identity) => ApiError::new(ErrorCode::PermissionDenied, auth::revoked_message(&identity.sidecar_id)),
            None => ApiError::new(
                ErrorCode::Unauthenticated,
                "this client certificate is not one this hub issued (or its record is gone): enrol the sidecar again with a new join token",
            ),
        };
        return tonic::Status::from(refusal).into_http::<axum::body::Body>().into_response();
    }
    let refusal = match gate.tokens.authorize_keyed(header, access) {
        Ok(Some((role, token_hash))) if matches!(access, auth::Access::Api(_) | auth::Access::Gateway) => {
            // Handlers that record what they did (the audit log) say who did it.
            request.extensions_mut().insert(auth::Caller { role, token_id: auth::token_id(&token_hash) });
            match gate.limiter.check(&token_hash, std::time::Instant::now()) {
                Ok(()) => None,
                Err(wait) => {
                    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                    let message = format!("too many requests for this token; retry in {seconds} s");
                    Some((ApiError::new(ErrorCode::RateLimited, message), Some(seconds)))
                }
            }
        }
        Ok(_) => None,
        Err(err) => Some((ApiError::from(err), None)),
    };
    let Some((err, retry_after)) = refusal else { return next.run(request).await };
    if access == auth::Access::Gateway
        && let Some(dialect) = crate::api::gateway::dialect_of(request.uri().path(), request.headers())
    {
        // The gateway's callers read errors in their own API's shape.
        return crate::api::gateway::Refusal::from_api(&err, retry_after).into_response(dialect);
    }
    let mut response = if is_grpc {
        let mut status = tonic::Status::from(err);
        if let Some(seconds) = retry_after
            && let Ok(value) = seconds.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status.into_http::<axum::body::Body>().into_response()
    } else {
        err.into_response()
    };
    if let Some(seconds) = retry_after
        && !is_grpc
    {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
    }
    response
}

/// A known path with a method it does not take: 405, in the API's error shape.
async fn method_not_allowed(request: Request) -> Response {
    let message = format!("{} is not allowed on {}", request.method(), request.uri().path());
    ApiError::new(ErrorCode::MethodNotAllowed, message).into_response()
}

async fn fallback(request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        tonic::Status::unimplemented(format!("no such method: {}", request.uri().path()))
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        http::not_found().await.into_response()
    }
}

/// How the hub serves its listener.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub edge: edge::Limits,
    /// Requests per second per admin token (bursts of twice that); `None` is unlimited.
    pub rate_per_token: Option<ratelimit::Rate>,
    /// Serve TLS (and enrol sidecars); `None` serves plaintext.
    pub tls: Option<LinkTls>,
    /// Also serve the sidecar link over QUIC here (needs `tls`).
    pub quic_listen: Option<std::net::SocketAddr>,
    /// Gateway requests that carry no key act as the token of this name (for clients that
    /// cannot send one, such as the Ollama CLI); `None`: they are refused.
    pub keyless_gateway: Option<String>,
}

/// Requests per second an admin token may make by default.
pub const DEFAULT_RATE_PER_TOKEN: u32 = 5_000;

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            edge: edge::Limits::for_this_process(),
            rate_per_token: ratelimit::Rate::per_second(DEFAULT_RATE_PER_TOKEN),
            tls: None,
            quic_listen: None,
            keyless_gateway: None,
        }
    }
}

/// A started hub: storage loaded, core running, listener serving.
pub struct Hub {
    handle: core::Handle,
    edge: edge::Edge,
    core_task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
    quic_server: Option<tokio::task::JoinHandle<()>>,
    periodic_backups: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    stop_backups: CancellationToken,
}

impl Hub {
    /// Loads the queue and starts serving on `listener`. Fails before serving anything if the
    /// stored tasks cannot be read.
    pub async fn start(
        listener: TcpListener,
        store: Store,
        tokens: Tokens,
        config: core::Config,
        backups: backup::Policy,
    ) -> Result<Hub, Error> {
        Hub::start_with(listener, store, tokens, config, backups, ServeOptions::default()).await
    }

    /// [`Hub::start`] with explicit listener limits. The future is boxed here so that its body
    /// (the whole router) is compiled once, in this crate, and not again in each binary.
    pub fn start_with(
        listener: TcpListener,
        store: Store,
        tokens: Tokens,
        config: core::Config,
        backups: backup::Policy,
        options: ServeOptions,
    ) -> Pin<Box<dyn Future<Output = Result<Hub, Error>> + Send>> {
        Box::pin(Hub::start_inner(listener, store, tokens, config, backups, options))
    }

    async fn start_inner(
        listener: TcpListener,
        store: Store,
        tokens: Tokens,
        config: core::Config,
        backups: backup::Policy,
        options: ServeOptions,
    ) -> Result<Hub, Error> {
        agentcom_process::install_crypto_provider();
        let enrolment = Enrolment::new(options.tls.as_ref().map(|tls| tls.authority.clone()), store.load_enrolled()?);
        // Bound before anything starts, so a port in use fails the start and not later.
        let quic = match (options.quic_listen, &options.tls) {
            (None, _) => None,
            (Some(addr), None) => {
                return Err(Error::Config(format!(
                    "--quic-listen {addr} needs TLS: QUIC has no plaintext (drop --insecure-plaintext)"
                )));
            }
            (Some(addr), Some(tls)) => Some(agentcom_link::quic::server(addr, (*tls.quic).clone())?),
        };
        let spec_defaults = config.spec_defaults.clone();
        let (allow, check_every) = (config.allow_endpoints.clone(), config.endpoint_check_interval);
        let aliases = crate::api::gateway::Aliases::load(store.load_fleet()?.aliases);
        let (handle, core_task) = Core::start(config, &store)?;
        let stop = CancellationToken::new();
        let stop_backups = CancellationToken::new();
        tokio::spawn(crate::probe::run(handle.clone(), allow, check_every, stop_backups.clone()));
        let periodic_backups = tokio::spawn(backup::run_periodic(store.clone(), backups.clone(), stop_backups.clone()));
        let backups = backup::Backups::new(store, backups);

        let admin = pb::admin_server::AdminServer::new(AdminService {
            hub: handle.clone(),
            spec_defaults: spec_defaults.clone(),
            backups: backups.clone(),
            stop: stop.clone(),
            tokens: tokens.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let link = pb::agent_link_server::AgentLinkServer::new(AgentLinkService {
            hub: handle.clone(),
            stop: stop.clone(),
            enrolment: enrolment.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let grpc = tonic::service::Routes::new(admin).add_service(link).into_axum_router();
        let router = grpc
            .merge(http::router(HttpState {
                hub: handle.clone(),
                spec_defaults,
                backups,
                stop: stop.clone(),
                tokens: tokens.clone(),
                enrolment: enrolment.clone(),
                meters: Default::default(),
                aliases,
            }))
            .fallback(fallback)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                Gate {
                    tokens,
                    limiter: Arc::new(Limiter::new(options.rate_per_token)),
                    enrolment,
                    keyless_gateway: options.keyless_gateway.clone(),
                },
                authenticate,
            ));

        let addr = listener.local_addr().map_err(|source| Error::Io { path: "listener".into(), source })?;
        let limits = &options.edge;
        info!(
            %addr,
            tls = options.tls.is_some(),
            ca_sha256 = options.tls.as_ref().map(|tls| tls.authority.fingerprint().hex()),
            quic = quic.as_ref().and_then(|q| q.local_addr().ok()).map(|a| a.to_string()),
            max_connections = limits.max_connections,
            sidecar_reserve = limits.sidecar_reserve,
            max_pending_per_source = limits.max_pending_per_source,
            "hub listening"
        );
        let edge = edge::Edge::new(options.edge);
        let quic_server = quic.map(|endpoint| {
            tokio::spawn(edge.clone().serve_quic(endpoint, router.clone(), stop.clone(), DRAIN_TIMEOUT))
        });
        let tcp_tls = options.tls.map(|tls| tls.tcp);
        let server = tokio::spawn(edge.clone().serve(listener, router, tcp_tls, stop.clone(), DRAIN_TIMEOUT));
        Ok(Hub { handle, edge, core_task, server, quic_server, periodic_backups, stop, stop_backups })
    }

    pub fn handle(&self) -> &core::Handle {
        &self.handle
    }

    /// The listener's connection counts.
    pub fn edge(&self) -> &edge::Edge {
        &self.edge
    }

    /// Stops in order: backups, the core (cancelling in-flight work if configured, committing
    /// what is queued, closing the database), then the open streams, then the connections.
    pub fn stop(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.stop_inner())
    }

    async fn stop_inner(self) {
        info!("shutting down");
        self.stop_backups.cancel();
        let _ = self.periodic_backups.await;
        // The core first: in dev it cancels running work and needs the sidecar streams to hear back.
        self.handle.shutdown().await;
        let _ = self.core_task.await;
        self.stop.cancel();
        // The listener waits up to DRAIN_TIMEOUT for connections itself.
        match tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(error = %err, "server task failed"),
            Err(_) => warn!("the listener did not stop in time"),
        }
        if let Some(quic) = self.quic_server {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), quic).await;
        }
        info!("hub stopped");
    }
}

/// Serves the hub on `listener` until `shutdown` completes, then stops it in order.
pub async fn run(
    listener: TcpListener,
    store: Store,
    tokens: Tokens,
    config: core::Config,
    backups: backup::Policy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let hub = Hub::start(listener, store, tokens, config, backups).await?;
    shutdown.await;
    hub.stop().await;
    Ok(())
}
