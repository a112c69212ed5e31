//! What AgentCom's binaries (`agentcom-hub`, `agentcom-sidecar`) need to start, and nothing
//! else: logging with redaction ([`logging`]), keeping the process's secrets out of its
//! children's reach ([`secure`]), a child process tied to its parent ([`child`]), the one TLS
//! provider ([`install_crypto_provider`]), the shutdown signals, trace export, and the common
//! `main` ([`binary_main`]).
//!
//! **Architecture Invariant:** near the bottom of our crates: it depends on none of them but
//! `agentcom-metrics` (trace export) and `agentcom-types` (where URLs hold passwords), so every
//! binary and library can start the same way without depending on another's internals.

pub mod child;
pub mod logging;
pub mod secure;

use std::future::Future;

/// Makes *ring* the process's rustls provider (once; later calls do nothing). Every crate that
/// builds a TLS client or server (the link, the LLM clients, reqwest) calls it first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `main` of a binary: the environment isolation before any thread (`allow` is the
/// allowlist of variables its children may see, see [`secure::isolate`]), logging to stderr in
/// `log_format` (`RUST_LOG`, default `info`; every line redacted, see [`logging`]), then `run`
/// on a multi-threaded runtime. An error is printed, redacted, and its exit code
/// (`exit_code`) returned.
pub fn binary_main<F, Fut>(
    allow: &[String],
    log_format: logging::LogFormat,
    exit_code: fn(&anyhow::Error) -> u8,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // Before any thread: this may re-execute the process with a clean environment block.
    let isolation = secure::isolate(allow);
    logging::init(log_format);
    if let secure::Isolation::Failed(why) = &isolation {
        tracing::warn!(why, "this process's environment stays readable through /proc by root");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    install_crypto_provider();
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", logging::redactor().scrub(&format!("{err:#}")));
            std::process::ExitCode::from(exit_code(&err))
        }
    }
}

/// Starts exporting this process's spans over OTLP/gRPC when `--otlp-endpoint` (`flag`) or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector; keep the guard until the process ends (it
/// flushes what is queued). Off otherwise, and then free.
pub fn start_traces(
    service: &'static str,
    flag: Option<&str>,
) -> anyhow::Result<Option<agentcom_metrics::trace::Guard>> {
    let Some(endpoint) = agentcom_metrics::trace::endpoint(flag) else { return Ok(None) };
    let guard = agentcom_metrics::trace::init(service, &endpoint).map_err(anyhow::Error::msg)?;
    tracing::info!(endpoint = logging::redactor().scrub(&endpoint), "exporting traces over OTLP/gRPC");
    Ok(Some(guard))
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM: the binaries' shutdown trigger.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
