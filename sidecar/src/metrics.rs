//! The sidecar's own Prometheus metrics, served at `GET /metrics` on `--metrics-listen` (off by
//! default; the hub's `/metrics` already has every host's resources and the fleet's work). What
//! only the sidecar sees: its link to the hub, the tasks it runs and how they ended, the LLM
//! requests it made, and its latest resource reading.
//!
//! In detail:
//!
//! `metrics`: the sidecar's own metrics (`--metrics-listen`, an axum server of its own): the link's
//! state and sessions, attempts started, running and finished by kind and result with their run
//! time, LLM requests and tokens, the latest resource reading. The link records them.

use std::net::SocketAddr;
use std::sync::Arc;

use agentcom_metrics::{Described, LONG_SECONDS, Registry, SECONDS, counter, gauge, histogram};
use agentcom_types::domain::{Exit, Outcome, Verdict};
use agentcom_types::fleet::Resources;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

static DESCRIBED: &[Described] = &[
    gauge("agentcom_sidecar_info", "The sidecar's id and version, as labels; always 1."),
    gauge("agentcom_sidecar_connected", "1 while the sidecar has a session with the hub, else 0."),
    counter("agentcom_sidecar_sessions_total", "Sessions the hub welcomed."),
    gauge("agentcom_sidecar_tasks_running", "Attempts running now."),
    counter("agentcom_sidecar_tasks_started_total", "Attempts started, by kind of work."),
    counter(
        "agentcom_sidecar_tasks_finished_total",
        "Attempts that ended, by kind of work and result (succeeded, failed, timed_out, cancelled, error).",
    ),
    histogram("agentcom_sidecar_task_duration_seconds", LONG_SECONDS, "How long attempts ran, by kind of work."),
    counter("agentcom_sidecar_llm_requests_total", "LLM and agent attempts with usage, by provider and model."),
    counter("agentcom_sidecar_llm_input_tokens_total", "Input tokens read, by provider and model."),
    counter("agentcom_sidecar_llm_output_tokens_total", "Output tokens written, by provider and model."),
    histogram(
        "agentcom_sidecar_llm_time_to_first_token_seconds",
        SECONDS,
        "From a request to its first token, by provider and model.",
    ),
    gauge("agentcom_sidecar_cpu_ratio", "This machine's CPU use, 0 to 1."),
    gauge("agentcom_sidecar_memory_used_bytes", "This machine's memory in use."),
    gauge("agentcom_sidecar_memory_total_bytes", "This machine's memory."),
    gauge("agentcom_sidecar_gpus", "GPUs this machine reports."),
];

/// One sidecar's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

/// The names of every metric the sidecar serves.
pub fn names() -> impl Iterator<Item = &'static str> {
    DESCRIBED.iter().map(|d| d.name)
}

/// An attempt's result as a label value.
fn result(outcome: &Outcome) -> &'static str {
    match (&outcome.error, outcome.timed_out, outcome.exit) {
        (Some(error), _, _) if error == "cancelled" => "cancelled",
        (Some(_), _, _) => "error",
        (None, true, _) => "timed_out",
        (None, false, Exit::Code(0)) if outcome.verification.as_ref().is_none_or(|r| r.verdict == Verdict::Passed) => {
            "succeeded"
        }
        _ => "failed",
    }
}

impl Metrics {
    pub fn new(sidecar_id: &str) -> Arc<Metrics> {
        let registry = Registry::new(DESCRIBED);
        registry
            .gauge("agentcom_sidecar_info", &[("sidecar", sidecar_id), ("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        registry.gauge("agentcom_sidecar_connected", &[]).set(0.0);
        Arc::new(Metrics { registry })
    }

    pub fn connected(&self, connected: bool) {
        self.registry.gauge("agentcom_sidecar_connected", &[]).set(if connected { 1.0 } else { 0.0 });
        if connected {
            self.registry.counter("agentcom_sidecar_sessions_total", &[]).increment(1);
        }
    }

    pub fn started(&self, kind: &'static str) {
        self.registry.counter("agentcom_sidecar_tasks_started_total", &[("kind", kind)]).increment(1);
        self.registry.gauge("agentcom_sidecar_tasks_running", &[]).increment(1.0);
    }

    pub fn finished(&self, kind: &'static str, outcome: &Outcome) {
        self.registry.gauge("agentcom_sidecar_tasks_running", &[]).decrement(1.0);
        let labels = [("kind", kind), ("result", result(outcome))];
        self.registry.counter("agentcom_sidecar_tasks_finished_total", &labels).increment(1);
        let seconds = outcome.duration_ms as f64 / 1000.0;
        self.registry.histogram("agentcom_sidecar_task_duration_seconds", &[("kind", kind)]).record(seconds);
        if let Some(usage) = &outcome.usage {
            let at = [("provider", usage.provider.as_str()), ("model", usage.model.as_str())];
            self.registry.counter("agentcom_sidecar_llm_requests_total", &at).increment(1);
            let input = usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens;
            self.registry.counter("agentcom_sidecar_llm_input_tokens_total", &at).increment(input);
            self.registry.counter("agentcom_sidecar_llm_output_tokens_total", &at).increment(usage.output_tokens);
            if let Some(ms) = usage.ttft_ms {
                self.registry
                    .histogram("agentcom_sidecar_llm_time_to_first_token_seconds", &at)
                    .record(ms as f64 / 1000.0);
            }
        }
    }

    /// Everything, the latest resource reading set first.
    pub fn render(&self, resources: Option<&Resources>) -> String {
        if let Some(r) = resources {
            self.registry.gauge("agentcom_sidecar_cpu_ratio", &[]).set(r.cpu_percent / 100.0);
            self.registry.gauge("agentcom_sidecar_memory_used_bytes", &[]).set(r.memory_used_bytes as f64);
            self.registry.gauge("agentcom_sidecar_memory_total_bytes", &[]).set(r.memory_total_bytes as f64);
            self.registry.gauge("agentcom_sidecar_gpus", &[]).set(r.gpus.len() as f64);
        }
        self.registry.render()
    }
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    resources: watch::Receiver<Option<Resources>>,
    stop: CancellationToken,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, resources) = (metrics.clone(), resources.clone());
            async move {
                let text = metrics.render(resources.borrow().as_ref());
                ([(axum::http::header::CONTENT_TYPE, agentcom_metrics::CONTENT_TYPE)], text)
            }
        }),
    );
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving metrics at /metrics");
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
}

/// Binds `addr` for [`serve`], saying what went wrong.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|err| format!("--metrics-listen {addr}: {err}"))
}
