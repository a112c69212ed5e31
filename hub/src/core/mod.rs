//! The hub core: one task that owns the queue, the fleet and every task record.
//!
//! Components talk to it through a cheap, cloneable [`Handle`]; it reads one closed [`Event`]
//! enum in its loop and never blocks. Durable changes go to the storage writer, and whatever
//! must wait for durability (answering a submit, sending an assignment, announcing a result)
//! rides along as an [`AfterCommit`] ticket and happens when the commit comes back.
//!
//! **Architecture Invariant:** the core never touches a prost type or a socket. It speaks to
//! sidecar sessions through [`ToSidecar`] messages in their outboxes; the gRPC layer converts.

mod fleet_ops;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::agent::{self, AgentEvent, AgentState, Transition};
use crate::domain::*;
use crate::feed::Feed;
use crate::fleet::{self, Cordon, Endpoint, EndpointKind};
use crate::queue::{self, Fence, Lease, Queue};
use crate::store::{self, Op, Store, Writer};

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
}

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
    /// Storage is too far behind to take more submits for now.
    #[error("the hub's storage is behind; retry shortly")]
    Overloaded,
}

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
        outcome: Outcome,
    },
    /// Progress renews the lease and counts as activity; `blocked` moves the agent.
    Progress {
        task_id: TaskId,
        lease_generation: u64,
        blocked: bool,
        message: String,
    },
    Resources(Box<fleet::Resources>),
    /// The sidecar's whole inventory of endpoints, ids and owners already set.
    Models(Vec<Endpoint>),
}

/// What the core sends to a sidecar session.
#[derive(Clone, Debug)]
pub enum ToSidecar {
    Assign {
        task_id: TaskId,
        lease_generation: u64,
        attempt: u32,
        agent_id: String,
        spec: Box<TaskSpec>,
    },
    Cancel {
        task_id: TaskId,
        lease_generation: u64,
        reason: String,
    },
    /// The sidecar is cordoned: it gets no new work (sent so it can say so in its log).
    Drain {
        deadline_unix_ms: Option<UnixMs>,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentView {
    pub id: String,
    pub sidecar_id: String,
    pub hostname: String,
    pub state: AgentState,
    pub task_id: Option<TaskId>,
    pub state_since_unix_ms: UnixMs,
    pub last_seen_unix_ms: UnixMs,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    pub version: String,
    /// Working, with no output, tokens or progress for the hub's stall time.
    pub stalled: bool,
    pub last_activity_unix_ms: UnixMs,
    pub cordoned: bool,
}

/// One agent with its recent transitions, oldest first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub agent: AgentView,
    pub history: Vec<Transition>,
}

/// A machine as the hub sees it: one per sidecar.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostView {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub version: String,
    pub online: bool,
    pub last_seen_unix_ms: UnixMs,
    pub cordon: Option<Cordon>,
    pub agents: usize,
    /// How the sidecar contains task processes (empty when it never said).
    pub containment: String,
    pub resources: Option<fleet::Resources>,
    /// Oldest first; only for a single host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<fleet::Sample>>,
}

/// Counts that describe the queue now.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QueueStats {
    pub tasks: usize,
    pub ready: usize,
    pub delayed: usize,
    pub waiting_on_dependencies: usize,
    pub leased: usize,
    pub dead_lettered: usize,
    /// Messages refused because the sender did not hold the task's current lease (fencing).
    pub stale_messages_refused: u64,
}

#[derive(Clone, Debug)]
pub struct Submitted {
    pub task: Task,
    /// The idempotency key matched an existing task, which is returned instead.
    pub existing: bool,
}

type Reply<T> = oneshot::Sender<T>;
/// Someone waiting for a submit to become durable; `true` when their submit matched an
/// existing idempotency key.
type SubmitWaiter = (Reply<Result<Submitted, Error>>, bool);
/// A submitter's answer, ready to go out once its submit is durable.
type SubmitAnswer = (Reply<Result<Submitted, Error>>, Submitted);

pub enum Event {
    Submit {
        spec: Box<TaskSpec>,
        reply: Reply<Result<Submitted, Error>>,
    },
    Get {
        id: TaskId,
        reply: Reply<Option<Task>>,
    },
    List {
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
        reply: Reply<Vec<Task>>,
    },
    Cancel {
        id: TaskId,
        reason: String,
        reply: Reply<Result<Task, Error>>,
    },
    Watch {
        id: TaskId,
        reply: Reply<Result<WatchReply, Error>>,
    },
    Agents {
        reply: Reply<Vec<AgentView>>,
    },
    Stats {
        reply: Reply<QueueStats>,
    },
    RetryDeadLetter {
        id: TaskId,
        reply: Reply<Result<Task, Error>>,
    },
    PurgeDeadLetters {
        finished_before: UnixMs,
        reply: Reply<Result<usize, Error>>,
    },
    Hello {
        hello: SidecarHello,
        outbox: mpsc::Sender<ToSidecar>,
        reply: Reply<Result<(Welcome, u64), Error>>,
    },
    FromSidecar {
        sidecar_id: String,
        session: u64,
        message: FromSidecar,
    },
    SessionClosed {
        sidecar_id: String,
        session: u64,
    },
    GetAgent {
        id: String,
        reply: Reply<Option<AgentDetail>>,
    },
    Drain {
        sidecar_id: String,
        deadline: Option<UnixMs>,
        reply: Reply<Result<HostView, Error>>,
    },
    Uncordon {
        sidecar_id: String,
        reply: Reply<Result<HostView, Error>>,
    },
    Hosts {
        reply: Reply<Vec<HostView>>,
    },
    Host {
        id: String,
        reply: Reply<Option<HostView>>,
    },
    Endpoints {
        reply: Reply<Vec<Endpoint>>,
    },
    AddEndpoint {
        url: String,
        kind: EndpointKind,
        reply: Reply<Result<Endpoint, Error>>,
    },
    RemoveEndpoint {
        id: String,
        reply: Reply<Result<Endpoint, Error>>,
    },
    /// The hub's own check of an endpoint it probes.
    EndpointChecked(Box<Endpoint>),
    Committed {
        tickets: Vec<AfterCommit>,
        result: Result<(), Arc<store::Error>>,
    },
    Tick,
    Shutdown {
        reply: Reply<()>,
    },
}

pub enum WatchReply {
    /// The task can still change: follow its feed.
    Live(Arc<Feed>),
    /// The task is final (its output is on disk).
    Final(Box<Task>),
}

/// Work that waits for a commit.
pub enum AfterCommit {
    /// A submit is durable. Its submitter is answered on the writer thread the moment the log
    /// is synced (see [`AfterCommit::durable`]); the core then answers anyone whose submit
    /// matched the same idempotency key meanwhile, and makes the task dispatchable.
    Submitted { id: TaskId, answer: Option<Box<SubmitAnswer>> },
    /// A dispatch is durable: send the assignment (if the lease is still the same).
    Assigned { task_id: TaskId, lease_generation: u64 },
    /// A state change is durable: tell watchers.
    Changed(TaskId),
    /// A cancel is durable: answer the caller.
    Answer { task_id: TaskId, reply: Reply<Result<Task, Error>> },
    /// A dead-letter retry is durable: answer the caller, then make the task dispatchable.
    Requeued { task_id: TaskId, reply: Reply<Result<Task, Error>> },
    /// A purge is durable: answer with how many tasks went.
    Purged { count: usize, reply: Reply<Result<usize, Error>> },
    /// Anything else that answers once durable (fleet settings).
    Then(Box<dyn FnOnce() + Send>),
}

