//! The link protocol between the hub and a sidecar, in domain types: what a sidecar says
//! ([`Hello`], then [`FromSidecar`]) and what the hub says ([`Welcome`], then [`ToSidecar`]),
//! with the [`Assignment`] of one attempt. Both ends speak these; [`crate::wire::link`] is their
//! one conversion to and from `agentcom.v1`.

use std::time::Duration;

use crate::domain::{AgentStep, Outcome, ServiceStatus, Stream, TaskId, TaskSpec, TokenPrice, TraceParent, UnixMs};
use crate::fleet::{Endpoint, Resources};

/// What a sidecar says when it opens a session.
#[derive(Clone, Debug, PartialEq)]
pub struct Hello {
    pub sidecar_id: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub version: String,
    pub slots: u32,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    /// The attempts it still holds leases for: running, or finished with results not yet stored.
    pub running: Vec<RunningTask>,
    /// How the sidecar contains task processes, in its own words.
    pub containment: String,
    /// Drawn once per sidecar process (0: unknown): tells a reconnect from a second sidecar.
    pub instance: u64,
    /// Its `--repo-allow` list: work that names a repository goes only where it is covered.
    pub repo_allow: Vec<String>,
}

/// An attempt a sidecar holds a lease for.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningTask {
    pub task_id: TaskId,
    pub lease_generation: u64,
    /// The agent it runs as (empty for a result waiting to be stored).
    pub agent_id: String,
}

/// The hub's answer to a hello: the session is open.
#[derive(Clone, Debug, PartialEq)]
pub struct Welcome {
    pub sidecar_id: String,
    /// One per slot.
    pub agent_ids: Vec<String>,
    pub heartbeat_interval: Duration,
    pub lease_ttl: Duration,
    pub hub_version: String,
}

/// One attempt of a task, as the hub assigns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub task_id: TaskId,
    pub lease_generation: u64,
    pub attempt: u32,
    pub agent_id: String,
    pub spec: TaskSpec,
    /// LLM work: the endpoint placement chose, if it chose one, and the model when the spec
    /// names none.
    pub endpoint_id: Option<String>,
    pub model: Option<String>,
    /// What the placed model costs (from the price table), for `limits.max_cost_micros` while
    /// the work streams.
    pub price: Option<TokenPrice>,
    /// The model and endpoint that judge the work's `llm_judge` steps that name no model.
    pub judge: Option<(String, String)>,
    /// Work with a cost budget placed without a model: the prices of the models the sidecar's
    /// endpoints offer (it chooses the model), so it can stop at the budget. See
    /// [`Assignment::price_of`].
    pub prices: Vec<(String, TokenPrice)>,
    /// The trace context of the work's parent span: the hub's dispatch span on the wire, the
    /// sidecar's `execute` span inside it (traces exported only).
    pub trace: Option<TraceParent>,
}

impl Assignment {
    /// What `model` costs, for the cost budget: the placed model's price, else the price the hub
    /// sent for the model the sidecar picked; `None` when unknown (the hub still judges the
    /// final usage).
    pub fn price_of(&self, model: &str) -> Option<TokenPrice> {
        match self.model.as_deref() {
            Some(placed) if placed == model => self.price,
            _ => self.prices.iter().find(|(m, _)| m == model).map(|(_, price)| *price),
        }
    }
}

/// What the hub sends a sidecar after the welcome. Small: every session's outbox holds its slots
/// whether or not they are used, so the assignment travels boxed.
#[derive(Clone, Debug, PartialEq)]
pub enum ToSidecar {
    Assign(Box<Assignment>),
    Cancel {
        task_id: TaskId,
        lease_generation: u64,
        reason: String,
    },
    /// The sidecar is cordoned: it gets no new work (sent so it can say so in its log).
    Drain {
        deadline_unix_ms: Option<UnixMs>,
    },
    /// A result the sidecar sent is durable: it may forget it.
    Stored {
        task_id: TaskId,
        lease_generation: u64,
    },
    /// Load a model on one of its endpoints ahead of the tasks that wait for it.
    Preload {
        endpoint_id: String,
        model: String,
        keep_alive: Option<String>,
    },
}

/// What a sidecar sends after its hello.
#[derive(Clone, Debug, PartialEq)]
pub enum FromSidecar {
    Heartbeat {
        sent_unix_ms: UnixMs,
        running: Vec<RunningTask>,
    },
    Started {
        task_id: TaskId,
        lease_generation: u64,
        pid: u32,
    },
    Output {
        task_id: TaskId,
        lease_generation: u64,
        stream: Stream,
        offset: u64,
        data: Vec<u8>,
    },
    Finished {
        task_id: TaskId,
        lease_generation: u64,
        outcome: Box<Outcome>,
    },
    /// Progress renews the lease and counts as activity; `blocked` moves the agent.
    Progress {
        task_id: TaskId,
        lease_generation: u64,
        blocked: bool,
        /// The work is done and its verification steps run now.
        verifying: bool,
        message: String,
        /// Agent work took this step.
        step: Option<Box<AgentStep>>,
        /// Service work: where the service stands.
        service: Option<Box<ServiceStatus>>,
    },
    Resources(Box<Resources>),
    /// The sidecar's whole inventory of endpoints (the hub sets their ids and owner).
    Models(Vec<Endpoint>),
    /// How a pre-warm the hub asked for went: the model's load time, or why it failed.
    Preloaded {
        endpoint_id: String,
        model: String,
        load_ms: u64,
        error: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SpecDefaults;

    #[test]
    fn a_model_is_priced_as_placed_else_as_the_hub_listed_it() {
        let price = |input: f64| TokenPrice { input, output: input * 5.0 };
        let mut assignment = Assignment {
            task_id: TaskId::new(1),
            lease_generation: 1,
            attempt: 1,
            agent_id: String::new(),
            spec: TaskSpec::shell(vec!["true".into()], &SpecDefaults::default()),
            endpoint_id: None,
            model: Some("placed".into()),
            price: Some(price(3.0)),
            judge: None,
            prices: vec![("picked".into(), price(1.0))],
            trace: None,
        };
        assert_eq!(assignment.price_of("placed"), Some(price(3.0)));
        assert_eq!(assignment.price_of("picked"), Some(price(1.0)));
        assert_eq!(assignment.price_of("unknown"), None);
        assignment.model = None;
        assert_eq!(assignment.price_of("placed"), None, "no placed model: only the listed prices");
    }
}
