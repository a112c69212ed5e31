//! What starts workflow runs besides a user, and what runs keep for later runs: webhooks (their
//! workflow and secret; the signature is checked at the edge), schedules (started by the tick
//! for the latest slot not run yet, so a hub that was down runs a missed slot once), and each
//! workflow's memory (`remember:` values and the last successful run's outputs, read as
//! `memory` and `previous`). All of it durable in the `fleet` table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tracing::{info, warn};
use ulid::Ulid;

use agentcom_workflow::file::Definition;
use agentcom_workflow::run::{self, Run};

use super::State;
use super::commit::AfterCommit;
use super::config::Error;
use super::messages::Reply;
use super::workflows::StartRun;
use crate::domain::UnixMs;
use crate::store::{Hook, Memory, Op, Scheduled};

/// What the API asks of webhooks, schedules and memory.
pub enum Request {
    Hook { name: String, reply: Reply<Option<Hook>> },
    Hooks { reply: Reply<Vec<Hook>> },
    PutHook { hook: Box<Hook>, reply: Reply<Result<(), Error>> },
    DeleteHook { name: String, reply: Reply<Result<(), Error>> },
    Schedules { reply: Reply<Vec<ScheduleView>> },
    PutSchedule { scheduled: Box<Scheduled>, definition: Arc<Definition>, reply: Reply<Result<(), Error>> },
    DeleteSchedule { name: String, reply: Reply<Result<(), Error>> },
    Memory { workflow: String, reply: Reply<Option<Memory>> },
}

/// A schedule as the API shows it.
#[derive(Clone, Debug)]
pub struct ScheduleView {
    pub name: String,
    pub pattern: String,
    pub added_unix_ms: UnixMs,
    pub last_slot_unix_ms: UnixMs,
    pub next_slot_unix_ms: Option<UnixMs>,
}

#[derive(Default)]
pub(super) struct Triggers {
    hooks: BTreeMap<String, Hook>,
    schedules: BTreeMap<String, (Scheduled, Arc<Definition>)>,
    memories: HashMap<String, Memory>,
}

impl Triggers {
    /// What storage holds; a schedule whose file no longer reads is left out, with a warning.
    pub(super) fn load(hooks: Vec<Hook>, schedules: Vec<Scheduled>, memories: Vec<Memory>) -> Triggers {
        let mut triggers = Triggers {
            hooks: hooks.into_iter().map(|h| (h.name.clone(), h)).collect(),
            memories: memories.into_iter().map(|m| (m.workflow.clone(), m)).collect(),
            schedules: BTreeMap::new(),
        };
        for scheduled in schedules {
            match agentcom_workflow::file::load(&scheduled.source) {
                Ok(definition) if definition.schedule.is_some() => {
                    triggers.schedules.insert(scheduled.name.clone(), (scheduled, Arc::new(definition)));
                }
                _ => warn!(schedule = scheduled.name, "a stored schedule's workflow no longer reads; it is not run"),
            }
        }
        triggers
    }

    /// What a new run of `workflow` reads besides its inputs: `previous` and `memory`.
    pub(super) fn given(&self, workflow: &str) -> Map<String, Value> {
        let memory = self.memories.get(workflow);
        let outputs: Map<String, Value> = memory.map(|m| m.last_outputs.clone()).unwrap_or_default();
        // `previous.outputs`: every step's captures in one map (a later step's name wins).
        let mut merged = Map::new();
        for step in outputs.values() {
            if let Some(step) = step.get("outputs").and_then(Value::as_object) {
                merged.extend(step.clone());
            }
        }
        let previous = json!({
            "run": memory.and_then(|m| m.last_run).map(|r| r.to_string()),
            "steps": outputs,
            "outputs": merged,
        });
        let values = memory.map(|m| m.values.clone()).unwrap_or_default();
        Map::from_iter([("previous".to_owned(), previous), ("memory".to_owned(), Value::Object(values))])
    }

    /// Takes what a succeeded run remembers, over what the workflow kept before; what to store.
    pub(super) fn remember(&mut self, memory: Memory) -> Memory {
        let kept = self.memories.entry(memory.workflow.clone()).or_default();
        kept.workflow = memory.workflow;
        kept.values.extend(memory.values);
        kept.last_run = memory.last_run;
        kept.last_outputs = memory.last_outputs;
        kept.updated_unix_ms = memory.updated_unix_ms;
        kept.clone()
    }
}

/// What a run that succeeded keeps: its `remember:` values filled from its end, and what each
/// step captured (a `for_each` step: the list of its items' captures).
pub(super) fn remembered(id: Ulid, definition: &Definition, run: &Run, now: UnixMs) -> Memory {
    let context = run.context();
    let mut values = Map::new();
    for (name, template) in &definition.remember {
        match agentcom_workflow::expr::render(template, &context) {
            Ok(value) => drop(values.insert(name.clone(), Value::String(value))),
            Err(err) => warn!(run = %id, name, error = err, "a remember: value could not be filled; not kept"),
        }
    }
    let mut outputs = Map::new();
    for (step_id, step) in &run.steps {
        let captured = match &step.items {
            Some(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.ended.as_ref().map_or(Value::Null, |e| Value::Object(e.outputs.clone())))
                    .collect(),
            ),
            None => step.ended.as_ref().map_or(Value::Null, |e| Value::Object(e.outputs.clone())),
        };
        if step.state == run::State::Succeeded {
            outputs.insert(step_id.clone(), json!({ "outputs": captured }));
        }
    }
    Memory {
        workflow: definition.workflow.name.clone(),
        values,
        last_run: Some(id),
        last_outputs: outputs,
        updated_unix_ms: now,
    }
}

