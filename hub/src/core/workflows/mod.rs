//! Workflow runs in the core: starting one, advancing it when a step's task settles, cancel
//! and retry, and taking the runs back after a restart; what the API is shown is in `view`.
//!
//! A run is its stored record and its events (`store::workflows`); its state is what
//! `agentcom_workflow::run::advance` makes of them, so a restart replays them. Every step is an
//! ordinary task, labelled with its run, step, round and item, whose idempotency key
//! (`wf:RUN:STEP:ROUND:ITEM`, `:rN` after the run's N-th retry) is made from those: a step is
//! never submitted twice, and one the replay finds submitted is taken back by its key. An event
//! is written in the same commit as the tasks it submits; a step that settled in a commit whose
//! event the hub did not live to write is found at start (its task is final, its key still
//! running) and ended then, with its output read from storage.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tracing::{info, warn};
use ulid::Ulid;

use agentcom_workflow::expr::Scope;
use agentcom_workflow::file::Definition;
use agentcom_workflow::run::{self, Ended, Run, StepKey};
use agentcom_workflow::task::StepWork;

use super::State;
use super::commit::AfterCommit;
use super::config::Error;
use super::messages::Reply;
use crate::domain::*;
use crate::store::{LoadedRun, Op, RunEvent, RunEventKind, StoredRun};

mod view;

pub use view::{GraphStep, RunView, StepView, Totals};

/// The most of a step's output a run keeps for its templates and conditions (the task keeps all).
pub const OUTPUT_KEPT: usize = 64 * 1024;

/// What the API asks of workflow runs.
pub enum Request {
    Start {
        start: Box<StartRun>,
        reply: Reply<Result<RunView, Error>>,
    },
    Get {
        id: Ulid,
        reply: Reply<Result<RunView, Error>>,
    },
    List {
        limit: usize,
        reply: Reply<Vec<RunView>>,
    },
    Cancel {
        id: Ulid,
        reply: Reply<Result<RunView, Error>>,
    },
    Retry {
        id: Ulid,
        reply: Reply<Result<RunView, Error>>,
    },
    /// Webhooks, schedules, memory.
    Trigger(super::triggers::Request),
}

/// A run to start: its checked definition, the file as given, and its checked inputs.
pub struct StartRun {
    pub definition: Arc<Definition>,
    pub source: String,
    pub inputs: Value,
    /// `api`, `hook:NAME`, `schedule`.
    pub trigger: String,
    /// A webhook's delivery id: a run already started for it is answered instead of a new one.
    pub delivery: Option<String>,
    /// A schedule's slot.
    pub slot_unix_ms: Option<UnixMs>,
}

impl StartRun {
    /// A run started through the API.
    pub fn new(definition: Arc<Definition>, source: String, inputs: Value) -> StartRun {
        StartRun { definition, source, inputs, trigger: "api".to_owned(), delivery: None, slot_unix_ms: None }
    }
}

/// The core's runs.
#[derive(Default)]
pub(super) struct Runs {
    entries: BTreeMap<Ulid, Entry>,
    /// The run, retry generation and key of each step task not settled yet.
    step_of: HashMap<TaskId, (Ulid, u32, StepKey)>,
    /// A step task's output from its result, kept until the task settles.
    outputs: HashMap<TaskId, String>,
    /// Runs with events in a commit that failed: written again, whole, once storage works.
    pub(super) unstored: std::collections::BTreeSet<Ulid>,
    /// Webhooks, schedules and workflows' memory (`triggers.rs`).
    pub(super) triggers: super::triggers::Triggers,
    /// The run started for each webhook delivery: (hook, delivery id).
    pub(super) deliveries: HashMap<(String, String), Ulid>,
}

struct Entry {
    definition: Arc<Definition>,
    record: StoredRun,
    run: Run,
    /// Its events so far, as stored (the n-th under sequence number n): written again whole if
    /// a commit holding some of them fails.
    events: Vec<RunEvent>,
    retries: u32,
    /// Each step key's latest task.
    tasks: BTreeMap<StepKey, TaskId>,
    /// Tokens and cost of every step task that ended, every round and retry.
    totals: Totals,
}

