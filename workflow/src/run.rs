//! A run of a workflow, and [`advance`]: the run's state and an event in, the step tasks to
//! submit out. Pure, so the hub can store the state, replay events after a restart, and test
//! every order in which tasks may finish.
//!
//! A step task is named by its [`StepKey`] (step, round, item), which the hub turns into the
//! task's idempotency key: a key is submitted at most once, and an end that does not match a
//! task the run waits for (a duplicate, a stale round, a cancelled step) changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::{ForEach, Step, Workflow, expr};

/// A run's or a step's state, as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

/// Which task of a run: a step, its round (from 1), and for a `for_each` step the item's index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepKey {
    pub step: String,
    pub round: u32,
    pub item: Option<usize>,
}

/// How a step's task ended.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Ended {
    pub succeeded: bool,
    pub exit_code: Option<i32>,
    pub output: String,
    /// What the step's `outputs:` captured.
    pub outputs: Map<String, Value>,
    /// The verification's verdict (`passed`, `failed`), if the task was verified.
    pub verdict: Option<String>,
    /// Tokens and cost (`{"model", "input_tokens", "output_tokens", "cost_micros"}`), or null.
    pub usage: Value,
    /// Why it failed, in words (the task's reason, or why its task could not be made).
    pub reason: Option<String>,
}

/// One item of a `for_each` step.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub value: Value,
    pub state: State,
    pub ended: Option<Ended>,
}

/// A step of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRun {
    pub state: State,
    /// The round running or last run (0: not started).
    pub round: u32,
    /// Why it was skipped or failed, in words.
    pub reason: Option<String>,
    /// The latest round's end (a step without `for_each`).
    pub ended: Option<Ended>,
    /// A `for_each` step's items, in order (`None` for other steps).
    pub items: Option<Vec<Item>>,
}

impl StepRun {
    fn pending() -> StepRun {
        StepRun { state: State::Pending, round: 0, reason: None, ended: None, items: None }
    }

    /// What later steps' expressions and templates see of it as `steps.ID`.
    fn view(&self) -> Value {
        let mut view = json!({ "state": self.state.as_str(), "round": self.round });
        let fields = view.as_object_mut().expect("an object");
        if let Some(items) = &self.items {
            let results: Vec<Value> = items.iter().map(|item| ended_view(item.state, item.ended.as_ref())).collect();
            fields.insert("results".into(), Value::Array(results));
        }
        if let Value::Object(ended) = ended_view(self.state, self.ended.as_ref()) {
            for (key, value) in ended {
                fields.entry(key).or_insert(value);
            }
        }
        view
    }
}

fn ended_view(state: State, ended: Option<&Ended>) -> Value {
    match ended {
        Some(ended) => json!({
            "state": state.as_str(),
            "exit_code": ended.exit_code,
            "output": ended.output,
            "outputs": ended.outputs,
            "verdict": ended.verdict,
            "usage": ended.usage,
            "reason": ended.reason,
        }),
        None => json!({
            "state": state.as_str(), "exit_code": null, "output": null, "outputs": {}, "verdict": null, "usage": null,
            "reason": null,
        }),
    }
}

/// A run: its inputs, its state, and each step's.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub inputs: Value,
    /// Fixed when the run starts, read like `inputs`: `previous` (the workflow's last
    /// successful run: `{"run", "steps": {ID: {"outputs"}}, "outputs"}`) and `memory` (what
    /// `remember:` kept).
    pub given: Map<String, Value>,
    pub state: State,
    pub steps: BTreeMap<String, StepRun>,
}

impl Run {
    /// A run of `workflow` (checked) with `inputs`, not started.
    pub fn new(workflow: &Workflow, inputs: Value) -> Run {
        Run::with(workflow, inputs, Map::new())
    }

    /// A run that also reads `given` (`previous`, `memory`).
    pub fn with(workflow: &Workflow, inputs: Value, given: Map<String, Value>) -> Run {
        let steps = workflow.steps.iter().map(|s| (s.id.clone(), StepRun::pending())).collect();
        Run { inputs, given, state: State::Pending, steps }
    }

