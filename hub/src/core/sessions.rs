//! The core's session side: sidecars joining (and claiming the leases they still hold),
//! leaving, and their agents, whose state changes only through the transition table.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::State;
use super::config::Error;
use super::messages::Joined;
use crate::agent::{self, AgentEvent, AgentState, Transition};
use crate::domain::*;
use crate::fleet::{self, AgentView};
use crate::link::{Hello, ToSidecar, Welcome};
use crate::queue::Lease;
use crate::sched::IdleIndex;

pub(super) struct Agent {
    pub(super) id: String,
    pub(super) sidecar_id: String,
    pub(super) state: AgentState,
    pub(super) task_id: Option<TaskId>,
    pub(super) state_since: UnixMs,
    /// Transitions, most recent last, at most [`agent::HISTORY_LEN`].
    pub(super) history: VecDeque<Transition>,
    /// The last sign of life of its task: assignment, start, output, progress.
    pub(super) last_activity: UnixMs,
    pub(super) stalled: bool,
    /// What the change stream last sent of it (see `changes.rs`).
    pub(super) shown: Option<super::changes::AgentKey>,
}

impl Agent {
    pub(super) fn new(id: String, sidecar_id: String, now: UnixMs) -> Agent {
        Agent {
            id,
            sidecar_id,
            state: AgentState::Offline,
            task_id: None,
            state_since: now,
            history: VecDeque::new(),
            last_activity: now,
            stalled: false,
            shown: None,
        }
    }
}

impl Sidecar {
    /// The session is up and its stream still reads our messages.
    pub(super) fn is_open(&self) -> bool {
        self.outbox.as_ref().is_some_and(|outbox| !outbox.is_closed())
    }
}

pub(super) struct Sidecar {
    pub(super) hello: Hello,
    pub(super) session: u64,
    /// `None` while no session is open.
    pub(super) outbox: Option<mpsc::Sender<ToSidecar>>,
    /// Shared with the session, which stores into it on every message.
    pub(super) last_seen: Arc<AtomicI64>,
    pub(super) agent_ids: Vec<String>,
    pub(super) host: fleet::Host,
    /// What the change stream last sent of it (see `changes.rs`).
    pub(super) shown: Option<super::changes::HostKey>,
}

impl State {
    pub(super) fn hello(
        &mut self,
        hello: Hello,
        outbox: mpsc::Sender<ToSidecar>,
        now: UnixMs,
    ) -> Result<(Joined, u64), Error> {
        if self.shutting_down {
            return Err(Error::ShuttingDown);
        }
        let sidecar_id = hello.sidecar_id.clone();
        // A second sidecar with an id that is connected would take over the first one's session
        // and its leases: refused, and the first keeps its work. (A sidecar that reconnects
        // while its old session still looks open is the same instance.)
        if let Some(old) = self.sidecars.get(&sidecar_id)
            && old.is_open()
            && hello.instance != 0
            && old.hello.instance != 0
            && old.hello.instance != hello.instance
        {
            warn!(sidecar_id, hostname = hello.hostname, "refused a second sidecar with an id that is connected");
            return Err(Error::Conflict(format!(
                "sidecar id {sidecar_id} is connected already (from host {}); this second sidecar with the same id was refused and the first keeps its work: give each sidecar its own --id",
                old.hello.hostname
            )));
        }
        let session = self.next_session;
        self.next_session += 1;
        let claimed: HashMap<TaskId, u64> = hello.running.iter().map(|r| (r.task_id, r.lease_generation)).collect();

        // Agents: reuse the ids of a returning sidecar, so its leases stay meaningful.
        let agent_ids: Vec<String> = (0..hello.slots).map(|slot| format!("{sidecar_id}/{slot}")).collect();
        if let Some(old) = self.sidecars.get(&sidecar_id) {
            for agent_id in &old.agent_ids {
                if !agent_ids.contains(agent_id)
                    && let Some(agent) = self.agents.remove(agent_id)
                {
                    self.idle.remove(&agent.sidecar_id, &agent.id);
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
        let mut kept = HashSet::new();
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
        let welcome = Joined {
            last_seen: last_seen.clone(),
            welcome: Welcome {
                sidecar_id: sidecar_id.clone(),
                agent_ids: agent_ids.clone(),
                heartbeat_interval: self.config.heartbeat_interval,
                lease_ttl: self.config.lease_ttl,
                hub_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        };
        let host = self.sidecars.remove(&sidecar_id).map(|old| old.host).unwrap_or_default();
        let mut placing = crate::sched::Sidecar {
            hostname: hello.hostname.clone(),
            capabilities: hello.capabilities.iter().collect(),
            tags: hello.tags.clone(),
            repo_allow: hello.repo_allow.clone(),
            open: true,
            ..Default::default()
        };
        placing.reported(host.latest.as_deref());
        self.placing.insert(sidecar_id.clone(), placing);
        self.sidecars.insert(
            sidecar_id.clone(),
            Sidecar { hello, session, outbox: Some(outbox), last_seen, agent_ids, host, shown: None },
        );
        if let Some(cordon) = self.cordons.get(&sidecar_id).copied() {
            self.cordon_agents(&sidecar_id, cordon, now);
        }
        // Work the sidecar still runs under a lease it no longer holds: stop it now. (A result
        // it lists that is here already is not work: it sends it again and hears it is stored.)
        for (task_id, lease_generation) in claimed {
            if !kept.contains(&task_id) && !self.result_taken(task_id, lease_generation) {
                let reason = "lease no longer held".to_owned();
                self.send_to(&sidecar_id, ToSidecar::Cancel { task_id, lease_generation, reason });
            }
        }
        Ok((welcome, session))
    }

    pub(super) fn session_closed(&mut self, sidecar_id: &str, session: u64, now: UnixMs) {
        let Some(sidecar) = self.sidecars.get_mut(sidecar_id) else { return };
        if sidecar.session != session {
            return;
        }
        sidecar.outbox = None;
        if let Some(placing) = self.placing.get_mut(sidecar_id) {
            placing.open = false;
        }
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

    pub(super) fn agent_views(&self) -> Vec<AgentView> {
        self.agents.values().map(|agent| self.agent_view(agent)).collect()
    }

    pub(super) fn agent_view(&self, agent: &Agent) -> AgentView {
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

/// Applies `event` to an agent through the transition table, recording the change and its
/// cause; a transition the table refuses is logged and changes nothing.
pub(super) fn move_agent(agent: &mut Agent, event: AgentEvent, now: UnixMs, idle: &mut IdleIndex, cause: &str) {
    match agent::transition(agent.state, event) {
        Ok(to) => {
            if to != agent.state {
                idle.remove(&agent.sidecar_id, &agent.id);
                if agent.history.len() == agent::HISTORY_LEN {
                    agent.history.pop_front();
                }
                let from = agent.state;
                agent.history.push_back(Transition { at_unix_ms: now, from, to, cause: cause.to_owned() });
                agent.state = to;
                agent.state_since = now;
                if to == AgentState::Idle {
                    idle.insert(&agent.sidecar_id, &agent.id);
                }
            }
        }
        Err(err) => warn!(agent_id = agent.id, error = %err, cause, "refused an agent transition"),
    }
}
