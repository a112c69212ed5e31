//! What waits for a commit: the [`AfterCommit`] tickets that ride along with each write, and
//! what the core does when the storage writer reports them durable.

use std::sync::Arc;

use super::State;
use super::config::Error;
use tokio::sync::oneshot;

use super::messages::{Answer, Reply, RequestId, SubmitAnswer, Submitted};
use crate::domain::*;
use crate::fleet::{Endpoint, HostView};
use crate::link::{Assignment, ToSidecar};
use crate::store;

/// Work that waits for a commit.
pub enum AfterCommit {
    /// A submit is durable. Its submitter is answered on the writer thread the moment the log
    /// is synced (see `Ticket::durable`); the core then answers anyone whose submit
    /// matched the same idempotency key meanwhile, and settles a task with dependencies.
    Submitted { id: TaskId, answer: Option<Box<SubmitAnswer>> },
    /// A dispatch is durable: send the assignment (if the lease is still the same).
    Assigned { task_id: TaskId, lease_generation: u64 },
    /// A state change is durable: tell watchers.
    Changed(TaskId),
    /// A sidecar's result is durable (output and record): show the task as it now is, tell
    /// watchers, and let the sidecar forget the result.
    Stored { task_id: TaskId, lease_generation: u64, sidecar_id: String },
    /// A cancel is durable: answer the caller.
    Answer { task_id: TaskId, reply: Option<Reply<Result<Task, Error>>> },
    /// A dead-letter retry is durable: answer the caller, then make the task dispatchable.
    Requeued { task_id: TaskId, reply: Option<Reply<Result<Task, Error>>> },
    /// A purge is durable: answer with how many tasks went.
    Purged { count: usize, reply: Reply<Result<usize, Error>> },
    /// A cordon set or lifted is durable: answer with the host as it now is.
    Host { view: Box<HostView>, reply: Reply<Result<HostView, Error>> },
    /// An endpoint added or removed is durable: answer with it.
    Endpoint { endpoint: Box<Endpoint>, reply: Reply<Result<Endpoint, Error>> },
    /// Changes a component asked the core to persist are durable: tell it.
    Persisted(Reply<Result<(), Error>>),
    /// A workflow run's start, cancel or retry is durable: answer with the run as it now is.
    Run { id: ulid::Ulid, reply: Reply<Result<super::workflows::RunView, Error>> },
    /// A workflow run's events (a step ended) are durable.
    RunChanged(ulid::Ulid),
    /// Nothing waits for this change (counts, records forgotten by retention).
    Nothing,
}

impl AfterCommit {
    /// The submitter answered from the writer thread, if this ticket has one.
    pub(super) fn early_reply(&self) -> Option<RequestId> {
        match self {
            AfterCommit::Submitted { answer: Some(answer), .. } => Some(answer.0.id),
            _ => None,
        }
    }

    /// The submitter's answer, taken to go out from the writer thread once the log is synced.
    pub(super) fn take_early_answer(&mut self) -> Option<(RequestId, Answer)> {
        let AfterCommit::Submitted { answer, .. } = self else { return None };
        let (reply, submitted) = *answer.take()?;
        Some(reply.with(Ok(submitted)))
    }

    /// The caller this ticket answers, if any.
    pub(super) fn caller(&self) -> Option<RequestId> {
        match self {
            AfterCommit::Submitted { answer, .. } => answer.as_ref().map(|answer| answer.0.id),
            AfterCommit::Answer { reply, .. } | AfterCommit::Requeued { reply, .. } => reply.map(|reply| reply.id),
            AfterCommit::Purged { reply, .. } => Some(reply.id),
            AfterCommit::Host { reply, .. } => Some(reply.id),
            AfterCommit::Endpoint { reply, .. } => Some(reply.id),
            AfterCommit::Persisted(reply) => Some(reply.id),
            AfterCommit::Run { reply, .. } => Some(reply.id),
            AfterCommit::Assigned { .. }
            | AfterCommit::Changed(_)
            | AfterCommit::Stored { .. }
            | AfterCommit::RunChanged(_)
            | AfterCommit::Nothing => None,
        }
    }
}

