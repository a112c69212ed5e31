//! The hub core: one task that owns the queue, the fleet and every task record.
//!
//! Components talk to it through a cheap, cloneable [`Handle`]; it reads one closed [`Event`]
//! enum in its loop and never blocks. The core is split in two:
//!
//! - [`State`] decides. It holds the tasks, the queue, the sidecars and their agents, and answers
//!   each event by changing itself and recording what should happen as `Action`s: changes to
//!   persist (each with its [`AfterCommit`] ticket), messages for sidecars, answers to callers
//!   (by [`RequestId`]), changes for the change stream, spans to export, a storage fault. It
//!   never touches the store, a socket, a clock, a reply channel or a global, and its randomness
//!   (task ids, span ids, retry jitter) comes from a generator seeded once, so its logic is
//!   tested without any of them (`tests/`, and the model-based property test in
//!   `tests/model.rs`). What it still holds of the runtime: the sessions' outboxes, watchers'
//!   feeds, and the metric handles it counts into.
//! - [`Core`] runs the loop: it reads events, hands them to the state with the time, and carries
//!   out the actions: writes go to the storage writer, messages into the sessions' outboxes,
//!   answers to the callers it keeps by request id, changes to the broadcast channel, spans to
//!   the exporter. Whatever must wait for durability (answering a submit, sending an
//!   assignment, announcing a result) happens when the ticket comes back as
//!   [`Event::Committed`].
//!
//! The decisions are grouped by concern: `tasks` (submits, dependencies, retries, dead
//! letters), `leases` (what sidecars report under a lease, dispatch, time passing), `sessions`
//! (sidecars and agents), `commit` (what follows a commit), `fleet_ops` (drain, hosts, LLM
//! endpoints); `handle` is the interface, `messages` what the core answers sessions and
//! submitters.
//!
//! **Architecture Invariant:** the core never touches a prost type or a socket. It speaks to
//! sidecar sessions through [`ToSidecar`] messages (the link protocol, `agentcom_types::link`) in
//! their outboxes; the gRPC layer converts them with `agentcom_types::wire::link`.
//!
//! In detail:
//!
//! `core`: the hub actor, a state machine that emits actions. `State` owns every task record, the
//! queue, sidecars and agents (each keeps its last 32 transitions with time and cause), hosts, the
//! registry, and per-task feeds; it answers each event by changing itself and recording
//! `Action`s. `Core` is the loop: it hands events to the state with the time and carries the
//! actions out.
//!
//! By concern: `handle.rs` (the cloneable `Handle`, the closed `Event` enum, what reaches the loop),
//! `messages.rs` (request ids and typed `Reply`s, what the core answers sessions and submitters),
//! `config.rs` (the core's `Config` with the defaults the binaries show, and the `Error` it answers
//! with), `tasks.rs` (restore, submits and idempotency, dependencies, cancel, retries, dead
//! letters, deadlines), `leases.rs` (fenced sidecar reports, release and loss of leases, the tick),
//! `placing.rs` (dispatch through `sched`, the blocked set and what unblocks it (the idle index
//! notes sidecars that gained an agent or changed inventory), the tier fallback, the decisions kept
//! for `explain` (last 4 per task, 10,000 tasks, in memory) and `why`, and the `sched::Fleet` the
//! core lends `sched`, with `placing`, what placement knows of each sidecar), `sessions.rs` (hello and reclaim, session loss, agents), `commit.rs` (what
//! follows a commit, and storage faults and their recovery), `retention.rs` (finished tasks by
//! finish time: outputs dropped past `--retain-output` or beyond `--retain-output-bytes`, oldest
//! first, records forgotten past `--retain-tasks`, at most 1,000 a tick), `fleet_ops.rs` (drain and
//! cordon, stall flags, host views, registry changes, persisted only when something other than the
//! check time changed), `kept.rs` (the tasks by id: decoded until they settle, then packed as their
//! stored record (`store::Packed`); a read of a packed task unpacks a copy, a change (a dead letter
//! retried, retention) unpacks it in place, and settling packs it again). `tests/` drives the state
//! with no store and no runtime: fencing, reclaim on reconnect, retry against dead letter, drain
//! deadlines, dependency cascades.
//!
//! Work that must wait for durability (answering a submit, sending an assignment, telling watchers)
//! travels as an `AfterCommit` ticket and runs when the commit comes back; a submitter's answer
//! goes out from the writer thread as soon as the log is synced, without waiting for the core
//! (the loop hands the writer the submitter's channel with the ticket, `commit::Ticket`, and
//! takes it back if the log was not synced).
//!
//! A result's end is visible only once durable: the core takes a result at once (the lease is
//! released, retries decided), but every read (`Get`, `List`, `Watch`, the change stream) is shown
//! the task as it was (`State::shown`) until the `AfterCommit::Stored` ticket of the write holding
//! the result and its output returns; then the sidecar is sent `ToSidecar::Stored`. A sidecar keeps
//! each result until then and sends those it still holds in every new session; a result sent again
//! for an attempt whose result the hub has is stored again and acknowledged (`leases.rs`,
//! `stored_again`). While storage fails (`commit.rs`, `storage_failed`), submits are refused with
//! `Error::StorageFault`, tasks whose changes were lost are noted and written again at recovery,
//! and the sessions of sidecars whose results were lost are ended then, so that they send them
//! again.

