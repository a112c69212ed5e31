//! Workflow runs as the API shows them (`GET /api/v1/workflows/runs/{id}`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::core::workflows::{RunView, StepView};

#[derive(Serialize, Debug, PartialEq)]
pub struct RunDto {
    pub id: String,
    /// The workflow's name.
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: &'static str,
    /// `api`, `hook:NAME`, `schedule`.
    pub trigger: String,
    /// The webhook delivery id it was started for.
    pub delivery: Option<String>,
    /// The schedule's slot it was started for.
    pub slot_unix_ms: Option<i64>,
    pub created_unix_ms: i64,
    pub ended_unix_ms: Option<i64>,
    /// From its start to its end, or to now while it runs.
    pub duration_ms: Option<i64>,
    pub inputs: Value,
    /// How often it was retried.
    pub retries: u32,
    /// Steps (and items of `for_each` steps) by state.
    pub counts: BTreeMap<&'static str, usize>,
    pub totals: TotalsDto,
    /// The step (or item) whose task ran longest.
    pub slowest_step: Option<SlowestDto>,
    /// Each step in file order, a row per item for a `for_each` step (left out of lists).
    pub steps: Vec<RunStepDto>,
    /// The workflow's steps and what each needs, in file order (left out of lists).
    pub graph: Vec<GraphStepDto>,
}

/// A step of the workflow, for drawing a run's graph.
#[derive(Serialize, Debug, PartialEq)]
pub struct GraphStepDto {
    pub id: String,
    pub needs: Vec<String>,
    /// `run`, `prompt` or `agent`.
    pub kind: &'static str,
    /// It has an `if:`.
    pub conditional: bool,
    /// It has a `for_each:`.
    pub fan_out: bool,
    /// The most rounds of its `loop:`, if it has one.
    pub loop_max: Option<u32>,
    /// The first step of the group its `loop:` repeats (`loop.from`), if it loops over a group.
    pub loop_from: Option<String>,
}

#[derive(Serialize, Debug, PartialEq, Default)]
pub struct TotalsDto {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: u64,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct SlowestDto {
    pub id: String,
    pub item: Option<usize>,
    pub duration_ms: i64,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct RunStepDto {
    pub id: String,
    /// This row's state: the item's for an item of a `for_each` step.
    pub state: &'static str,
    /// The step's state (for an item, the whole step's).
    pub step_state: &'static str,
    /// The round running or last run (0: not started).
    pub round: u32,
    /// The item's index in a `for_each` step.
    pub item: Option<usize>,
    pub item_value: Option<Value>,
    pub task_id: Option<String>,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    pub started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub outputs: Map<String, Value>,
    pub verdict: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: Option<u64>,
}

impl From<&StepView> for RunStepDto {
    fn from(step: &StepView) -> RunStepDto {
        RunStepDto {
            id: step.id.clone(),
            state: step.state,
            step_state: step.step_state,
            round: step.round,
            item: step.item,
            item_value: step.item_value.clone(),
            task_id: step.task_id.map(|t| t.to_string()),
            reason: step.reason.clone(),
            started_unix_ms: step.started_unix_ms,
            finished_unix_ms: step.finished_unix_ms,
            duration_ms: duration(step),
            exit_code: step.exit_code,
            outputs: step.outputs.clone(),
            verdict: step.verdict.clone(),
            model: step.model.clone(),
            input_tokens: step.input_tokens,
            output_tokens: step.output_tokens,
            cost_micros: step.cost_micros,
        }
    }
}

fn duration(step: &StepView) -> Option<i64> {
    Some(step.finished_unix_ms? - step.started_unix_ms?)
}

impl RunDto {
    /// The run as of `now` (its duration while it runs).
    pub fn of(run: &RunView, now: i64) -> RunDto {
        let totals = TotalsDto {
            input_tokens: run.totals.input_tokens,
            output_tokens: run.totals.output_tokens,
            cost_micros: run.totals.cost_micros,
        };
        let slowest = run.steps.iter().filter_map(|s| Some((duration(s)?, s))).max_by_key(|(ms, _)| *ms);
        RunDto {
            id: run.id.to_string(),
            name: run.name.clone(),
            state: run.state,
            trigger: run.trigger.clone(),
            delivery: run.delivery.clone(),
            slot_unix_ms: run.slot_unix_ms,
            created_unix_ms: run.created_unix_ms,
            ended_unix_ms: run.ended_unix_ms,
            duration_ms: Some(run.ended_unix_ms.unwrap_or(now) - run.created_unix_ms),
            inputs: run.inputs.clone(),
            retries: run.retries,
            counts: run.counts.clone(),
            totals,
            slowest_step: slowest.map(|(duration_ms, s)| SlowestDto { id: s.id.clone(), item: s.item, duration_ms }),
            steps: run.steps.iter().map(RunStepDto::from).collect(),
            graph: run
                .graph
                .iter()
                .map(|g| GraphStepDto {
                    id: g.id.clone(),
                    needs: g.needs.clone(),
                    kind: g.kind,
                    conditional: g.conditional,
                    fan_out: g.fan_out,
                    loop_max: g.loop_max,
                    loop_from: g.loop_from.clone(),
                })
                .collect(),
        }
    }
}