/// What starting a run came to.
enum Begun {
    /// A new run, and what to write for it.
    New(Ulid, Vec<Op>),
    /// The run a webhook delivery started before.
    Existing(Ulid),
}

/// A step task's idempotency key.
pub fn idempotency_key(run: Ulid, retries: u32, key: &StepKey) -> String {
    let item = key.item.map_or_else(|| "-".to_owned(), |i| i.to_string());
    let retry = if retries > 0 { format!(":r{retries}") } else { String::new() };
    format!("wf:{run}:{}:{}:{item}{retry}", key.step, key.round)
}

/// The first `OUTPUT_KEPT` bytes of `bytes` as text (cut at a character boundary).
pub(super) fn output_head(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(OUTPUT_KEPT)]);
    let mut end = text.len().min(OUTPUT_KEPT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl State {
    pub(super) fn workflow_request(&mut self, request: Request, now: UnixMs) {
        match request {
            Request::Start { start, reply } => self.start_run(*start, reply, now),
            Request::Get { id, reply } => {
                let view = self.run_view(id, true).ok_or_else(|| run_not_found(id));
                self.answer(reply, view);
            }
            Request::List { limit, reply } => {
                let ids: Vec<Ulid> = self.runs.entries.keys().rev().take(limit).copied().collect();
                let views = ids.into_iter().filter_map(|id| self.run_view(id, false)).collect();
                self.answer(reply, views);
            }
            Request::Cancel { id, reply } => self.cancel_run(id, reply, now),
            Request::Retry { id, reply } => self.retry_run(id, reply, now),
            Request::Trigger(request) => self.trigger_request(request, now),
        }
    }

    fn start_run(&mut self, start: StartRun, reply: Reply<Result<RunView, Error>>, now: UnixMs) {
        match self.begin_run(start, now) {
            Err(err) => self.answer(reply, Err(err)),
            Ok(Begun::Existing(existing)) => {
                let view = self.run_view(existing, true).map(|view| RunView { existing: true, ..view });
                self.answer(reply, view.ok_or_else(|| run_not_found(existing)));
            }
            Ok(Begun::New(id, ops)) => {
                self.write(ops, AfterCommit::Run { id, reply });
                self.dispatch(now);
            }
        }
    }

    /// Starts a run nobody waits for (a schedule's).
    pub(super) fn start_scheduled(&mut self, start: StartRun, now: UnixMs) {
        let name = start.definition.workflow.name.clone();
        match self.begin_run(start, now) {
            Ok(Begun::New(id, ops)) => self.write(ops, AfterCommit::RunChanged(id)),
            Ok(Begun::Existing(_)) => {}
            Err(err) => warn!(workflow = name, error = %err, "a scheduled run could not start"),
        }
    }

    /// A new run's record and first events (with its first step tasks beside them), or the run
    /// a webhook delivery already started.
    fn begin_run(&mut self, start: StartRun, now: UnixMs) -> Result<Begun, Error> {
        if self.shutting_down {
            return Err(Error::ShuttingDown);
        } else if let Some(fault) = &self.storage_fault {
            return Err(Error::StorageFault(fault.clone()));
        } else if self.write_backlog >= self.config.max_write_backlog {
            return Err(Error::Overloaded);
        }
        if let (Some(hook), Some(delivery)) = (start.trigger.strip_prefix("hook:"), &start.delivery)
            && let Some(&existing) = self.runs.deliveries.get(&(hook.to_owned(), delivery.clone()))
        {
            return Ok(Begun::Existing(existing));
        }
        let id = Ulid::from_parts(now as u64, rand::Rng::random(&mut self.rng));
        let StartRun { definition, source, inputs, trigger, delivery, slot_unix_ms } = start;
        if let (Some(hook), Some(delivery)) = (trigger.strip_prefix("hook:"), &delivery) {
            self.runs.deliveries.insert((hook.to_owned(), delivery.clone()), id);
        }
        let given = self.runs.triggers.given(&definition.workflow.name);
        let record = StoredRun {
            id,
            name: definition.workflow.name.clone(),
            source,
            inputs: inputs.clone(),
            created_unix_ms: now,
            trigger,
            state: run::State::Running.as_str().to_owned(),
            ended_unix_ms: None,
            delivery,
            slot_unix_ms,
            given: given.clone(),
        };
        let run = Run::with(&definition.workflow, inputs, given);
        let entry = Entry {
            definition,
            record: record.clone(),
            run,
            events: Vec::new(),
            retries: 0,
            tasks: BTreeMap::new(),
            totals: Totals::default(),
        };
        self.runs.entries.insert(id, entry);
        let mut ops = vec![Op::PutRun(Box::new(record))];
        ops.extend(self.drive(id, RunEventKind::Start, now));
        info!(run = %id, workflow = %self.runs.entries[&id].record.name, "workflow run started");
        let trigger = match self.runs.entries[&id].record.trigger.split(':').next() {
            Some("hook") => "hook",
            Some("schedule") => "schedule",
            _ => "api",
        };
        self.observe_run_started(trigger);
        Ok(Begun::New(id, ops))
    }

    fn cancel_run(&mut self, id: Ulid, reply: Reply<Result<RunView, Error>>, now: UnixMs) {
        let Some(entry) = self.runs.entries.get(&id) else {
            self.answer(reply, Err(run_not_found(id)));
            return;
        };
        if entry.run.state.is_final() {
            let message = format!("workflow run {id} is already {}", entry.run.state.as_str());
            self.answer(reply, Err(Error::Conflict(message)));
            return;
        }
        let running: Vec<TaskId> = entry.run.running().iter().filter_map(|key| entry.tasks.get(key).copied()).collect();
        let ops = self.drive(id, RunEventKind::Cancel, now);
        for task in running {
            self.cancel(task, format!("its workflow run {id} was cancelled"), None, now);
        }
        self.write(ops, AfterCommit::Run { id, reply });
    }

    fn retry_run(&mut self, id: Ulid, reply: Reply<Result<RunView, Error>>, now: UnixMs) {
        let Some(entry) = self.runs.entries.get(&id) else {
            self.answer(reply, Err(run_not_found(id)));
            return;
        };
        if !matches!(entry.run.state, run::State::Failed | run::State::Cancelled) {
            let message =
                format!("workflow run {id} is {}: only a failed or cancelled run is retried", entry.run.state.as_str());
            self.answer(reply, Err(Error::Conflict(message)));
            return;
        }
        let ops = self.drive(id, RunEventKind::Retry, now);
        self.write(ops, AfterCommit::Run { id, reply });
        self.dispatch(now);
    }

    /// A step task's result came in and ends it: its output is kept until the task settles.
    pub(super) fn keep_step_output(&mut self, task_id: TaskId, stdout: &[u8]) {
        if self.runs.step_of.contains_key(&task_id) {
            self.runs.outputs.insert(task_id, output_head(stdout));
        }
    }

    /// A task settled (durably): if it is a step of a run, the run goes on.
    pub(super) fn step_settled(&mut self, task_id: TaskId, now: UnixMs) {
        let Some((run_id, generation, key)) = self.runs.step_of.remove(&task_id) else { return };
        let output = self.runs.outputs.remove(&task_id).unwrap_or_default();
        let Some(entry) = self.runs.entries.get(&run_id) else { return };
        if generation != entry.retries {
            return; // A task of the run before it was retried: its end no longer counts.
        }
        let Some(task) = self.tasks.get(&task_id) else { return };
        let captures = entry.definition.tasks.get(&key.step).map(|t| &t.outputs);
        let ended = ended_of(&task, output, captures);
        drop(task);
        let ops = self.drive(run_id, RunEventKind::Ended { key, ended: Box::new(ended), task_id: Some(task_id) }, now);
        self.write(ops, AfterCommit::RunChanged(run_id));
    }

    /// A service step's task became ready: the step ends, succeeded, and its outputs are the
    /// service's `ports` (by name), first `port`, `host`, `url` and `task`. The service runs on
    /// after its step; stopping the run's services stops it (`hubctl repo down`, `hubctl stop`).
    pub(super) fn service_ready(&mut self, task_id: TaskId, now: UnixMs) {
        let Some((run_id, generation, key)) = self.runs.step_of.remove(&task_id) else { return };
        if self.runs.entries.get(&run_id).is_none_or(|entry| generation != entry.retries) {
            return;
        }
        let Some(task) = self.tasks.get(&task_id) else { return };
        let host = task
            .sidecar_id
            .as_ref()
            .and_then(|id| self.sidecars.get(id))
            .map_or_else(|| "127.0.0.1".to_owned(), |s| s.hello.hostname.clone());
        let ports = task.service.as_ref().map(|s| s.ports.clone()).unwrap_or_default();
        let first = match &task.spec.work {
            Work::Service(work) => work.ports.first().and_then(|name| ports.get(name).copied()),
            _ => None,
        };
        drop(task);
        let outputs = json!({
            "ports": ports,
            "port": first,
            "host": host,
            "url": first.map(|port| format!("http://{host}:{port}")),
            "task": task_id.to_string(),
        });
        let ended = Ended {
            succeeded: true,
            exit_code: None,
            output: outputs.to_string(),
            outputs: outputs.as_object().cloned().unwrap_or_default(),
            verdict: None,
            usage: Value::Null,
            reason: None,
        };
        let ops = self.drive(run_id, RunEventKind::Ended { key, ended: Box::new(ended), task_id: Some(task_id) }, now);
        self.write(ops, AfterCommit::RunChanged(run_id));
    }

    /// Writes again, whole, the runs whose events were in a commit that failed.
    pub(super) fn rewrite_runs(&mut self) {
        for id in std::mem::take(&mut self.runs.unstored) {
            let Some(entry) = self.runs.entries.get(&id) else { continue };
            let mut ops = vec![Op::PutRun(Box::new(entry.record.clone()))];
            for (index, event) in entry.events.iter().enumerate() {
                ops.push(Op::PutRunEvent { run: id, seq: index as u32 + 1, event: Box::new(event.clone()) });
            }
            self.write(ops, AfterCommit::RunChanged(id));
        }
    }

    /// Applies `event` to run `id` and records it; submits the step tasks it asks for (a task
    /// that cannot be made ends its step as failed, which may move the run on again); writes the
    /// run's record when its state changed. The step tasks' own writes go beside these, in the
    /// same commit.
    fn drive(&mut self, id: Ulid, event: RunEventKind, now: UnixMs) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut events = VecDeque::from([event]);
        while let Some(kind) = events.pop_front() {
            let Some(entry) = self.runs.entries.get_mut(&id) else { return ops };
            let before = ended_rows(&entry.run);
            let submits = apply(entry, &kind);
            let after = ended_rows(&entry.run);
            let event = RunEvent { at_unix_ms: now, kind };
            entry.events.push(event.clone());
            ops.push(Op::PutRunEvent { run: id, seq: entry.events.len() as u32, event: Box::new(event) });
            for (state, (was, is)) in ENDED.iter().zip(before.iter().zip(after)) {
                if is > *was {
                    self.observe_steps(state.as_str(), (is - was) as u64);
                }
            }
            let mut context = None;
            for key in submits {
                if let Err(reason) = self.submit_step(id, &key, &mut context, now) {
                    let ended = Ended { succeeded: false, reason: Some(reason), ..Ended::default() };
                    events.push_back(RunEventKind::Ended { key, ended: Box::new(ended), task_id: None });
                }
            }
        }
        let Some(entry) = self.runs.entries.get_mut(&id) else { return ops };
        let state = entry.run.state.as_str();
        let mut finished = None;
        if entry.record.state != state {
            entry.record.state = state.to_owned();
            entry.record.ended_unix_ms = entry.run.state.is_final().then_some(now);
            if entry.run.state.is_final() {
                info!(run = %id, state, "workflow run ended");
                finished = Some(now - entry.record.created_unix_ms);
            }
            ops.push(Op::PutRun(Box::new(entry.record.clone())));
            if entry.run.state == run::State::Succeeded {
                let memory = super::triggers::remembered(id, &entry.definition, &entry.run, now);
                ops.push(Op::PutMemory(Box::new(self.runs.triggers.remember(memory))));
            }
        }
        if let Some(took) = finished {
            self.observe_run_finished(state, took);
            self.span_run(id, now);
        }
        ops
    }

    /// Submits the task of `key` (or takes back the one its key already names).
    /// `context` is the run's [`Run::context`] as templates read it, made by the first submit
    /// that needs it and kept for the others submitted with it: the run does not change between
    /// them, and a fan-out's tasks share one copy of it.
    fn submit_step(
        &mut self,
        id: Ulid,
        key: &StepKey,
        context: &mut Option<Scope>,
        now: UnixMs,
    ) -> Result<TaskId, String> {
        let entry = &self.runs.entries[&id];
        let generation = entry.retries;
        let idempotency_key = idempotency_key(id, generation, key);
        let task_id = match self.by_key.get(&idempotency_key) {
            Some(&existing) => existing,
            None => {
                let scope =
                    context.get_or_insert_with(|| Scope::of(&entry.run.context())).with(&entry.run.key_fields(key));
                let body =
                    agentcom_workflow::task::body(&entry.definition, &id.to_string(), key, &idempotency_key, &scope)?;
                let mut spec = agentcom_types::json::task_spec_from_value(body, &self.config.spec_defaults)
                    .map_err(|err| format!("its task is not valid: {err}"))?;
                // The step's spans hang under the run's root span.
                spec.trace_parent = Some(run_trace(id).under(run_trace(id).root_span_id));
                self.create_task(spec, None, now)
            }
        };
        let entry = self.runs.entries.get_mut(&id).expect("checked above");
        let replaced = entry.tasks.insert(key.clone(), task_id).filter(|old| *old != task_id);
        if !self.tasks.state(&task_id).is_some_and(TaskState::is_terminal) {
            self.runs.step_of.insert(task_id, (id, generation, key.clone()));
        }
        // A service step that runs again (a later round, a retry) replaces its earlier services.
        let service = matches!(entry.definition.tasks.get(&key.step).map(|t| &t.work), Some(StepWork::Service(_)));
        if service {
            let earlier =
                entry.tasks.iter().filter(|(k, _)| k.step == key.step && k.item == key.item && k.round < key.round);
            let earlier: Vec<TaskId> = earlier.map(|(_, task)| *task).chain(replaced).collect();
            for old in earlier {
                if self.tasks.state(&old).is_some_and(|state| !state.is_terminal()) {
                    self.cancel(old, format!("replaced by {} of run {id}", idempotency_key), None, now);
                }
            }
        }
        Ok(task_id)
    }

    /// Takes the stored runs back: replays each one's events, takes back its step tasks by
    /// their keys, submits any it waits for that do not exist, and returns the step tasks that
    /// settled without their end recorded (their outputs are read from storage, then
    /// [`State::steps_settled_at_start`]).
    pub(super) fn restore_runs(&mut self, loaded: Vec<LoadedRun>, now: UnixMs) -> Vec<TaskId> {
        let mut settled = Vec::new();
        let count = loaded.len();
        for LoadedRun { run: record, events } in loaded {
            let id = record.id;
            let definition = match agentcom_workflow::file::load(&record.source) {
                Ok(definition) => Arc::new(definition),
                Err(problems) => {
                    let first = problems.first().map(ToString::to_string).unwrap_or_default();
                    warn!(run = %id, problem = first, "a stored workflow run's file no longer reads; the run is not taken back");
                    continue;
                }
            };
            if let (Some(hook), Some(delivery)) = (record.trigger.strip_prefix("hook:"), &record.delivery) {
                self.runs.deliveries.insert((hook.to_owned(), delivery.clone()), id);
            }
            let run = Run::with(&definition.workflow, record.inputs.clone(), record.given.clone());
            let mut entry = Entry {
                definition,
                record,
                run,
                events: Vec::new(),
                retries: 0,
                tasks: BTreeMap::new(),
                totals: Totals::default(),
            };
            for event in events {
                if let RunEventKind::Ended { key, task_id: Some(task_id), .. } = &event.kind {
                    entry.tasks.insert(key.clone(), *task_id);
                }
                for key in apply(&mut entry, &event.kind) {
                    if let Some(&task_id) = self.by_key.get(&idempotency_key(id, entry.retries, &key)) {
                        entry.tasks.insert(key, task_id);
                    }
                }
                entry.events.push(event);
            }
            let waiting = entry.run.running();
            self.runs.entries.insert(id, entry);
            let mut missing = Vec::new();
            for key in waiting {
                let generation = self.runs.entries[&id].retries;
                match self.by_key.get(&idempotency_key(id, generation, &key)).copied() {
                    Some(task_id) => {
                        self.runs.entries.get_mut(&id).expect("inserted above").tasks.insert(key.clone(), task_id);
                        self.runs.step_of.insert(task_id, (id, generation, key));
                        if self.tasks.state(&task_id).is_some_and(TaskState::is_terminal) {
                            settled.push(task_id);
                        }
                    }
                    None => missing.push(key),
                }
            }
            // Never written (the run's event and its tasks share a commit, so this is a task
            // forgotten since): submitted now.
            for key in missing {
                if let Err(reason) = self.submit_step(id, &key, &mut None, now) {
                    let ended = Ended { succeeded: false, reason: Some(reason), ..Ended::default() };
                    let ops = self.drive(id, RunEventKind::Ended { key, ended: Box::new(ended), task_id: None }, now);
                    self.write(ops, AfterCommit::RunChanged(id));
                }
            }
        }
        let running = self.runs.entries.values().filter(|e| !e.run.state.is_final()).count();
        info!(runs = count, running, steps_to_end = settled.len(), "restored workflow runs");
        settled
    }

    /// Ends the steps whose tasks settled before the hub stopped without their end recorded,
    /// with the outputs storage has of them.
    pub(super) fn steps_settled_at_start(&mut self, outputs: Vec<(TaskId, Vec<u8>)>, now: UnixMs) {
        for (task_id, stdout) in outputs {
            self.runs.outputs.insert(task_id, output_head(&stdout));
            self.step_settled(task_id, now);
        }
    }
}

