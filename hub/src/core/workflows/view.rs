//! What the API is shown of runs: a run with its counts and totals, and (in detail) each
//! step's rows with their tasks' times and usage, and the workflow's graph.

use std::collections::BTreeMap;

use agentcom_workflow::file::Definition;
use agentcom_workflow::run::{self, Ended, StepKey};
use serde_json::{Map, Value};
use ulid::Ulid;

use super::Entry;
use crate::core::State;
use crate::domain::*;

/// A run as the API shows it.
#[derive(Clone, Debug)]
pub struct RunView {
    pub id: Ulid,
    pub name: String,
    pub state: &'static str,
    pub trigger: String,
    pub delivery: Option<String>,
    pub slot_unix_ms: Option<UnixMs>,
    pub created_unix_ms: UnixMs,
    pub ended_unix_ms: Option<UnixMs>,
    pub inputs: Value,
    pub retries: u32,
    /// Rows by state: steps, and each item of a `for_each` step.
    pub counts: BTreeMap<&'static str, usize>,
    /// Tokens and cost of every step task that ended, every round and retry included.
    pub totals: Totals,
    /// Each step in file order, a row per item for a `for_each` step (empty in lists).
    pub steps: Vec<StepView>,
    /// The workflow's steps and what each needs, in file order (empty in lists).
    pub graph: Vec<GraphStep>,
    /// Answered to a start that matched a run already started (a redelivered webhook).
    pub existing: bool,
}

/// A step of the workflow, as a graph of the run draws it.
#[derive(Clone, Debug, Default)]
pub struct GraphStep {
    pub id: String,
    pub needs: Vec<String>,
    /// `run`, `prompt` or `agent`.
    pub kind: &'static str,
    /// The step has an `if:`.
    pub conditional: bool,
    /// The step has a `for_each:`.
    pub fan_out: bool,
    /// The most rounds of its `loop:`.
    pub loop_max: Option<u32>,
    /// The first step of the group its `loop:` repeats (`loop.from`).
    pub loop_from: Option<String>,
}

/// Tokens and cost, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: u64,
}

impl Totals {
    /// Adds a step end's usage (`{"input_tokens", "output_tokens", "cost_micros"}` or null).
    pub(super) fn add(&mut self, usage: &Value) {
        let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        self.input_tokens += count("input_tokens");
        self.output_tokens += count("output_tokens");
        self.cost_micros += count("cost_micros");
    }
}

/// A step, or one item of a `for_each` step, as the API shows it.
#[derive(Clone, Debug, Default)]
pub struct StepView {
    pub id: String,
    /// This row's: the item's for an item, else the step's.
    pub state: &'static str,
    pub step_state: &'static str,
    pub round: u32,
    pub item: Option<usize>,
    pub item_value: Option<Value>,
    pub task_id: Option<TaskId>,
    pub reason: Option<String>,
    pub started_unix_ms: Option<UnixMs>,
    pub finished_unix_ms: Option<UnixMs>,
    pub exit_code: Option<i32>,
    pub outputs: Map<String, Value>,
    pub verdict: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: Option<u64>,
}

impl State {
    /// The run as the API shows it; its steps only when `detail`.
    pub(in crate::core) fn run_view(&self, id: Ulid, detail: bool) -> Option<RunView> {
        let entry = self.runs.entries.get(&id)?;
        let mut counts = BTreeMap::new();
        for state in entry.run.steps.values() {
            match &state.items {
                Some(items) if !items.is_empty() => {
                    items.iter().for_each(|item| *counts.entry(item.state.as_str()).or_insert(0) += 1)
                }
                _ => *counts.entry(state.state.as_str()).or_insert(0) += 1,
            }
        }
        // A list shows runs without their rows: it reads no task, so it costs the same however
        // many items a run has.
        let (steps, graph) =
            if detail { (self.step_rows(entry), graph(&entry.definition)) } else { Default::default() };
        Some(RunView {
            id,
            name: entry.record.name.clone(),
            state: entry.run.state.as_str(),
            trigger: entry.record.trigger.clone(),
            delivery: entry.record.delivery.clone(),
            slot_unix_ms: entry.record.slot_unix_ms,
            created_unix_ms: entry.record.created_unix_ms,
            ended_unix_ms: entry.record.ended_unix_ms,
            inputs: entry.run.inputs.clone(),
            retries: entry.retries,
            counts,
            totals: entry.totals,
            steps,
            graph,
            existing: false,
        })
    }

    /// Each step's row, a row per item for a `for_each` step, with its task's times and usage.
    fn step_rows(&self, entry: &Entry) -> Vec<StepView> {
        let mut steps = Vec::new();
        for step in &entry.definition.workflow.steps {
            let state = &entry.run.steps[&step.id];
            let row = |item: Option<usize>, row_state: run::State, ended: Option<&Ended>| {
                let key = StepKey { step: step.id.clone(), round: state.round, item };
                let task_id = entry.tasks.get(&key).copied();
                let mut view = StepView {
                    id: step.id.clone(),
                    state: row_state.as_str(),
                    step_state: state.state.as_str(),
                    round: state.round,
                    item,
                    item_value: item.and_then(|i| Some(state.items.as_ref()?.get(i)?.value.clone())),
                    task_id,
                    reason: ended
                        .and_then(|e| e.reason.clone())
                        .or_else(|| item.is_none().then(|| state.reason.clone()).flatten()),
                    ..StepView::default()
                };
                if let Some(ended) = ended {
                    view.exit_code = ended.exit_code;
                    view.outputs = ended.outputs.clone();
                    view.verdict = ended.verdict.clone();
                }
                if let Some(task) = task_id.and_then(|t| self.visible(t)) {
                    view.started_unix_ms = task.started_unix_ms;
                    // A service step ended when its service became ready; its task runs on.
                    let ready = task.service.as_ref().and_then(|s| s.ready_unix_ms).filter(|_| ended.is_some());
                    view.finished_unix_ms = ready.or(task.finished_unix_ms);
                    if let Some(usage) = task.outcome.as_ref().and_then(|o| o.usage.as_ref()) {
                        view.model = Some(usage.model.clone());
                        view.input_tokens = usage.input_tokens;
                        view.output_tokens = usage.output_tokens;
                        view.cost_micros = usage.cost_micros;
                    }
                }
                view
            };
            match &state.items {
                Some(items) if !items.is_empty() => {
                    for (index, item) in items.iter().enumerate() {
                        steps.push(row(Some(index), item.state, item.ended.as_ref()));
                    }
                }
                _ => steps.push(row(None, state.state, state.ended.as_ref())),
            }
        }
        steps
    }
}

/// The steps of `definition` and their edges.
fn graph(definition: &Definition) -> Vec<GraphStep> {
    use agentcom_workflow::task::StepWork;
    let steps = &definition.workflow.steps;
    let kind = |id: &str| match definition.tasks.get(id).map(|t| &t.work) {
        Some(StepWork::Prompt(_)) => "prompt",
        Some(StepWork::Agent(_)) => "agent",
        Some(StepWork::Service(_)) => "service",
        _ => "run",
    };
    steps
        .iter()
        .map(|step| GraphStep {
            id: step.id.clone(),
            needs: step.needs.clone(),
            kind: kind(&step.id),
            conditional: step.when.is_some(),
            fan_out: step.for_each.is_some(),
            loop_max: step.repeat.as_ref().map(|r| r.max),
            loop_from: step.repeat.as_ref().and_then(|r| r.from.clone()),
        })
        .collect()
}