    /// What expressions read: `inputs`, what was given at the start, and `steps` as they are now.
    pub fn context(&self) -> Value {
        let steps: Map<String, Value> = self.steps.iter().map(|(id, step)| (id.clone(), step.view())).collect();
        let mut context = self.given.clone();
        context.insert("inputs".into(), self.inputs.clone());
        context.insert("steps".into(), Value::Object(steps));
        Value::Object(context)
    }

    /// What the templates of the task `key` read when it is submitted: `inputs`, `steps`,
    /// `round`, and for an item `item` and `index`. Made when asked, not with every submit: the
    /// steps a task needs have ended, so their view no longer changes.
    pub fn context_for(&self, key: &StepKey) -> Value {
        let mut context = self.context();
        if let (Value::Object(context), Value::Object(fields)) = (&mut context, self.key_fields(key)) {
            context.extend(fields);
        }
        context
    }

    /// What the task `key` reads beside the run's [`Run::context`]: `round`, and for an item
    /// `item` and `index`. The tasks submitted together share one context (it costs as much as
    /// the run has rows, and does not change between them), each with its own of these over it.
    pub fn key_fields(&self, key: &StepKey) -> Value {
        let mut fields = json!({ "round": key.round });
        if let Some(index) = key.item {
            let item = self.steps.get(&key.step).and_then(|s| s.items.as_ref()?.get(index));
            fields["item"] = item.map_or(Value::Null, |item| item.value.clone());
            fields["index"] = json!(index);
        }
        fields
    }
}

impl Run {
    /// The tasks the run waits for now.
    pub fn running(&self) -> Vec<StepKey> {
        let mut keys = Vec::new();
        for (id, step) in self.steps.iter().filter(|(_, s)| s.state == State::Running) {
            match &step.items {
                Some(items) => {
                    keys.extend(
                        (items.iter().enumerate().filter(|(_, i)| i.state == State::Running))
                            .map(|(index, _)| StepKey { step: id.clone(), round: step.round, item: Some(index) }),
                    )
                }
                None => keys.push(StepKey { step: id.clone(), round: step.round, item: None }),
            }
        }
        keys
    }
}

/// What happens to a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Start,
    /// A step's task ended.
    Ended {
        key: StepKey,
        ended: Ended,
    },
    /// The run is cancelled: nothing more is submitted; the hub cancels the running tasks.
    Cancel,
    /// A run that failed or was cancelled goes again from the steps that did not succeed; the
    /// succeeded ones keep their results. The hub tells the new tasks from the old by the run's
    /// count of retries, which it puts in their idempotency keys.
    Retry,
}

/// Advances `run` of `workflow` by `event`: the tasks to submit now, in step order (their
/// templates' values: [`Run::context_for`]).
pub fn advance(workflow: &Workflow, run: &mut Run, event: Event) -> Vec<StepKey> {
    let mut submits = Vec::new();
    match event {
        Event::Start if run.state == State::Pending => run.state = State::Running,
        Event::Start => return submits,
        Event::Cancel => {
            if run.state.is_final() {
                return submits;
            }
            for step in run.steps.values_mut().filter(|s| !s.state.is_final()) {
                step.state = State::Cancelled;
                for item in step.items.iter_mut().flatten().filter(|i| !i.state.is_final()) {
                    item.state = State::Cancelled;
                }
            }
            run.state = State::Cancelled;
            return submits;
        }
        Event::Retry => {
            if !matches!(run.state, State::Failed | State::Cancelled) {
                return submits;
            }
            // A loop over a group goes again whole, from its first step.
            let mut again: BTreeSet<String> =
                run.steps.iter().filter(|(_, s)| s.state != State::Succeeded).map(|(id, _)| id.clone()).collect();
            let groups: Vec<&str> = (workflow.steps.iter().filter(|t| again.contains(&t.id)))
                .flat_map(|tail| workflow.loop_group(tail))
                .collect();
            again.extend(groups.into_iter().map(str::to_owned));
            for id in &again {
                if let Some(step) = run.steps.get_mut(id) {
                    *step = StepRun::pending();
                }
            }
            run.state = State::Running;
        }
        Event::Ended { key, ended } => {
            if run.state != State::Running {
                return submits;
            }
            let Some(step) = workflow.step(&key.step) else { return submits };
            if !took_end(run, step, &key, ended) {
                return submits;
            }
            let round_over = match &run.steps[&step.id].items {
                Some(items) => items.iter().all(|i| i.state.is_final()),
                None => true,
            };
            if round_over {
                end_round(workflow, run, step, &mut submits);
            } else {
                more_items(run, step, &mut submits);
            }
        }
    }
    start_ready(workflow, run, &mut submits);
    if run.steps.values().all(|s| s.state.is_final()) {
        let failed = run.steps.values().any(|s| s.state == State::Failed);
        run.state = if failed { State::Failed } else { State::Succeeded };
    }
    submits
}

