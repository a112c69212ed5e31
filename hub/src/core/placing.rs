//! The core's placement side: dispatch through the scheduler, the blocked set and what unblocks
//! it, the tier fallback, and the decisions kept for `explain` and `why`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tracing::{debug, info, warn};

use super::State;
use super::commit::AfterCommit;
use super::config::Error;
use super::handle::{Recorded, RecordedKind, WhyAnswer};
use super::sessions::move_agent;
use crate::agent::AgentEvent;
use crate::domain::*;
use crate::fleet::Owner;
use crate::link::ToSidecar;
use crate::queue::Lease;
use crate::sched::{self, Decision, Need, tier};

/// The fleet as placement sees it, borrowing only the fields it reads (so the rest of the state
/// can change beside it).
macro_rules! fleet {
    ($state:expr) => {
        sched::Fleet {
            idle: &$state.idle,
            sidecars: &$state.placing,
            cordons: &$state.cordons,
            registry: &$state.registry,
            in_flight: &$state.in_flight,
            learned: &$state.learned,
            tier_models: &$state.config.tier_models,
            prices: &$state.config.prices,
            tier_waits: &$state.tier_waits,
            offline: $state.config.offline,
        }
    };
}

/// Decisions kept per task, newest last.
pub(super) const DECISIONS_PER_TASK: usize = 4;
/// Tasks whose decisions are kept; the oldest are forgotten first.
pub(super) const DECISIONS_KEPT_FOR: usize = 10_000;

/// The decisions of the most recently placed tasks, in memory (they describe the fleet as it
/// was, and are not kept across restarts).
#[derive(Debug, Default)]
pub(super) struct Decisions {
    by_task: HashMap<TaskId, VecDeque<Recorded>>,
    /// Tasks in the order their first decision was kept.
    order: VecDeque<TaskId>,
}

impl Decisions {
    fn keep(&mut self, task_id: TaskId, recorded: Recorded) {
        let kept = self.by_task.entry(task_id).or_insert_with(|| {
            self.order.push_back(task_id);
            VecDeque::new()
        });
        if kept.len() == DECISIONS_PER_TASK {
            kept.pop_front();
        }
        kept.push_back(recorded);
        while self.order.len() > DECISIONS_KEPT_FOR {
            if let Some(oldest) = self.order.pop_front() {
                self.by_task.remove(&oldest);
            }
        }
    }

    pub(super) fn of(&self, task_id: TaskId) -> Vec<Recorded> {
        self.by_task.get(&task_id).map(|kept| kept.iter().cloned().collect()).unwrap_or_default()
    }

    pub(super) fn forget(&mut self, task_id: TaskId) {
        self.by_task.remove(&task_id);
    }
}

/// Waiting tasks are looked at for pre-warming at most this often.
const PREWARM_SCAN_EVERY_MS: i64 = 1_000;
/// Of each ready lane and each blocked need, the oldest tasks looked at for pre-warming.
const PREWARM_SAMPLE: usize = 256;
/// A pre-warm not answered by then is forgotten (Ollama gives up on a load after 5 minutes).
const PRELOAD_TIMEOUT_MS: i64 = 6 * 60_000;
/// A pre-warm is recorded as a decision of this many of the oldest tasks it is for.
const PREWARM_RECORDED_ON: usize = 16;

/// A pre-warm asked for and not yet answered.
#[derive(Debug)]
pub(super) struct Preloading {
    sidecar_id: String,
    endpoint_id: String,
    since: UnixMs,
}