impl AfterCommit {
    /// Runs on the writer thread once the change is durable in the log, before the core hears
    /// of it: a submitter needs nothing but durability, so its answer skips the redb apply and
    /// the hop through the core. Whatever it asks next may reach the core before `Committed`;
    /// the core has held the task since the submit, so it is found, cancellable and usable as a
    /// dependency, and only becomes dispatchable on `Committed`.
    fn durable(&mut self) {
        if let AfterCommit::Submitted { answer, .. } = self
            && let Some(answer) = answer.take()
        {
            let (reply, submitted) = *answer;
            let _ = reply.send(Ok(submitted));
        }
    }
}

/// A cheap, cloneable way to talk to the core.
#[derive(Clone)]
pub struct Handle {
    events: mpsc::UnboundedSender<Event>,
    healthy: Arc<AtomicBool>,
    /// Finished tasks' output lives only on disk; reads of it go here, off the core.
    store: Store,
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Event) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.events.send(make(tx)).map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    pub async fn submit(&self, spec: TaskSpec) -> Result<Submitted, Error> {
        self.ask(|reply| Event::Submit { spec: Box::new(spec), reply }).await?
    }

    /// The task with its retained output (read from disk for a finished task).
    /// Submits and returns only the id and whether the idempotency key matched: all the
    /// streaming path acknowledges.
    pub async fn submit_id(&self, spec: TaskSpec) -> Result<(TaskId, bool), Error> {
        let submitted = self.submit(spec).await?;
        Ok((submitted.task.id, submitted.existing))
    }

    pub async fn get(&self, id: TaskId) -> Result<Task, Error> {
        let task = self.ask(|reply| Event::Get { id, reply }).await?.ok_or(Error::NotFound(id))?;
        if task.state.is_terminal() && task.outcome.is_some() {
            return self.stored(task).await;
        }
        Ok(task)
    }

    /// The durable record of a finished task; `fallback` if it is (not yet) on disk.
    async fn stored(&self, fallback: Task) -> Result<Task, Error> {
        let store = self.store.clone();
        let id = fallback.id;
        match tokio::task::spawn_blocking(move || store.get_task(id)).await {
            Ok(Ok(Some(task))) => Ok(task),
            Ok(Ok(None)) => Ok(fallback),
            Ok(Err(err)) => Err(Error::Storage(err.to_string())),
            Err(err) => Err(Error::Storage(err.to_string())),
        }
    }

    pub async fn list(&self, state: Option<TaskState>, limit: usize) -> Result<Vec<Task>, Error> {
        self.list_before(state, None, limit).await
    }

    /// Newest first, only tasks older than `before` (the last id of the previous page).
    pub async fn list_before(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        self.ask(|reply| Event::List { state, before, limit, reply }).await
    }

    pub async fn cancel(&self, id: TaskId, reason: String) -> Result<Task, Error> {
        self.ask(|reply| Event::Cancel { id, reason, reply }).await?
    }

    pub async fn watch(&self, id: TaskId) -> Result<Arc<Feed>, Error> {
        match self.ask(|reply| Event::Watch { id, reply }).await?? {
            WatchReply::Live(feed) => Ok(feed),
            WatchReply::Final(task) => Ok(Feed::new(self.stored(*task).await?)),
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentView>, Error> {
        self.ask(|reply| Event::Agents { reply }).await
    }

    pub async fn stats(&self) -> Result<QueueStats, Error> {
        self.ask(|reply| Event::Stats { reply }).await
    }

    /// Puts a dead-lettered task back in the queue with a fresh set of attempts.
    pub async fn retry_dead_letter(&self, id: TaskId) -> Result<Task, Error> {
        self.ask(|reply| Event::RetryDeadLetter { id, reply }).await?
    }

    /// Deletes dead-lettered tasks that finished before `finished_before`; returns how many.
    pub async fn purge_dead_letters(&self, finished_before: UnixMs) -> Result<usize, Error> {
        self.ask(|reply| Event::PurgeDeadLetters { finished_before, reply }).await?
    }

    pub async fn agent(&self, id: String) -> Result<AgentDetail, Error> {
        let missing = Error::UnknownName(format!("agent {id} not found"));
        self.ask(|reply| Event::GetAgent { id, reply }).await?.ok_or(missing)
    }

    /// Cordons a sidecar: no new work; what still runs at `deadline` is requeued.
    pub async fn drain(&self, sidecar_id: String, deadline: Option<UnixMs>) -> Result<HostView, Error> {
        self.ask(|reply| Event::Drain { sidecar_id, deadline, reply }).await?
    }

    pub async fn uncordon(&self, sidecar_id: String) -> Result<HostView, Error> {
        self.ask(|reply| Event::Uncordon { sidecar_id, reply }).await?
    }

    pub async fn hosts(&self) -> Result<Vec<HostView>, Error> {
        self.ask(|reply| Event::Hosts { reply }).await
    }

    pub async fn host(&self, id: String) -> Result<HostView, Error> {
        let missing = Error::UnknownName(format!("host {id} not found"));
        self.ask(|reply| Event::Host { id, reply }).await?.ok_or(missing)
    }

    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, Error> {
        self.ask(|reply| Event::Endpoints { reply }).await
    }

    pub async fn add_endpoint(&self, url: String, kind: EndpointKind) -> Result<Endpoint, Error> {
        self.ask(|reply| Event::AddEndpoint { url, kind, reply }).await?
    }

    pub async fn remove_endpoint(&self, id: String) -> Result<Endpoint, Error> {
        self.ask(|reply| Event::RemoveEndpoint { id, reply }).await?
    }

    /// Reports the hub's own check of an endpoint.
    pub fn endpoint_checked(&self, endpoint: Endpoint) {
        let _ = self.events.send(Event::EndpointChecked(Box::new(endpoint)));
    }

    /// Registers a sidecar session; returns the welcome and the session number to quote.
    pub async fn hello(&self, hello: SidecarHello, outbox: mpsc::Sender<ToSidecar>) -> Result<(Welcome, u64), Error> {
        self.ask(|reply| Event::Hello { hello, outbox, reply }).await?
    }

    pub fn from_sidecar(&self, sidecar_id: String, session: u64, message: FromSidecar) {
        let _ = self.events.send(Event::FromSidecar { sidecar_id, session, message });
    }

    pub fn session_closed(&self, sidecar_id: String, session: u64) {
        let _ = self.events.send(Event::SessionClosed { sidecar_id, session });
    }

    /// Stops the core: cancels in-flight work if configured, waits for it to be recorded.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Event::Shutdown { reply }).await;
    }

    /// False once storage has failed; `/readyz` reports it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.events.is_closed()
    }
}

struct Agent {
    id: String,
    sidecar_id: String,
    state: AgentState,
    task_id: Option<TaskId>,
    state_since: UnixMs,
    /// Transitions, most recent last, at most [`agent::HISTORY_LEN`].
    history: VecDeque<Transition>,
    /// The last sign of life of its task: assignment, start, output, progress.
    last_activity: UnixMs,
    stalled: bool,
}

impl Agent {
    fn new(id: String, sidecar_id: String, now: UnixMs) -> Agent {
        Agent {
            id,
            sidecar_id,
            state: AgentState::Offline,
            task_id: None,
            state_since: now,
            history: VecDeque::new(),
            last_activity: now,
            stalled: false,
        }
    }
}

impl Sidecar {
    /// The session is up and its stream still reads our messages.
    fn is_open(&self) -> bool {
        self.outbox.as_ref().is_some_and(|outbox| !outbox.is_closed())
    }
}

