//! The hub's Prometheus metrics (`GET /metrics`, the classic text format).
//!
//! One [`Metrics`] per hub: a `metrics-exporter-prometheus` recorder that is not installed as
//! the process's global one (a test process runs many hubs), with explicit histogram buckets and
//! a help text for every metric. Names follow `../shared/REFERENCE.md`: the `agentcom_` prefix,
//! base units in the name, `_total` on counters, low-cardinality labels only (never a task id).
//!
//! Counters and histograms are recorded where things happen (the core, the storage writer)
//! through handles registered once ([`Metrics::counter`] and friends; an increment is an atomic
//! add). Gauges describe the state at the moment of a scrape: the HTTP handler asks the core for
//! a [`Snapshot`] and the hosts' latest reports and sets them just before rendering; a gauge not
//! set for [`GAUGE_IDLE`] (a host that went away) is dropped.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;

use crate::fleet::HostView;

/// A gauge not set for this long is left out (its host or label value is gone).
pub const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// Buckets for latencies in seconds: 100 us to 30 s.
const SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for waits in a queue, in seconds: 1 ms to an hour.
const WAIT_SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Buckets for changes per storage commit.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
/// Buckets for output tokens per second.
const TOKENS_PER_S: &[f64] = &[1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 400.0, 1000.0];

/// Every metric the hub serves: (name, kind, unit, help).
const DESCRIBED: &[(&str, Kind, Option<Unit>, &str)] = &[
    ("agentcom_build_info", Kind::Gauge, None, "The hub's version, as a label; always 1."),
    ("agentcom_tasks", Kind::Gauge, None, "Tasks not yet final, by lane and state."),
    ("agentcom_dead_letters", Kind::Gauge, None, "Tasks in the dead-letter queue."),
    (
        "agentcom_oldest_ready_task_age_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "How long the oldest ready task has been waiting for an agent.",
    ),
    ("agentcom_tasks_submitted_total", Kind::Counter, None, "Tasks submitted (durably), by lane."),
    ("agentcom_tasks_dispatched_total", Kind::Counter, None, "Attempts dispatched to an agent, by kind of work."),
    (
        "agentcom_tasks_finished_total",
        Kind::Counter,
        None,
        "Tasks that reached a final state, by state and a reason class (exit_code, signal, timeout, \
         verification_failed, budget_exceeded, cancelled, expired, lease, dependency, error, other, none).",
    ),
    (
        "agentcom_queue_wait_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "From a task becoming ready (submit, retry, requeue) to its dispatch.",
    ),
    (
        "agentcom_dispatch_latency_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "From the dispatch decision to the assignment leaving for the sidecar (the durable commit between).",
    ),
    ("agentcom_lease_expiries_total", Kind::Counter, None, "Leases that expired (their sidecar went silent)."),
    (
        "agentcom_stale_messages_refused_total",
        Kind::Counter,
        None,
        "Sidecar messages refused because the sender did not hold the task's current lease.",
    ),
    (
        "agentcom_storage_commit_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "One group commit of the storage writer: the log write and its fdatasync.",
    ),
    ("agentcom_storage_commit_changes", Kind::Histogram, None, "Changes in one group commit."),
    ("agentcom_agents", Kind::Gauge, None, "Agents (execution slots), by state."),
    ("agentcom_sidecars", Kind::Gauge, None, "Sidecars known to the hub, by state (online, offline, cordoned)."),
    ("agentcom_host_cpu_ratio", Kind::Gauge, None, "A host's CPU use, 0 to 1."),
    ("agentcom_host_memory_used_bytes", Kind::Gauge, Some(Unit::Bytes), "A host's memory in use."),
    ("agentcom_host_memory_total_bytes", Kind::Gauge, Some(Unit::Bytes), "A host's memory."),
    ("agentcom_host_disk_used_bytes", Kind::Gauge, Some(Unit::Bytes), "Space used on a host's file system."),
    ("agentcom_host_disk_total_bytes", Kind::Gauge, Some(Unit::Bytes), "Size of a host's file system."),
    ("agentcom_gpu_utilization_ratio", Kind::Gauge, None, "A GPU's busy share of the last sample period, 0 to 1."),
    ("agentcom_gpu_memory_used_bytes", Kind::Gauge, Some(Unit::Bytes), "A GPU's memory in use."),
    ("agentcom_gpu_memory_total_bytes", Kind::Gauge, Some(Unit::Bytes), "A GPU's memory."),
    ("agentcom_gpu_temperature_celsius", Kind::Gauge, None, "A GPU's temperature."),
    ("agentcom_gpu_power_watts", Kind::Gauge, None, "A GPU's power draw."),
    ("agentcom_llm_requests_total", Kind::Counter, None, "LLM attempts that finished, by provider and model."),
    ("agentcom_llm_input_tokens_total", Kind::Counter, None, "Input tokens read, by provider and model."),
    ("agentcom_llm_output_tokens_total", Kind::Counter, None, "Output tokens written, by provider and model."),
    (
        "agentcom_llm_cost_microdollars_total",
        Kind::Counter,
        None,
        "What LLM work cost, in millionths of a US dollar, by provider and model.",
    ),
    (
        "agentcom_llm_time_to_first_token_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "From the request to the first token, measured at the sidecar, by provider and model.",
    ),
    (
        "agentcom_llm_output_tokens_per_second",
        Kind::Histogram,
        None,
        "Generation speed of a reply, by provider and model.",
    ),
    (
        "agentcom_placements_total",
        Kind::Counter,
        None,
        "Placement decisions that dispatched a task, by tier and where the tier came from \
         (given, inferred, fallback, pass_rate).",
    ),
    ("agentcom_tier_fallbacks_total", Kind::Counter, None, "Tasks moved to another tier after waiting for their own."),
    ("agentcom_escalations_total", Kind::Counter, None, "Tasks escalated a tier after failing their verification."),
    ("agentcom_prewarms_total", Kind::Counter, None, "Models loaded ahead of the tasks waiting for them."),
    (
        "agentcom_verdicts_total",
        Kind::Counter,
        None,
        "Verified results, by the model that produced them, the kind of work and the verdict.",
    ),
];