impl State {
    /// Places ready tasks on idle agents, lane then age, each where [`sched::place`] puts it.
    /// Tasks it cannot place go to the blocked set until the fleet changes for them.
    pub(super) fn dispatch(&mut self, now: UnixMs) {
        self.unblock_served();
        if self.shutting_down {
            return;
        }
        let ttl = self.config.lease_ttl.as_millis() as i64;
        let mut blocked = Vec::new();
        loop {
            if self.idle.is_empty() || self.queue.n_ready() == 0 {
                break;
            }
            let fleet = fleet!(self);
            let tasks = &self.tasks;
            let popped = self.queue.pop_ready(
                now,
                |id| {
                    let task = &tasks[&id];
                    // One pass places the task and keeps what was weighed, for `explain`.
                    match sched::place_explained(task, &fleet, now) {
                        Ok(explanation) => Ok(Box::new(explanation)),
                        Err(sched::Wait::Expired) => Err(None),
                        Err(_) => Err(Some(sched::need_of(task, &fleet))),
                    }
                },
                &mut blocked,
            );
            let Some((task_id, explanation)) = popped else { break };
            let Decision::Place { sidecar_id, agent_id, endpoint_id, model, .. } = explanation.decision.clone() else {
                unreachable!("place_explained returns placed decisions only")
            };
            self.tier_waits.remove(&task_id);
            if let Some(deadline) = self.tasks[&task_id].spec.limits.deadline_unix_ms {
                self.deadlines.remove(&(deadline, task_id));
            }
            let task = &self.tasks[&task_id];
            let source = match explanation.tier_source {
                sched::TierSource::Given => "given",
                sched::TierSource::Inferred => "inferred",
                sched::TierSource::Fallback { .. } => "fallback",
                sched::TierSource::PassRate { .. } => "pass_rate",
            };
            let (kind, waited) = (task.spec.work.capability(), now - task.updated_unix_ms);
            self.observe_dispatch(kind, waited, explanation.tier.as_str(), source);
            self.span_placed(task_id, now - waited, &explanation, now);
            let task = self.tasks.get_mut(&task_id).expect("a ready task exists");
            task.attempt += 1;
            task.lease_generation += 1;
            task.agent_id = Some(agent_id.clone());
            task.sidecar_id = Some(sidecar_id.clone());
            task.outcome = None;
            task.set_state(TaskState::Dispatched, "", now);
            let (lease_generation, attempt) = (task.lease_generation, task.attempt);
            let mut beside = 0;
            if let Some(endpoint) = &endpoint_id {
                let in_flight = self.in_flight.entry(endpoint.clone()).or_default();
                beside = *in_flight;
                *in_flight += 1;
            }
            let lease = Lease {
                generation: lease_generation,
                sidecar_id,
                agent_id: agent_id.clone(),
                expires_at: now + ttl,
                endpoint_id,
                model,
                beside,
                tier: Some(explanation.tier),
                judge: explanation.judge.as_ref().map(|j| (j.model.clone(), j.endpoint_id.clone())),
            };
            self.queue.grant(task_id, lease);
            let recorded =
                Recorded { at: now, attempt, kind: RecordedKind::Placed, note: None, explanation: *explanation };
            self.decisions.keep(task_id, recorded);
            let agent = self.agents.get_mut(&agent_id).expect("an idle agent exists");
            agent.task_id = Some(task_id);
            agent.last_activity = now;
            move_agent(agent, AgentEvent::Assign, now, &mut self.idle, &format!("assigned task {task_id}"));
            self.persist(task_id, AfterCommit::Assigned { task_id, lease_generation });
        }
        self.idle.track_touches(self.queue.n_blocked() > 0);
        // Tasks placed by their tier's model start their fallback clock when first blocked.
        for (task_id, _) in blocked {
            if self.tier_waits.contains_key(&task_id) || !self.by_tier_model(&self.tasks[&task_id]) {
                continue;
            }
            self.tier_waits.insert(task_id, sched::TierWait { since: now, moved_to: None, left: Vec::new() });
        }
    }

    /// Counts a verified result's verdict by its model, the kind of work and the tier it ran at
    /// (`placed_at`, else the task's tier now), and stores the new count.
    pub(super) fn tally_verdict(&mut self, task_id: TaskId, model: &str, passed: bool, placed_at: Option<Tier>) {
        if let Some((kind, tier)) = self.count_verdict(task_id, model, passed, placed_at) {
            self.observe_verdict(model, kind, passed);
            let tally = self.learned.tally(model, kind, tier);
            let op = crate::store::Op::PutVerdicts { model: model.to_owned(), kind, tier, tally };
            self.write(vec![op], AfterCommit::Nothing);
        }
    }

    /// Counts a verdict in memory only; returns the kind of work and tier it counted under.
    pub(super) fn count_verdict(
        &mut self,
        task_id: TaskId,
        model: &str,
        passed: bool,
        placed_at: Option<Tier>,
    ) -> Option<(&'static str, Tier)> {
        let task = self.tasks.get(&task_id)?;
        let task = &*task;
        let tier = placed_at.unwrap_or_else(|| sched::tier_now(task, &fleet!(self)).0);
        let kind = task.spec.work.capability();
        self.learned.observe_verdict(model, kind, tier, passed);
        Some((kind, tier))
    }