/// A write's ticket as the storage writer carries it: what waits for the commit, and the
/// submitter's channel when it is answered on the writer thread.
pub(crate) struct Ticket {
    pub(super) after: AfterCommit,
    pub(super) early: Option<oneshot::Sender<Answer>>,
}

impl Ticket {
    /// Runs on the writer thread once the change is durable in the log, before the core hears
    /// of it: a submitter needs nothing but durability, so its answer skips the redb apply and
    /// the hop through the core. Whatever it asks next may reach the core before `Committed`;
    /// the core has held the task since the submit, so it is found, cancellable and usable as a
    /// dependency. A queued task is dispatchable from its submit on: its dispatch is written
    /// after the submit in the ordered log, and its assignment leaves only once that is durable.
    pub(super) fn durable(&mut self) {
        if let Some(caller) = self.early.take()
            && let Some((_, answer)) = self.after.take_early_answer()
        {
            let _ = caller.send(answer);
        }
    }
}

/// What watchers of a task whose result could not be stored are told.
pub(super) fn result_unstored(id: TaskId, err: &store::Error) -> String {
    format!(
        "the hub could not store the result of task {id}: {err}; the task ends once storage works again (hubctl watch {id})"
    )
}

impl State {
    /// Work with a cost budget placed without a model (the sidecar picks one): the prices of
    /// the models the sidecar's endpoints offer, from the price table.
    fn prices_on(&self, lease: &crate::queue::Lease, task: &Task) -> Vec<(String, crate::domain::TokenPrice)> {
        if lease.model.is_some() || task.spec.limits.max_cost_micros.is_none() {
            return Vec::new();
        }
        let sidecar_id = &lease.sidecar_id;
        let mut prices: Vec<(String, crate::domain::TokenPrice)> = self
            .registry
            .iter()
            .filter(|e| matches!(&e.owner, crate::fleet::Owner::Sidecar(s) if s == sidecar_id))
            .flat_map(|e| e.models.iter())
            .filter_map(|m| Some((m.name.clone(), self.config.prices.token_price(&m.name)?)))
            .collect();
        prices.sort_by(|a, b| a.0.cmp(&b.0));
        prices.dedup_by(|a, b| a.0 == b.0);
        prices
    }