/// A run's trace: its id and its root span's come from the run id, as a task's do from its own,
/// so the steps' spans find their parent after a restart.
fn run_trace(id: Ulid) -> TaskTrace {
    TaskTrace::of(TaskId(id), None)
}

impl State {
    /// A run ended: its root span, from its start to now, under which its steps' tasks are.
    fn span_run(&mut self, id: Ulid, now: UnixMs) {
        use agentcom_metrics::trace::{Span, at_ms};
        let Some(entry) = self.runs.entries.get(&id).filter(|_| self.config.traces) else { return };
        let trace = run_trace(id);
        let span = Span::with_id(
            "workflow run",
            trace.trace_id,
            None,
            at_ms(entry.record.created_unix_ms),
            trace.root_span_id,
        )
        .attr("agentcom.workflow.run", id.to_string())
        .attr("agentcom.workflow.name", entry.record.name.clone())
        .attr("agentcom.workflow.state", entry.run.state.as_str())
        .attr("agentcom.workflow.trigger", entry.record.trigger.clone());
        self.fx.push(super::Action::Span(Box::new(span), at_ms(now)));
    }
}

/// The final states a step or item ends in, for the metrics.
const ENDED: [run::State; 4] = [run::State::Succeeded, run::State::Failed, run::State::Skipped, run::State::Cancelled];