struct Sidecar {
    hello: SidecarHello,
    session: u64,
    /// `None` while no session is open.
    outbox: Option<mpsc::Sender<ToSidecar>>,
    /// Shared with the session, which stores into it on every message.
    last_seen: Arc<AtomicI64>,
    agent_ids: Vec<String>,
    host: fleet::Host,
}

pub struct Core {
    config: Config,
    events: mpsc::UnboundedReceiver<Event>,
    handle: Handle,
    writer: Option<Writer<AfterCommit>>,
    /// Boxed: a task record is large, and B-tree nodes move their values when they split.
    tasks: BTreeMap<TaskId, Box<Task>>,
    by_key: HashMap<String, TaskId>,
    /// Submits not yet durable, with everyone waiting on them.
    pending_submits: HashMap<TaskId, Vec<SubmitWaiter>>,
    queue: Queue,
    /// Waiting tasks by the unfinished dependency they wait on.
    dependents: HashMap<TaskId, Vec<TaskId>>,
    /// Deadlines of tasks waiting to start: (deadline, id).
    deadlines: BTreeSet<(UnixMs, TaskId)>,
    sidecars: HashMap<String, Sidecar>,
    agents: BTreeMap<String, Agent>,
    /// Idle agents by sidecar, kept in step with agent states by `move_agent`, so dispatch does
    /// not scan every agent for every task it places.
    idle: IdleIndex,
    feeds: HashMap<TaskId, Arc<Feed>>,
    next_session: u64,
    /// When idempotency keys past their retention were last forgotten.
    last_key_sweep: UnixMs,
    shutting_down: bool,
    stale_messages: u64,
    /// LLM endpoints, persisted in the `fleet` table.
    registry: fleet::Registry,
    /// Cordoned sidecars, persisted; a sidecar may be cordoned while away.
    cordons: HashMap<String, Cordon>,
}

/// How often idempotency keys past their retention are swept from memory.
const KEY_SWEEP_INTERVAL_MS: i64 = 60_000;

impl Core {
    /// Loads the stored tasks and starts the core and its storage writer. Tasks that were
    /// running when the hub stopped keep their leases for one lease TTL, so their sidecars can
    /// reconnect and claim them before they are requeued.
    pub fn start(config: Config, store: &Store) -> Result<(Handle, tokio::task::JoinHandle<()>), store::Error> {
        let loading = std::time::Instant::now();
        let tasks = store.load_tasks()?;
        let (registry, cordons) = fleet_ops::load(store)?;
        let load_ms = loading.elapsed().as_millis() as u64;
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Handle { events: tx.clone(), healthy: Arc::new(AtomicBool::new(true)), store: store.clone() };
        let writer = store.start_writer(AfterCommit::durable, move |tickets, result| {
            let _ = tx.send(Event::Committed { tickets, result });
        });
        let aging_step_ms = config.aging_step.as_millis() as i64;
        let mut core = Core {
            config,
            events: rx,
            handle: handle.clone(),
            writer: Some(writer),
            tasks: BTreeMap::new(),
            by_key: HashMap::new(),
            pending_submits: HashMap::new(),
            queue: Queue::new(aging_step_ms),
            deadlines: BTreeSet::new(),
            dependents: HashMap::new(),
            sidecars: HashMap::new(),
            agents: BTreeMap::new(),
            idle: IdleIndex::default(),
            feeds: HashMap::new(),
            next_session: 1,
            last_key_sweep: 0,
            shutting_down: false,
            stale_messages: 0,
            registry,
            cordons,
        };
        let restoring = std::time::Instant::now();
        core.restore(tasks, now_ms());
        info!(load_ms, restore_ms = restoring.elapsed().as_millis() as u64, "queue loaded");
        let join = tokio::spawn(core.run());
        Ok((handle, join))
    }

    #[allow(clippy::vec_box)] // Reason: the boxes move into `tasks` as they are; no 816-byte copies.
    fn restore(&mut self, tasks: Vec<Box<Task>>, now: UnixMs) {
        let (mut n_ready, mut n_leased) = (0, 0);
        let mut waiting = Vec::new();
        let ttl = self.config.lease_ttl.as_millis() as i64;
        for task in tasks {
            if let Some(key) = &task.spec.idempotency_key {
                self.by_key.insert(key.clone(), task.id);
            }
            match task.state {
                TaskState::Queued | TaskState::Ready => {
                    enqueue(&mut self.queue, &mut self.deadlines, &task, None);
                    n_ready += 1;
                }
                TaskState::Waiting => waiting.push(task.id),
                state if state.is_leased() => {
                    let lease = Lease {
                        generation: task.lease_generation,
                        sidecar_id: task.sidecar_id.clone().unwrap_or_default(),
                        agent_id: task.agent_id.clone().unwrap_or_default(),
                        expires_at: now + ttl,
                    };
                    self.queue.grant(task.id, lease);
                    n_leased += 1;
                }
                _ => {}
            }
            let mut task = task;
            if task.state.is_terminal() {
                strip_output(&mut task);
            }
            self.tasks.insert(task.id, task);
        }
        // Dependencies may have settled after their dependents last changed on disk.
        let n_waiting = waiting.len();
        for id in waiting {
            self.settle_dependencies(id, now);
        }
        info!(tasks = self.tasks.len(), ready = n_ready, leased = n_leased, waiting = n_waiting, "restored queue");
    }