mod changes;
mod commit;
mod config;
mod fleet_ops;
mod handle;
mod kept;
mod leases;
mod messages;
mod observe;
mod placing;
mod retention;
mod sessions;
mod spans;
mod tasks;
#[cfg(test)]
mod tests;
pub mod triggers;
pub mod workflows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub use self::changes::{Change, Changes};
pub use self::commit::AfterCommit;
use self::commit::Ticket;
pub use self::config::{Config, Error};
pub use self::config::{DEFAULT_RETAIN_OUTPUT, DEFAULT_RETAIN_OUTPUT_BYTES, DEFAULT_RETAIN_TASKS};
use self::handle::Inbound;
pub use self::handle::{Event, Handle, ModelStat, QueueStats, Recorded, RecordedKind, WatchReply, WhyAnswer};
pub use self::leases::GATEWAY_KEY;
pub use self::messages::{Joined, Submitted};
pub use crate::fleet::{AgentDetail, AgentView, HostView};
pub use crate::link::{Assignment, FromSidecar, Hello, RunningTask, ToSidecar, Welcome};

pub use self::messages::{Answer, RequestId};
use self::messages::{Reply, SubmitWaiter};
use self::sessions::{Agent, Sidecar};
use crate::domain::*;
use crate::feed::Feed;
use crate::fleet::{self, Cordon};
use crate::queue::Queue;
use crate::sched::IdleIndex;
use crate::store::{self, Op, Store, Writer};

/// What the state decided should happen, for the loop to carry out, in order.
pub(crate) enum Action {
    /// Changes to persist, with the ticket that comes back once they are durable. One event's
    /// writes go into one commit, in order.
    Write(Vec<Op>, AfterCommit),
    /// A message for a sidecar's session, by sidecar id.
    Send(String, ToSidecar),
    /// An answer for the caller of a request.
    Reply(RequestId, Answer),
    /// A change for the change stream's subscribers.
    Publish(Arc<Change>),
    /// A span of a task's trace, to end (and export) at the time given.
    Span(Box<agentcom_metrics::trace::Span>, std::time::SystemTime),
    /// Storage failed (`Some(why)`: the hub can no longer promise durability), or works again.
    Fault(Option<String>),
}

