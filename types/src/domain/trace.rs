//! W3C trace context (`traceparent`): how a task's trace travels from a submitter through the
//! hub to the sidecar, in the task and in each assignment.
//!
//! A task that arrives without one is its own trace: its 16-byte ULID is the trace id and the
//! random half of it the id of its root span, so nothing more is stored (see [`TaskTrace`]).

use std::fmt;
use std::str::FromStr;

use super::TaskId;

/// `00-{trace id}-{parent span id}-{flags}`, as `traceparent` headers and wire fields carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Whether the caller records the trace (`sampled`, the flags' low bit).
    pub sampled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {0:?}: expected 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, ids not all zero")]
pub struct InvalidTraceParent(pub String);

impl FromStr for TraceParent {
    type Err = InvalidTraceParent;

    fn from_str(s: &str) -> Result<TraceParent, InvalidTraceParent> {
        let invalid = || InvalidTraceParent(s.chars().take(80).collect());
        let mut parts = s.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        // Version 00 has exactly four parts; a later version may add some, and its first four
        // read the same (W3C Trace Context, "versioning").
        let version = u8::from_str_radix(version, 16).map_err(|_| invalid())?;
        if version.to_string().len() > 3 || version == 0xff || (version == 0 && parts.next().is_some()) {
            return Err(invalid());
        }
        let lower_hex =
            |p: &str, len: usize| p.len() == len && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
            return Err(invalid());
        }
        let mut parent = TraceParent { trace_id: [0; 16], span_id: [0; 8], sampled: false };
        hex::decode_to_slice(trace, &mut parent.trace_id).map_err(|_| invalid())?;
        hex::decode_to_slice(span, &mut parent.span_id).map_err(|_| invalid())?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| invalid())?;
        parent.sampled = flags & 1 == 1;
        if parent.trace_id == [0; 16] || parent.span_id == [0; 8] {
            return Err(invalid());
        }
        Ok(parent)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = u8::from(self.sampled);
        write!(f, "00-{}-{}-{flags:02x}", hex::encode(self.trace_id), hex::encode(self.span_id))
    }
}

/// Where a task's spans hang: its trace, its root span, and the submitter's span above that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskTrace {
    pub trace_id: [u8; 16],
    /// The task's root span, the parent of the hub's spans for it.
    pub root_span_id: [u8; 8],
    /// The submitter's span, when the task came with a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
}

impl TaskTrace {
    pub fn of(id: TaskId, given: Option<&TraceParent>) -> TaskTrace {
        let bytes = id.0.to_bytes();
        let mut root_span_id = [0; 8];
        root_span_id.copy_from_slice(&bytes[8..]);
        if root_span_id == [0; 8] {
            root_span_id[7] = 1;
        }
        TaskTrace {
            trace_id: given.map_or(bytes, |p| p.trace_id),
            root_span_id,
            parent_span_id: given.map(|p| p.span_id),
        }
    }

    /// A context naming `span_id` (a span of this trace) as the parent of what follows.
    pub fn under(&self, span_id: [u8; 8]) -> TraceParent {
        TraceParent { trace_id: self.trace_id, span_id, sampled: true }
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_specs_example_and_writes_it_back() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent: TraceParent = s.parse().unwrap();
        assert!(parent.sampled);
        assert_eq!(parent.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(parent.to_string(), s);
        let unsampled: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?} accepted");
        }
        // A later version may carry more, and is read by its first four parts.
        assert!("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more".parse::<TraceParent>().is_ok());
    }

    #[test]
    fn a_task_without_a_trace_is_its_own_and_one_with_a_trace_joins_it() {
        let id: TaskId = "01M7Y9VFDHQ7Q41RY49FHBT5Z0".parse().unwrap();
        let own = TaskTrace::of(id, None);
        assert_eq!(own.trace_id, id.0.to_bytes());
        assert_eq!(own.parent_span_id, None);
        let given: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
        let joined = TaskTrace::of(id, Some(&given));
        assert_eq!(joined.trace_id, given.trace_id);
        assert_eq!(joined.parent_span_id, Some(given.span_id));
        assert_eq!(joined.root_span_id, own.root_span_id, "the root span is the task's either way");
    }

    proptest! {
        #[test]
        fn every_context_round_trips(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), sampled in any::<bool>()) {
            prop_assume!(trace != [0; 16] && span != [0; 8]);
            let parent = TraceParent { trace_id: trace, span_id: span, sampled };
            prop_assert_eq!(parent.to_string().parse::<TraceParent>(), Ok(parent));
        }

        #[test]
        fn no_string_panics_the_parser(s in ".{0,80}") {
            let _ = s.parse::<TraceParent>();
        }
    }
}