impl State {
    pub(super) fn trigger_request(&mut self, request: Request, now: UnixMs) {
        let triggers = &mut self.runs.triggers;
        match request {
            Request::Hook { name, reply } => {
                let hook = triggers.hooks.get(&name).cloned();
                self.answer(reply, hook);
            }
            Request::Hooks { reply } => {
                let hooks = triggers.hooks.values().cloned().collect();
                self.answer(reply, hooks);
            }
            Request::PutHook { hook, reply } => {
                triggers.hooks.insert(hook.name.clone(), Hook::clone(&hook));
                self.write(vec![Op::PutHook(hook)], AfterCommit::Persisted(reply));
            }
            Request::DeleteHook { name, reply } => {
                if triggers.hooks.remove(&name).is_none() {
                    self.answer(reply, Err(Error::UnknownName(format!("no webhook named {name:?}"))));
                    return;
                }
                self.write(vec![Op::DeleteHook { name }], AfterCommit::Persisted(reply));
            }
            Request::Schedules { reply } => {
                let views = triggers.schedules.values().map(|(s, d)| schedule_view(s, d)).collect();
                self.answer(reply, views);
            }
            Request::PutSchedule { mut scheduled, definition, reply } => {
                // Slots before it was added are not run.
                scheduled.last_slot_unix_ms = scheduled.last_slot_unix_ms.max(now);
                triggers.schedules.insert(scheduled.name.clone(), (Scheduled::clone(&scheduled), definition));
                self.write(vec![Op::PutScheduled(scheduled)], AfterCommit::Persisted(reply));
            }
            Request::DeleteSchedule { name, reply } => {
                if triggers.schedules.remove(&name).is_none() {
                    self.answer(reply, Err(Error::UnknownName(format!("no schedule named {name:?}"))));
                    return;
                }
                self.write(vec![Op::DeleteScheduled { name }], AfterCommit::Persisted(reply));
            }
            Request::Memory { workflow, reply } => {
                let memory = triggers.memories.get(&workflow).cloned();
                self.answer(reply, memory);
            }
        }
    }

    /// Starts a run of each schedule whose slot has come (the latest one, once).
    pub(super) fn fire_schedules(&mut self, now: UnixMs) {
        let due: Vec<(String, i64)> = (self.runs.triggers.schedules.iter())
            .filter_map(|(name, (scheduled, definition))| {
                let slot = definition.schedule.as_ref()?.due(scheduled.last_slot_unix_ms, now)?;
                Some((name.clone(), slot))
            })
            .collect();
        for (name, slot) in due {
            let Some((scheduled, definition)) = self.runs.triggers.schedules.get_mut(&name) else { continue };
            scheduled.last_slot_unix_ms = slot;
            let record = Box::new(scheduled.clone());
            let inputs = match definition.inputs_for(&Map::new()) {
                Ok(inputs) => inputs,
                Err(problems) => {
                    warn!(
                        schedule = name,
                        problems = problems.join("; "),
                        "a scheduled workflow needs inputs without defaults; slot skipped"
                    );
                    self.write(vec![Op::PutScheduled(record)], AfterCommit::Nothing);
                    continue;
                }
            };
            let start = StartRun {
                definition: definition.clone(),
                source: scheduled.source.clone(),
                inputs,
                trigger: "schedule".to_owned(),
                delivery: None,
                slot_unix_ms: Some(slot),
            };
            info!(schedule = name, slot, "a scheduled workflow's slot came");
            // The slot is stored in the commit of the run it starts.
            self.write(vec![Op::PutScheduled(record)], AfterCommit::Nothing);
            self.start_scheduled(start, now);
        }
    }
}

fn schedule_view(scheduled: &Scheduled, definition: &Definition) -> ScheduleView {
    let schedule = definition.schedule.as_ref();
    ScheduleView {
        name: scheduled.name.clone(),
        pattern: schedule.map(|s| s.pattern().to_owned()).unwrap_or_default(),
        added_unix_ms: scheduled.added_unix_ms,
        last_slot_unix_ms: scheduled.last_slot_unix_ms,
        next_slot_unix_ms: schedule.and_then(|s| s.next_after(scheduled.last_slot_unix_ms)),
    }
}

impl super::Handle {
    async fn trigger<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, Error> {
        self.ask(|reply| super::Event::Workflow(super::workflows::Request::Trigger(make(reply)))).await
    }

    pub async fn hook(&self, name: String) -> Result<Option<Hook>, Error> {
        self.trigger(|reply| Request::Hook { name, reply }).await
    }

    pub async fn hooks(&self) -> Result<Vec<Hook>, Error> {
        self.trigger(|reply| Request::Hooks { reply }).await
    }

    /// Adds (or replaces) a webhook; answered once durable.
    pub async fn put_hook(&self, hook: Hook) -> Result<(), Error> {
        self.trigger(|reply| Request::PutHook { hook: Box::new(hook), reply }).await?
    }

    pub async fn delete_hook(&self, name: String) -> Result<(), Error> {
        self.trigger(|reply| Request::DeleteHook { name, reply }).await?
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, Error> {
        self.trigger(|reply| Request::Schedules { reply }).await
    }

    /// Adds (or replaces) a scheduled workflow; answered once durable.
    pub async fn put_schedule(&self, scheduled: Scheduled, definition: Arc<Definition>) -> Result<(), Error> {
        self.trigger(|reply| Request::PutSchedule { scheduled: Box::new(scheduled), definition, reply }).await?
    }

    pub async fn delete_schedule(&self, name: String) -> Result<(), Error> {
        self.trigger(|reply| Request::DeleteSchedule { name, reply }).await?
    }

    pub async fn memory(&self, workflow: String) -> Result<Option<Memory>, Error> {
        self.trigger(|reply| Request::Memory { workflow, reply }).await
    }
}
