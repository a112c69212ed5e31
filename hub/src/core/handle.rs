//! How the rest of the hub talks to the core: the cheap, cloneable [`Handle`] and the closed
//! [`Event`] enum it sends (the messages between the core and sidecar sessions are in
//! `messages.rs`). The core's answer to each event starts in [`State::handle`](super::State).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::State;
use super::commit::AfterCommit;
use super::config::Error;
use super::messages::*;
use crate::domain::*;
use crate::feed::Feed;
use crate::fleet::{AgentDetail, AgentView, Endpoint, EndpointKind, HostView};
use crate::link::{FromSidecar, Hello, ToSidecar};
use crate::store::{self, Store};

/// Counts that describe the queue now.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueStats {
    pub tasks: usize,
    pub ready: usize,
    pub delayed: usize,
    pub waiting_on_dependencies: usize,
    pub leased: usize,
    pub dead_lettered: usize,
    /// Messages refused because the sender did not hold the task's current lease (fencing).
    pub stale_messages_refused: u64,
    /// Of the ready tasks, those placement could not place, waiting for the fleet to change.
    pub blocked: usize,
    /// Tasks moved to another tier since the hub started.
    pub tier_fallbacks: u64,
    /// Models loaded ahead of their waiting tasks (pre-warms asked for) since the hub started.
    pub prewarms: u64,
    /// Tasks escalated a tier after a failed verification since the hub started.
    pub escalations: u64,
    /// Ready tasks (blocked ones included) by lane, in `Lane::ALL` order.
    pub ready_by_lane: [usize; 5],
    /// When the oldest ready task was submitted.
    pub oldest_ready_unix_ms: Option<UnixMs>,
}

/// How a model's verified results went, for one kind of work at one tier.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelStat {
    pub model: String,
    pub kind: &'static str,
    pub tier: &'static str,
    pub passed: u64,
    pub failed: u64,
    /// With the prior (3 passes and 1 failure) included.
    pub pass_rate: f64,
}

/// A placement decision kept for `explain`.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: UnixMs,
    /// The attempt it placed, or (a fallback) the next one.
    pub attempt: u32,
    pub kind: RecordedKind,
    /// What changed, when the explanation does not say it (a fallback).
    pub note: Option<String>,
    pub explanation: crate::sched::Explanation,
}

impl Recorded {
    /// One line: where and why, or what changed (made when asked: placing is the hot path).
    pub fn reason(&self) -> String {
        self.note.clone().unwrap_or_else(|| crate::sched::summarize(&self.explanation))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordedKind {
    /// The task was placed.
    Placed,
    /// The task moved to another tier.
    Fallback,
    /// Its model was loaded ahead of it somewhere (a pre-warm).
    Prewarm,
    /// It failed its verification and goes again one tier up.
    Escalate,
}

impl RecordedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordedKind::Placed => "placed",
            RecordedKind::Fallback => "fallback",
            RecordedKind::Prewarm => "prewarm",
            RecordedKind::Escalate => "escalate",
        }
    }
}

