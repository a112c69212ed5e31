//! The core's fleet side: drain and cordon, stall detection, hosts and their resources, and the
//! LLM registry. Settings that must outlive a restart (cordons, endpoints) go through the same
//! writer as tasks, into the `fleet` table, and callers are answered once they are durable.

use tracing::{info, warn};

use super::State;
use super::commit::AfterCommit;
use super::config::Error;
use super::messages::Reply;
use super::sessions::move_agent;
use crate::agent::{AgentEvent, AgentState};
use crate::domain::*;
use crate::fleet::{self, AgentDetail, Cordon, Endpoint, EndpointKind, HostView, Owner};
use crate::link::ToSidecar;
use crate::store::Op;

impl State {
    fn unknown_sidecar(sidecar_id: &str) -> Error {
        Error::UnknownName(format!("sidecar {sidecar_id} not found (`hubctl hosts` lists them)"))
    }

    /// Cordons a sidecar: its agents take no new work. Durable; answered once committed.
    pub(super) fn drain(
        &mut self,
        sidecar_id: String,
        deadline: Option<UnixMs>,
        reply: Reply<Result<HostView, Error>>,
        now: UnixMs,
    ) {
        if !self.sidecars.contains_key(&sidecar_id) && !self.cordons.contains_key(&sidecar_id) {
            self.answer(reply, Err(Self::unknown_sidecar(&sidecar_id)));
            return;
        }
        let since_unix_ms = self.cordons.get(&sidecar_id).map_or(now, |c| c.since_unix_ms);
        let cordon = Cordon { since_unix_ms, deadline_unix_ms: deadline };
        self.cordons.insert(sidecar_id.clone(), cordon);
        info!(sidecar_id, deadline, "sidecar cordoned");
        self.cordon_agents(&sidecar_id, cordon, now);
        let view = self.host_view(&sidecar_id, false).expect("a sidecar or a cordon exists");
        self.write(
            vec![Op::PutCordon { sidecar_id: sidecar_id.clone(), cordon }],
            AfterCommit::Host { view: Box::new(view), reply },
        );
    }

    /// Moves a cordoned sidecar's agents to `draining` and tells the sidecar.
    pub(super) fn cordon_agents(&mut self, sidecar_id: &str, cordon: Cordon, now: UnixMs) {
        let Some(sidecar) = self.sidecars.get(sidecar_id) else { return };
        let cause = match cordon.deadline_unix_ms {
            Some(deadline) => format!("cordoned; running work requeued at {deadline} (unix ms)"),
            None => "cordoned".to_owned(),
        };
        for agent_id in &sidecar.agent_ids {
            if let Some(agent) = self.agents.get_mut(agent_id)
                && !matches!(agent.state, AgentState::Draining | AgentState::Offline)
            {
                move_agent(agent, AgentEvent::Drain, now, &mut self.idle, &cause);
            }
        }
        self.send_to(sidecar_id, ToSidecar::Drain { deadline_unix_ms: cordon.deadline_unix_ms });
    }

    pub(super) fn uncordon(&mut self, sidecar_id: String, reply: Reply<Result<HostView, Error>>, now: UnixMs) {
        if !self.sidecars.contains_key(&sidecar_id) && !self.cordons.contains_key(&sidecar_id) {
            self.answer(reply, Err(Self::unknown_sidecar(&sidecar_id)));
            return;
        }
        // The view is taken before the cordon goes: a sidecar known only by its cordon has none after.
        let mut view = self.host_view(&sidecar_id, false).expect("a sidecar or a cordon exists");
        view.cordon = None;
        self.cordons.remove(&sidecar_id);
        info!(sidecar_id, "sidecar uncordoned");
        let agent_ids = self.sidecars.get(&sidecar_id).map(|s| s.agent_ids.clone()).unwrap_or_default();
        for agent_id in agent_ids {
            if let Some(agent) = self.agents.get_mut(&agent_id)
                && agent.state == AgentState::Draining
            {
                let event = if agent.task_id.is_some() { AgentEvent::Resume } else { AgentEvent::Undrain };
                move_agent(agent, event, now, &mut self.idle, "uncordoned");
            }
        }
        self.write(
            vec![Op::DeleteCordon { sidecar_id: sidecar_id.clone() }],
            AfterCommit::Host { view: Box::new(view), reply },
        );
    }

