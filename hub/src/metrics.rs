//! The hub's Prometheus metrics (`GET /metrics`, the classic text format).
//!
//! One [`Metrics`] per hub, over an [`agentcom_metrics::Registry`] (a recorder of its own, every
//! metric described, explicit buckets). Labels are low-cardinality only (never a task id).
//!
//! Counters and histograms are recorded where things happen (the core, the storage writer)
//! through handles registered once ([`Metrics::counter`] and friends; an increment is an atomic
//! add). Gauges describe the state at the moment of a scrape: the HTTP handler asks the core for
//! a [`Snapshot`] and the hosts' latest reports and sets them just before rendering; a gauge not
//! set for [`GAUGE_IDLE`] (a host that went away) is dropped.

use std::sync::Arc;

use agentcom_metrics::{
    Counter, Described, Gauge, Histogram, LONG_SECONDS, Registry, SECONDS, TOKENS_PER_S, counter, gauge, histogram,
};

use crate::fleet::HostView;

pub use agentcom_metrics::{CONTENT_TYPE, GAUGE_IDLE};

/// Buckets for changes per storage commit.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// Every metric the hub serves.
static DESCRIBED: &[Described] = &[
    gauge("agentcom_build_info", "The hub's version, as a label; always 1."),
    gauge("agentcom_tasks", "Tasks not yet final, by lane and state."),
    gauge("agentcom_dead_letters", "Tasks in the dead-letter queue."),
    gauge(
        "agentcom_storage_ok",
        "1 while the hub's storage takes changes; 0 while it refuses them (a full disk: see /readyz).",
    ),
    gauge("agentcom_tasks_retained", "Finished tasks whose record the hub keeps (--retain-tasks)."),
    gauge(
        "agentcom_output_retained_bytes",
        "Bytes of finished tasks' output the hub keeps (--retain-output, --retain-output-bytes).",
    ),
    gauge("agentcom_oldest_ready_task_age_seconds", "How long the oldest ready task has been waiting for an agent."),
    counter("agentcom_tasks_submitted_total", "Tasks submitted (durably), by lane."),
    counter("agentcom_tasks_dispatched_total", "Attempts dispatched to an agent, by kind of work."),
    counter(
        "agentcom_tasks_finished_total",
        "Tasks that reached a final state, by state and a reason class (exit_code, signal, timeout, \
         verification_failed, budget_exceeded, cancelled, expired, lease, dependency, error, other, none).",
    ),
    counter("agentcom_workflow_runs_started_total", "Workflow runs started, by trigger (api, hook, schedule)."),
    counter(
        "agentcom_workflow_runs_finished_total",
        "Workflow runs that ended, by state (succeeded, failed, cancelled).",
    ),
    counter(
        "agentcom_workflow_steps_total",
        "Workflow steps (and items of for_each steps) that ended, by state (succeeded, failed, skipped, cancelled).",
    ),
    histogram("agentcom_workflow_run_seconds", LONG_SECONDS, "From a workflow run's start to its end."),
    histogram(
        "agentcom_queue_wait_seconds",
        LONG_SECONDS,
        "From a task becoming ready (submit, retry, requeue) to its dispatch.",
    ),
    histogram(
        "agentcom_dispatch_latency_seconds",
        SECONDS,
        "From the dispatch decision to the assignment leaving for the sidecar (the durable commit between).",
    ),
    counter("agentcom_lease_expiries_total", "Leases that expired (their sidecar went silent)."),
    counter(
        "agentcom_stale_messages_refused_total",
        "Sidecar messages refused because the sender did not hold the task's current lease.",
    ),
    histogram(
        "agentcom_storage_commit_seconds",
        SECONDS,
        "One group commit of the storage writer: the log write and its fdatasync.",
    ),
    histogram("agentcom_storage_commit_changes", BATCH, "Changes in one group commit."),
    gauge("agentcom_agents", "Agents (execution slots), by state."),
    gauge("agentcom_sidecars", "Sidecars known to the hub, by state (online, offline, cordoned)."),
    gauge("agentcom_host_cpu_ratio", "A host's CPU use, 0 to 1."),
    gauge("agentcom_host_memory_used_bytes", "A host's memory in use."),
    gauge("agentcom_host_memory_total_bytes", "A host's memory."),
    gauge("agentcom_host_disk_used_bytes", "Space used on a host's file system."),
    gauge("agentcom_host_disk_total_bytes", "Size of a host's file system."),
    gauge("agentcom_gpu_utilization_ratio", "A GPU's busy share of the last sample period, 0 to 1."),
    gauge("agentcom_gpu_memory_used_bytes", "A GPU's memory in use."),
    gauge("agentcom_gpu_memory_total_bytes", "A GPU's memory."),
    gauge("agentcom_gpu_temperature_celsius", "A GPU's temperature."),
    gauge("agentcom_gpu_power_watts", "A GPU's power draw."),
    counter("agentcom_llm_requests_total", "LLM attempts that finished, by provider and model."),
    counter("agentcom_llm_input_tokens_total", "Input tokens read, by provider and model."),
    counter("agentcom_llm_output_tokens_total", "Output tokens written, by provider and model."),
    counter(
        "agentcom_llm_cost_microdollars_total",
        "What LLM work cost, in millionths of a US dollar, by provider and model.",
    ),
    histogram(
        "agentcom_llm_time_to_first_token_seconds",
        SECONDS,
        "From the request to the first token, measured at the sidecar, by provider and model.",
    ),
    histogram(
        "agentcom_llm_output_tokens_per_second",
        TOKENS_PER_S,
        "Generation speed of a reply, by provider and model.",
    ),
    counter(
        "agentcom_placements_total",
        "Placement decisions that dispatched a task, by tier and where the tier came from \
         (given, inferred, fallback, pass_rate).",
    ),
    counter("agentcom_tier_fallbacks_total", "Tasks moved to another tier after waiting for their own."),
    counter("agentcom_escalations_total", "Tasks escalated a tier after failing their verification."),
    counter("agentcom_prewarms_total", "Models loaded ahead of the tasks waiting for them."),
    counter(
        "agentcom_verdicts_total",
        "Verified results, by the model that produced them, the kind of work and the verdict.",
    ),
];