    /// With `--escalate`: LLM work placed by its tier's model that failed its verification goes
    /// again, as a new attempt, one tier up (a stronger model), if that tier has a model and the
    /// task has attempts left. Recorded as an `escalate` decision. False when it does not apply.
    pub(super) fn escalate(&mut self, task_id: TaskId, model: Option<&str>, why: &str, now: UnixMs) -> bool {
        if !self.config.escalate {
            return false;
        }
        let Some(task) = self.tasks.get(&task_id) else { return false };
        let task = &*task;
        if task.attempt >= task.spec.limits.max_attempts || !self.by_tier_model(task) {
            return false;
        }
        let (explanation, from) = {
            let fleet = fleet!(self);
            (sched::explain(task, &fleet, now), sched::tier_now(task, &fleet).0)
        };
        let Some(up) = tier::up(from) else { return false };
        let Some(to_model) = self.config.tier_models.get(up).map(str::to_owned) else { return false };
        let note = format!(
            "escalated from tier {} ({}) to {} ({to_model}) for attempt {}: {why}",
            from.as_str(),
            model.unwrap_or("?"),
            up.as_str(),
            task.attempt + 1
        );
        info!(task_id = %task_id, from = from.as_str(), to = up.as_str(), "escalated after a failed verification");
        let recorded = Recorded {
            at: now,
            attempt: task.attempt + 1,
            kind: RecordedKind::Escalate,
            note: Some(note.clone()),
            explanation,
        };
        self.decisions.keep(task_id, recorded);
        self.tier_waits.insert(task_id, sched::TierWait { since: now, moved_to: Some(up), left: vec![from] });
        self.escalations += 1;
        let task = self.tasks.get_mut(&task_id).expect("a known task");
        task.set_state(TaskState::Queued, note, now);
        self.enqueue(task_id, None);
        true
    }

    /// LLM work that names no model and runs on its tier's: the work the tier fallback moves.
    fn by_tier_model(&self, task: &Task) -> bool {
        let Work::Llm(llm) = &task.spec.work else { return false };
        llm.model.is_empty()
            && task.spec.placement.model.is_empty()
            && self.config.tier_models.get(sched::tier_now(task, &fleet!(self)).0).is_some()
    }

    /// Blocked tasks go back to ready when a sidecar that gained an agent or changed its
    /// inventory could serve what they need.
    fn unblock_served(&mut self) {
        if self.queue.n_blocked() == 0 {
            return;
        }
        for sidecar_id in self.idle.take_touched() {
            let Some(sidecar) = self.placing.get(&sidecar_id) else { continue };
            let registry = &self.registry;
            let owner = Owner::Sidecar(sidecar_id.clone());
            let runs = |capability: &str| sidecar.capabilities.contains(capability);
            self.queue.unblock(|need| match need {
                Need::Capability(capability) => runs(capability),
                Need::Model(model) => runs("llm") && registry.offering(model).any(|e| e.owner == owner),
            });
        }
    }

    /// Moves blocked tasks that have waited `--tier-fallback-after` for their tier's model, with
    /// nothing able to take them, one tier along (see [`tier::fallback`]).
    pub(super) fn fall_back(&mut self, now: UnixMs) {
        let after = self.config.tier_fallback_after.as_millis() as i64;
        let due: Vec<TaskId> =
            self.tier_waits.iter().filter(|(_, wait)| wait.since + after <= now).map(|(id, _)| *id).collect();
        for task_id in due {
            let Some(task) = self.tasks.get(&task_id) else {
                self.tier_waits.remove(&task_id);
                continue;
            };
            let task = &*task;
            if !matches!(task.state, TaskState::Queued | TaskState::Ready) {
                self.tier_waits.remove(&task_id);
                continue;
            }
            if self.queue.blocked_on(task_id).is_none() {
                continue; // Ready again: dispatch looks at it next.
            }
            let (explanation, from) = {
                let fleet = fleet!(self);
                (sched::explain(task, &fleet, now), sched::tier_now(task, &fleet).0)
            };
            let wait = self.tier_waits.get_mut(&task_id).expect("due tasks wait");
            let why = match explanation.decision {
                Decision::Wait(why) if why.lacks_capacity() => why,
                _ => {
                    wait.since = now; // Busy, not missing: it waits on at its tier.
                    continue;
                }
            };
            let models = &self.config.tier_models;
            let Some(to) = tier::fallback(from, &wait.left, |t| models.get(t).is_some()) else {
                wait.since = now;
                continue;
            };
            let waited = now - wait.since;
            wait.left.push(from);
            wait.moved_to = Some(to);
            wait.since = now;
            self.tier_fallbacks += 1;
            let reason = format!(
                "moved from tier {} to {} after {:.1} s: {}",
                from.as_str(),
                to.as_str(),
                waited as f64 / 1000.0,
                why.describe()
            );
            info!(task_id = %task_id, from = from.as_str(), to = to.as_str(), why = why.as_str(), "tier fallback");
            let attempt = task.attempt + 1;
            let note = Some(reason);
            let recorded = Recorded { at: now, attempt, kind: RecordedKind::Fallback, note, explanation };
            self.decisions.keep(task_id, recorded);
            self.queue.unblock_task(task_id);
        }
    }

