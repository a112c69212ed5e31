//! The core's task side: restoring the queue at start, submits and idempotency, dependencies,
//! cancel, retries and the dead-letter queue, deadlines, and judging outcomes.

use tracing::{info, warn};

use super::State;
use super::commit::AfterCommit;
use super::config::Error;
use super::messages::{Reply, Submitted};
use crate::domain::*;
use crate::link::ToSidecar;
use crate::queue::{self, Lease};
use crate::store::{Loaded, Op, Packed};

impl State {
    /// Takes the stored tasks: those not finished back into the queue (leased ones keep their
    /// leases for a TTL), finished ones packed, as they were stored, into retention.
    pub(super) fn restore(&mut self, tasks: Vec<Loaded>, now: UnixMs) {
        let (mut n_ready, mut n_leased) = (0, 0);
        let mut waiting = Vec::new();
        let ttl = self.config.lease_ttl.as_millis() as i64;
        let count_from_tasks = !self.learned.has_verdicts();
        for loaded in tasks {
            let mut task = match loaded {
                Loaded::Live(task) => task,
                Loaded::Settled { id, packed, idempotency_key } => {
                    self.restore_settled(id, packed, idempotency_key, count_from_tasks);
                    continue;
                }
            };
            if matches!(&task.spec.work, Work::Llm(llm) if llm.redact) {
                // Its prompt was never stored, and its client's connection died with the hub.
                let reason = "the hub restarted during this request, and its prompt was not stored (redacted), so it cannot run again";
                task.set_state(TaskState::Failed, reason, now);
                let id = task.id;
                self.tasks.insert(id, task);
                self.persist(id, AfterCommit::Nothing);
                self.retain(id);
                continue;
            }
            if let Some(key) = &task.spec.idempotency_key {
                self.by_key.insert(key.clone(), task.id);
            }
            let mut ready = false;
            match task.state {
                TaskState::Queued | TaskState::Ready => {
                    ready = true;
                    n_ready += 1;
                }
                TaskState::Waiting => waiting.push(task.id),
                state if state.is_leased() => {
                    let lease = Lease {
                        generation: task.lease_generation,
                        sidecar_id: task.sidecar_id.clone().unwrap_or_default(),
                        agent_id: task.agent_id.clone().unwrap_or_default(),
                        expires_at: now + ttl,
                        endpoint_id: None,
                        model: None,
                        beside: 0,
                        tier: None,
                        judge: None,
                    };
                    self.queue.grant(task.id, lease);
                    n_leased += 1;
                }
                _ => {}
            }
            let id = task.id;
            self.tasks.insert(id, task);
            if ready {
                self.enqueue(id, None);
            }
        }
        if count_from_tasks && self.learned.has_verdicts() {
            let ops = self
                .learned
                .verdicts()
                .into_iter()
                .filter_map(|(model, kind, tier, tally)| {
                    Some(Op::PutVerdicts { model, kind, tier: tier.parse().ok()?, tally })
                })
                .collect();
            self.write(ops, AfterCommit::Nothing);
        }
        // Dependencies may have settled after their dependents last changed on disk.
        let n_waiting = waiting.len();
        for id in waiting {
            self.settle_dependencies(id, now);
        }
        info!(tasks = self.tasks.len(), ready = n_ready, leased = n_leased, waiting = n_waiting, "restored queue");
    }

    /// A finished task from storage: kept packed, its key indexed, counted by retention, and
    /// (for a store made before verdicts were stored) its verdict counted.
    fn restore_settled(&mut self, id: TaskId, packed: Packed, idempotency_key: Option<String>, count_from_tasks: bool) {
        if let Some(key) = idempotency_key {
            self.by_key.insert(key, id);
        }
        let verdict = count_from_tasks.then(|| packed.unpack()).and_then(|task| {
            let outcome = task.outcome?;
            let model = outcome.usage.map(|u| u.model).filter(|m| !m.is_empty())?;
            Some((model, outcome.verification?.verdict == crate::domain::Verdict::Passed))
        });
        let (at, bytes) = (packed.finished_unix_ms(), packed.output_bytes());
        self.tasks.insert_packed(id, packed);
        self.retain_at(id, at, bytes);
        if let Some((model, passed)) = verdict {
            self.count_verdict(id, &model, passed, None);
        }
    }