/// Why a task is where it is: for a ready one, what placement says now.
#[derive(Clone, Debug)]
pub struct WhyAnswer {
    pub task_id: TaskId,
    pub state: TaskState,
    pub waiting: bool,
    /// A stable code: `dependencies`, `retry_backoff`, a placement wait (`no_sidecar`,
    /// `no_capable_agent`, `no_llm_endpoint`, `repository_not_allowed`, `all_busy`,
    /// `model_nowhere`, `local_only`, `over_budget`, `no_room`, `expired`), `placeable`,
    /// `running`, `finished`.
    pub code: String,
    pub message: String,
    /// Since its last change of state.
    pub since_unix_ms: UnixMs,
    pub tier: Tier,
    pub tier_source: crate::sched::TierSource,
    pub model: Option<String>,
    /// When it moves to another tier if nothing changes.
    pub fallback_at_unix_ms: Option<UnixMs>,
    pub explanation: Option<crate::sched::Explanation>,
    /// No connected sidecar could ever take it as the fleet is: it waits for one that can (it
    /// is not failed: one may join).
    pub stuck: bool,
}

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
        /// Only tasks with this label set to this value.
        label: Option<Box<(String, String)>>,
        limit: usize,
        reply: Reply<Vec<Task>>,
    },
    Cancel {
        id: TaskId,
        reason: String,
        reply: Reply<Result<Task, Error>>,
    },
    /// Service tasks that have not ended, oldest first, each with its sidecar's hostname.
    Services {
        reply: Reply<Vec<(Task, Option<String>)>>,
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
    /// What the gauges of `/metrics` say now.
    Metrics {
        reply: Reply<crate::metrics::Snapshot>,
    },
    Explain {
        id: TaskId,
        reply: Reply<Result<Vec<Recorded>, Error>>,
    },
    Why {
        id: TaskId,
        reply: Reply<Result<WhyAnswer, Error>>,
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
        hello: Hello,
        outbox: mpsc::Sender<ToSidecar>,
        reply: Reply<Result<(Joined, u64), Error>>,
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
    /// The gateway keys' spend, every row.
    Usage {
        reply: Reply<Vec<(crate::usage::Row, crate::usage::Spend)>>,
    },
    /// What one key spent on a UTC day and in its month.
    Spent {
        key: String,
        day: String,
        reply: Reply<(crate::usage::Spend, crate::usage::Spend)>,
    },
    Host {
        id: String,
        reply: Reply<Option<HostView>>,
    },
    Endpoints {
        reply: Reply<Vec<(Endpoint, Option<u32>)>>,
    },
    /// Verdicts of verified results by model, kind of work and tier.
    ModelStats {
        reply: Reply<Vec<ModelStat>>,
    },
    /// Changes outside the core's own state (tokens, the audit log), written in order with the
    /// rest; answered once durable, or with the storage error.
    Persist {
        ops: Vec<store::Op>,
        reply: Reply<Result<(), Error>>,
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
    /// Workflow runs: start, read, list, cancel, retry.
    Workflow(super::workflows::Request),
    Committed {
        tickets: Vec<AfterCommit>,
        result: Result<(), Arc<store::Error>>,
    },
    Tick,
    Shutdown {
        reply: Reply<()>,
    },
}

/// What reaches the core's loop: events, requests with where their answers go, and the storage
/// writer's reports. The loop keeps the answer channels; the state sees request ids only.
pub(crate) enum Inbound {
    Event(Event),
    /// A request (an event with a `reply`), and where its answer goes.
    Ask(Event, RequestId, oneshot::Sender<Answer>),
    Committed {
        tickets: Vec<super::commit::Ticket>,
        result: Result<(), Arc<store::Error>>,
    },
}

pub enum WatchReply {
    /// The task can still change: follow its feed.
    Live(Arc<Feed>),
    /// The task is final (its output is on disk).
    Final(Box<Task>),
}

/// A cheap, cloneable way to talk to the core.
#[derive(Clone)]
pub struct Handle {
    pub(super) events: mpsc::UnboundedSender<Inbound>,
    /// Where request ids come from.
    pub(super) requests: Arc<std::sync::atomic::AtomicU64>,
    pub(super) healthy: Arc<AtomicBool>,
    pub(super) fault: Arc<std::sync::Mutex<Option<String>>>,
    /// Finished tasks' output lives only on disk; reads of it go here, off the core.
    pub(super) store: Store,
    pub(super) metrics: crate::metrics::Shared,
    pub(super) changes: super::Changes,
}

impl Handle {
    /// Follows the hub's changes (`GET /api/v1/events`) from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<super::Change>> {
        self.changes.subscribe()
    }

    pub(super) async fn ask<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Event) -> Result<T, Error> {
        let id = RequestId(self.requests.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.events.send(Inbound::Ask(make(Reply::new(id)), id, tx)).map_err(|_| Error::ShuttingDown)?;
        let answer = rx.await.map_err(|_| Error::ShuttingDown)?;
        // The state answers a `Reply<T>` with a `T` only: anything else is a bug of the core's.
        Ok(*answer.downcast::<T>().expect("the core answers a request with the type it asked for"))
    }

    /// Tells the core something that needs no answer.
    fn tell(&self, event: Event) {
        let _ = self.events.send(Inbound::Event(event));
    }

    pub async fn submit(&self, spec: TaskSpec) -> Result<Submitted, Error> {
        // Its output (both streams, up to their cap) must fit the disk that stores it.
        let free = self.store.stats().free_bytes.load(Ordering::Relaxed);
        let most = spec.limits.max_output_bytes.saturating_mul(2);
        if free > 0 && most > free {
            let dir = self.store.path().parent().unwrap_or(std::path::Path::new("."));
            return Err(Error::NoRoom(format!(
                "limits.max_output_bytes {} (up to {} of output, both streams) is more than the hub's data disk has room for ({} free on the file system holding {}); lower it or free space",
                spec.limits.max_output_bytes,
                store::human_bytes(most),
                store::human_bytes(free),
                dir.display()
            )));
        }
        self.ask(|reply| Event::Submit { spec: Box::new(spec), reply }).await?
    }

    /// The task with its retained output (read from disk for a finished task).
    /// Submits and returns only the id and whether the idempotency key matched: all the
    /// streaming path acknowledges.
    pub async fn submit_id(&self, spec: TaskSpec) -> Result<(TaskId, bool), Error> {
        let submitted = self.submit(spec).await?;
        Ok((submitted.task.id, submitted.existing))
    }

    /// The task with its output, which is read from storage: the core keeps none.
    pub async fn get(&self, id: TaskId) -> Result<Task, Error> {
        let task = self.ask(|reply| Event::Get { id, reply }).await?.ok_or(Error::NotFound(id))?;
        self.with_output(task).await
    }

    /// `task` with the output stored for it. A task is shown ended only once its end (output
    /// included) is durable, so what is read here is that end's.
    async fn with_output(&self, mut task: Task) -> Result<Task, Error> {
        let Some(outcome) = &mut task.outcome else { return Ok(task) };
        let store = self.store.clone();
        let id = task.id;
        let (state, generation) = (task.state, task.lease_generation);
        // While storage is failing, the database holds what its last checkpoint did; a newer
        // end's output is in the log, readable again once storage recovers.
        let behind = |stored: Option<&Task>| {
            self.storage_fault().filter(|_| stored.is_none_or(|s| s.state != state || s.lease_generation != generation))
        };
        match tokio::task::spawn_blocking(move || store.get_task(id)).await {
            Ok(Ok(stored)) if let Some(fault) = behind(stored.as_ref()) => Err(Error::StorageFault(format!(
                "{fault}; the output of task {id} is in the write-ahead log and readable once storage recovers"
            ))),
            Ok(Ok(Some(stored))) => {
                if let Some(stored) = stored.outcome {
                    (outcome.stdout, outcome.stderr) = (stored.stdout, stored.stderr);
                }
                Ok(task)
            }
            Ok(Ok(None)) => Ok(task),
            Ok(Err(err)) => Err(Error::Storage(err.to_string())),
            Err(err) => Err(Error::Storage(err.to_string())),
        }
    }

    pub async fn list(&self, state: Option<TaskState>, limit: usize) -> Result<Vec<Task>, Error> {
        self.list_before(state, None, limit).await
    }

    /// Newest first, only tasks whose label `key` is `value` (a workflow run's steps).
    pub async fn list_labelled(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        label: (String, String),
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        self.ask(|reply| Event::List { state, before, label: Some(Box::new(label)), limit, reply }).await
    }

    /// Newest first, only tasks older than `before` (the last id of the previous page).
    pub async fn list_before(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        self.ask(|reply| Event::List { state, before, label: None, limit, reply }).await
    }

    /// Service tasks that have not ended, oldest first, each with its sidecar's hostname.
    pub async fn services(&self) -> Result<Vec<(Task, Option<String>)>, Error> {
        self.ask(|reply| Event::Services { reply }).await
    }

    pub async fn cancel(&self, id: TaskId, reason: String) -> Result<Task, Error> {
        self.ask(|reply| Event::Cancel { id, reason, reply }).await?
    }

    pub async fn watch(&self, id: TaskId) -> Result<Arc<Feed>, Error> {
        match self.ask(|reply| Event::Watch { id, reply }).await?? {
            WatchReply::Live(feed) => Ok(feed),
            WatchReply::Final(task) => Ok(Feed::new(self.with_output(*task).await?)),
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentView>, Error> {
        self.ask(|reply| Event::Agents { reply }).await
    }

    /// The metrics in the Prometheus text format, the gauges of this moment set first.
    pub async fn metrics(&self) -> Result<String, Error> {
        let snapshot = self.ask(|reply| Event::Metrics { reply }).await?;
        let hosts = self.hosts().await?;
        Ok(self.metrics.render(&snapshot, &hosts))
    }

    pub async fn stats(&self) -> Result<QueueStats, Error> {
        self.ask(|reply| Event::Stats { reply }).await
    }

    /// The placement decisions kept for a task, oldest first.
    pub async fn explain(&self, id: TaskId) -> Result<Vec<Recorded>, Error> {
        self.ask(|reply| Event::Explain { id, reply }).await?
    }

    /// Why a task waits (or that it does not).
    pub async fn why(&self, id: TaskId) -> Result<WhyAnswer, Error> {
        self.ask(|reply| Event::Why { id, reply }).await?
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

    /// What the gateway's keys spent, by UTC day, key and model.
    pub async fn usage(&self) -> Result<Vec<(crate::usage::Row, crate::usage::Spend)>, Error> {
        self.ask(|reply| Event::Usage { reply }).await
    }

    /// What `key` spent on `day` (UTC, `2026-12-08`) and in that day's month: what a budget is
    /// checked against.
    pub async fn spent(&self, key: String, day: String) -> Result<(crate::usage::Spend, crate::usage::Spend), Error> {
        self.ask(|reply| Event::Spent { key, day, reply }).await
    }

    pub async fn host(&self, id: String) -> Result<HostView, Error> {
        let missing = Error::UnknownName(format!("host {id} not found"));
        self.ask(|reply| Event::Host { id, reply }).await?.ok_or(missing)
    }

    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, Error> {
        Ok(self.endpoint_listing().await?.into_iter().map(|(e, _)| e).collect())
    }

    /// Verdicts of verified results by model, kind of work and tier.
    pub async fn model_stats(&self) -> Result<Vec<ModelStat>, Error> {
        self.ask(|reply| Event::ModelStats { reply }).await
    }

    /// Writes `ops` through the storage writer (the only writer once the hub runs) and waits
    /// until they are durable.
    pub async fn persist(&self, ops: Vec<store::Op>) -> Result<(), Error> {
        self.ask(|reply| Event::Persist { ops, reply }).await?
    }

    /// The newest `limit` entries of the audit log, newest first, read off the core.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<store::AuditEntry>, Error> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.audit(limit)).await {
            Ok(Ok(entries)) => Ok(entries),
            Ok(Err(err)) => Err(Error::Storage(err.to_string())),
            Err(err) => Err(Error::Storage(err.to_string())),
        }
    }

    /// The registry, each endpoint with the parallelism learned for it (if it says none).
    pub async fn endpoint_listing(&self) -> Result<Vec<(Endpoint, Option<u32>)>, Error> {
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
        self.tell(Event::EndpointChecked(Box::new(endpoint)));
    }

    /// Registers a sidecar session; returns the welcome and the session number to quote.
    pub async fn hello(&self, hello: Hello, outbox: mpsc::Sender<ToSidecar>) -> Result<(Joined, u64), Error> {
        self.ask(|reply| Event::Hello { hello, outbox, reply }).await?
    }

    pub fn from_sidecar(&self, sidecar_id: String, session: u64, message: FromSidecar) {
        self.tell(Event::FromSidecar { sidecar_id, session, message });
    }

    pub fn session_closed(&self, sidecar_id: String, session: u64) {
        self.tell(Event::SessionClosed { sidecar_id, session });
    }

    /// Stops the core: cancels in-flight work if configured, waits for it to be recorded.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Event::Shutdown { reply }).await;
    }

    /// False once storage has failed; `/readyz` reports it.
    /// Why storage takes no changes, while it does not.
    pub fn storage_fault(&self) -> Option<String> {
        self.fault.lock().expect("fault lock poisoned").clone()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.events.is_closed()
    }
}

impl State {
    /// The queue's counts now: one pass over the tasks.
    pub(super) fn queue_stats(&self) -> QueueStats {
        let count = |state| self.tasks.states().filter(|(_, s, _)| *s == state).count();
        QueueStats {
            tasks: self.tasks.len(),
            ready: self.queue.n_ready() + self.queue.n_blocked(),
            delayed: self.queue.n_delayed(),
            waiting_on_dependencies: count(TaskState::Waiting),
            leased: self.queue.n_leased(),
            dead_lettered: count(TaskState::DeadLettered),
            stale_messages_refused: self.stale_messages,
            blocked: self.queue.n_blocked(),
            tier_fallbacks: self.tier_fallbacks,
            prewarms: self.prewarms,
            escalations: self.escalations,
            ready_by_lane: self.queue.ready_by_lane(),
            oldest_ready_unix_ms: self.queue.oldest_ready().map(crate::queue::submitted_at),
        }
    }

    /// The LLM registry, with the parallelism learned for endpoints that were not told theirs.
    /// The registry as it is listed: the endpoints of a sidecar whose session is closed are
    /// unreachable through it, whatever its last report said.
    pub(super) fn endpoint_listing(&self) -> Vec<(Endpoint, Option<u32>)> {
        let learned = |e: &Endpoint| if e.parallel == 0 { self.learned.parallel(&e.id) } else { None };
        let listed = |e: &Endpoint| match &e.owner {
            crate::fleet::Owner::Sidecar(id) if self.sidecars.get(id).is_none_or(|s| s.outbox.is_none()) => Endpoint {
                healthy: false,
                error: Some(format!("unreachable: its sidecar {id} is offline")),
                ..e.clone()
            },
            _ => e.clone(),
        };
        self.registry.iter().map(|e| (listed(e), learned(e))).collect()
    }

    /// Answers one event: the decisions, whose effects the loop then carries out.
    pub(super) fn handle(&mut self, event: Event, now: UnixMs) {
        match event {
            Event::Submit { spec, reply } => {
                self.submit(*spec, reply, now);
                // Placed now, its dispatch joins the submit's commit.
                self.dispatch(now);
            }
            Event::Get { id, reply } => {
                self.answer(reply, self.visible(id).map(std::borrow::Cow::into_owned));
            }
            Event::List { state, before, label, limit, reply } => {
                // Summaries: the core holds no output (a single task's is read from storage).
                // A settled task is unpacked only when it is listed (or its labels are read).
                let before = before.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
                let labelled =
                    |task: &Task| label.as_deref().is_none_or(|(key, value)| task.spec.labels.get(key) == Some(value));
                let tasks = self
                    .tasks
                    .range((std::ops::Bound::Unbounded, before))
                    .rev()
                    .filter_map(|(id, kept_state, entry)| match self.shown.get(&id) {
                        Some(shown) => {
                            (state.is_none_or(|s| shown.state == s) && labelled(shown)).then(|| Task::clone(shown))
                        }
                        None if state.is_none_or(|s| kept_state == s) => {
                            let task = entry.task();
                            labelled(&task).then(|| task.into_owned())
                        }
                        None => None,
                    })
                    .take(limit)
                    .collect();
                self.answer(reply, tasks);
            }
            Event::Cancel { id, reason, reply } => self.cancel(id, reason, Some(reply), now),
            Event::Services { reply } => {
                let services = self
                    .tasks
                    .range(..)
                    .filter(|(_, state, _)| !state.is_terminal())
                    .filter_map(|(_, _, entry)| {
                        let task = entry.task();
                        matches!(task.spec.work, Work::Service(_)).then(|| task.into_owned())
                    })
                    .map(|task| {
                        let host = task.sidecar_id.as_ref().and_then(|id| self.sidecars.get(id));
                        let host = host.map(|s| s.hello.hostname.clone());
                        (task, host)
                    })
                    .collect();
                self.answer(reply, services);
            }
            Event::Watch { id, reply } => {
                // A result that could not be stored: no end can be shown until storage recovers.
                let unstored = self.storage_fault.as_ref().filter(|_| self.shown.contains_key(&id));
                let result = match (self.feeds.get(&id), unstored) {
                    (_, Some(fault)) => Err(Error::StorageFault(format!(
                        "{fault}; the result of task {id} is stored once storage works again"
                    ))),
                    (Some(feed), None) => Ok(WatchReply::Live(feed.clone())),
                    (None, None) => match self.visible(id) {
                        Some(task) if task.state.is_terminal() => Ok(WatchReply::Final(Box::new(task.into_owned()))),
                        Some(task) => {
                            let feed = Feed::new(task.into_owned());
                            self.feeds.insert(id, feed.clone());
                            Ok(WatchReply::Live(feed))
                        }
                        None => Err(Error::NotFound(id)),
                    },
                };
                self.answer(reply, result);
            }
            Event::Agents { reply } => {
                self.answer(reply, self.agent_views());
            }
            Event::Metrics { reply } => {
                self.answer(reply, self.metrics_snapshot(now));
            }
            Event::Stats { reply } => {
                self.answer(reply, self.queue_stats());
            }
            Event::Explain { id, reply } => {
                self.answer(reply, self.explain(id));
            }
            Event::Why { id, reply } => {
                self.answer(reply, self.why(id, now));
            }
            Event::RetryDeadLetter { id, reply } => self.retry_dead_letter(id, reply, now),
            Event::PurgeDeadLetters { finished_before, reply } => self.purge_dead_letters(finished_before, reply),
            Event::Hello { hello, outbox, reply } => {
                let joined = self.hello(hello, outbox, now);
                self.answer(reply, joined);
                self.dispatch(now);
            }
            Event::FromSidecar { sidecar_id, session, message } => {
                self.on_sidecar_message(&sidecar_id, session, message, now);
                self.dispatch(now);
            }
            Event::SessionClosed { sidecar_id, session } => self.session_closed(&sidecar_id, session, now),
            Event::GetAgent { id, reply } => {
                self.answer(reply, self.agent_detail(&id));
            }
            Event::Drain { sidecar_id, deadline, reply } => self.drain(sidecar_id, deadline, reply, now),
            Event::Uncordon { sidecar_id, reply } => self.uncordon(sidecar_id, reply, now),
            Event::Hosts { reply } => {
                self.answer(reply, self.host_views());
            }
            Event::Usage { reply } => {
                let rows = self.ledger.rows().map(|(row, spend)| (row.clone(), *spend)).collect();
                self.answer(reply, rows);
            }
            Event::Spent { key, day, reply } => self.answer(reply, self.ledger.spent(&key, &day)),
            Event::Host { id, reply } => {
                self.answer(reply, self.host_view(&id, true));
            }
            Event::ModelStats { reply } => {
                let stats = self.learned.verdicts().into_iter().map(|(model, kind, tier, tally)| ModelStat {
                    model,
                    kind,
                    tier,
                    passed: tally.passed,
                    failed: tally.failed,
                    pass_rate: tally.pass_rate(),
                });
                self.answer(reply, stats.collect());
            }
            Event::Endpoints { reply } => {
                self.answer(reply, self.endpoint_listing());
            }
            Event::Persist { ops, reply } => {
                self.write(ops, AfterCommit::Persisted(reply));
            }
            Event::AddEndpoint { url, kind, reply } => self.add_endpoint(url, kind, reply),
            Event::RemoveEndpoint { id, reply } => self.remove_endpoint(id, reply),
            Event::EndpointChecked(endpoint) => self.endpoint_checked(*endpoint),
            Event::Workflow(request) => self.workflow_request(request, now),
            Event::Committed { tickets, result } => {
                self.committed(tickets, result, now);
                self.dispatch(now);
            }
            Event::Tick => {
                self.tick(now);
                self.fire_schedules(now);
                self.dispatch(now);
            }
            Event::Shutdown { .. } => unreachable!("handled in run"),
        }
    }
}
