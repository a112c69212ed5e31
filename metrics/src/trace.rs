//! Traces: the spans the hub and the sidecar record for a task, exported over OTLP/gRPC
//! (`--otlp-endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! A task's life is not one call stack: it waits in a queue, crosses the link, and may outlive a
//! hub restart. So spans are written when what they describe has ended, with the ids and times
//! the caller gives ([`Span`]): a root span whose id derives from the task id, children whose
//! parent is named by a W3C `traceparent` carried in the task and the assignment. They go
//! straight to the SDK's batch processor (a thread of its own, bounded queue, drops when full),
//! never through a tracer that would pick the ids itself.
//!
//! Off by default, and then free: [`enabled`] is one atomic load, and callers build nothing
//! unless it says yes.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, IdGenerator, RandomIdGenerator, SpanData, SpanProcessor};

/// Where spans go once [`init`] ran.
struct Export {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

static EXPORT: OnceLock<Export> = OnceLock::new();

/// The endpoint to export to: the flag's value, else `OTEL_EXPORTER_OTLP_ENDPOINT`; `None`
/// (also for an empty value) means traces are off.
pub fn endpoint(flag: Option<&str>) -> Option<String> {
    let env = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    flag.map(str::to_owned).or(env).map(|e| e.trim().to_owned()).filter(|e| !e.is_empty())
}

/// Flushes what is queued when dropped (at the end of `main`).
#[must_use = "spans still queued are lost unless the guard is dropped at exit"]
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(export) = EXPORT.get() {
            let _ = export.processor.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Starts exporting spans of `service` (`agentcom-hub`, `agentcom-sidecar`) to an OTLP/gRPC
/// collector at `endpoint` (`http://HOST:4317`). Call it inside a tokio runtime, once; the
/// batch interval follows `OTEL_BSP_SCHEDULE_DELAY` (default 5 s).
pub fn init(service: &'static str, endpoint: &str) -> Result<Guard, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|err| format!("OTLP exporter for {endpoint}: {err}"))?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(
        &Resource::builder_empty()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let scope = InstrumentationScope::builder(service).with_version(env!("CARGO_PKG_VERSION")).build();
    EXPORT.set(Export { processor, scope }).map_err(|_| "traces were already set up".to_owned())?;
    Ok(Guard(()))
}

/// Traces are exported: build spans. One atomic load.
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// A new random span id.
pub fn new_span_id() -> [u8; 8] {
    RandomIdGenerator::default().new_span_id().to_bytes()
}

/// The time a Unix millisecond timestamp names.
pub fn at_ms(unix_ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// One span, written once it has ended. See the module documentation.
#[derive(Debug)]
pub struct Span {
    name: Cow<'static, str>,
    kind: Kind,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    parent_remote: bool,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

impl Span {
    /// A span of trace `trace_id` under `parent` (none: a root), from `start`, with a random id.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        trace_id: [u8; 16],
        parent: Option<[u8; 8]>,
        start: SystemTime,
    ) -> Span {
        Span::with_id(name, trace_id, parent, start, new_span_id())
    }

    /// A span as [`Span::new`] makes it, with the id given (drawn by a caller that must not draw
    /// randomness of its own, or known before the span ends).
    pub fn with_id(
        name: impl Into<Cow<'static, str>>,
        trace_id: [u8; 16],
        parent: Option<[u8; 8]>,
        start: SystemTime,
        span_id: [u8; 8],
    ) -> Span {
        Span {
            name: name.into(),
            kind: Kind::Internal,
            trace_id,
            span_id,
            parent,
            parent_remote: false,
            start,
            end: start,
            attributes: Vec::new(),
            error: None,
        }
    }

    /// Its id, when children must know it before it ends.
    pub fn id(mut self, span_id: [u8; 8]) -> Span {
        self.span_id = span_id;
        self
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    pub fn kind(mut self, kind: Kind) -> Span {
        self.kind = kind;
        self
    }

    /// The parent lives in another process (it came in a `traceparent`).
    pub fn remote_parent(mut self) -> Span {
        self.parent_remote = true;
        self
    }

    pub fn attr(mut self, key: &'static str, value: impl Into<Value>) -> Span {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push(KeyValue::new(key, value));
    }

    /// It failed, saying why (the span's status; the text should be redacted already).
    pub fn error(mut self, message: impl Into<String>) -> Span {
        self.error = Some(message.into());
        self
    }

    /// Ends it at `end` and queues it for export (nothing when traces are off).
    pub fn end_at(mut self, end: SystemTime) {
        self.end = end.max(self.start);
        self.emit();
    }

    /// Ends it now and queues it for export.
    pub fn end(self) {
        self.end_at(SystemTime::now());
    }

    fn emit(self) {
        let Some(export) = EXPORT.get() else { return };
        export.processor.on_end(self.into_data(export.scope.clone()));
    }

    fn into_data(self, scope: InstrumentationScope) -> SpanData {
        let context = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        SpanData {
            span_context: context,
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent_remote,
            span_kind: match self.kind {
                Kind::Internal => SpanKind::Internal,
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
                Kind::Producer => SpanKind::Producer,
                Kind::Consumer => SpanKind::Consumer,
            },
            name: self.name,
            start_time: self.start,
            end_time: self.end,
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: match self.error {
                Some(message) => Status::error(message),
                None => Status::Unset,
            },
            instrumentation_scope: scope,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_carries_the_ids_and_times_it_was_given() {
        let start = at_ms(1_795_000_000_000);
        let span = Span::new("queue wait", [7; 16], Some([1; 8]), start)
            .id([9; 8])
            .kind(Kind::Consumer)
            .remote_parent()
            .attr("agentcom.task.attempt", 2_i64)
            .error("lost");
        let mut data = span.into_data(InstrumentationScope::builder("t").build());
        data.end_time = start + Duration::from_millis(5);
        assert_eq!(data.span_context.trace_id(), TraceId::from_bytes([7; 16]));
        assert_eq!(data.span_context.span_id(), SpanId::from_bytes([9; 8]));
        assert!(data.span_context.is_sampled());
        assert_eq!(data.parent_span_id, SpanId::from_bytes([1; 8]));
        assert!(data.parent_span_is_remote);
        assert_eq!(data.span_kind, SpanKind::Consumer);
        assert_eq!(data.start_time, start);
        assert_eq!(data.attributes, vec![KeyValue::new("agentcom.task.attempt", 2_i64)]);
        assert_eq!(data.status, Status::error("lost"));
    }

    #[test]
    fn a_root_has_no_parent_and_off_means_nothing_is_queued() {
        let data = Span::new("task", [7; 16], None, at_ms(0)).into_data(InstrumentationScope::builder("t").build());
        assert_eq!(data.parent_span_id, SpanId::INVALID);
        assert!(!enabled());
        Span::new("task", [7; 16], None, at_ms(0)).end();
    }

    #[test]
    fn the_endpoint_comes_from_the_flag_first() {
        assert_eq!(endpoint(Some("http://127.0.0.1:4317")).as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(endpoint(Some("  ")), None, "an empty flag turns traces off");
    }
}