    pub(super) fn submit(&mut self, spec: TaskSpec, reply: Reply<Result<Submitted, Error>>, now: UnixMs) {
        if self.shutting_down {
            self.answer(reply, Err(Error::ShuttingDown));
            return;
        }
        let retention = self.config.idempotency_retention.as_millis() as i64;
        if let Some(key) = &spec.idempotency_key
            && let Some(&existing) = self.by_key.get(key)
            && queue::submitted_at(existing) + retention > now
            && let Some(first) = self.tasks.get(&existing)
        {
            if !same_submission(&first.spec, &spec) {
                self.answer(reply, Err(Error::KeyReused { key: key.clone(), existing }));
                return;
            }
            match self.pending_submits.get_mut(&existing) {
                Some(waiters) => waiters.push((reply, true)),
                None => {
                    self.answer(reply, Ok(Submitted { task: first.into_owned(), existing: true }));
                }
            }
            return;
        }
        if self.write_backlog >= self.config.max_write_backlog {
            self.answer(reply, Err(Error::Overloaded));
            return;
        }
        if let Some(fault) = &self.storage_fault {
            self.answer(reply, Err(Error::StorageFault(fault.clone())));
            return;
        }
        if let Some(deadline) = spec.limits.deadline_unix_ms
            && deadline <= now
        {
            let message = format!("is {} ms in the past", now - deadline);
            self.answer(reply, Err(Error::Invalid(crate::domain::Error::invalid("limits.deadline_unix_ms", message))));
            return;
        }
        // Dependencies must exist already, so a new task can never close a cycle.
        let mut spec = spec;
        spec.depends_on.sort();
        spec.depends_on.dedup();
        if let Some(unknown) = spec.depends_on.iter().find(|dep| !self.tasks.contains_key(dep)) {
            let message = format!("task {unknown} does not exist");
            self.answer(reply, Err(Error::Invalid(crate::domain::Error::invalid("depends_on", message))));
            return;
        }
        self.create_task(spec, Some(reply), now);
    }

    /// Makes a task of a checked spec (its dependencies exist), persists it and puts it in
    /// line; `reply`, when someone submitted it, is answered once it is durable.
    pub(super) fn create_task(
        &mut self,
        spec: TaskSpec,
        reply: Option<Reply<Result<Submitted, Error>>>,
        now: UnixMs,
    ) -> TaskId {
        let id = TaskId::from_parts(now, rand::Rng::random(&mut self.rng));
        if let Some(key) = &spec.idempotency_key {
            self.by_key.insert(key.clone(), id);
        }
        let mut task = Task::new(id, spec, now);
        if !task.spec.depends_on.is_empty() {
            task.state = TaskState::Waiting;
        }
        let answer = reply.map(|reply| Box::new((reply, Submitted { task: Task::clone(&task), existing: false })));
        let queued = task.state == TaskState::Queued;
        self.observe_submit(task.spec.priority);
        self.tasks.insert(id, Box::new(task));
        self.pending_submits.insert(id, Vec::new());
        self.persist(id, AfterCommit::Submitted { id, answer });
        // Dispatchable at once: its dispatch is written after the submit in the same ordered log
        // (usually the same commit), and the assignment leaves only once that is durable, so
        // the first token does not wait for two commits in a row.
        if queued {
            self.enqueue(id, None);
        }
        id
    }