    /// Work still running on a cordoned sidecar past its drain deadline goes back to the queue
    /// and the sidecar is told to stop it. The attempt counts (its output was seen as that
    /// attempt), but a drained task is requeued even when it has used all its attempts: the
    /// drain was not its fault.
    pub(super) fn requeue_past_drain_deadlines(&mut self, now: UnixMs) {
        let due: Vec<TaskId> = self
            .cordons
            .iter()
            .filter(|(_, c)| c.deadline_unix_ms.is_some_and(|d| d <= now))
            .filter_map(|(sidecar_id, _)| self.sidecars.get(sidecar_id))
            .flat_map(|sidecar| sidecar.agent_ids.iter())
            .filter_map(|agent_id| self.agents.get(agent_id)?.task_id)
            .collect();
        for task_id in due {
            let Some(lease) = self.release(task_id, now) else { continue };
            let reason = "drain deadline reached; the task was requeued".to_owned();
            self.send_to(&lease.sidecar_id, ToSidecar::Cancel { task_id, lease_generation: lease.generation, reason });
            let task = self.tasks.get_mut(&task_id).expect("a leased task exists");
            if task.state != TaskState::Cancelled {
                let why = format!("requeued: sidecar {} was drained during attempt {}", lease.sidecar_id, task.attempt);
                info!(task_id = %task_id, sidecar_id = lease.sidecar_id, "requeued at the drain deadline");
                task.set_state(TaskState::Queued, why, now);
                self.enqueue(task_id, None);
            }
            self.persist(task_id, AfterCommit::Changed(task_id));
        }
    }

    /// Flags working agents whose task has shown no sign of life for the stall time.
    pub(super) fn flag_stalled(&mut self, now: UnixMs) {
        let stall_after = self.config.stall_after.as_millis() as i64;
        for agent in self.agents.values_mut() {
            let stalled = agent.task_id.is_some()
                && matches!(agent.state, AgentState::Assigned | AgentState::Working | AgentState::Draining)
                && now - agent.last_activity >= stall_after;
            if stalled && !agent.stalled {
                warn!(
                    agent_id = agent.id,
                    task_id = ?agent.task_id,
                    silent_ms = now - agent.last_activity,
                    "agent stalled: its task shows no output, tokens or progress"
                );
            }
            agent.stalled = stalled;
        }
    }

    pub(super) fn agent_detail(&self, id: &str) -> Option<AgentDetail> {
        let agent = self.agents.get(id)?;
        Some(AgentDetail { agent: self.agent_view(agent), history: agent.history.iter().cloned().collect() })
    }