    /// Loads a model ahead of its tasks where [`sched::prewarm::target`] says, once a second:
    /// the oldest waiting tasks (a sample of each lane and blocked need) are grouped by model,
    /// and each model with no pre-warm under way is looked at. The pre-warm is recorded as a
    /// decision of the oldest of its tasks.
    pub(super) fn prewarm(&mut self, now: UnixMs) {
        if !self.config.prewarm || self.shutting_down || now < self.next_prewarm_scan {
            return;
        }
        self.next_prewarm_scan = now + PREWARM_SCAN_EVERY_MS;
        let sidecars = &self.sidecars;
        self.preloads.retain(|_, p| {
            p.since + PRELOAD_TIMEOUT_MS > now && sidecars.get(&p.sidecar_id).is_some_and(|s| s.is_open())
        });
        if self.queue.n_ready() + self.queue.n_blocked() == 0 {
            return;
        }
        let mut by_model: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
        {
            let fleet = fleet!(self);
            for id in self.queue.waiting_sample(PREWARM_SAMPLE) {
                let Some(task) = self.tasks.get(&id) else { continue };
                let Some(model) = sched::model_of(&task, &fleet) else { continue };
                by_model.entry(model.to_owned()).or_default().push(id);
            }
        }
        for (model, mut ids) in by_model {
            if self.preloads.contains_key(&model) {
                continue;
            }
            // Longest waiting first: a task is ready since its last change of state.
            ids.sort_by_key(|id| (self.tasks[id].updated_unix_ms, *id));
            let oldest = &self.tasks[&ids[0]];
            let waited = now - oldest.updated_unix_ms;
            // Warm copies with nothing in flight wait for agents, not loads: no more are made
            // than there are tasks to use them.
            let in_flight = &self.in_flight;
            let copies = self
                .registry
                .offering(&model)
                .filter(|e| !in_flight.contains_key(&e.id) && e.models.iter().any(|m| m.name == model && m.loaded));
            let fleet = fleet!(self);
            let Some(target) = sched::prewarm::target(oldest, &model, ids.len(), copies.count(), waited, &fleet) else {
                continue;
            };
            let explanation = sched::explain(oldest, &fleet, now);
            let keep_alive = match &oldest.spec.work {
                Work::Llm(llm) => llm.keep_alive.clone(),
                _ => None,
            };
            let note = format!(
                "pre-warm: asked {} to load {} on {} (cold there, fits its free memory, nothing in flight): \
                 {} waiting task(s) waited up to {:.1} s, longer than its load time there ({:.1} s)",
                target.sidecar_id,
                model,
                target.endpoint_id,
                ids.len(),
                waited as f64 / 1000.0,
                target.load_ms / 1000.0,
            );
            info!(
                model,
                sidecar_id = target.sidecar_id,
                endpoint_id = target.endpoint_id,
                waiting = ids.len(),
                waited_ms = waited,
                load_ms = target.load_ms as u64,
                "pre-warming a model"
            );
            for id in ids.iter().take(PREWARM_RECORDED_ON) {
                let attempt = self.tasks[id].attempt + 1;
                let recorded = Recorded {
                    at: now,
                    attempt,
                    kind: RecordedKind::Prewarm,
                    note: Some(note.clone()),
                    explanation: explanation.clone(),
                };
                self.decisions.keep(*id, recorded);
            }
            let preloading = Preloading {
                sidecar_id: target.sidecar_id.clone(),
                endpoint_id: target.endpoint_id.clone(),
                since: now,
            };
            self.preloads.insert(model.clone(), preloading);
            self.prewarms += 1;
            let preload = ToSidecar::Preload { endpoint_id: target.endpoint_id, model, keep_alive };
            self.send_to(&target.sidecar_id, preload);
        }
    }