    async fn run(mut self) {
        let tick_every = (self.config.heartbeat_interval / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown_reply: Option<Reply<()>> = None;
        let mut shutdown_deadline: Option<tokio::time::Instant> = None;
        loop {
            if let Some(deadline) = shutdown_deadline {
                let settled = self.queue.n_leased() == 0 || !self.config.cancel_inflight_on_shutdown;
                if settled || tokio::time::Instant::now() >= deadline {
                    if !settled {
                        warn!(leased = self.queue.n_leased(), "shutdown grace ran out with work still leased");
                    }
                    break;
                }
            }
            let event = tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
                _ = ticker.tick() => Event::Tick,
            };
            if let Event::Shutdown { reply } = event {
                self.begin_shutdown(now_ms());
                shutdown_reply = Some(reply);
                shutdown_deadline = Some(tokio::time::Instant::now() + self.config.shutdown_grace);
                continue;
            }
            self.handle(event, now_ms());
        }
        // Close the writer: it commits what is queued, then the database closes with the last handle.
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        }
        // Sessions end when their outboxes drop.
        self.sidecars.clear();
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
        info!("hub core stopped");
    }

    fn handle(&mut self, event: Event, now: UnixMs) {
        match event {
            Event::Submit { spec, reply } => self.submit(*spec, reply, now),
            Event::Get { id, reply } => {
                let _ = reply.send(self.tasks.get(&id).map(|task| Task::clone(task)));
            }
            Event::List { state, before, limit, reply } => {
                // Summaries: output only comes with a single task.
                let older = match before {
                    Some(before) => self.tasks.range(..before),
                    None => self.tasks.range(..),
                };
                let tasks = older
                    .map(|(_, task)| task)
                    .rev()
                    .filter(|t| state.is_none_or(|s| t.state == s))
                    .take(limit)
                    .map(|t| {
                        let mut t = Task::clone(t);
                        strip_output(&mut t);
                        t
                    })
                    .collect();
                let _ = reply.send(tasks);
            }
            Event::Cancel { id, reason, reply } => self.cancel(id, reason, reply, now),
            Event::Watch { id, reply } => {
                let result = match self.feeds.get(&id) {
                    Some(feed) => Ok(WatchReply::Live(feed.clone())),
                    None => match self.tasks.get(&id) {
                        Some(task) if task.state.is_terminal() => Ok(WatchReply::Final(task.clone())),
                        Some(task) => {
                            let feed = Feed::new(Task::clone(task));
                            self.feeds.insert(id, feed.clone());
                            Ok(WatchReply::Live(feed))
                        }
                        None => Err(Error::NotFound(id)),
                    },
                };
                let _ = reply.send(result);
            }
            Event::Agents { reply } => {
                let _ = reply.send(self.agent_views());
            }
            Event::Stats { reply } => {
                let count = |state| self.tasks.values().filter(|t| t.state == state).count();
                let _ = reply.send(QueueStats {
                    tasks: self.tasks.len(),
                    ready: self.queue.n_ready(),
                    delayed: self.queue.n_delayed(),
                    waiting_on_dependencies: count(TaskState::Waiting),
                    leased: self.queue.n_leased(),
                    dead_lettered: count(TaskState::DeadLettered),
                    stale_messages_refused: self.stale_messages,
                });
            }
            Event::RetryDeadLetter { id, reply } => self.retry_dead_letter(id, reply, now),
            Event::PurgeDeadLetters { finished_before, reply } => self.purge_dead_letters(finished_before, reply),
            Event::Hello { hello, outbox, reply } => {
                let _ = reply.send(self.hello(hello, outbox, now));
                self.dispatch(now);
            }
            Event::FromSidecar { sidecar_id, session, message } => {
                self.on_sidecar_message(&sidecar_id, session, message, now);
                self.dispatch(now);
            }
            Event::SessionClosed { sidecar_id, session } => self.session_closed(&sidecar_id, session, now),
            Event::GetAgent { id, reply } => {
                let _ = reply.send(self.agent_detail(&id));
            }
            Event::Drain { sidecar_id, deadline, reply } => self.drain(sidecar_id, deadline, reply, now),
            Event::Uncordon { sidecar_id, reply } => self.uncordon(sidecar_id, reply, now),
            Event::Hosts { reply } => {
                let _ = reply.send(self.host_views());
            }
            Event::Host { id, reply } => {
                let _ = reply.send(self.host_view(&id, true));
            }
            Event::Endpoints { reply } => {
                let _ = reply.send(self.registry.iter().cloned().collect());
            }
            Event::AddEndpoint { url, kind, reply } => self.add_endpoint(url, kind, reply),
            Event::RemoveEndpoint { id, reply } => self.remove_endpoint(id, reply),
            Event::EndpointChecked(endpoint) => self.endpoint_checked(*endpoint),
            Event::Committed { tickets, result } => {
                self.committed(tickets, result, now);
                self.dispatch(now);
            }
            Event::Tick => {
                self.tick(now);
                self.dispatch(now);
            }
            Event::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn write(&mut self, ops: Vec<Op>, ticket: AfterCommit) {
        let Some(writer) = &self.writer else { return };
        if writer.write(ops, ticket).is_err() {
            self.handle.healthy.store(false, Ordering::Relaxed);
        }
    }

    fn persist(&mut self, id: TaskId, ticket: AfterCommit) {
        // Watchers see the change once it is durable, through the ticket.
        let task = self.tasks.get(&id).expect("persisting a known task").clone();
        self.write(vec![Op::PutTask(task)], ticket);
    }

    fn submit(&mut self, spec: TaskSpec, reply: Reply<Result<Submitted, Error>>, now: UnixMs) {
        if self.shutting_down {
            let _ = reply.send(Err(Error::ShuttingDown));
            return;
        }
        let retention = self.config.idempotency_retention.as_millis() as i64;
        if let Some(key) = &spec.idempotency_key
            && let Some(&existing) = self.by_key.get(key)
            && queue::submitted_at(existing) + retention > now
            && let Some(first) = self.tasks.get(&existing)
        {
            if !same_submission(&first.spec, &spec) {
                let _ = reply.send(Err(Error::KeyReused { key: key.clone(), existing }));
                return;
            }
            match self.pending_submits.get_mut(&existing) {
                Some(waiters) => waiters.push((reply, true)),
                None => {
                    let task = Task::clone(&self.tasks[&existing]);
                    let _ = reply.send(Ok(Submitted { task, existing: true }));
                }
            }
            return;
        }
        if self.writer.as_ref().is_some_and(|writer| writer.backlog() >= self.config.max_write_backlog) {
            let _ = reply.send(Err(Error::Overloaded));
            return;
        }
        if let Some(deadline) = spec.limits.deadline_unix_ms
            && deadline <= now
        {
            let message = format!("is {} ms in the past", now - deadline);
            let _ = reply.send(Err(Error::Invalid(crate::domain::Error::invalid("limits.deadline_unix_ms", message))));
            return;
        }
        // Dependencies must exist already, so a new task can never close a cycle.
        let mut spec = spec;
        spec.depends_on.sort();
        spec.depends_on.dedup();
        if let Some(unknown) = spec.depends_on.iter().find(|dep| !self.tasks.contains_key(dep)) {
            let message = format!("task {unknown} does not exist");
            let _ = reply.send(Err(Error::Invalid(crate::domain::Error::invalid("depends_on", message))));
            return;
        }
        let id = TaskId::new(now);
        if let Some(key) = &spec.idempotency_key {
            self.by_key.insert(key.clone(), id);
        }
        let mut task = Task::new(id, spec, now);
        if !task.spec.depends_on.is_empty() {
            task.state = TaskState::Waiting;
        }
        let answer = Submitted { task: Task::clone(&task), existing: false };
        self.tasks.insert(id, Box::new(task));
        self.pending_submits.insert(id, Vec::new());
        self.persist(id, AfterCommit::Submitted { id, answer: Some(Box::new((reply, answer))) });
    }

    /// Moves a waiting task on once its dependencies allow: to the queue when all succeeded, to
    /// cancelled when one failed for good; otherwise it stays registered under those unfinished.
    fn settle_dependencies(&mut self, id: TaskId, now: UnixMs) {
        let task = &self.tasks[&id];
        if task.state != TaskState::Waiting {
            return;
        }
        let states = task.spec.depends_on.iter().map(|dep| (*dep, self.tasks.get(dep).map(|t| t.state)));
        match queue::readiness(states) {
            queue::Readiness::Failed(dep, state) => {
                let how = state.map(|s| format!("is {}", s.as_str())).unwrap_or_else(|| "was purged".to_owned());
                let task = self.tasks.get_mut(&id).expect("checked above");
                task.set_state(TaskState::Cancelled, format!("dependency_failed: task {dep} {how}"), now);
                self.persist(id, AfterCommit::Changed(id));
            }
            queue::Readiness::Ready => {
                let task = self.tasks.get_mut(&id).expect("checked above");
                task.set_state(TaskState::Queued, "dependencies succeeded", now);
                self.persist(id, AfterCommit::Changed(id));
                self.wait(id, None);
            }
            queue::Readiness::Waiting(unfinished) => {
                if let Some(deadline) = task.spec.limits.deadline_unix_ms {
                    self.deadlines.insert((deadline, id));
                }
                for dep in unfinished {
                    let waiting = self.dependents.entry(dep).or_default();
                    if !waiting.contains(&id) {
                        waiting.push(id);
                    }
                }
            }
        }
    }

    fn cancel(&mut self, id: TaskId, reason: String, reply: Reply<Result<Task, Error>>, now: UnixMs) {
        let Some(task) = self.tasks.get_mut(&id) else {
            let _ = reply.send(Err(Error::NotFound(id)));
            return;
        };
        if task.state.is_terminal() {
            let _ = reply.send(Err(Error::AlreadyFinal { id, state: task.state.as_str() }));
            return;
        }
        let reason = if reason.is_empty() { "cancelled by user".to_owned() } else { reason };
        task.set_state(TaskState::Cancelled, reason.clone(), now);
        self.queue.remove_waiting(id);
        // A leased task keeps its lease until the sidecar reports the killed process (or the
        // lease lapses), so its agent stays busy and the final output is recorded.
        if let Some(lease) = self.queue.lease(id).cloned() {
            self.send_to(
                &lease.sidecar_id,
                ToSidecar::Cancel { task_id: id, lease_generation: lease.generation, reason },
            );
        }
        self.persist(id, AfterCommit::Answer { task_id: id, reply });
    }

    fn retry_dead_letter(&mut self, id: TaskId, reply: Reply<Result<Task, Error>>, now: UnixMs) {
        let Some(task) = self.tasks.get_mut(&id) else {
            let _ = reply.send(Err(Error::NotFound(id)));
            return;
        };
        if task.state != TaskState::DeadLettered {
            let _ = reply.send(Err(Error::NotDeadLettered { id, state: task.state.as_str() }));
            return;
        }
        if task.spec.limits.deadline_unix_ms.is_some_and(|deadline| deadline <= now) {
            // Its deadline passed: it would only expire again. Retrying means a new deadline.
            task.spec.limits.deadline_unix_ms = None;
        }
        // A fresh set of attempts; the lease generation keeps counting up, so late messages
        // from earlier attempts stay fenced off.
        task.attempt = 0;
        task.outcome = None;
        task.finished_unix_ms = None;
        task.set_state(TaskState::Queued, "retried from the dead-letter queue", now);
        self.persist(id, AfterCommit::Requeued { task_id: id, reply });
    }

    fn purge_dead_letters(&mut self, finished_before: UnixMs, reply: Reply<Result<usize, Error>>) {
        let doomed: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::DeadLettered && t.finished_unix_ms.unwrap_or(0) < finished_before)
            .map(|t| t.id)
            .collect();
        for id in &doomed {
            if let Some(task) = self.tasks.remove(id)
                && let Some(key) = task.spec.idempotency_key
                && self.by_key.get(&key) == Some(id)
            {
                self.by_key.remove(&key);
            }
        }
        let count = doomed.len();
        info!(count, "purging dead letters");
        self.write(doomed.into_iter().map(Op::DeleteTask).collect(), AfterCommit::Purged { count, reply });
    }

    fn send_to(&mut self, sidecar_id: &str, message: ToSidecar) {
        let Some(sidecar) = self.sidecars.get(sidecar_id) else { return };
        let Some(outbox) = &sidecar.outbox else { return };
        match outbox.try_send(message) {
            Ok(()) => {}
            // The session is going away; its end is handled when the core hears of it.
            Err(mpsc::error::TrySendError::Closed(_)) => debug!(sidecar_id, "dropped a message for a closed session"),
            // Not reading: its leases will lapse and be handled then.
            Err(mpsc::error::TrySendError::Full(_)) => warn!(sidecar_id, "a sidecar is not reading its messages"),
        }
    }

    fn hello(
        &mut self,
        hello: SidecarHello,
        outbox: mpsc::Sender<ToSidecar>,
        now: UnixMs,
    ) -> Result<(Welcome, u64), Error> {
        if self.shutting_down {
            return Err(Error::ShuttingDown);
        }
        let session = self.next_session;
        self.next_session += 1;
        let sidecar_id = hello.sidecar_id.clone();
        let claimed: HashMap<TaskId, u64> = hello.running.iter().map(|r| (r.task_id, r.lease_generation)).collect();

        // Agents: reuse the ids of a returning sidecar, so its leases stay meaningful.
        let agent_ids: Vec<String> = (0..hello.slots).map(|slot| format!("{sidecar_id}/{slot}")).collect();
        if let Some(old) = self.sidecars.get(&sidecar_id) {
            for agent_id in &old.agent_ids {
                if !agent_ids.contains(agent_id)
                    && let Some(agent) = self.agents.remove(agent_id)
                {
                    self.idle.remove(&agent);
                }
            }
        }
        for agent_id in &agent_ids {
            let agent = self
                .agents
                .entry(agent_id.clone())
                .or_insert_with(|| Agent::new(agent_id.clone(), sidecar_id.clone(), now));
            agent.task_id = None;
            if agent.state != AgentState::Offline {
                // A session replaced another without the old one being declared lost.
                move_agent(agent, AgentEvent::Lost, now, &mut self.idle, "replaced by a new session");
            }
            move_agent(agent, AgentEvent::Rejoin, now, &mut self.idle, "sidecar joined");
        }

        // Leases this sidecar held: keep those it still runs, take back the rest.
        let held: Vec<(TaskId, Lease)> = self.queue.leased_to(&sidecar_id).map(|(id, l)| (id, l.clone())).collect();
        let ttl = self.config.lease_ttl.as_millis() as i64;
        let mut kept = std::collections::HashSet::new();
        for (task_id, lease) in held {
            match claimed.get(&task_id) {
                Some(&generation) if generation == lease.generation => {
                    kept.insert(task_id);
                    let _ = self.queue.renew(task_id, generation, &sidecar_id, now, ttl);
                    if let Some(agent) = self.agents.get_mut(&lease.agent_id) {
                        agent.task_id = Some(task_id);
                        agent.last_activity = now;
                        let cause = format!("still running task {task_id} after reconnecting");
                        move_agent(agent, AgentEvent::Assign, now, &mut self.idle, &cause);
                        move_agent(agent, AgentEvent::Start, now, &mut self.idle, &cause);
                    }
                }
                _ => self.lease_lost(task_id, "sidecar restarted without it", now),
            }
        }
        info!(sidecar_id, hostname = hello.hostname, slots = hello.slots, session, "sidecar joined");
        let last_seen = Arc::new(AtomicI64::new(now));
        let welcome = Welcome {
            last_seen: last_seen.clone(),
            sidecar_id: sidecar_id.clone(),
            agent_ids: agent_ids.clone(),
            heartbeat_interval: self.config.heartbeat_interval,
            lease_ttl: self.config.lease_ttl,
        };
        let host = self.sidecars.remove(&sidecar_id).map(|old| old.host).unwrap_or_default();
        self.sidecars
            .insert(sidecar_id.clone(), Sidecar { hello, session, outbox: Some(outbox), last_seen, agent_ids, host });
        if let Some(cordon) = self.cordons.get(&sidecar_id).copied() {
            self.cordon_agents(&sidecar_id, cordon, now);
        }
        // Work the sidecar still runs under a lease it no longer holds: stop it now.
        for (task_id, lease_generation) in claimed {
            if !kept.contains(&task_id) {
                let reason = "lease no longer held".to_owned();
                self.send_to(&sidecar_id, ToSidecar::Cancel { task_id, lease_generation, reason });
            }
        }
        Ok((welcome, session))
    }

    fn on_sidecar_message(&mut self, sidecar_id: &str, session: u64, message: FromSidecar, now: UnixMs) {
        let Some(sidecar) = self.sidecars.get_mut(sidecar_id) else { return };
        if sidecar.session != session {
            return; // A replaced session: its messages no longer count.
        }
        sidecar.last_seen.fetch_max(now, Ordering::Relaxed);
        let ttl = self.config.lease_ttl.as_millis() as i64;
        match message {
            FromSidecar::Heartbeat { running } => {
                for run in running {
                    if let Err(fence) = self.queue.renew(run.task_id, run.lease_generation, sidecar_id, now, ttl) {
                        self.refuse(sidecar_id, run.task_id, run.lease_generation, fence, "heartbeat");
                    }
                }
            }
            FromSidecar::Started { task_id, lease_generation } => {
                if let Err(fence) = self.queue.renew(task_id, lease_generation, sidecar_id, now, ttl) {
                    self.refuse(sidecar_id, task_id, lease_generation, fence, "started");
                    return;
                }
                if let Some(agent) = leased_agent(&self.queue, &mut self.agents, task_id) {
                    agent.last_activity = now;
                    move_agent(agent, AgentEvent::Start, now, &mut self.idle, &format!("started task {task_id}"));
                }
                let task = self.tasks.get_mut(&task_id).expect("a leased task exists");
                if task.state == TaskState::Dispatched {
                    task.set_state(TaskState::Running, "", now);
                    task.started_unix_ms = Some(now);
                    self.persist(task_id, AfterCommit::Changed(task_id));
                }
            }
            FromSidecar::Output { task_id, lease_generation, stream, offset, data } => {
                if let Err(fence) = self.queue.renew(task_id, lease_generation, sidecar_id, now, ttl) {
                    self.refuse(sidecar_id, task_id, lease_generation, fence, "output");
                    return;
                }
                if let Some(agent) = leased_agent(&self.queue, &mut self.agents, task_id) {
                    agent.last_activity = now;
                }
                // Feeds are made when first needed: most tasks are never watched.
                let tasks = &self.tasks;
                let feed = self.feeds.entry(task_id).or_insert_with(|| Feed::new(Task::clone(&tasks[&task_id])));
                feed.append(stream, offset, &data);
            }
            FromSidecar::Finished { task_id, lease_generation, outcome } => {
                if let Err(fence) = self.queue.check(task_id, lease_generation, sidecar_id) {
                    self.refuse(sidecar_id, task_id, lease_generation, fence, "finished");
                    return;
                }
                self.release(task_id, now);
                let task = self.tasks.get_mut(&task_id).expect("a leased task exists");
                let retryable = matches!(outcome.exit, Exit::Code(code) if task.spec.retry.retry_on_exit_codes.contains(&code))
                    && outcome.error.is_none()
                    && !outcome.timed_out;
                let (state, reason) = judge(&outcome);
                task.outcome = Some(outcome);
                if task.state == TaskState::Cancelled {
                    // The user's cancel stands; the outcome is the killed process's.
                } else if state == TaskState::Failed && retryable {
                    self.retry_or_dead_letter(task_id, reason, now);
                } else {
                    task.set_state(state, reason, now);
                }
                self.persist(task_id, AfterCommit::Changed(task_id));
            }
            FromSidecar::Progress { task_id, lease_generation, blocked, message } => {
                if let Err(fence) = self.queue.renew(task_id, lease_generation, sidecar_id, now, ttl) {
                    self.refuse(sidecar_id, task_id, lease_generation, fence, "progress");
                    return;
                }
                if let Some(agent) = leased_agent(&self.queue, &mut self.agents, task_id) {
                    agent.last_activity = now;
                    match (blocked, agent.state) {
                        (true, AgentState::Assigned | AgentState::Working) => {
                            let cause = format!("task {task_id} waits: {message}");
                            move_agent(agent, AgentEvent::Block, now, &mut self.idle, &cause);
                        }
                        (false, AgentState::Blocked) => {
                            let cause = format!("task {task_id} goes on");
                            move_agent(agent, AgentEvent::Unblock, now, &mut self.idle, &cause);
                        }
                        _ => {}
                    }
                }
            }
            FromSidecar::Resources(report) => {
                if let Some(sidecar) = self.sidecars.get_mut(sidecar_id) {
                    sidecar.host.record(*report);
                }
            }
            FromSidecar::Models(endpoints) => self.sidecar_inventory(sidecar_id, endpoints),
        }
    }

    /// A message under a lease the sender does not hold: count it, and make sure the sender
    /// stops that work.
    fn refuse(&mut self, sidecar_id: &str, task_id: TaskId, lease_generation: u64, fence: Fence, what: &str) {
        self.stale_messages += 1;
        debug!(sidecar_id, task_id = %task_id, lease_generation, ?fence, what, "refused a stale message");
        self.send_to(
            sidecar_id,
            ToSidecar::Cancel { task_id, lease_generation, reason: "lease no longer held".to_owned() },
        );
    }

    /// Ends a lease and frees its agent.
    fn release(&mut self, task_id: TaskId, now: UnixMs) -> Option<Lease> {
        let lease = self.queue.release(task_id)?;
        if let Some(agent) = self.agents.get_mut(&lease.agent_id)
            && agent.task_id == Some(task_id)
        {
            agent.task_id = None;
            agent.stalled = false;
            if agent.state != AgentState::Offline {
                move_agent(agent, AgentEvent::Release, now, &mut self.idle, &format!("task {task_id} ended"));
            }
        }
        Some(lease)
    }

    /// A lease lapsed or its holder lost the work: requeue the task or fail it for good.
    fn lease_lost(&mut self, task_id: TaskId, why: &str, now: UnixMs) {
        let Some(lease) = self.release(task_id, now) else { return };
        self.send_to(
            &lease.sidecar_id,
            ToSidecar::Cancel { task_id, lease_generation: lease.generation, reason: why.to_owned() },
        );
        // A cancel was recorded already: there is no outcome to wait for any more.
        if self.tasks[&task_id].state != TaskState::Cancelled {
            warn!(task_id = %task_id, sidecar_id = lease.sidecar_id, why, "lease lost");
            self.retry_or_dead_letter(task_id, why.to_owned(), now);
        }
        self.persist(task_id, AfterCommit::Changed(task_id));
    }

    /// A failed attempt that may be retried: requeue it after a backoff while attempts remain,
    /// else dead-letter it with the reason.
    fn retry_or_dead_letter(&mut self, task_id: TaskId, why: String, now: UnixMs) {
        let task = self.tasks.get_mut(&task_id).expect("a known task");
        let max_attempts = task.spec.limits.max_attempts;
        if task.attempt < max_attempts {
            let retry = &task.spec.retry;
            let delay =
                queue::retry_delay_ms(task.attempt + 1, retry.backoff_base_ms, retry.backoff_max_ms, rand::random());
            task.set_state(
                TaskState::Queued,
                format!("retrying in {delay} ms after attempt {}: {why}", task.attempt),
                now,
            );
            self.wait(task_id, Some(now + delay));
        } else {
            let reason = format!("{why} (attempt {} of {max_attempts})", task.attempt);
            warn!(task_id = %task_id, reason, "dead-lettered");
            task.set_state(TaskState::DeadLettered, reason, now);
        }
    }

    /// Puts a task in line to be dispatched, now or at `ready_at`, and minds its deadline.
    fn wait(&mut self, id: TaskId, ready_at: Option<UnixMs>) {
        enqueue(&mut self.queue, &mut self.deadlines, &self.tasks[&id], ready_at);
    }

    /// Dead-letters waiting tasks whose deadline passed before they started.
    fn expire(&mut self, now: UnixMs) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let on_dependencies = self.tasks.get(&id).is_some_and(|t| t.state == TaskState::Waiting);
            if self.queue.remove_waiting(id) || on_dependencies {
                let task = self.tasks.get_mut(&id).expect("a waiting task exists");
                task.set_state(TaskState::DeadLettered, "expired", now);
                info!(task_id = %id, "expired before it started");
                self.persist(id, AfterCommit::Changed(id));
            }
        }
    }

    fn session_closed(&mut self, sidecar_id: &str, session: u64, now: UnixMs) {
        let Some(sidecar) = self.sidecars.get_mut(sidecar_id) else { return };
        if sidecar.session != session {
            return;
        }
        sidecar.outbox = None;
        let cause = if sidecar.last_seen.load(Ordering::Relaxed) + self.config.heartbeat_ttl.as_millis() as i64 <= now {
            "heartbeat lapsed"
        } else {
            "session closed"
        };
        info!(sidecar_id, session, cause, "sidecar offline");
        // Its agents take no new work; its leases run until they lapse, so a quick reconnect
        // can claim them.
        for agent_id in sidecar.agent_ids.clone() {
            if let Some(agent) = self.agents.get_mut(&agent_id)
                && agent.state != AgentState::Offline
            {
                move_agent(agent, AgentEvent::Lost, now, &mut self.idle, cause);
            }
        }
    }

    fn tick(&mut self, now: UnixMs) {
        let ttl = self.config.heartbeat_ttl.as_millis() as i64;
        let lapsed: Vec<String> = self
            .sidecars
            .iter()
            .filter(|(_, s)| s.outbox.is_some() && s.last_seen.load(Ordering::Relaxed) + ttl <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for sidecar_id in lapsed {
            warn!(sidecar_id, "sidecar heartbeat lapsed; marking it offline");
            let session = self.sidecars[&sidecar_id].session;
            self.session_closed(&sidecar_id, session, now);
        }
        for task_id in self.queue.expired(now) {
            self.lease_lost(task_id, "lease expired", now);
        }
        self.flag_stalled(now);
        self.requeue_past_drain_deadlines(now);
        self.queue.promote_due(now);
        self.expire(now);
        if now - self.last_key_sweep >= KEY_SWEEP_INTERVAL_MS {
            self.last_key_sweep = now;
            let retention = self.config.idempotency_retention.as_millis() as i64;
            self.by_key.retain(|_, id| queue::submitted_at(*id) + retention > now);
        }
    }

    fn committed(&mut self, tickets: Vec<AfterCommit>, result: Result<(), Arc<store::Error>>, now: UnixMs) {
        if let Err(err) = result {
            // The hub can no longer promise durability: stop accepting work. Submits that
            // were waiting learn it (unless the log was synced and they were answered already);
            // everything else stays in memory only.
            self.handle.healthy.store(false, Ordering::Relaxed);
            let failed = || Err(Error::Storage(err.to_string()));
            for ticket in tickets {
                if let AfterCommit::Submitted { answer: Some(answer), .. } = ticket {
                    let _ = answer.0.send(failed());
                }
            }
            for (_, waiters) in self.pending_submits.drain() {
                for (reply, _) in waiters {
                    let _ = reply.send(failed());
                }
            }
            return;
        }
        for ticket in tickets {
            match ticket {
                AfterCommit::Submitted { id, answer } => {
                    debug_assert!(answer.is_none(), "the submitter is answered on the writer thread");
                    let task = &self.tasks[&id];
                    let state = task.state;
                    for (reply, existing) in self.pending_submits.remove(&id).unwrap_or_default() {
                        let _ = reply.send(Ok(Submitted { task: Task::clone(task), existing }));
                    }
                    match state {
                        TaskState::Queued => self.wait(id, None),
                        TaskState::Waiting => self.settle_dependencies(id, now),
                        _ => {}
                    }
                    self.notify(id, now);
                }
                AfterCommit::Assigned { task_id, lease_generation } => {
                    let Some(lease) = self.queue.lease(task_id).cloned() else { continue };
                    if lease.generation != lease_generation {
                        continue;
                    }
                    if self.tasks[&task_id].state.is_terminal() {
                        // Cancelled while its dispatch was committing: the assignment never
                        // leaves, so nothing runs; the lease ends here and the agent is free.
                        self.release(task_id, now);
                        self.notify(task_id, now);
                        continue;
                    }
                    let task = &self.tasks[&task_id];
                    let message = ToSidecar::Assign {
                        task_id,
                        lease_generation,
                        attempt: task.attempt,
                        agent_id: lease.agent_id.clone(),
                        spec: Box::new(task.spec.clone()),
                    };
                    self.send_to(&lease.sidecar_id, message);
                    self.notify(task_id, now);
                }
                AfterCommit::Changed(id) => self.notify(id, now),
                AfterCommit::Answer { task_id, reply } => {
                    let _ = reply.send(Ok(Task::clone(&self.tasks[&task_id])));
                    self.notify(task_id, now);
                }
                AfterCommit::Requeued { task_id, reply } => {
                    let task = &self.tasks[&task_id];
                    let queued = task.state == TaskState::Queued;
                    let _ = reply.send(Ok(Task::clone(task)));
                    if queued {
                        self.wait(task_id, None);
                    }
                }
                AfterCommit::Purged { count, reply } => {
                    let _ = reply.send(Ok(count));
                }
                AfterCommit::Then(answer) => answer(),
            }
        }
    }

    /// Tells watchers about a durable change. A task that is final and no longer leased has
    /// nothing more to say: its feed is finished and dropped, and its output, now on disk, leaves
    /// memory.
    fn notify(&mut self, id: TaskId, now: UnixMs) {
        let settled = self.tasks[&id].state.is_terminal() && self.queue.lease(id).is_none();
        if let Some(feed) = self.feeds.get(&id) {
            if settled {
                feed.finish(&self.tasks[&id]);
                self.feeds.remove(&id);
            } else {
                feed.update(&self.tasks[&id]);
            }
        }
        if settled {
            strip_output(self.tasks.get_mut(&id).expect("a notified task exists"));
            for dependent in self.dependents.remove(&id).unwrap_or_default() {
                self.settle_dependencies(dependent, now);
            }
        }
    }

    /// Places ready tasks on idle agents: lane then age, each on the sidecar with the most idle
    /// agents that can run it (a stand-in until the scheduler lands).
    fn dispatch(&mut self, now: UnixMs) {
        if self.shutting_down {
            return;
        }
        let ttl = self.config.lease_ttl.as_millis() as i64;
        loop {
            if self.idle.is_empty() || self.queue.n_ready() == 0 {
                return;
            }
            let sidecars = &self.sidecars;
            let tasks = &self.tasks;
            let idle = &self.idle.by_sidecar;
            let popped = self.queue.pop_ready(now, |id| {
                let task = &tasks[&id];
                if task.spec.limits.deadline_unix_ms.is_some_and(|deadline| deadline <= now) {
                    return None; // Expired; the next tick dead-letters it.
                }
                let needed = task.spec.work.capability();
                idle.iter()
                    .filter(|(sid, _)| {
                        sidecars
                            .get(*sid)
                            .is_some_and(|s| s.is_open() && s.hello.capabilities.iter().any(|c| c == needed))
                    })
                    .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
                    .and_then(|(sid, agents)| Some((sid.clone(), agents.first()?.clone())))
            });
            let Some((task_id, (sidecar_id, agent_id))) = popped else { return };
            if let Some(deadline) = self.tasks[&task_id].spec.limits.deadline_unix_ms {
                self.deadlines.remove(&(deadline, task_id));
            }
            let task = self.tasks.get_mut(&task_id).expect("a ready task exists");
            task.attempt += 1;
            task.lease_generation += 1;
            task.agent_id = Some(agent_id.clone());
            task.sidecar_id = Some(sidecar_id.clone());
            task.outcome = None;
            task.set_state(TaskState::Dispatched, "", now);
            let lease_generation = task.lease_generation;
            let lease =
                Lease { generation: lease_generation, sidecar_id, agent_id: agent_id.clone(), expires_at: now + ttl };
            self.queue.grant(task_id, lease);
            let agent = self.agents.get_mut(&agent_id).expect("an idle agent exists");
            agent.task_id = Some(task_id);
            agent.last_activity = now;
            move_agent(agent, AgentEvent::Assign, now, &mut self.idle, &format!("assigned task {task_id}"));
            self.persist(task_id, AfterCommit::Assigned { task_id, lease_generation });
        }
    }

    fn begin_shutdown(&mut self, now: UnixMs) {
        self.shutting_down = true;
        if self.config.cancel_inflight_on_shutdown {
            let leased: Vec<TaskId> = self.tasks.values().filter(|t| t.state.is_leased()).map(|t| t.id).collect();
            for id in leased {
                let (reply, _) = oneshot::channel();
                self.cancel(id, "hub shutting down".to_owned(), reply, now);
            }
        }
    }

    fn agent_views(&self) -> Vec<AgentView> {
        self.agents.values().map(|agent| self.agent_view(agent)).collect()
    }

    fn agent_view(&self, agent: &Agent) -> AgentView {
        let sidecar = self.sidecars.get(&agent.sidecar_id);
        AgentView {
            id: agent.id.clone(),
            sidecar_id: agent.sidecar_id.clone(),
            hostname: sidecar.map(|s| s.hello.hostname.clone()).unwrap_or_default(),
            state: agent.state,
            task_id: agent.task_id,
            state_since_unix_ms: agent.state_since,
            last_seen_unix_ms: sidecar.map(|s| s.last_seen.load(Ordering::Relaxed)).unwrap_or_default(),
            capabilities: sidecar.map(|s| s.hello.capabilities.clone()).unwrap_or_default(),
            tags: sidecar.map(|s| s.hello.tags.clone()).unwrap_or_default(),
            version: sidecar.map(|s| s.hello.version.clone()).unwrap_or_default(),
            stalled: agent.stalled,
            last_activity_unix_ms: agent.last_activity,
            cordoned: self.cordons.contains_key(&agent.sidecar_id),
        }
    }
}