    /// Every sidecar seen since the hub started, and every cordoned one (a cordon outlives a
    /// restart, so a cordoned sidecar may not have reconnected yet).
    pub(super) fn host_views(&self) -> Vec<HostView> {
        let mut ids: Vec<&String> = self.sidecars.keys().chain(self.cordons.keys()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter().filter_map(|id| self.host_view(id, false)).collect()
    }

    pub(super) fn host_view(&self, id: &str, with_history: bool) -> Option<HostView> {
        let Some(sidecar) = self.sidecars.get(id) else {
            // Known only by its stored cordon: not seen since the hub started.
            let cordon = *self.cordons.get(id)?;
            return Some(HostView {
                id: id.to_owned(),
                hostname: String::new(),
                os: String::new(),
                arch: String::new(),
                version: String::new(),
                online: false,
                last_seen_unix_ms: 0,
                cordon: Some(cordon),
                agents: 0,
                containment: String::new(),
                resources: None,
                history: with_history.then(Vec::new),
            });
        };
        Some(HostView {
            id: id.to_owned(),
            hostname: sidecar.hello.hostname.clone(),
            os: sidecar.hello.os.clone(),
            arch: sidecar.hello.arch.clone(),
            version: sidecar.hello.version.clone(),
            online: sidecar.is_open(),
            last_seen_unix_ms: sidecar.last_seen.load(std::sync::atomic::Ordering::Relaxed),
            cordon: self.cordons.get(id).copied(),
            agents: sidecar.agent_ids.len(),
            containment: sidecar.hello.containment.clone(),
            resources: sidecar.host.latest.as_deref().cloned(),
            history: with_history.then(|| sidecar.host.history.iter().copied().collect()),
        })
    }

    /// Adds an endpoint the hub probes itself. Its host must be allowlisted; adding one that is
    /// there already answers with it.
    pub(super) fn add_endpoint(&mut self, url: String, kind: EndpointKind, reply: Reply<Result<Endpoint, Error>>) {
        if kind == EndpointKind::Anthropic {
            let why = "anthropic endpoints are advertised by sidecars that hold the key (ANTHROPIC_API_KEY); the hub never holds provider keys";
            self.answer(reply, Err(Error::NotAllowed(why.to_owned())));
            return;
        }
        let url = url.trim().trim_end_matches('/').to_owned();
        if let Err(why) = fleet::host_port(&url) {
            self.answer(reply, Err(Error::Invalid(crate::domain::Error::invalid("url", why))));
            return;
        }
        if let Err(why) = fleet::check_allowed(&url, &self.config.allow_endpoints) {
            self.answer(reply, Err(Error::NotAllowed(why)));
            return;
        }
        let id = fleet::endpoint_id(&Owner::Hub, &url);
        if let Some(existing) = self.registry.get(&id) {
            self.answer(reply, Ok(existing.clone()));
            return;
        }
        let endpoint = Endpoint {
            id,
            url,
            kind,
            owner: Owner::Hub,
            healthy: false,
            version: String::new(),
            error: Some("not checked yet".to_owned()),
            models: Vec::new(),
            checked_unix_ms: 0,
            parallel: 0,
        };
        info!(id = endpoint.id, url = endpoint.url, "endpoint added");
        self.registry.put(endpoint.clone());
        let op = Op::PutEndpoint(Box::new(endpoint.clone()));
        self.write(vec![op], AfterCommit::Endpoint { endpoint: Box::new(endpoint), reply });
    }

    /// Removes an endpoint. One a sidecar reports cannot go while that sidecar is online: it
    /// would be back at its next report.
    pub(super) fn remove_endpoint(&mut self, id: String, reply: Reply<Result<Endpoint, Error>>) {
        let Some(endpoint) = self.registry.get(&id) else {
            self.answer(reply, Err(Error::UnknownName(format!("endpoint {id} not found"))));
            return;
        };
        if let Owner::Sidecar(sidecar_id) = &endpoint.owner
            && self.sidecars.get(sidecar_id).is_some_and(|s| s.is_open())
        {
            let why = format!(
                "endpoint {id} is reported by sidecar {sidecar_id}, which is online; remove it from that sidecar's configuration"
            );
            self.answer(reply, Err(Error::Conflict(why)));
            return;
        }
        let endpoint = self.registry.remove(&id).expect("checked above");
        info!(id, url = endpoint.url, "endpoint removed");
        let op = Op::DeleteEndpoint { id };
        self.write(vec![op], AfterCommit::Endpoint { endpoint: Box::new(endpoint), reply });
    }

    /// The hub's own probe of an endpoint came back.
    pub(super) fn endpoint_checked(&mut self, endpoint: Endpoint) {
        let Some(known) = self.registry.get(&endpoint.id) else { return }; // Removed meanwhile.
        if known.owner != Owner::Hub {
            return;
        }
        log_health_change(known, &endpoint);
        let id = endpoint.id.clone();
        if self.registry.put(endpoint) {
            let op = Op::PutEndpoint(Box::new(self.registry.get(&id).expect("just put").clone()));
            self.write(vec![op], AfterCommit::Nothing);
        }
    }

    /// A sidecar's inventory replaces what it reported before; changes are persisted.
    pub(super) fn sidecar_inventory(&mut self, sidecar_id: &str, endpoints: Vec<Endpoint>) {
        for endpoint in &endpoints {
            if let Some(known) = self.registry.get(&endpoint.id) {
                log_health_change(known, endpoint);
            }
        }
        let changes = self.registry.replace_owned(sidecar_id, endpoints);
        if changes.put.is_empty() && changes.removed.is_empty() {
            return;
        }
        // A model may be there now, or healthy again: blocked tasks that need it look again.
        self.idle.touch(sidecar_id);
        let mut ops: Vec<Op> = changes.removed.into_iter().map(|id| Op::DeleteEndpoint { id }).collect();
        ops.extend(
            changes.put.iter().filter_map(|id| self.registry.get(id)).map(|e| Op::PutEndpoint(Box::new(e.clone()))),
        );
        self.write(ops, AfterCommit::Nothing);
    }
}

fn log_health_change(before: &Endpoint, after: &Endpoint) {
    match (before.healthy, after.healthy) {
        (true, false) => warn!(id = after.id, url = after.url, error = ?after.error, "endpoint unhealthy"),
        (false, true) => info!(id = after.id, url = after.url, version = after.version, "endpoint healthy"),
        _ => {}
    }
}
