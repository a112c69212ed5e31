//! The hub's spans of a task's trace (see `agentcom_metrics::trace`): `submit`, `queue wait`,
//! `place` (with its decision summary), `dispatch`, and the task's root span, written once the
//! task settles. Each is written when what it describes has ended, from the times the task
//! record keeps, so a trace survives a hub restart: the root's id comes from the task id, and
//! the sidecar's spans hang under the `dispatch` span named in the assignment.
//!
//! Nothing here runs unless traces are exported ([`trace::enabled`]).

use agentcom_metrics::trace::{self, Kind, Span, at_ms};

use super::State;
use crate::domain::*;
use crate::sched::{self, Explanation};

fn attempt_span(name: &'static str, task: &Task, start: UnixMs) -> Span {
    let ids = task.trace();
    Span::new(name, ids.trace_id, Some(ids.root_span_id), at_ms(start))
        .attr("agentcom.task.id", task.id.to_string())
        .attr("agentcom.task.attempt", i64::from(task.attempt))
}

impl State {
    /// A submit is durable: from its arrival to now.
    pub(super) fn span_submitted(&self, id: TaskId, now: UnixMs) {
        if !trace::enabled() {
            return;
        }
        let Some(task) = self.tasks.get(&id) else { return };
        let ids = task.trace();
        Span::new("submit", ids.trace_id, Some(ids.root_span_id), at_ms(task.created_unix_ms))
            .kind(Kind::Server)
            .attr("agentcom.task.id", id.to_string())
            .attr("agentcom.task.kind", task.spec.work.capability())
            .attr("agentcom.task.lane", task.spec.priority.as_str())
            .end_at(at_ms(now));
    }

    /// A dispatch was decided: the wait since the task became ready, and the placement.
    pub(super) fn span_placed(&self, id: TaskId, ready_since: UnixMs, explanation: &Explanation, now: UnixMs) {
        if !trace::enabled() {
            return;
        }
        let task = &self.tasks[&id];
        attempt_span("queue wait", task, ready_since)
            .attr("agentcom.task.lane", task.spec.priority.as_str())
            .end_at(at_ms(now));
        let mut place = attempt_span("place", task, now)
            .attr("agentcom.placement.reason", sched::summarize(explanation))
            .attr("agentcom.placement.tier", explanation.tier.as_str())
            .attr("agentcom.placement.candidates", (explanation.candidates.len() + explanation.more_candidates) as i64);
        if let Some(model) = &explanation.model {
            place.set("agentcom.placement.model", model.clone());
        }
        if let sched::Decision::Place { sidecar_id, agent_id, endpoint_id, .. } = &explanation.decision {
            place.set("agentcom.sidecar.id", sidecar_id.clone());
            place.set("agentcom.agent.id", agent_id.clone());
            if let Some(endpoint) = endpoint_id {
                place.set("agentcom.endpoint.id", endpoint.clone());
            }
        }
        place.end_at(at_ms(now));
    }

    /// An assignment leaves: from the dispatch decision to now. Its context goes with the
    /// assignment, as the parent of the sidecar's spans.
    pub(super) fn span_assigned(&self, id: TaskId, sidecar_id: &str, now: UnixMs) -> Option<TraceParent> {
        if !trace::enabled() {
            return None;
        }
        let task = &self.tasks[&id];
        let span = attempt_span("dispatch", task, task.updated_unix_ms)
            .kind(Kind::Producer)
            .attr("agentcom.sidecar.id", sidecar_id.to_owned())
            .attr("agentcom.lease.generation", task.lease_generation as i64);
        let parent = task.trace().under(span.span_id());
        span.end_at(at_ms(now));
        Some(parent)
    }

    /// The task settled (final, no lease left): its root span, from submit to end, under the
    /// submitter's span when it came with one.
    pub(super) fn span_settled(&self, id: TaskId) {
        if !trace::enabled() {
            return;
        }
        let task = &self.tasks[&id];
        let ids = task.trace();
        let name = match task.spec.work.capability() {
            "shell" => "task shell",
            "llm" => "task llm",
            _ => "task agent",
        };
        let mut root = Span::new(name, ids.trace_id, ids.parent_span_id, at_ms(task.created_unix_ms))
            .id(ids.root_span_id)
            .kind(Kind::Consumer)
            .attr("agentcom.task.id", id.to_string())
            .attr("agentcom.task.state", task.state.as_str())
            .attr("agentcom.task.attempts", i64::from(task.attempt));
        if ids.parent_span_id.is_some() {
            root = root.remote_parent();
        }
        if !task.spec.name.is_empty() {
            root.set("agentcom.task.name", task.spec.name.clone());
        }
        if task.state != TaskState::Succeeded {
            root = root.error(format!("{}: {}", task.state.as_str(), task.state_reason));
        }
        root.end_at(at_ms(task.finished_unix_ms.unwrap_or(task.updated_unix_ms)));
    }
}