/// The names of every metric the hub serves (each with a help text).
pub fn names() -> impl Iterator<Item = &'static str> {
    DESCRIBED.iter().map(|d| d.name)
}

/// One hub's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics { registry: Registry::new(DESCRIBED) };
        metrics.gauge("agentcom_build_info", &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        metrics
    }

    /// The counter `name` with `labels` (registered on first use; keep the handle on hot paths).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.registry.counter(name, labels)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.registry.gauge(name, labels)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.registry.histogram(name, labels)
    }

    /// Sets the gauges of the moment, then renders everything in the Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot, hosts: &[HostView]) -> String {
        for (lane, state, n) in &snapshot.tasks {
            self.gauge("agentcom_tasks", &[("lane", lane), ("state", state)]).set(*n as f64);
        }
        self.gauge("agentcom_dead_letters", &[]).set(snapshot.dead_letters as f64);
        self.gauge("agentcom_storage_ok", &[]).set(if snapshot.storage_ok { 1.0 } else { 0.0 });
        self.gauge("agentcom_tasks_retained", &[]).set(snapshot.tasks_retained as f64);
        self.gauge("agentcom_output_retained_bytes", &[]).set(snapshot.output_retained_bytes as f64);
        let oldest = snapshot.oldest_ready_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
        self.gauge("agentcom_oldest_ready_task_age_seconds", &[]).set(oldest);
        for (state, n) in &snapshot.agents {
            self.gauge("agentcom_agents", &[("state", state)]).set(*n as f64);
        }
        let absolute = [
            ("agentcom_stale_messages_refused_total", snapshot.stale_messages),
            ("agentcom_tier_fallbacks_total", snapshot.tier_fallbacks),
            ("agentcom_escalations_total", snapshot.escalations),
            ("agentcom_prewarms_total", snapshot.prewarms),
        ];
        for (name, value) in absolute {
            self.counter(name, &[]).absolute(value);
        }
        let (mut online, mut offline, mut cordoned) = (0, 0, 0);
        for host in hosts {
            match (host.online, host.cordon.is_some()) {
                (_, true) => cordoned += 1,
                (true, false) => online += 1,
                (false, false) => offline += 1,
            }
            if host.online {
                self.host(host);
            }
        }
        for (state, n) in [("online", online), ("offline", offline), ("cordoned", cordoned)] {
            self.gauge("agentcom_sidecars", &[("state", state)]).set(f64::from(n));
        }
        self.registry.render()
    }

    /// A host's latest resource report as gauges.
    fn host(&self, host: &HostView) {
        let Some(r) = &host.resources else { return };
        let at = [("host", host.hostname.as_str()), ("sidecar", host.id.as_str())];
        self.gauge("agentcom_host_cpu_ratio", &at).set(r.cpu_percent / 100.0);
        self.gauge("agentcom_host_memory_used_bytes", &at).set(r.memory_used_bytes as f64);
        self.gauge("agentcom_host_memory_total_bytes", &at).set(r.memory_total_bytes as f64);
        for disk in &r.disks {
            let on = [at[0], at[1], ("mount", disk.mount.as_str())];
            self.gauge("agentcom_host_disk_used_bytes", &on)
                .set(disk.total_bytes.saturating_sub(disk.available_bytes) as f64);
            self.gauge("agentcom_host_disk_total_bytes", &on).set(disk.total_bytes as f64);
        }
        for gpu in &r.gpus {
            let index = gpu.index.to_string();
            let on = [at[0], at[1], ("gpu", index.as_str())];
            let set = |name: &'static str, value: Option<f64>| {
                if let Some(value) = value {
                    self.gauge(name, &on).set(value);
                }
            };
            set("agentcom_gpu_utilization_ratio", gpu.utilization_percent.map(|p| f64::from(p) / 100.0));
            set("agentcom_gpu_memory_used_bytes", gpu.memory_used_bytes.map(|b| b as f64));
            set("agentcom_gpu_memory_total_bytes", gpu.memory_total_bytes.map(|b| b as f64));
            set("agentcom_gpu_temperature_celsius", gpu.temperature_celsius.map(f64::from));
            set("agentcom_gpu_power_watts", gpu.power_milliwatts.map(|mw| f64::from(mw) / 1000.0));
        }
    }
}