/// The names of every metric the hub serves (each with a help text).
pub fn names() -> impl Iterator<Item = &'static str> {
    DESCRIBED.iter().map(|(name, ..)| *name)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

static METADATA: Metadata<'static> = Metadata::new("agentcom", metrics::Level::INFO, Some(module_path!()));

/// One hub's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    pub fn new() -> Metrics {
        let buckets: &[(&str, &[f64])] = &[
            ("agentcom_queue_wait_seconds", WAIT_SECONDS),
            ("agentcom_dispatch_latency_seconds", SECONDS),
            ("agentcom_storage_commit_seconds", SECONDS),
            ("agentcom_storage_commit_changes", BATCH),
            ("agentcom_llm_time_to_first_token_seconds", SECONDS),
            ("agentcom_llm_output_tokens_per_second", TOKENS_PER_S),
        ];
        let mut builder = PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE));
        for (name, values) in buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full((*name).to_owned()), values)
                .expect("the bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        for (name, kind, unit, help) in DESCRIBED {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, *unit, help),
                Kind::Gauge => recorder.describe_gauge(name, *unit, help),
                Kind::Histogram => recorder.describe_histogram(name, *unit, help),
            }
        }
        let handle = recorder.handle();
        let metrics = Metrics { recorder, handle };
        metrics.gauge("agentcom_build_info", &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        metrics
    }

    /// The counter `name` with `labels` (registered on first use; keep the handle on hot paths).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &METADATA)
    }

    /// Sets the gauges of the moment, then renders everything in the Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot, hosts: &[HostView]) -> String {
        for (lane, state, n) in &snapshot.tasks {
            self.gauge("agentcom_tasks", &[("lane", lane), ("state", state)]).set(*n as f64);
        }
        self.gauge("agentcom_dead_letters", &[]).set(snapshot.dead_letters as f64);
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
        self.handle.run_upkeep();
        self.handle.render()
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
        for (name, kind, _, _) in DESCRIBED {
            assert!(name.starts_with("agentcom_"), "{name}");
            assert_eq!(*kind == Kind::Counter, name.ends_with("_total"), "{name}");
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