    pub(super) fn committed(&mut self, tickets: Vec<AfterCommit>, result: Result<(), Arc<store::Error>>, now: UnixMs) {
        if let Err(err) = result {
            self.storage_failed(tickets, &err, now);
            return;
        }
        if tickets.is_empty() && self.storage_fault.is_some() {
            self.storage_recovered(now);
            return;
        }
        for ticket in tickets {
            match ticket {
                AfterCommit::Submitted { id, answer } => {
                    debug_assert!(answer.is_none(), "the submitter is answered on the writer thread");
                    // (Cancelled before this commit returned, it may have settled already.)
                    let Some(task) = self.tasks.get(&id) else { continue };
                    let state = task.state;
                    let answers: Vec<_> = (self.pending_submits.remove(&id).unwrap_or_default().into_iter())
                        .map(|(reply, existing)| (reply, Submitted { task: Task::clone(&task), existing }))
                        .collect();
                    drop(task);
                    for (reply, submitted) in answers {
                        self.answer(reply, Ok(submitted));
                    }
                    // A queued task was made dispatchable at its submit.
                    if state == TaskState::Waiting {
                        self.settle_dependencies(id, now);
                    }
                    self.span_submitted(id, now);
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
                    let dispatched_ms = now - self.tasks[&task_id].updated_unix_ms;
                    self.observe_assignment(dispatched_ms);
                    let trace = self.span_assigned(task_id, &lease.sidecar_id, now);
                    let task = &self.tasks[&task_id];
                    let mut spec = task.spec.clone();
                    // An `--offline` hub's work is local-only wherever the sidecar chooses.
                    spec.placement.local_only |= self.config.offline;
                    let message = ToSidecar::Assign(Box::new(Assignment {
                        task_id,
                        lease_generation,
                        attempt: task.attempt,
                        agent_id: lease.agent_id.clone(),
                        spec,
                        endpoint_id: lease.endpoint_id.clone(),
                        model: lease.model.clone(),
                        price: lease.model.as_deref().and_then(|m| self.config.prices.token_price(m)),
                        judge: lease.judge.clone(),
                        prices: self.prices_on(&lease, task),
                        trace,
                    }));
                    self.send_to(&lease.sidecar_id, message);
                    self.notify(task_id, now);
                }
                AfterCommit::Changed(id) => self.notify(id, now),
                AfterCommit::Stored { task_id, lease_generation, sidecar_id } => {
                    self.shown.remove(&task_id);
                    self.send_to(&sidecar_id, ToSidecar::Stored { task_id, lease_generation });
                    self.notify(task_id, now);
                }
                AfterCommit::Answer { task_id, reply } => {
                    // A task settled meanwhile (by an earlier commit's news) is packed: `get`.
                    let task = self.tasks.get(&task_id).map(std::borrow::Cow::into_owned);
                    if let Some(reply) = reply {
                        self.answer(reply, task.ok_or(Error::NotFound(task_id)));
                    }
                    self.notify(task_id, now);
                }
                AfterCommit::Requeued { task_id, reply } => {
                    let task = self.tasks.get(&task_id).map(std::borrow::Cow::into_owned);
                    let queued = task.as_ref().is_some_and(|task| task.state == TaskState::Queued);
                    if let Some(reply) = reply {
                        self.answer(reply, task.ok_or(Error::NotFound(task_id)));
                    }
                    if queued {
                        self.enqueue(task_id, None);
                    }
                }
                AfterCommit::Purged { count, reply } => self.answer(reply, Ok(count)),
                AfterCommit::Host { view, reply } => self.answer(reply, Ok(*view)),
                AfterCommit::Endpoint { endpoint, reply } => self.answer(reply, Ok(*endpoint)),
                AfterCommit::Persisted(reply) => self.answer(reply, Ok(())),
                AfterCommit::RunChanged(id) => self.changes.mark_run(id),
                AfterCommit::Run { id, reply } => {
                    self.changes.mark_run(id);
                    let view = self
                        .run_view(id, true)
                        .ok_or_else(|| Error::UnknownName(format!("workflow run {id} not found")));
                    self.answer(reply, view);
                }
                AfterCommit::Nothing => {}
            }
        }
    }