/// What the core says of itself at a scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Tasks not yet final: (lane, state, count).
    pub tasks: Vec<(&'static str, &'static str, usize)>,
    pub dead_letters: usize,
    /// How long the oldest ready task has waited, in milliseconds.
    pub oldest_ready_ms: Option<i64>,
    pub agents: Vec<(&'static str, usize)>,
    pub stale_messages: u64,
    pub tier_fallbacks: u64,
    pub escalations: u64,
    pub prewarms: u64,
    /// Storage takes changes (no fault).
    pub storage_ok: bool,
    /// Finished tasks whose record is kept, and the bytes of the outputs kept.
    pub tasks_retained: usize,
    pub output_retained_bytes: u64,
}

/// A final state's reason as a label value: its class, never its free text.
pub fn reason_class(reason: &str) -> &'static str {
    let reason = reason.trim_start();
    let classes: &[(&str, &str)] = &[
        ("exit code", "exit_code"),
        ("killed by signal", "signal"),
        ("signal", "signal"),
        ("timed out", "timeout"),
        ("timeout", "timeout"),
        ("verification_failed", "verification_failed"),
        ("budget_exceeded", "budget_exceeded"),
        ("cancel", "cancelled"),
        ("expired", "expired"),
        ("lease", "lease"),
        ("dependency", "dependency"),
    ];
    if reason.is_empty() {
        return "none";
    }
    classes.iter().find(|(prefix, _)| reason.starts_with(prefix)).map_or_else(
        || if reason.contains("error") || reason.contains("failed") { "error" } else { "other" },
        |(_, class)| class,
    )
}

/// The metrics a hub's parts record into, shared.
pub type Shared = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_a_type_and_counters_end_in_total() {
        let metrics = Metrics::new();
        metrics.counter("agentcom_tasks_submitted_total", &[("lane", "normal")]).increment(2);
        metrics.histogram("agentcom_queue_wait_seconds", &[]).record(0.02);
        let text = metrics.render(&Snapshot::default(), &[]);
        assert!(text.contains("# HELP agentcom_tasks_submitted_total Tasks submitted"), "{text}");
        assert!(text.contains("# TYPE agentcom_tasks_submitted_total counter"), "{text}");
        assert!(text.contains("agentcom_tasks_submitted_total{lane=\"normal\"} 2"), "{text}");
        assert!(
            text.contains("agentcom_queue_wait_seconds_bucket{le=\"0.05\"} 1"),
            "a histogram, not a summary: {text}"
        );
        assert!(text.contains("agentcom_build_info{version="), "{text}");
        for d in DESCRIBED {
            assert!(d.name.starts_with("agentcom_"), "{}", d.name);
            assert_eq!(d.kind == agentcom_metrics::Kind::Counter, d.name.ends_with("_total"), "{}", d.name);
        }
    }

    #[test]
    fn reasons_become_a_few_classes() {
        for (reason, class) in [
            ("", "none"),
            ("exit code 3", "exit_code"),
            ("timed out after 5000 ms", "timeout"),
            ("verification_failed: test_passes cargo test", "verification_failed"),
            ("budget_exceeded: cost $0.02", "budget_exceeded"),
            ("cancelled by the user", "cancelled"),
            ("expired: not started by its deadline", "expired"),
            ("dependency_failed: task 01M8 failed", "dependency"),
            ("the agent's spawn failed", "error"),
            ("whatever else", "other"),
        ] {
            assert_eq!(reason_class(reason), class, "{reason}");
        }
    }
}
