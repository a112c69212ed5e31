//! A Prometheus registry for one part of AgentCom (the hub, a sidecar): a
//! `metrics-exporter-prometheus` recorder that is not installed as the process's global one (a
//! test process runs many hubs and sidecars), every metric described with its help text,
//! explicit histogram buckets (histograms, never summaries), and gauges dropped once they have
//! not been set for a while (what they described went away). Names follow
//! `../shared/REFERENCE.md`: the `agentcom_` prefix, base units in the name, `_total` on
//! counters, low-cardinality labels only.

pub mod trace;

use std::time::Duration;

pub use metrics::{Counter, Gauge, Histogram};
use metrics::{Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;

/// A gauge not set for this long is left out.
pub const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// Buckets for latencies in seconds: 100 us to 30 s.
pub const SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for waits and run times in seconds: 1 ms to an hour.
pub const LONG_SECONDS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Buckets for output tokens per second.
pub const TOKENS_PER_S: &[f64] = &[1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 400.0, 1000.0];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// With these buckets.
    Histogram(&'static [f64]),
}

/// One metric: its name, kind, unit (for the exporter) and help text.
#[derive(Clone, Copy, Debug)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

pub const fn counter(name: &'static str, help: &'static str) -> Described {
    Described { name, kind: Kind::Counter, unit: None, help }
}

pub const fn gauge(name: &'static str, help: &'static str) -> Described {
    Described { name, kind: Kind::Gauge, unit: None, help }
}

pub const fn histogram(name: &'static str, buckets: &'static [f64], help: &'static str) -> Described {
    Described { name, kind: Kind::Histogram(buckets), unit: None, help }
}

static METADATA: Metadata<'static> = Metadata::new("agentcom", metrics::Level::INFO, Some(module_path!()));

/// The registry.
pub struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    described: &'static [Described],
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("metrics", &self.described.len()).finish()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
    Key::from_parts(name, labels)
}

impl Registry {
    /// A registry of `described` metrics (what it serves is a part of those).
    pub fn new(described: &'static [Described]) -> Registry {
        let mut builder = PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE));
        for d in described {
            if let Kind::Histogram(buckets) = d.kind {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(d.name.to_owned()), buckets)
                    .expect("bucket lists are not empty");
            }
        }
        let recorder = builder.build_recorder();
        for d in described {
            let (name, help) = (KeyName::from_const_str(d.name), SharedString::const_str(d.help));
            match d.kind {
                Kind::Counter => recorder.describe_counter(name, d.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, d.unit, help),
                Kind::Histogram(_) => recorder.describe_histogram(name, d.unit, help),
            }
        }
        let handle = recorder.handle();
        Registry { recorder, handle, described }
    }

    /// The names of every metric described.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.described.iter().map(|d| d.name)
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

    /// Everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The content type of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    static DESCRIBED: &[Described] = &[
        counter("agentcom_things_total", "Things."),
        histogram("agentcom_wait_seconds", SECONDS, "Waits."),
        gauge("agentcom_level", "A level."),
    ];

    #[test]
    fn metrics_render_with_help_type_and_buckets() {
        let registry = Registry::new(DESCRIBED);
        registry.counter("agentcom_things_total", &[("kind", "a")]).increment(2);
        registry.histogram("agentcom_wait_seconds", &[]).record(0.02);
        registry.gauge("agentcom_level", &[]).set(3.0);
        let text = registry.render();
        assert!(text.contains("# HELP agentcom_things_total Things."), "{text}");
        assert!(text.contains("# TYPE agentcom_things_total counter"), "{text}");
        assert!(text.contains("agentcom_things_total{kind=\"a\"} 2"), "{text}");
        assert!(text.contains("agentcom_wait_seconds_bucket{le=\"0.025\"} 1"), "a histogram, not a summary: {text}");
        assert!(text.contains("agentcom_level 3"), "{text}");
        assert_eq!(registry.names().count(), 3);
    }
}