/// [`Core::wait`] for a task the core does not hold yet (restoring).
/// Whether a submit with an idempotency key asks for what the key's first task asked for. The
/// core sorts and dedups dependencies on submit, so they are compared that way.
fn same_submission(first: &TaskSpec, again: &TaskSpec) -> bool {
    if first.depends_on.len() == again.depends_on.len() && first.depends_on == again.depends_on {
        return first == again;
    }
    let mut normalized = again.clone();
    normalized.depends_on.sort();
    normalized.depends_on.dedup();
    *first == normalized
}

fn enqueue(queue: &mut Queue, deadlines: &mut BTreeSet<(UnixMs, TaskId)>, task: &Task, ready_at: Option<UnixMs>) {
    match ready_at {
        Some(at) => queue.push_delayed(task.id, task.spec.priority, at),
        None => queue.push_ready(task.id, task.spec.priority),
    }
    if let Some(deadline) = task.spec.limits.deadline_unix_ms {
        deadlines.insert((deadline, task.id));
    }
}

/// Drops the retained output bytes (their totals stay), for summaries and for finished tasks
/// whose output is on disk.
fn strip_output(task: &mut Task) {
    if let Some(outcome) = &mut task.outcome {
        outcome.stdout = Vec::new();
        outcome.stderr = Vec::new();
    }
}

