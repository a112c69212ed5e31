//! The messages between the core and sidecar sessions (each way), and the answers the core
//! gives submitters. Below `handle` and `commit`, which both speak them.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use tokio::sync::oneshot;

use super::config::Error;
use crate::domain::*;
use crate::fleet::{self, Endpoint};

/// What a sidecar says when it opens a session.
#[derive(Clone, Debug)]
pub struct SidecarHello {
    pub sidecar_id: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub version: String,
    pub slots: u32,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    pub running: Vec<RunningTask>,
    /// How the sidecar contains task processes, in its own words.
    pub containment: String,
    /// Drawn once per sidecar process (0: unknown): tells a reconnect from a second sidecar.
    pub instance: u64,
    /// Its `--repo-allow` list: work that names a repository goes only where it is covered.
    pub repo_allow: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct RunningTask {
    pub task_id: TaskId,
    pub lease_generation: u64,
}

#[derive(Clone, Debug)]
pub struct Welcome {
    /// When the sidecar was last heard from. The session stores into it on every message, so a
    /// plain heartbeat (no running tasks to renew) never has to reach the core.
    pub last_seen: Arc<AtomicI64>,
    pub sidecar_id: String,
    pub agent_ids: Vec<String>,
    pub heartbeat_interval: Duration,
    pub lease_ttl: Duration,
}

/// Messages from a sidecar session, already converted and validated by the gRPC layer.
#[derive(Clone, Debug)]
pub enum FromSidecar {
    Heartbeat {
        running: Vec<RunningTask>,
    },
    Started {
        task_id: TaskId,
        lease_generation: u64,
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
    },
    Resources(Box<fleet::Resources>),
    /// The sidecar's whole inventory of endpoints, ids and owners already set.
    Models(Vec<Endpoint>),
    /// How a pre-warm the hub asked for went: the model's load time, or why it failed.
    Preloaded {
        endpoint_id: String,
        model: String,
        load_ms: u64,
        error: Option<String>,
    },
}

/// An attempt the core gives a sidecar.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub task_id: TaskId,
    pub lease_generation: u64,
    pub attempt: u32,
    pub agent_id: String,
    pub spec: TaskSpec,
    /// LLM work: the endpoint and model placement chose.
    pub endpoint_id: Option<String>,
    pub model: Option<String>,
    /// What the placed model costs (from the price table), for the runner's cost budget.
    pub price: Option<TokenPrice>,
    /// The model and endpoint that judge the work's `llm_judge` steps that name no model.
    pub judge: Option<(String, String)>,
    /// Work with a cost budget placed without a model: the prices of the models the sidecar's
    /// endpoints offer (it chooses the model), so it can stop at the budget.
    pub prices: Vec<(String, TokenPrice)>,
    /// The dispatch's trace context, the parent of the sidecar's spans (traces exported only).
    pub trace: Option<TraceParent>,
}

/// What the core sends to a sidecar session. Small: every session's outbox holds its slots
/// whether or not they are used, so the assignment travels boxed.
#[derive(Clone, Debug)]
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

#[derive(Clone, Debug)]
pub struct Submitted {
    pub task: Task,
    /// The idempotency key matched an existing task, which is returned instead.
    pub existing: bool,
}

pub(super) type Reply<T> = oneshot::Sender<T>;
/// Someone waiting for a submit to become durable; `true` when their submit matched an
/// existing idempotency key.
pub(super) type SubmitWaiter = (Reply<Result<Submitted, Error>>, bool);
/// A submitter's answer, ready to go out once its submit is durable.
pub(super) type SubmitAnswer = (Reply<Result<Submitted, Error>>, Submitted);