    /// A commit failed (or storage failed between commits, with no tickets): the hub can no
    /// longer promise durability, so it takes no submits until storage works again. Submits
    /// that were waiting learn it (unless the log was synced and they were answered already);
    /// what else changed stays in memory and is written again once storage recovers.
    fn storage_failed(&mut self, tickets: Vec<AfterCommit>, err: &store::Error, now: UnixMs) {
        if self.storage_fault.is_none() {
            tracing::error!(error = %err, "storage failed; refusing submits until it works again");
        }
        self.storage_fault = Some(err.to_string());
        self.fx.push(super::Action::Fault(Some(err.to_string())));
        let failed = || Error::Storage(err.to_string());
        for ticket in tickets {
            match ticket {
                AfterCommit::Submitted { id, answer } => {
                    if let Some(answer) = answer {
                        self.answer(answer.0, Err(failed()));
                    }
                    // Not durable, so it must not run: a later commit could still carry its
                    // dispatch, whose assignment then never leaves (the task is final; as
                    // cancelled, a lease it holds ends without a retry).
                    self.queue.remove_waiting(id);
                    if self.tasks.state(&id).is_some_and(|state| !state.is_terminal())
                        && let Some(task) = self.tasks.get_mut(&id)
                    {
                        let reason = format!("not stored: {err}");
                        task.set_state(TaskState::Cancelled, reason.clone(), now);
                        self.observe_end(TaskState::Cancelled, &reason);
                    }
                    self.unstored.insert(id);
                }
                // The sidecar keeps a result until it hears it is stored; it sends it again in
                // the new session it is made to open once storage works again.
                AfterCommit::Stored { task_id, sidecar_id, .. } => {
                    self.resend.insert(sidecar_id);
                    self.unstored.insert(task_id);
                    // Its watchers (`submit --wait`) hear why, instead of waiting in silence.
                    if let Some(feed) = self.feeds.remove(&task_id) {
                        feed.fail(result_unstored(task_id, err));
                    }
                }
                AfterCommit::Assigned { task_id, .. } | AfterCommit::Changed(task_id) => {
                    self.unstored.insert(task_id);
                }
                AfterCommit::Answer { task_id, reply } | AfterCommit::Requeued { task_id, reply } => {
                    self.unstored.insert(task_id);
                    if let Some(reply) = reply {
                        self.answer(reply, Err(failed()));
                    }
                }
                AfterCommit::Purged { reply, .. } => self.answer(reply, Err(failed())),
                AfterCommit::Host { reply, .. } => self.answer(reply, Err(failed())),
                AfterCommit::Endpoint { reply, .. } => self.answer(reply, Err(failed())),
                AfterCommit::Persisted(reply) => self.answer(reply, Err(failed())),
                // The run's events are written again, whole, once storage works again.
                AfterCommit::Run { id, reply } => {
                    self.runs.unstored.insert(id);
                    self.answer(reply, Err(failed()));
                }
                AfterCommit::RunChanged(id) => drop(self.runs.unstored.insert(id)),
                AfterCommit::Nothing => {}
            }
        }
        let waiters: Vec<_> = self.pending_submits.drain().flat_map(|(_, waiters)| waiters).collect();
        for (reply, _) in waiters {
            self.answer(reply, Err(failed()));
        }
    }

    /// Storage works again: what did not reach it is written now, sidecars whose results were
    /// lost with a failed commit are made to send them again (a new session), and submits are
    /// taken again.
    fn storage_recovered(&mut self, now: UnixMs) {
        tracing::info!(tasks = self.unstored.len(), sidecars = self.resend.len(), "storage works again");
        self.storage_fault = None;
        self.fx.push(super::Action::Fault(None));
        for id in std::mem::take(&mut self.unstored) {
            // A result's own task is written with the result when it comes again.
            if self.tasks.contains_key(&id) && !self.shown.contains_key(&id) {
                self.persist(id, AfterCommit::Changed(id));
            }
        }
        self.rewrite_runs();
        for sidecar_id in std::mem::take(&mut self.resend) {
            if let Some(session) = self.sidecars.get(&sidecar_id).map(|s| s.session) {
                self.session_closed(&sidecar_id, session, now);
            }
        }
    }

    /// Tells watchers about a durable change. A task that is final and no longer leased has
    /// nothing more to say: its feed is finished and dropped (and with it the output it held),
    /// retention counts it, its dependents move, and it is packed (`kept`). A packed task that
    /// changes again (retention dropped its output) was settled before: only the change is told.
    pub(super) fn notify(&mut self, id: TaskId, now: UnixMs) {
        if self.shown.contains_key(&id) {
            return; // Its end is not durable yet: nothing to tell.
        }
        self.changes.mark_task(id);
        if self.tasks.is_packed(&id) {
            return;
        }
        let Some(state) = self.tasks.state(&id) else { return };
        let settled = state.is_terminal() && self.queue.lease(id).is_none();
        if let Some(feed) = self.feeds.get(&id) {
            if settled {
                feed.finish(&self.tasks[&id]);
                self.feeds.remove(&id);
            } else {
                feed.update(&self.tasks[&id]);
            }
        }
        if settled {
            self.retain(id);
            self.span_settled(id);
            self.step_settled(id, now);
            for dependent in self.dependents.remove(&id).unwrap_or_default() {
                self.settle_dependencies(dependent, now);
            }
            self.tasks.pack(&id);
        }
    }
}