    /// A sidecar answered a pre-warm the hub asked it for: its load time is learned (the model
    /// shows as warm with the sidecar's next inventory, which it sends at once). After a failure
    /// the model is not pre-warmed again until the pre-warm would have timed out, so a load that
    /// cannot succeed is not retried every second. Answers nobody asked for are ignored.
    pub(super) fn preloaded(
        &mut self,
        sidecar_id: &str,
        endpoint_id: &str,
        model: &str,
        load_ms: u64,
        error: Option<String>,
        now: UnixMs,
    ) {
        let asked = self.preloads.get_mut(model).filter(|p| p.sidecar_id == sidecar_id && p.endpoint_id == endpoint_id);
        let Some(asked) = asked else {
            debug!(model, sidecar_id, endpoint_id, "ignored the answer to a pre-warm not asked for");
            return;
        };
        match error {
            None => {
                info!(model, sidecar_id, endpoint_id, load_ms, "pre-warmed a model");
                self.preloads.remove(model);
                self.learned.observe(sidecar_id, model, Some(load_ms), None);
            }
            Some(error) => {
                warn!(
                    model,
                    sidecar_id, endpoint_id, error, "a pre-warm failed; not trying the model again for a while"
                );
                asked.since = now;
            }
        }
    }

    /// The decisions kept for a task, oldest first.
    pub(super) fn explain(&self, task_id: TaskId) -> Result<Vec<Recorded>, Error> {
        if !self.tasks.contains_key(&task_id) {
            return Err(Error::NotFound(task_id));
        }
        Ok(self.decisions.of(task_id))
    }

    /// Why a task is where it is, and for a ready one, what placement says now.
    pub(super) fn why(&self, task_id: TaskId, now: UnixMs) -> Result<WhyAnswer, Error> {
        let task = self.tasks.get(&task_id).ok_or(Error::NotFound(task_id))?;
        let task = &*task;
        let fleet = fleet!(self);
        let (tier, tier_source) = sched::tier_now(task, &fleet);
        let mut answer = WhyAnswer {
            task_id,
            state: task.state,
            waiting: false,
            code: String::new(),
            message: String::new(),
            since_unix_ms: task.updated_unix_ms,
            tier,
            tier_source,
            model: sched::model_of(task, &fleet).map(str::to_owned),
            fallback_at_unix_ms: None,
            explanation: None,
            stuck: false,
        };
        let (code, message) = match task.state {
            TaskState::Waiting => {
                let unfinished: Vec<String> = task
                    .spec
                    .depends_on
                    .iter()
                    .filter(|d| self.tasks.state(d).is_some_and(|state| state != TaskState::Succeeded))
                    .map(|d| d.to_string())
                    .collect();
                answer.waiting = true;
                ("dependencies", format!("it waits for {} to succeed", unfinished.join(", ")))
            }
            TaskState::Queued | TaskState::Ready if self.queue.is_delayed(task_id) => {
                answer.waiting = true;
                ("retry_backoff", "it waits out its retry backoff".to_owned())
            }
            TaskState::Queued | TaskState::Ready => {
                answer.waiting = true;
                let explanation = sched::explain(task, &fleet, now);
                let (code, message) = match explanation.decision {
                    Decision::Wait(why @ sched::Wait::AllBusy) => {
                        let ahead = self.queue.ahead_of(task_id, now).unwrap_or(0);
                        (why.as_str(), format!("{}; {ahead} ahead of it in the queue", why.describe()))
                    }
                    Decision::Wait(why) => {
                        // Nothing connected could ever take it: it waits for the fleet to change.
                        answer.stuck = why.lacks_capacity();
                        (why.as_str(), why.describe().to_owned())
                    }
                    Decision::Place { .. } if self.shutting_down => {
                        ("shutting_down", "the hub is shutting down".into())
                    }
                    Decision::Place { .. } => {
                        ("placeable", "an agent can take it now; it goes with the next dispatch".into())
                    }
                };
                if let Some(wait) = self.tier_waits.get(&task_id) {
                    answer.fallback_at_unix_ms = Some(wait.since + self.config.tier_fallback_after.as_millis() as i64);
                }
                answer.explanation = Some(explanation);
                (code, message)
            }
            TaskState::Dispatched | TaskState::Running | TaskState::Verifying => {
                ("running", format!("it is {} on {}", task.state.as_str(), task.agent_id.as_deref().unwrap_or("?")))
            }
            state => ("finished", format!("it is {}", state.as_str())),
        };
        answer.code = code.to_owned();
        answer.message = message;
        Ok(answer)
    }
}
