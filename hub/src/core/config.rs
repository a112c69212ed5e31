//! What the core is configured with (and the defaults the binaries show), and the errors it
//! answers with.

use std::time::Duration;

use crate::domain::*;

#[derive(Clone, Debug)]
pub struct Config {
    pub heartbeat_interval: Duration,
    /// A lease not renewed for this long expires.
    pub lease_ttl: Duration,
    /// A sidecar not heard from for this long is offline (its agents with it).
    pub heartbeat_ttl: Duration,
    /// A working agent whose task shows no output, tokens or progress for this long is stalled.
    pub stall_after: Duration,
    /// Hosts (or `host:port`) whose LLM endpoints the hub may probe itself.
    pub allow_endpoints: Vec<String>,
    /// How often the hub probes the endpoints it owns.
    pub endpoint_check_interval: Duration,
    pub spec_defaults: SpecDefaults,
    /// Cancel running tasks when the hub shuts down (`dev`, where the sidecar dies with the hub).
    pub cancel_inflight_on_shutdown: bool,
    /// How long a shutdown waits for sidecars to report cancelled work.
    pub shutdown_grace: Duration,
    /// A ready task ranks one lane higher for every step it has existed (anti-starvation).
    pub aging_step: Duration,
    /// How long an idempotency key keeps answering with its task, counted from that task's submit.
    pub idempotency_retention: Duration,
    /// Changes the storage writer may have queued before new submits are refused as overloaded.
    pub max_write_backlog: usize,
    /// What LLM work costs, to price each result.
    pub prices: crate::prices::Prices,
    /// The models LLM work that names none runs on, by tier.
    pub tier_models: crate::sched::TierModels,
    /// How long LLM work waits for its tier's model, with nothing able to take it, before it
    /// moves to another tier.
    pub tier_fallback_after: Duration,
    /// No task goes to a cloud provider (`--offline`).
    pub offline: bool,
    /// Load a model ahead of tasks that have waited longer than its load time, where a host
    /// has it cold and room for it (`--no-prewarm` turns it off).
    pub prewarm: bool,
    /// LLM work placed by its tier's model that fails its verification goes again one tier up
    /// (`--escalate`).
    pub escalate: bool,
    /// Where the core and the storage writer record their metrics (`GET /metrics`).
    pub metrics: crate::metrics::Shared,
    /// How long a finished task's output is kept (`--retain-output`).
    pub retain_output: Duration,
    /// The most bytes finished tasks' outputs may hold; the oldest go first
    /// (`--retain-output-bytes`).
    pub retain_output_bytes: u64,
    /// How long a finished task's record is kept (`--retain-tasks`).
    pub retain_tasks: Duration,
    /// Spans of tasks' traces are recorded (set by `Core::start` when traces are exported).
    pub traces: bool,
}

/// `--retain-output`: a week.
pub const DEFAULT_RETAIN_OUTPUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// `--retain-output-bytes`: 20 GiB.
pub const DEFAULT_RETAIN_OUTPUT_BYTES: u64 = 20 << 30;
/// `--retain-tasks`: 30 days.
pub const DEFAULT_RETAIN_TASKS: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for Config {
    fn default() -> Config {
        Config {
            heartbeat_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(15),
            heartbeat_ttl: Duration::from_millis(12_500),
            stall_after: Duration::from_secs(300),
            allow_endpoints: Vec::new(),
            endpoint_check_interval: Duration::from_secs(10),
            spec_defaults: SpecDefaults::default(),
            cancel_inflight_on_shutdown: false,
            shutdown_grace: Duration::from_secs(3),
            aging_step: Duration::from_millis(crate::queue::DEFAULT_AGING_STEP_MS as u64),
            idempotency_retention: Duration::from_secs(24 * 3600),
            max_write_backlog: 100_000,
            prices: crate::prices::Prices::default(),
            tier_models: crate::sched::TierModels::default(),
            tier_fallback_after: Duration::from_secs(30),
            offline: false,
            prewarm: true,
            escalate: false,
            metrics: crate::metrics::Shared::default(),
            retain_output: DEFAULT_RETAIN_OUTPUT,
            retain_output_bytes: DEFAULT_RETAIN_OUTPUT_BYTES,
            retain_tasks: DEFAULT_RETAIN_TASKS,
            traces: false,
        }
    }
}

/// Errors the core answers with; the API layers map them to status codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] crate::domain::Error),
    #[error("task {0} not found")]
    NotFound(TaskId),
    #[error("task {id} is already {state}")]
    AlreadyFinal { id: TaskId, state: &'static str },
    #[error("task {id} is {state}, not dead-lettered")]
    NotDeadLettered { id: TaskId, state: &'static str },
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    UnknownName(String),
    /// The request is well formed but the hub's configuration does not allow it.
    #[error("{0}")]
    NotAllowed(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The idempotency key belongs to a task submitted with a different body.
    #[error("idempotency key {key:?} was already used by task {existing} with a different body")]
    KeyReused { key: String, existing: TaskId },
    /// The task's output could not be stored: its caps exceed the disk's free space.
    #[error("{0}")]
    NoRoom(String),
    /// Storage failed (a full disk): nothing is taken until it works again.
    #[error("the hub cannot store changes now: {0}; it takes them again as soon as storage works")]
    StorageFault(String),
    /// Storage is too far behind to take more submits for now.
    #[error("the hub's storage is behind; retry shortly")]
    Overloaded,
}