/// How many steps (an item of a `for_each` step counted as one) are in each of [`ENDED`].
fn ended_rows(run: &Run) -> [usize; 4] {
    let mut counts = [0; 4];
    let mut count = |state: run::State| {
        if let Some(index) = ENDED.iter().position(|s| *s == state) {
            counts[index] += 1;
        }
    };
    for step in run.steps.values() {
        match &step.items {
            Some(items) if !items.is_empty() => items.iter().for_each(|item| count(item.state)),
            _ => count(step.state),
        }
    }
    counts
}

/// Applies one event to a run's state: the step keys it asks to submit.
fn apply(entry: &mut Entry, kind: &RunEventKind) -> Vec<StepKey> {
    let event = match kind {
        RunEventKind::Start => run::Event::Start,
        RunEventKind::Cancel => run::Event::Cancel,
        RunEventKind::Retry => {
            if matches!(entry.run.state, run::State::Failed | run::State::Cancelled) {
                entry.retries += 1;
            }
            run::Event::Retry
        }
        RunEventKind::Ended { key, ended, .. } => {
            entry.totals.add(&ended.usage);
            run::Event::Ended { key: key.clone(), ended: (**ended).clone() }
        }
    };
    run::advance(&entry.definition.workflow, &mut entry.run, event)
}