/// Idle agents by sidecar.
#[derive(Default)]
struct IdleIndex {
    by_sidecar: HashMap<String, std::collections::BTreeSet<String>>,
}

impl IdleIndex {
    fn insert(&mut self, agent: &Agent) {
        if agent.state == AgentState::Idle {
            self.by_sidecar.entry(agent.sidecar_id.clone()).or_default().insert(agent.id.clone());
        }
    }

    fn remove(&mut self, agent: &Agent) {
        if let Some(agents) = self.by_sidecar.get_mut(&agent.sidecar_id) {
            agents.remove(&agent.id);
            if agents.is_empty() {
                self.by_sidecar.remove(&agent.sidecar_id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_sidecar.is_empty()
    }
}

/// The agent holding `task_id`'s lease.
fn leased_agent<'a>(queue: &Queue, agents: &'a mut BTreeMap<String, Agent>, task_id: TaskId) -> Option<&'a mut Agent> {
    agents.get_mut(&queue.lease(task_id)?.agent_id)
}

/// Applies `event` to an agent through the transition table, recording the change and its
/// cause; a transition the table refuses is logged and changes nothing.
fn move_agent(agent: &mut Agent, event: AgentEvent, now: UnixMs, idle: &mut IdleIndex, cause: &str) {
    match agent::transition(agent.state, event) {
        Ok(to) => {
            if to != agent.state {
                idle.remove(agent);
                if agent.history.len() == agent::HISTORY_LEN {
                    agent.history.pop_front();
                }
                let from = agent.state;
                agent.history.push_back(Transition { at_unix_ms: now, from, to, cause: cause.to_owned() });
                agent.state = to;
                agent.state_since = now;
                idle.insert(agent);
            }
        }
        Err(err) => warn!(agent_id = agent.id, error = %err, cause, "refused an agent transition"),
    }
}

/// The final state and reason for an outcome. Only infrastructure failures are retried (by
/// lease expiry); a command that ran and failed is final.
fn judge(outcome: &Outcome) -> (TaskState, String) {
    if let Some(error) = &outcome.error {
        return (TaskState::Failed, error.clone());
    }
    if outcome.timed_out {
        return (TaskState::Failed, format!("timed out after {} ms", outcome.duration_ms));
    }
    match outcome.exit {
        Exit::Code(0) => (TaskState::Succeeded, String::new()),
        Exit::Code(code) => (TaskState::Failed, format!("exit code {code}")),
        Exit::Signal(signal) => (TaskState::Failed, format!("killed by signal {signal}")),
        Exit::Unknown => (TaskState::Failed, "ended without an exit status".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SpecDefaults;

    /// A submitter is answered from the writer thread, possibly before the core hears of the
    /// commit. Whatever it asks next must still find the task, and a cancel that wins that race
    /// must not be undone when the commit arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_submitter_asks_right_after_its_answer_sees_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.redb")).unwrap();
        let (hub, core) = Core::start(Config::default(), &store).unwrap();
        let spec = || TaskSpec::shell(vec!["true".into()], &SpecDefaults::default());
        let rounds = 200;
        for _ in 0..rounds {
            // Cancelled straight after the answer.
            let lone = hub.submit(spec()).await.unwrap().task;
            assert_eq!(hub.cancel(lone.id, String::new()).await.unwrap().state, TaskState::Cancelled);
            // Depended on straight after the answer, then cancelled, which cancels the dependent.
            let first = hub.submit(spec()).await.unwrap().task;
            let mut after = spec();
            after.depends_on = vec![first.id];
            assert_eq!(hub.submit(after).await.unwrap().task.state, TaskState::Waiting);
            assert_eq!(hub.cancel(first.id, String::new()).await.unwrap().state, TaskState::Cancelled);
        }
        let stats = hub.stats().await.unwrap();
        assert_eq!((stats.tasks, stats.ready, stats.waiting_on_dependencies), (3 * rounds, 0, 0), "{stats:?}");
        for task in hub.list(None, 3 * rounds).await.unwrap() {
            assert_eq!(task.state, TaskState::Cancelled, "{}: {}", task.id, task.state_reason);
        }
        hub.shutdown().await;
        core.await.unwrap();
    }
}
