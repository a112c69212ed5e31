//! Serving the hub: one listener for gRPC and HTTP, authentication in front of both, and an
//! orderly shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future (mini-redis style), so tests bind
//! `127.0.0.1:0` and run many hubs in one process.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentcom_proto::v1 as pb;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::ApiError;
use crate::api::grpc::{AdminService, AgentLinkService, MAX_MESSAGE_BYTES};
use crate::api::http::{self, HttpState};
use crate::auth::{self, Role, Tokens};
use crate::backup;
use crate::core::{self, Core};
use crate::store::{self, Op, Store};

/// Largest HTTP request body (a submit with a large prompt fits).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How long open connections get to finish after the core has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
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

    pub fn backups(&self) -> PathBuf {
        self.root.join("backups")
    }

    pub fn token_file(&self, role: Role) -> PathBuf {
        self.root.join(format!("{}.token", role.as_str()))
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

/// Makes sure an admin and a join token exist and their plaintext is in the data directory.
/// A token file whose hash the hub knows is kept; otherwise a new token is minted, its hash
/// stored, and the file (mode 0600) rewritten. The hub never stores a plaintext token itself.
pub fn ensure_tokens(data_dir: &DataDir, store: &Store) -> Result<Tokens, Error> {
    let tokens = Tokens::from_stored(store.load_tokens()?);
    for role in [Role::Admin, Role::Join] {
        let path = data_dir.token_file(role);
        let known = std::fs::read_to_string(&path)
            .ok()
            .map(|t| t.trim().to_owned())
            .is_some_and(|t| tokens.authorize(Some(&format!("Bearer {t}")), access_for_role(role)).is_ok());
        if known {
            continue;
        }
        let minted = auth::mint(role);
        store.apply(vec![Op::PutToken { hash: minted.hash.clone(), role: role.as_str().to_owned() }])?;
        tokens.insert(minted.hash, role);
        write_secret(&path, &minted.token)?;
        info!(path = %path.display(), role = role.as_str(), "minted a token");
    }
    Ok(tokens)
}

fn access_for_role(role: Role) -> auth::Access {
    match role {
        Role::Admin => auth::Access::Admin,
        Role::Join => auth::Access::Sidecar,
    }
}

fn write_secret(path: &Path, secret: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |source| Error::Io { path: tmp.clone(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(format!("{secret}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

/// Checks the bearer token before any handler runs, answering in the caller's protocol.
async fn authenticate(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    let access = auth::access_for(request.uri().path());
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match tokens.authorize(header, access) {
        Ok(_) => next.run(request).await,
        Err(err) => {
            let is_grpc = request
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            let err = ApiError::from(err);
            if is_grpc {
                tonic::Status::from(err).into_http::<axum::body::Body>().into_response()
            } else {
                err.into_response()
            }
        }
    }
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

/// A started hub: storage loaded, core running, listener serving.
pub struct Hub {
    handle: core::Handle,
    core_task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
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
        let spec_defaults = config.spec_defaults.clone();
        let (allow, check_every) = (config.allow_endpoints.clone(), config.endpoint_check_interval);
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
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let link =
            pb::agent_link_server::AgentLinkServer::new(AgentLinkService { hub: handle.clone(), stop: stop.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let grpc = tonic::service::Routes::new(admin).add_service(link).into_axum_router();
        let router = grpc
            .merge(http::router(HttpState { hub: handle.clone(), spec_defaults, backups, stop: stop.clone() }))
            .fallback(fallback)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(tokens, authenticate));

        let addr = listener.local_addr().map_err(|source| Error::Io { path: "listener".into(), source })?;
        info!(%addr, "hub listening");
        // Tokens travel on these sockets: no Nagle delay.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve_stop = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(serve_stop.cancelled_owned()).await
        });
        Ok(Hub { handle, core_task, server, periodic_backups, stop, stop_backups })
    }

    pub fn handle(&self) -> &core::Handle {
        &self.handle
    }

    /// Stops in order: backups, the core (cancelling in-flight work if configured, committing
    /// what is queued, closing the database), then the open streams, then the connections.
    pub async fn stop(self) {
        info!("shutting down");
        self.stop_backups.cancel();
        let _ = self.periodic_backups.await;
        // The core first: in dev it cancels running work and needs the sidecar streams to hear back.
        self.handle.shutdown().await;
        let _ = self.core_task.await;
        self.stop.cancel();
        match tokio::time::timeout(DRAIN_TIMEOUT, self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => warn!(error = %err, "server ended with an error"),
            Ok(Err(err)) => warn!(error = %err, "server task failed"),
            Err(_) => warn!("connections did not close in time; leaving them"),
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
