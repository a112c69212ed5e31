//! The core's lease side: what sidecars report under a lease (fenced by its generation),
//! releasing and losing leases, and what time passing does.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::State;
use super::commit::AfterCommit;
use super::sessions::{Agent, move_agent};
use super::tasks::{judge, over_budget};
use crate::agent::{AgentEvent, AgentState};
use crate::domain::*;
use crate::feed::Feed;
use crate::link::{FromSidecar, ToSidecar};
use crate::queue::{self, Fence, Lease, Queue};
use crate::store::Op;

/// How often idempotency keys past their retention are swept from memory.
const KEY_SWEEP_INTERVAL_MS: i64 = 60_000;

impl State {
    pub(super) fn on_sidecar_message(&mut self, sidecar_id: &str, session: u64, message: FromSidecar, now: UnixMs) {
        let Some(sidecar) = self.sidecars.get_mut(sidecar_id) else { return };
        if sidecar.session != session {
            return; // A replaced session: its messages no longer count.
        }
        sidecar.last_seen.fetch_max(now, Ordering::Relaxed);
        let ttl = self.config.lease_ttl.as_millis() as i64;
        match message {
            FromSidecar::Preloaded { endpoint_id, model, load_ms, error } => {
                self.preloaded(sidecar_id, &endpoint_id, &model, load_ms, error, now);
            }
            FromSidecar::Heartbeat { running, .. } => {
                for run in running {
                    if let Err(fence) = self.queue.renew(run.task_id, run.lease_generation, sidecar_id, now, ttl)
                        && !self.result_taken(run.task_id, run.lease_generation)
                    {
                        self.refuse(sidecar_id, run.task_id, run.lease_generation, fence, "heartbeat");
                    }
                }
            }
            FromSidecar::Started { task_id, lease_generation, .. } => {
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
                    if !self.stored_again(sidecar_id, task_id, lease_generation, outcome) {
                        self.refuse(sidecar_id, task_id, lease_generation, fence, "finished");
                    }
                    return;
                }
                // Until the commit that holds the result returns, everyone is shown the task as
                // it was: an end is never seen before it is durable.
                let shown = Task::clone(&self.tasks[&task_id]);
                let lease = self.release(task_id, now);
                let task = self.tasks.get_mut(&task_id).expect("a leased task exists");
                let mut outcome = outcome;
                // The output goes to storage apart from the record (in chunks), not into memory.
                if let Some(feed) = self.feeds.get(&task_id) {
                    feed.fill(task.attempt, &outcome.stdout, &outcome.stderr);
                }
                let stdout = std::mem::take(&mut outcome.stdout);
                let stderr = std::mem::take(&mut outcome.stderr);
                let failure = outcome.error.as_deref().and_then(FailureReason::of);
                // A gateway key's request: what it spent goes into the ledger, stored with it.
                let mut spent = None;
                if let Some(usage) = &mut outcome.usage {
                    // Claude Code reports what a whole agent run cost (several models, cache
                    // tiers): that figure stands. Everything else is priced here; a local
                    // server the price table does not list costs nothing.
                    if usage.provider != "claude-code" || usage.cost_micros.is_none() {
                        let local = self.registry.get(&usage.endpoint_id).is_some_and(|e| !crate::fleet::is_cloud(e));
                        usage.cost_micros = self.config.prices.cost_micros(usage).or(local.then_some(0));
                    }
                    self.learned.observe(sidecar_id, &usage.model, usage.load_ms, usage.output_tokens_per_s);
                    self.recorded.usage(&self.config.metrics, usage);
                    spent = task.spec.labels.get(GATEWAY_KEY).map(|key| {
                        let row = crate::usage::Row {
                            day: crate::usage::day_of(now),
                            key: key.clone(),
                            model: usage.model.clone(),
                        };
                        let spend = crate::usage::Spend {
                            requests: 1,
                            input_tokens: usage.input_tokens + usage.cached_input_tokens,
                            output_tokens: usage.output_tokens,
                            cost_micros: usage.cost_micros.unwrap_or(0),
                        };
                        (row, spend)
                    });
                    // A failed request's first token says nothing of how the endpoint queues.
                    if let (Some(lease), Some(ttft_ms), None) = (&lease, usage.ttft_ms, failure)
                        && let Some(endpoint_id) = &lease.endpoint_id
                    {
                        self.learned.observe_concurrency(endpoint_id, lease.beside, ttft_ms, usage.load_ms);
                    }
                }
                if let (Some(FailureReason::Truncated), Some(endpoint_id)) =
                    (failure, lease.as_ref().and_then(|l| l.endpoint_id.as_ref()))
                {
                    let others = self.in_flight.get(endpoint_id).copied().unwrap_or(0);
                    self.learned.observe_truncation(endpoint_id, others.max(lease.as_ref().map_or(0, |l| l.beside)));
                }
                // Past its budget, whoever noticed: final, with the output so far.
                let over = over_budget(&outcome, &task.spec.limits);
                outcome.budget_exceeded = over.is_some();
                let (state, reason) = match over {
                    Some(why) => (TaskState::Failed, why),
                    None => judge(&outcome, !task.spec.verification.is_empty()),
                };
                // A reply cut short, a broken stream or an endpoint down before the work began is
                // the infrastructure's failure, retried like a lost lease; so is an exit code the
                // task lists as retryable.
                let retryable = !outcome.timed_out
                    && !outcome.budget_exceeded
                    && match failure {
                        Some(reason) => reason.retryable(),
                        None => {
                            matches!(outcome.exit, Exit::Code(code) if task.spec.retry.retry_on_exit_codes.contains(&code))
                                && outcome.error.is_none()
                        }
                    };
                let verdict = outcome.verification.as_ref().map(|r| r.verdict == Verdict::Passed);
                let placed_at = lease.as_ref().and_then(|l| l.tier);
                let model = outcome.usage.as_ref().map(|u| u.model.clone()).or_else(|| lease.and_then(|l| l.model));
                let failed_verification = verdict == Some(false) && reason.starts_with("verification_failed");
                task.outcome = Some(*outcome);
                let cancelled = task.state == TaskState::Cancelled;
                if let (Some(passed), Some(model)) = (verdict, model.as_deref()) {
                    self.tally_verdict(task_id, model, passed, placed_at);
                }
                if cancelled {
                    // The user's cancel stands; the outcome is the killed process's.
                } else if state == TaskState::Failed && retryable {
                    self.retry_or_dead_letter(task_id, reason, now);
                } else if !(failed_verification && self.escalate(task_id, model.as_deref(), &reason, now)) {
                    self.observe_end(state, &reason);
                    let task = self.tasks.get_mut(&task_id).expect("a leased task exists");
                    task.set_state(state, reason, now);
                }
                if self.tasks[&task_id].state.is_terminal() {
                    if !shown.state.is_terminal() {
                        self.shown.entry(task_id).or_insert_with(|| Box::new(shown));
                    }
                    self.keep_step_output(task_id, &stdout);
                }
                let record = Box::new(self.tasks[&task_id].clone());
                let ticket = AfterCommit::Stored { task_id, lease_generation, sidecar_id: sidecar_id.to_owned() };
                let mut ops = vec![stored_output(&record, stdout, stderr), Op::PutTask(record)];
                if let Some((row, spend)) = spent {
                    let (row, spend) = self.ledger.add(row, spend);
                    ops.push(Op::PutUsage { row, spend });
                }
                self.write(ops, ticket);
            }
            FromSidecar::Progress { task_id, lease_generation, blocked, verifying, message, step, service } => {
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
                if let Some(step) = step {
                    let tasks = &self.tasks;
                    let feed = self.feeds.entry(task_id).or_insert_with(|| Feed::new(Task::clone(&tasks[&task_id])));
                    feed.step(*step);
                }
                let task = self.tasks.get_mut(&task_id).expect("a leased task exists");
                if verifying && matches!(task.state, TaskState::Dispatched | TaskState::Running) {
                    task.set_state(TaskState::Verifying, "", now);
                    self.persist(task_id, AfterCommit::Changed(task_id));
                }
                if let Some(status) = service {
                    // Kept in memory: the sidecar says it again every few seconds.
                    let task = self.tasks.get_mut(&task_id).expect("a leased task exists");
                    let became_ready = status.state == ServiceState::Ready
                        && task.service.as_ref().is_none_or(|s| s.state != ServiceState::Ready);
                    if task.service.as_ref() != Some(&status) {
                        task.service = Some(status);
                        self.changes.mark_task(task_id);
                    }
                    if became_ready {
                        self.service_ready(task_id, now);
                    }
                }
            }
            FromSidecar::Resources(report) => {
                if let Some(sidecar) = self.sidecars.get_mut(sidecar_id) {
                    sidecar.host.record(*report);
                    if let Some(placing) = self.placing.get_mut(sidecar_id) {
                        placing.reported(sidecar.host.latest.as_deref());
                    }
                }
            }
            FromSidecar::Models(endpoints) => self.sidecar_inventory(sidecar_id, endpoints),
        }
    }

    /// The attempt's result is here already (a sidecar lists it until it hears it is stored).
    pub(super) fn result_taken(&self, task_id: TaskId, lease_generation: u64) -> bool {
        self.tasks.get(&task_id).is_some_and(|task| {
            task.lease_generation == lease_generation && task.outcome.is_some() && self.queue.lease(task_id).is_none()
        })
    }

    /// A result sent again for an attempt whose result this hub has already taken (its
    /// acknowledgement was lost to a restart or a failed commit): stored again, output and all,
    /// and acknowledged once durable. False if it is not such a result.
    fn stored_again(
        &mut self,
        sidecar_id: &str,
        task_id: TaskId,
        lease_generation: u64,
        outcome: Box<Outcome>,
    ) -> bool {
        if !self.result_taken(task_id, lease_generation) {
            return false;
        }
        let Outcome { stdout, stderr, .. } = *outcome;
        // Settled long ago, perhaps, and so packed.
        let record = Box::new(self.tasks.get(&task_id).expect("a taken result's task exists").into_owned());
        let ticket = AfterCommit::Stored { task_id, lease_generation, sidecar_id: sidecar_id.to_owned() };
        self.write(vec![stored_output(&record, stdout, stderr), Op::PutTask(record)], ticket);
        true
    }

    /// A message under a lease the sender does not hold: count it, and make sure the sender
    /// stops that work.
    pub(super) fn refuse(
        &mut self,
        sidecar_id: &str,
        task_id: TaskId,
        lease_generation: u64,
        fence: Fence,
        what: &str,
    ) {
        self.stale_messages += 1;
        debug!(sidecar_id, task_id = %task_id, lease_generation, ?fence, what, "refused a stale message");
        self.send_to(
            sidecar_id,
            ToSidecar::Cancel { task_id, lease_generation, reason: "lease no longer held".to_owned() },
        );
    }

    /// Ends a lease and frees its agent.
    pub(super) fn release(&mut self, task_id: TaskId, now: UnixMs) -> Option<Lease> {
        let lease = self.queue.release(task_id)?;
        if let Some(endpoint) = &lease.endpoint_id
            && let Some(count) = self.in_flight.get_mut(endpoint)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_flight.remove(endpoint);
            }
        }
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
    pub(super) fn lease_lost(&mut self, task_id: TaskId, why: &str, now: UnixMs) {
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

    pub(super) fn tick(&mut self, now: UnixMs) {
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
            self.observe_lease_expiry();
            self.lease_lost(task_id, "lease expired", now);
        }
        self.apply_retention(now);
        self.flag_stalled(now);
        self.requeue_past_drain_deadlines(now);
        self.queue.promote_due(now);
        self.expire(now);
        self.fall_back(now);
        self.prewarm(now);
        if now - self.last_key_sweep >= KEY_SWEEP_INTERVAL_MS {
            self.last_key_sweep = now;
            let retention = self.config.idempotency_retention.as_millis() as i64;
            self.by_key.retain(|_, id| queue::submitted_at(*id) + retention > now);
        }
    }
}

/// The agent holding `task_id`'s lease.
pub(super) fn leased_agent<'a>(
    queue: &Queue,
    agents: &'a mut BTreeMap<String, Agent>,
    task_id: TaskId,
) -> Option<&'a mut Agent> {
    agents.get_mut(&queue.lease(task_id)?.agent_id)
}

/// What a task's end stores of its output: none of a redacted reply (`LlmWork::redact`).
fn stored_output(task: &Task, stdout: Vec<u8>, stderr: Vec<u8>) -> Op {
    let redact = matches!(&task.spec.work, Work::Llm(llm) if llm.redact);
    Op::PutOutput { id: task.id, stdout: if redact { Vec::new() } else { stdout }, stderr }
}

/// The label the gateway puts on its tasks: the token id of the key that asked.
pub const GATEWAY_KEY: &str = "gateway_key";