/// Records an end the run waits for; false for any other (a duplicate, a stale round, an item
/// that is not running).
fn took_end(run: &mut Run, step: &Step, key: &StepKey, ended: Ended) -> bool {
    let state = run.steps.get_mut(&step.id).expect("every step has a run");
    if state.state != State::Running || state.round != key.round {
        return false;
    }
    let result = if ended.succeeded { State::Succeeded } else { State::Failed };
    match (&mut state.items, key.item) {
        (Some(items), Some(index)) => match items.get_mut(index) {
            Some(item) if item.state == State::Running => {
                item.state = result;
                item.ended = Some(ended);
                true
            }
            _ => false,
        },
        (None, None) => {
            state.ended = Some(ended);
            true
        }
        _ => false,
    }
}

/// A round ended: the step ends, or with `loop:` runs again (with `loop.from`, its whole group).
fn end_round(workflow: &Workflow, run: &mut Run, step: &Step, submits: &mut Vec<StepKey>) {
    let state = &run.steps[&step.id];
    let succeeded = match &state.items {
        Some(items) => items.iter().all(|i| i.state == State::Succeeded),
        None => state.ended.as_ref().is_some_and(|e| e.succeeded),
    };
    let Some(repeat) = &step.repeat else {
        let outcome = if succeeded { State::Succeeded } else { State::Failed };
        let reason = (!succeeded).then(|| failure(state));
        finish(run, &step.id, outcome, reason);
        return;
    };
    let round = state.round;
    let mut context = run.context();
    context["round"] = json!(round);
    match expr::holds(&repeat.until, &context) {
        Ok(true) => finish(run, &step.id, State::Succeeded, None),
        Ok(false) if round >= repeat.max => {
            let reason = format!("loop_exhausted: {} did not hold after {round} rounds", repeat.until);
            finish(run, &step.id, State::Failed, Some(reason));
        }
        Ok(false) if repeat.from.is_some() => restart_group(workflow, run, step, round),
        Ok(false) => begin_round(run, step, round + 1, submits),
        Err(error) => finish(run, &step.id, State::Failed, Some(format!("loop.until: {error}"))),
    }
}

/// The group of `tail`'s loop goes again: each of its steps waits to start round `round + 1`
/// (in `needs` order, by [`start_ready`]), keeping its last result for the others to read until
/// it starts.
fn restart_group(workflow: &Workflow, run: &mut Run, tail: &Step, round: u32) {
    for id in workflow.loop_group(tail) {
        let step = run.steps.get_mut(id).expect("every step has a run");
        step.state = State::Pending;
        step.round = round;
        step.reason = None;
        step.items = None;
    }
}

/// Why a round failed: its task's reason, or for items the first failed item's.
fn failure(step: &StepRun) -> String {
    let said =
        |ended: Option<&Ended>| ended.and_then(|e| e.reason.clone()).unwrap_or_else(|| "its task failed".to_owned());
    match &step.items {
        Some(items) => {
            let failed = items.iter().enumerate().find(|(_, i)| i.state != State::Succeeded);
            let count = items.iter().filter(|i| i.state != State::Succeeded).count();
            match failed {
                Some((index, item)) => {
                    format!("{count} of {} items failed; item {index}: {}", items.len(), said(item.ended.as_ref()))
                }
                None => "its task failed".to_owned(),
            }
        }
        None => said(step.ended.as_ref()),
    }
}

fn finish(run: &mut Run, step_id: &str, state: State, reason: Option<String>) {
    let step = run.steps.get_mut(step_id).expect("every step has a run");
    step.state = state;
    step.reason = reason;
}