/// How a step task's end reads to its run: what its `outputs:` capture from its output (a
/// capture that finds nothing fails a task that succeeded), its exit code, verdict and usage.
fn ended_of(
    task: &Task,
    output: String,
    captures: Option<&BTreeMap<String, agentcom_workflow::task::Capture>>,
) -> Ended {
    let mut succeeded = task.state == TaskState::Succeeded;
    let mut reason = (!succeeded).then(|| format!("task {} {}: {}", task.id, task.state.as_str(), task.state_reason));
    let outcome = task.outcome.as_ref();
    let outputs = match captures.map(|c| agentcom_workflow::task::capture(c, &output)) {
        None => Map::new(),
        Some(Ok(outputs)) => outputs,
        Some(Err(err)) => {
            if succeeded {
                succeeded = false;
                reason = Some(err);
            }
            Map::new()
        }
    };
    let usage = outcome.and_then(|o| o.usage.as_ref()).map_or(Value::Null, |u| {
        json!({
            "model": u.model,
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cost_micros": u.cost_micros,
        })
    });
    Ended {
        succeeded,
        exit_code: outcome.and_then(|o| match o.exit {
            Exit::Code(code) => Some(code),
            _ => None,
        }),
        output,
        outputs,
        verdict: outcome.and_then(|o| o.verification.as_ref()).map(|r| r.verdict.as_str().to_owned()),
        usage,
        reason,
    }
}