/// Everything the core decides with. See the module documentation.
pub(crate) struct State {
    config: Config,
    /// The metric handles the core records into.
    recorded: observe::Recorded,
    /// What the current event's decisions asked for; the loop takes it after each event.
    fx: Vec<Action>,
    /// Where task ids, span ids and retry jitter come from: seeded once, so the same seed and
    /// events make the same decisions.
    rng: rand::rngs::SmallRng,
    /// Changes the storage writer has queued, as of the current event (admission control).
    write_backlog: usize,
    /// Every task: decoded while it is not settled, packed once it is (`kept`).
    tasks: kept::Tasks,
    by_key: HashMap<String, TaskId>,
    /// Tasks whose end is not durable yet, as they were before it: what reads show until the
    /// commit that holds the end returns (and, if it fails, until the result is stored again).
    shown: HashMap<TaskId, Box<Task>>,
    /// Finished tasks by when they finished, for retention.
    retained: retention::Retained,
    /// Why storage takes no changes, while it does not: submits are refused until it recovers.
    storage_fault: Option<String>,
    /// Tasks whose last change did not reach storage: written again once storage recovers.
    unstored: BTreeSet<TaskId>,
    /// Sidecars with results whose commit failed: once storage works again, their sessions
    /// are ended so that they send those results again.
    resend: std::collections::HashSet<String>,
    /// Submits not yet durable, with everyone waiting on them.
    pending_submits: HashMap<TaskId, Vec<SubmitWaiter>>,
    queue: Queue,
    /// Waiting tasks by the unfinished dependency they wait on.
    dependents: HashMap<TaskId, Vec<TaskId>>,
    /// Deadlines of tasks waiting to start: (deadline, id).
    deadlines: BTreeSet<(UnixMs, TaskId)>,
    sidecars: HashMap<String, Sidecar>,
    /// What placement knows of each sidecar (`sched::Sidecar`), kept beside its session: set at
    /// hello, closed with the session, its memory and GPU figures from each resource report.
    placing: crate::sched::Sidecars,
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
    /// LLM requests placed on each endpoint whose lease still runs.
    in_flight: HashMap<String, u32>,
    /// Load times and speeds observed per sidecar and model.
    learned: crate::sched::Learned,
    /// What each gateway key spent, by day and model (stored as it changes).
    ledger: crate::usage::Ledger,
    /// Blocked tasks placed by their tier's model, for the tier fallback.
    tier_waits: HashMap<TaskId, crate::sched::TierWait>,
    tier_fallbacks: u64,
    /// Pre-warms asked for and not yet answered, by model.
    preloads: HashMap<String, placing::Preloading>,
    prewarms: u64,
    escalations: u64,
    /// When the waiting tasks are next looked at for pre-warming.
    next_prewarm_scan: UnixMs,
    /// Placement decisions of recent tasks, for `explain`.
    decisions: placing::Decisions,
    /// What the change stream has yet to send, and what it sent last.
    changes: changes::Outbox,
    /// Workflow runs, and which tasks are their steps.
    runs: workflows::Runs,
}

impl State {
    pub(crate) fn new(config: Config, registry: fleet::Registry, cordons: HashMap<String, Cordon>, seed: u64) -> State {
        let aging_step_ms = config.aging_step.as_millis() as i64;
        State {
            recorded: observe::Recorded::new(&config.metrics),
            config,
            fx: Vec::new(),
            rng: rand::SeedableRng::seed_from_u64(seed),
            write_backlog: 0,
            tasks: kept::Tasks::default(),
            by_key: HashMap::new(),
            shown: HashMap::new(),
            retained: retention::Retained::default(),
            storage_fault: None,
            unstored: BTreeSet::new(),
            resend: std::collections::HashSet::new(),
            pending_submits: HashMap::new(),
            queue: Queue::new(aging_step_ms),
            dependents: HashMap::new(),
            deadlines: BTreeSet::new(),
            sidecars: HashMap::new(),
            placing: crate::sched::Sidecars::default(),
            agents: BTreeMap::new(),
            idle: IdleIndex::default(),
            feeds: HashMap::new(),
            next_session: 1,
            last_key_sweep: 0,
            shutting_down: false,
            stale_messages: 0,
            registry,
            cordons,
            in_flight: HashMap::new(),
            learned: crate::sched::Learned::default(),
            ledger: crate::usage::Ledger::default(),
            tier_waits: HashMap::new(),
            tier_fallbacks: 0,
            preloads: HashMap::new(),
            prewarms: 0,
            escalations: 0,
            next_prewarm_scan: 0,
            decisions: placing::Decisions::default(),
            changes: changes::Outbox::new(),
            runs: workflows::Runs::default(),
        }
    }

    /// Takes what the decisions so far asked for, in order.
    pub(crate) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.fx)
    }

    /// Asks for changes to be persisted; `ticket` comes back once they are durable.
    fn write(&mut self, ops: Vec<Op>, ticket: AfterCommit) {
        self.fx.push(Action::Write(ops, ticket));
    }

    /// Answers a caller.
    fn answer<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        let (id, answer) = reply.with(value);
        self.fx.push(Action::Reply(id, answer));
    }

    /// A task as everyone is shown it: as it was before an end that is not durable yet.
    fn visible(&self, id: TaskId) -> Option<std::borrow::Cow<'_, Task>> {
        match self.shown.get(&id) {
            Some(shown) => Some(std::borrow::Cow::Borrowed(&**shown)),
            None => self.tasks.get(&id),
        }
    }

    /// Persists a task as it is now. Watchers see the change once it is durable, through the ticket.
    fn persist(&mut self, id: TaskId, ticket: AfterCommit) {
        let task = Box::new(self.tasks.get(&id).expect("persisting a known task").into_owned());
        self.write(vec![Op::PutTask(task)], ticket);
    }

    /// Asks for a message to reach a sidecar's session (dropped if it has none).
    fn send_to(&mut self, sidecar_id: &str, message: ToSidecar) {
        self.fx.push(Action::Send(sidecar_id.to_owned(), message));
    }

    /// Work still leased, which a shutdown that cancels in-flight work waits for.
    fn leased(&self) -> usize {
        self.queue.n_leased()
    }
}