    /// Moves a waiting task on once its dependencies allow: to the queue when all succeeded, to
    /// cancelled when one failed for good; otherwise it stays registered under those unfinished.
    pub(super) fn settle_dependencies(&mut self, id: TaskId, now: UnixMs) {
        if self.tasks.state(&id) != Some(TaskState::Waiting) {
            return; // Cancelled meanwhile (and perhaps settled and packed), or gone.
        }
        let task = &self.tasks[&id];
        let states = task.spec.depends_on.iter().map(|dep| (*dep, self.tasks.state(dep)));
        match queue::readiness(states) {
            queue::Readiness::Failed(dep, state) => {
                let how = state.map(|s| format!("is {}", s.as_str())).unwrap_or_else(|| "was purged".to_owned());
                self.observe_end(TaskState::Cancelled, "dependency_failed");
                let task = self.tasks.get_mut(&id).expect("checked above");
                task.set_state(TaskState::Cancelled, format!("dependency_failed: task {dep} {how}"), now);
                self.persist(id, AfterCommit::Changed(id));
            }
            queue::Readiness::Ready => {
                let task = self.tasks.get_mut(&id).expect("checked above");
                task.set_state(TaskState::Queued, "dependencies succeeded", now);
                self.persist(id, AfterCommit::Changed(id));
                self.enqueue(id, None);
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

    /// Cancels a task; `reply`, when someone asked, is answered once the cancel is durable.
    pub(super) fn cancel(
        &mut self,
        id: TaskId,
        reason: String,
        reply: Option<Reply<Result<Task, Error>>>,
        now: UnixMs,
    ) {
        match self.tasks.state(&id) {
            None => {
                if let Some(reply) = reply {
                    self.answer(reply, Err(Error::NotFound(id)));
                }
                return;
            }
            Some(state) if state.is_terminal() => {
                if let Some(reply) = reply {
                    self.answer(reply, Err(Error::AlreadyFinal { id, state: state.as_str() }));
                }
                return;
            }
            Some(_) => {}
        }
        let task = self.tasks.get_mut(&id).expect("checked above");
        let reason = if reason.is_empty() { "cancelled by user".to_owned() } else { reason };
        task.set_state(TaskState::Cancelled, reason.clone(), now);
        self.observe_end(TaskState::Cancelled, "cancelled");
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

    pub(super) fn retry_dead_letter(&mut self, id: TaskId, reply: Reply<Result<Task, Error>>, now: UnixMs) {
        match self.tasks.state(&id) {
            None => {
                self.answer(reply, Err(Error::NotFound(id)));
                return;
            }
            Some(state) if state != TaskState::DeadLettered => {
                self.answer(reply, Err(Error::NotDeadLettered { id, state: state.as_str() }));
                return;
            }
            Some(_) => {}
        }
        // Unpacked: it goes round again.
        let task = self.tasks.get_mut(&id).expect("checked above");
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
        self.persist(id, AfterCommit::Requeued { task_id: id, reply: Some(reply) });
    }

    pub(super) fn purge_dead_letters(&mut self, finished_before: UnixMs, reply: Reply<Result<usize, Error>>) {
        let doomed: Vec<TaskId> = self
            .tasks
            .states()
            .filter(|(_, state, finished)| *state == TaskState::DeadLettered && finished.unwrap_or(0) < finished_before)
            .map(|(id, _, _)| id)
            .collect();
        for id in &doomed {
            self.decisions.forget(*id);
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

    /// A failed attempt that may be retried: requeue it after a backoff while attempts remain,
    /// else dead-letter it with the reason.
    pub(super) fn retry_or_dead_letter(&mut self, task_id: TaskId, why: String, now: UnixMs) {
        let task = self.tasks.get_mut(&task_id).expect("a known task");
        let max_attempts = task.spec.limits.max_attempts;
        if task.attempt < max_attempts {
            let retry = &task.spec.retry;
            let delay = queue::retry_delay_ms(
                task.attempt + 1,
                retry.backoff_base_ms,
                retry.backoff_max_ms,
                rand::Rng::random(&mut self.rng),
            );
            task.set_state(
                TaskState::Queued,
                format!("retrying in {delay} ms after attempt {}: {why}", task.attempt),
                now,
            );
            self.enqueue(task_id, Some(now + delay));
        } else {
            let reason = format!("{why} (attempt {} of {max_attempts})", task.attempt);
            warn!(task_id = %task_id, reason, "dead-lettered");
            task.set_state(TaskState::DeadLettered, reason, now);
            self.observe_end(TaskState::DeadLettered, &why);
        }
    }

    /// Puts a task in line to be dispatched, now or at `ready_at`, and minds its deadline.
    pub(super) fn enqueue(&mut self, id: TaskId, ready_at: Option<UnixMs>) {
        let task = &self.tasks[&id];
        match ready_at {
            Some(at) => self.queue.push_delayed(id, task.spec.priority, at),
            None => self.queue.push_ready(id, task.spec.priority),
        }
        if let Some(deadline) = task.spec.limits.deadline_unix_ms {
            self.deadlines.insert((deadline, id));
        }
    }

    /// Dead-letters waiting tasks whose deadline passed before they started.
    pub(super) fn expire(&mut self, now: UnixMs) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let on_dependencies = self.tasks.get(&id).is_some_and(|t| t.state == TaskState::Waiting);
            if self.queue.remove_waiting(id) || on_dependencies {
                let task = self.tasks.get_mut(&id).expect("a waiting task exists");
                task.set_state(TaskState::DeadLettered, "expired", now);
                self.observe_end(TaskState::DeadLettered, "expired");
                info!(task_id = %id, "expired before it started");
                self.persist(id, AfterCommit::Changed(id));
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self, now: UnixMs) {
        self.shutting_down = true;
        if self.config.cancel_inflight_on_shutdown {
            let leased: Vec<TaskId> = self.tasks.decoded().filter(|t| t.state.is_leased()).map(|t| t.id).collect();
            for id in leased {
                self.cancel(id, "hub shutting down".to_owned(), None, now);
            }
        }
    }
}

/// Whether a submit with an idempotency key asks for what the key's first task asked for. The
/// core sorts and dedups dependencies on submit, so they are compared that way.
pub(super) fn same_submission(first: &TaskSpec, again: &TaskSpec) -> bool {
    if first.depends_on.len() == again.depends_on.len() && first.depends_on == again.depends_on {
        return first == again;
    }
    let mut normalized = again.clone();
    normalized.depends_on.sort();
    normalized.depends_on.dedup();
    *first == normalized
}

/// The final state and reason for an outcome. Only infrastructure failures are retried (by
/// lease expiry); a command that ran and failed is final, and so is work that ran but failed
/// its verification (`verified`: the task has steps, so a successful outcome needs a passing
/// report).
pub(super) fn judge(outcome: &Outcome, verified: bool) -> (TaskState, String) {
    if let Some(error) = &outcome.error {
        return (TaskState::Failed, error.clone());
    }
    if outcome.timed_out {
        return (TaskState::Failed, format!("timed out after {} ms", outcome.duration_ms));
    }
    match outcome.exit {
        Exit::Code(0) if verified => match &outcome.verification {
            Some(report) if report.verdict == Verdict::Passed => (TaskState::Succeeded, String::new()),
            Some(report) => (TaskState::Failed, verification_failed(report)),
            None => (TaskState::Failed, "verification_failed: the sidecar sent no verification report".to_owned()),
        },
        Exit::Code(0) => (TaskState::Succeeded, String::new()),
        Exit::Code(code) => (TaskState::Failed, format!("exit code {code}")),
        Exit::Signal(signal) => (TaskState::Failed, format!("killed by signal {signal}")),
        Exit::Unknown => (TaskState::Failed, "ended without an exit status".to_owned()),
    }
}

/// `verification_failed: ` and the first failed step with the first line of its evidence.
fn verification_failed(report: &VerificationReport) -> String {
    let failed: Vec<&StepReport> = report.steps.iter().filter(|s| !s.passed).collect();
    let Some(first) = failed.first() else {
        return format!("verification_failed: verification was {}", report.verdict.as_str());
    };
    let evidence = first.evidence.lines().next().unwrap_or_default();
    let more = match failed.len() {
        1 => String::new(),
        n => format!(" (and {} more failed step{})", n - 1, if n == 2 { "" } else { "s" }),
    };
    format!("verification_failed: {} {}: {evidence}{more}", first.kind, first.target)
}

/// `budget_exceeded: ...` when the attempt went past `limits.max_tokens` (every token it read
/// and wrote) or `limits.max_cost_micros` (as the hub priced it), or its runner stopped it there.
pub(super) fn over_budget(outcome: &Outcome, limits: &Limits) -> Option<String> {
    let usage = outcome.usage.as_ref();
    let tokens = usage.map(|u| u.input_tokens + u.cached_input_tokens + u.cache_write_tokens + u.output_tokens);
    if let (Some(max), Some(used)) = (limits.max_tokens, tokens)
        && (used > max || (outcome.budget_exceeded && used >= max))
    {
        return Some(format!("budget_exceeded: {used} tokens, limit {max}"));
    }
    if let (Some(max), Some(cost)) = (limits.max_cost_micros, usage.and_then(|u| u.cost_micros))
        && (cost > max || outcome.budget_exceeded)
    {
        return Some(format!("budget_exceeded: cost ${}, limit ${}", dollars(cost), dollars(max)));
    }
    outcome.budget_exceeded.then(|| "budget_exceeded: stopped by the sidecar at its budget".to_owned())
}

/// Millionths of a dollar as dollars, without trailing zeros.
fn dollars(micros: u64) -> String {
    let text = format!("{:.6}", micros as f64 / 1e6);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}