fn run_not_found(id: Ulid) -> Error {
    Error::UnknownName(format!("workflow run {id} not found"))
}

impl super::Handle {
    /// Starts a run; answered once the run and its first step tasks are durable.
    pub async fn start_run(&self, start: StartRun) -> Result<RunView, Error> {
        self.ask(|reply| super::Event::Workflow(Request::Start { start: Box::new(start), reply })).await?
    }

    pub async fn run(&self, id: Ulid) -> Result<RunView, Error> {
        self.ask(|reply| super::Event::Workflow(Request::Get { id, reply })).await?
    }

    /// The newest `limit` runs, newest first, without their steps.
    pub async fn runs(&self, limit: usize) -> Result<Vec<RunView>, Error> {
        self.ask(|reply| super::Event::Workflow(Request::List { limit, reply })).await
    }

    /// Cancels a run and its running step tasks; answered once durable.
    pub async fn cancel_run(&self, id: Ulid) -> Result<RunView, Error> {
        self.ask(|reply| super::Event::Workflow(Request::Cancel { id, reply })).await?
    }

    /// Runs a failed or cancelled run again from the steps that did not succeed.
    pub async fn retry_run(&self, id: Ulid) -> Result<RunView, Error> {
        self.ask(|reply| super::Event::Workflow(Request::Retry { id, reply })).await?
    }
}