/// The loop around a [`State`]: events in, actions out. It holds what the state must not: the
/// callers waiting for answers, the change stream's channel, the storage writer.
pub struct Core {
    state: State,
    events: mpsc::UnboundedReceiver<Inbound>,
    healthy: Arc<AtomicBool>,
    /// Why storage takes no changes, while it does not (`/readyz` says it).
    fault: Arc<std::sync::Mutex<Option<String>>>,
    writer: Option<Writer<Ticket>>,
    /// Callers waiting for an answer, by request.
    replies: HashMap<RequestId, oneshot::Sender<Answer>>,
    /// The change stream (`Handle::changes`).
    changes: Changes,
}

impl Core {
    /// Loads the stored tasks and starts the core and its storage writer. Tasks that were
    /// running when the hub stopped keep their leases for one lease TTL, so their sidecars can
    /// reconnect and claim them before they are requeued.
    pub fn start(mut config: Config, store: &Store) -> Result<(Handle, tokio::task::JoinHandle<()>), store::Error> {
        let loading = std::time::Instant::now();
        let tasks = store.load_queue()?;
        let fleet = store.load_fleet()?;
        let runs = store.load_workflows()?;
        let load_ms = loading.elapsed().as_millis() as u64;
        let (tx, rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let fault = Arc::new(std::sync::Mutex::new(None));
        let metrics = config.metrics.clone();
        store.stats().commit_metrics.get_or_init(|| crate::store::CommitMetrics {
            seconds: metrics.histogram("agentcom_storage_commit_seconds", &[]),
            changes: metrics.histogram("agentcom_storage_commit_changes", &[]),
        });
        config.traces = agentcom_metrics::trace::enabled();
        let mut state = State::new(config, fleet.registry, fleet.cordons, rand::random());
        let (changes, _) = tokio::sync::broadcast::channel(changes::BUFFER);
        let handle = Handle {
            events: tx.clone(),
            requests: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            healthy: healthy.clone(),
            fault: fault.clone(),
            store: store.clone(),
            metrics,
            changes: changes.clone(),
        };
        let writer = store.start_writer(Ticket::durable, move |tickets, result| {
            let _ = tx.send(Inbound::Committed { tickets, result });
        });
        state.learned.seed_verdicts(fleet.verdicts);
        state.ledger = crate::usage::Ledger::seed(fleet.usage);
        state.runs.triggers = triggers::Triggers::load(fleet.hooks, fleet.schedules, fleet.memories);
        let restoring = std::time::Instant::now();
        state.restore(tasks, now_ms());
        // Steps whose tasks settled before the hub stopped, their ends not yet recorded: their
        // outputs are read from storage here, before the loop starts.
        let settled = state.restore_runs(runs, now_ms());
        let mut outputs = Vec::with_capacity(settled.len());
        for id in settled {
            let stdout = store.get_task(id)?.and_then(|task| task.outcome).map(|o| o.stdout).unwrap_or_default();
            outputs.push((id, stdout));
        }
        state.steps_settled_at_start(outputs, now_ms());
        info!(load_ms, restore_ms = restoring.elapsed().as_millis() as u64, "queue loaded");
        let mut core =
            Core { state, events: rx, healthy, fault, writer: Some(writer), replies: HashMap::new(), changes };
        core.carry_out();
        let join = tokio::spawn(core.run());
        Ok((handle, join))
    }

    async fn run(mut self) {
        let config = &self.state.config;
        let tick_every = (config.heartbeat_interval / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let (grace, wait_for_inflight) = (config.shutdown_grace, config.cancel_inflight_on_shutdown);
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(Duration::from_millis(changes::FLUSH_EVERY_MS));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown_reply: Option<RequestId> = None;
        let mut shutdown_deadline: Option<tokio::time::Instant> = None;
        loop {
            if let Some(deadline) = shutdown_deadline {
                let settled = self.state.leased() == 0 || !wait_for_inflight;
                if settled || tokio::time::Instant::now() >= deadline {
                    if !settled {
                        warn!(leased = self.state.leased(), "shutdown grace ran out with work still leased");
                    }
                    break;
                }
            }
            let listening = self.changes.receiver_count() > 0;
            let inbound = tokio::select! {
                inbound = self.events.recv() => match inbound {
                    Some(inbound) => inbound,
                    None => break,
                },
                _ = ticker.tick() => Inbound::Event(Event::Tick),
                _ = flush.tick(), if listening => {
                    self.state.changes.listening(true);
                    self.state.flush_changes(now_ms());
                    self.carry_out();
                    continue;
                }
            };
            if let Some(writer) = &self.writer {
                self.state.write_backlog = writer.backlog();
            }
            // As of this turn: a subscriber that joins meanwhile starts from its own snapshot.
            self.state.changes.listening(listening);
            let event = match inbound {
                Inbound::Event(event) => event,
                Inbound::Ask(event, id, answer) => {
                    self.replies.insert(id, answer);
                    event
                }
                Inbound::Committed { tickets, result } => {
                    let tickets = tickets.into_iter().map(|ticket| self.unsent(ticket)).collect();
                    Event::Committed { tickets, result }
                }
            };
            match event {
                Event::Shutdown { reply } => {
                    self.state.begin_shutdown(now_ms());
                    shutdown_reply = Some(reply.id);
                    shutdown_deadline = Some(tokio::time::Instant::now() + grace);
                }
                event => self.state.handle(event, now_ms()),
            }
            self.carry_out();
        }
        // Close the writer: it commits what is queued, then the database closes with the last handle.
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        }
        // Sessions end when their outboxes drop; callers still waiting hear the hub is going.
        drop(self.state);
        let shutdown_answer = shutdown_reply.and_then(|id| self.replies.remove(&id));
        drop(self.replies);
        if let Some(answer) = shutdown_answer {
            let _ = answer.send(Box::new(()));
        }
        info!("hub core stopped");
    }

    /// A ticket back from the writer: a submitter the writer thread did not answer (the log
    /// was not synced) waits again here, and the state answers it.
    fn unsent(&mut self, ticket: Ticket) -> AfterCommit {
        let Ticket { after, early } = ticket;
        if let (Some(answer), Some(id)) = (early, after.early_reply()) {
            self.replies.insert(id, answer);
        }
        after
    }

    /// Carries out what the state asked for, in order; the event's writes go into one commit.
    fn carry_out(&mut self) {
        let mut writes = Vec::new();
        for action in self.state.take_actions() {
            match action {
                Action::Write(ops, after) => {
                    // A submitter is answered from the writer thread the moment the log is synced.
                    let early = after.early_reply().and_then(|id| self.replies.remove(&id));
                    writes.push((ops, Ticket { after, early }));
                }
                Action::Send(sidecar_id, message) => self.state.deliver(&sidecar_id, message),
                Action::Reply(id, answer) => {
                    if let Some(caller) = self.replies.remove(&id) {
                        let _ = caller.send(answer);
                    }
                }
                Action::Publish(change) => {
                    // No receiver left is not an error: the next event finds nobody listening.
                    let _ = self.changes.send(change);
                }
                Action::Span(span, end) => span.end_at(end),
                Action::Fault(fault) => {
                    self.healthy.store(fault.is_none(), Ordering::Relaxed);
                    *self.fault.lock().expect("fault lock poisoned") = fault;
                }
            }
        }
        if writes.is_empty() {
            return;
        }
        let Some(writer) = &self.writer else { return };
        let waiting: Vec<RequestId> = writes.iter().flat_map(|(_, ticket)| ticket.after.caller()).collect();
        if writer.write_together(writes).is_err() {
            // The writer is gone: nothing it was given will be answered.
            self.healthy.store(false, Ordering::Relaxed);
            for id in waiting {
                self.replies.remove(&id);
            }
        }
    }
}

impl State {
    /// Puts a message in a sidecar session's outbox. Never blocks: a session that is going away
    /// is handled when the core hears of it, and one that does not read has its leases lapse.
    fn deliver(&self, sidecar_id: &str, message: ToSidecar) {
        let Some(outbox) = self.sidecars.get(sidecar_id).and_then(|s| s.outbox.as_ref()) else { return };
        match outbox.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => debug!(sidecar_id, "dropped a message for a closed session"),
            Err(mpsc::error::TrySendError::Full(_)) => warn!(sidecar_id, "a sidecar is not reading its messages"),
        }
    }
}
