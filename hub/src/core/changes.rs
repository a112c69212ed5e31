//! The hub's change stream (`GET /api/v1/events`): what changed in the tasks, the fleet and the
//! queue, for the dashboard and any client that follows the hub live.
//!
//! Changes are coalesced, not logged: a task is marked when one of its changes is durable
//! ([`State::notify`]), a workflow run when one of its events is, and agents, hosts, endpoints and the queue are compared with what was
//! last sent (agents and hosts keep that key themselves, so the scan is a walk over them with
//! no lookups). A flush, at most every [`FLUSH_EVERY_MS`] and only while someone listens, sends
//! what differs. A hub nobody watches does nothing here but load one counter per notify.
//!
//! A subscriber that falls more than [`BUFFER`] changes behind misses some; the HTTP edge tells
//! it to fetch everything again (`event: resync`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::State;
use super::handle::QueueStats;
use crate::agent::AgentState;
use crate::domain::{Task, TaskId, UnixMs};
use crate::fleet::{AgentView, Cordon, Endpoint, HostView};

/// Changes a subscriber may be behind before it has to resync.
pub(super) const BUFFER: usize = 4096;
/// How often a flush runs while someone listens.
pub(super) const FLUSH_EVERY_MS: u64 = 100;
/// The queue's counts scan every task, so they are compared at most this often.
const QUEUE_EVERY_MS: UnixMs = 1000;

/// One change, as the core saw it when it flushed.
#[derive(Debug)]
pub enum Change {
    Task(Box<Task>),
    Agent(AgentView),
    /// Without its history.
    Host(HostView),
    /// The whole registry, with each endpoint's learned parallelism.
    Endpoints(Vec<(Endpoint, Option<u32>)>),
    Queue(QueueStats),
    /// A workflow run as lists show it (without its rows).
    Run(Box<super::workflows::RunView>),
}

pub type Changes = tokio::sync::broadcast::Sender<Arc<Change>>;

/// What an agent looks like to a watcher: its heartbeat alone is not a change.
pub(super) type AgentKey = (AgentState, UnixMs, Option<TaskId>, bool, bool);
/// A host's session, whether it is open, its cordon, agents and latest report's time.
pub(super) type HostKey = (u64, bool, Option<Cordon>, usize, Option<UnixMs>);

/// The core's side of the stream: what is marked, and what was last sent. The channel itself is
/// the loop's (`Core`): the state publishes through `Action::Publish`,
/// and is told with each event whether anyone listens.
pub(super) struct Outbox {
    /// Someone listens, as of the current event.
    live: bool,
    tasks: BTreeSet<TaskId>,
    runs: BTreeSet<ulid::Ulid>,
    /// Hosts known only by a stored cordon (no session since the hub started).
    cordoned_away: HashMap<String, HostKey>,
    endpoints: Vec<(Endpoint, Option<u32>)>,
    queue: Option<QueueStats>,
    last_queue: UnixMs,
}

impl Outbox {
    pub(super) fn new() -> Outbox {
        Outbox {
            live: false,
            tasks: BTreeSet::new(),
            runs: BTreeSet::new(),
            cordoned_away: HashMap::new(),
            endpoints: Vec::new(),
            queue: None,
            last_queue: 0,
        }
    }

    /// Whether someone listens now (the loop says, with each event).
    pub(super) fn listening(&mut self, live: bool) {
        self.live = live;
    }

    /// Someone listens.
    pub(super) fn live(&self) -> bool {
        self.live
    }

    pub(super) fn mark_task(&mut self, id: TaskId) {
        if self.live() {
            self.tasks.insert(id);
        }
    }

    pub(super) fn mark_run(&mut self, id: ulid::Ulid) {
        if self.live() {
            self.runs.insert(id);
        }
    }
}

impl State {
    fn publish(&mut self, change: Change) {
        self.fx.push(super::Action::Publish(Arc::new(change)));
    }

    /// Sends what changed since the last flush to the stream's subscribers.
    pub(super) fn flush_changes(&mut self, now: UnixMs) {
        if !self.changes.live() {
            // Nobody to tell: forget what was marked, so a later subscriber starts from its
            // own snapshot and the marks do not grow.
            self.changes.tasks.clear();
            self.changes.runs.clear();
            return;
        }
        for id in std::mem::take(&mut self.changes.runs) {
            if let Some(run) = self.run_view(id, false) {
                self.publish(Change::Run(Box::new(run)));
            }
        }
        for id in std::mem::take(&mut self.changes.tasks) {
            if let Some(task) = self.visible(id).map(std::borrow::Cow::into_owned) {
                self.publish(Change::Task(Box::new(task)));
            }
        }
        let any_cordon = !self.cordons.is_empty();
        let mut agents = Vec::new();
        for agent in self.agents.values_mut() {
            let cordoned = any_cordon && self.cordons.contains_key(&agent.sidecar_id);
            let key = (agent.state, agent.state_since, agent.task_id, agent.stalled, cordoned);
            if agent.shown != Some(key) {
                agent.shown = Some(key);
                agents.push(agent.id.clone());
            }
        }
        for id in agents {
            if let Some(view) = self.agents.get(&id).map(|agent| self.agent_view(agent)) {
                self.publish(Change::Agent(view));
            }
        }
        let mut hosts = Vec::new();
        for (id, sidecar) in self.sidecars.iter_mut() {
            let latest = sidecar.host.latest.as_ref().map(|r| r.at_unix_ms);
            let cordon = if any_cordon { self.cordons.get(id).copied() } else { None };
            let key = (sidecar.session, sidecar.is_open(), cordon, sidecar.agent_ids.len(), latest);
            if sidecar.shown != Some(key) {
                sidecar.shown = Some(key);
                hosts.push(id.clone());
            }
        }
        for (id, cordon) in &self.cordons {
            let key = (0, false, Some(*cordon), 0, None);
            if !self.sidecars.contains_key(id) && self.changes.cordoned_away.get(id) != Some(&key) {
                self.changes.cordoned_away.insert(id.clone(), key);
                hosts.push(id.clone());
            }
        }
        for id in hosts {
            if let Some(host) = self.host_view(&id, false) {
                self.publish(Change::Host(host));
            }
        }
        let endpoints = self.endpoint_listing();
        if endpoints != self.changes.endpoints {
            self.changes.endpoints = endpoints.clone();
            self.publish(Change::Endpoints(endpoints));
        }
        if now - self.changes.last_queue >= QUEUE_EVERY_MS {
            self.changes.last_queue = now;
            let stats = self.queue_stats();
            if self.changes.queue.as_ref() != Some(&stats) {
                self.changes.queue = Some(stats.clone());
                self.publish(Change::Queue(stats));
            }
        }
    }
}
