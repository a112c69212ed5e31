//! The hub's spans of a task's trace (see `agentcom_metrics::trace`): `submit`, `queue wait`,
//! `place` (with its decision summary), `dispatch`, and the task's root span, written once the
//! task settles. Each is written when what it describes has ended, from the times the task
//! record keeps, so a trace survives a hub restart: the root's id comes from the task id, and
//! the sidecar's spans hang under the `dispatch` span named in the assignment.
//!
//! Nothing here runs unless traces are exported (`Config::traces`). Spans leave as
//! `Action::Span`, their ids drawn from the state's seeded generator.

use agentcom_metrics::trace::{Kind, Span, at_ms};

use super::State;
use crate::domain::*;
use crate::sched::{self, Explanation};

fn attempt_span(name: &'static str, task: &Task, start: UnixMs, id: [u8; 8]) -> Span {
    let ids = task.trace();
    Span::with_id(name, ids.trace_id, Some(ids.root_span_id), at_ms(start), id)
        .attr("agentcom.task.id", task.id.to_string())
        .attr("agentcom.task.attempt", i64::from(task.attempt))
}

impl State {
    /// A new span id, never zero.
    fn span_id(&mut self) -> [u8; 8] {
        let id: u64 = rand::Rng::random(&mut self.rng);
        id.max(1).to_be_bytes()
    }

    fn end_span(&mut self, span: Span, end: UnixMs) {
        self.fx.push(super::Action::Span(Box::new(span), at_ms(end)));
    }

    /// A submit is durable: from its arrival to now.
    pub(super) fn span_submitted(&mut self, id: TaskId, now: UnixMs) {
        if !self.config.traces {
            return;
        }
        let span_id = self.span_id();
        let Some(task) = self.tasks.get(&id) else { return };
        let ids = task.trace();
        let span = Span::with_id("submit", ids.trace_id, Some(ids.root_span_id), at_ms(task.created_unix_ms), span_id)
            .kind(Kind::Server)
            .attr("agentcom.task.id", id.to_string())
            .attr("agentcom.task.kind", task.spec.work.capability())
            .attr("agentcom.task.lane", task.spec.priority.as_str());
        drop(task);
        self.end_span(span, now);
    }

    /// A dispatch was decided: the wait since the task became ready, and the placement.
    pub(super) fn span_placed(&mut self, id: TaskId, ready_since: UnixMs, explanation: &Explanation, now: UnixMs) {
        if !self.config.traces {
            return;
        }
        let (wait_id, place_id) = (self.span_id(), self.span_id());
        let task = &self.tasks[&id];
        let wait = attempt_span("queue wait", task, ready_since, wait_id)
            .attr("agentcom.task.lane", task.spec.priority.as_str());
        let mut place = attempt_span("place", task, now, place_id)
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
        self.end_span(wait, now);
        self.end_span(place, now);
    }

    /// An assignment leaves: from the dispatch decision to now. Its context goes with the
    /// assignment, as the parent of the sidecar's spans.
    pub(super) fn span_assigned(&mut self, id: TaskId, sidecar_id: &str, now: UnixMs) -> Option<TraceParent> {
        if !self.config.traces {
            return None;
        }
        let span_id = self.span_id();
        let task = &self.tasks[&id];
        let span = attempt_span("dispatch", task, task.updated_unix_ms, span_id)
            .kind(Kind::Producer)
            .attr("agentcom.sidecar.id", sidecar_id.to_owned())
            .attr("agentcom.lease.generation", task.lease_generation as i64);
        let parent = task.trace().under(span.span_id());
        self.end_span(span, now);
        Some(parent)
    }

    /// The task settled (final, no lease left): its root span, from submit to end, under the
    /// submitter's span when it came with one.
    pub(super) fn span_settled(&mut self, id: TaskId) {
        if !self.config.traces {
            return;
        }
        let task = &self.tasks[&id];
        let ids = task.trace();
        let name = match task.spec.work.capability() {
            "shell" => "task shell",
            "llm" => "task llm",
            _ => "task agent",
        };
        let start = at_ms(task.created_unix_ms);
        let mut root = Span::with_id(name, ids.trace_id, ids.parent_span_id, start, ids.root_span_id)
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
        let end = task.finished_unix_ms.unwrap_or(task.updated_unix_ms);
        self.end_span(root, end);
    }
}