/// Starts every pending step whose needs have ended, until none is left to start (a skipped
/// step may let others start).
fn start_ready(workflow: &Workflow, run: &mut Run, submits: &mut Vec<StepKey>) {
    if run.state != State::Running {
        return;
    }
    loop {
        // A step of a loop's group has ended for the steps outside it only once the loop has.
        let ended = |step: &Step, need: &str| {
            run.steps.get(need).is_none_or(|n| n.state.is_final())
                && workflow.loop_around(need).is_none_or(|tail| {
                    run.steps[&tail.id].state.is_final() || workflow.loop_group(tail).contains(&step.id.as_str())
                })
        };
        let ready = workflow.steps.iter().find(|step| {
            run.steps[&step.id].state == State::Pending && step.needs.iter().all(|need| ended(step, need))
        });
        let Some(step) = ready else { return };
        start(run, step, submits);
    }
}

fn start(run: &mut Run, step: &Step, submits: &mut Vec<StepKey>) {
    let context = run.context();
    let failed_need = step
        .needs
        .iter()
        .find(|need| run.steps.get(*need).is_some_and(|n| matches!(n.state, State::Failed | State::Cancelled)));
    match (&step.when, failed_need) {
        (None, Some(need)) => {
            let reason = format!("needs {need}, which {}", run.steps[need].state.as_str());
            return finish(run, &step.id, State::Skipped, Some(reason));
        }
        (Some(when), failed_need) => match expr::holds(when, &context) {
            Ok(true) => {}
            Ok(false) => return finish(run, &step.id, State::Skipped, Some(format!("if: {when} is false"))),
            // A condition that cannot be read of a failed need (its outputs) did not ask for it.
            Err(_) if let Some(need) = failed_need => {
                let reason = format!("needs {need}, which {}", run.steps[need].state.as_str());
                return finish(run, &step.id, State::Skipped, Some(reason));
            }
            Err(error) => return finish(run, &step.id, State::Failed, Some(format!("if: {error}"))),
        },
        (None, None) => {}
    }
    if let Some(for_each) = &step.for_each {
        let values = match for_each {
            ForEach::Items(values) => Ok(values.clone()),
            ForEach::Expr(source) => expr::items(source, &context),
        };
        match values {
            Ok(values) => {
                let items = values.into_iter().map(|value| Item { value, state: State::Pending, ended: None });
                run.steps.get_mut(&step.id).expect("every step has a run").items = Some(items.collect());
            }
            Err(error) => return finish(run, &step.id, State::Failed, Some(error)),
        }
    }
    // 1 for a step's first round; a loop's group goes on from its last.
    let round = run.steps[&step.id].round + 1;
    begin_round(run, step, round, submits);
}

/// Runs round `round` of the step: its task, or its first items.
fn begin_round(run: &mut Run, step: &Step, round: u32, submits: &mut Vec<StepKey>) {
    let state = run.steps.get_mut(&step.id).expect("every step has a run");
    state.state = State::Running;
    state.round = round;
    state.ended = None;
    match &mut state.items {
        // Nothing to run it for: done.
        Some(items) if items.is_empty() => finish(run, &step.id, State::Succeeded, None),
        Some(items) => {
            for item in items.iter_mut() {
                item.state = State::Pending;
                item.ended = None;
            }
            more_items(run, step, submits);
        }
        None => submits.push(StepKey { step: step.id.clone(), round, item: None }),
    }
}

/// Submits a `for_each` step's pending items while fewer than `max_parallel` run.
fn more_items(run: &mut Run, step: &Step, submits: &mut Vec<StepKey>) {
    let state = run.steps.get_mut(&step.id).expect("every step has a run");
    let round = state.round;
    let Some(items) = &mut state.items else { return };
    let limit = if step.max_parallel == 0 { usize::MAX } else { step.max_parallel as usize };
    let mut running = items.iter().filter(|i| i.state == State::Running).count();
    for (index, item) in items.iter_mut().enumerate() {
        if running >= limit {
            break;
        }
        if item.state != State::Pending {
            continue;
        }
        item.state = State::Running;
        running += 1;
        submits.push(StepKey { step: step.id.clone(), round, item: Some(index) });
    }
}

#[cfg(test)]
mod tests;
