//! Workflows: multi-step pipelines whose steps are tasks, with `needs`, `if:`, `for_each:` and
//! `loop:`, and the pure function that advances a run.
//!
//! - [`Workflow`], [`Step`]: a definition, checked by [`Workflow::check`] (unique ids, known
//!   `needs`, no cycles, expressions that compile).
//! - [`file`](mod@file): the workflow file (YAML, or JSON), read into a definition and what each step
//!   runs, or into every problem it has with its line, column and step.
//! - [`expr`]: the expression language of `if:`, `until:` and `for_each:` (minijinja's, Jinja2
//!   syntax; a name that does not exist is an error, never an empty value).
//! - [`run`]: a run's state and [`run::advance`], which takes the state and an event (the run
//!   starts, a step's task ended, the run is cancelled) and says which step tasks to submit.
//!
//! **Architecture Invariant:** pure: no I/O, no clock, no randomness, no runtime. The hub keeps
//! runs durable and turns the [`run::StepKey`]s it is given into tasks; this crate only decides.
//!
//! - [`task`]: what a step's task is (its settings over `defaults:`), made into the JSON submit
//!   format with its templates filled, and what its `outputs:` capture.
//! - [`schedule`]: `on: {schedule: CRON}`.
//!
//! The hub's side (durable runs, triggers, the API) is in `agentcom-hub`'s `core::workflows`
//! and `core::triggers`; `docs/workflows.md` is the user's view.

pub mod expr;
pub mod file;
pub mod run;
pub mod schedule;
pub mod service;
pub mod task;

/// The workflows shipped with the hub, by name: their files as written.
pub const BUILTIN: &[(&str, &str)] = &[("repo-up", include_str!("../builtin/repo-up.yaml"))];

use std::collections::{BTreeMap, BTreeSet};

/// A workflow definition: named steps and the order between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step: a task, run when what it needs has ended, perhaps once per item, perhaps in rounds.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Step {
    pub id: String,
    /// Steps that must end first. A skipped one counts as ended; a failed one does too, but then
    /// the step is skipped unless its `if:` decides.
    pub needs: Vec<String>,
    /// `if:`: an expression; false skips the step.
    pub when: Option<String>,
    /// `for_each:`: the items the step runs once each for.
    pub for_each: Option<ForEach>,
    /// How many items run at once (0: all).
    pub max_parallel: u32,
    /// `loop:`: rounds until the condition holds, at most `max`.
    pub repeat: Option<Repeat>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ForEach {
    /// A list written in the file.
    Items(Vec<serde_json::Value>),
    /// An expression that evaluates to a list (`inputs.files`, `steps.plan.outputs.files`).
    Expr(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Repeat {
    /// An expression over the step's latest round (`steps.ID`) and everything before it.
    pub until: String,
    pub max: u32,
    /// `loop.from`: the first step of a group of steps the loop repeats, every step on a path of
    /// `needs` from it to this one (this one last); none: this step alone.
    pub from: Option<String>,
}

/// What is wrong with a definition, naming the step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("step {0:?} appears more than once")]
    DuplicateStep(String),
    #[error("step {step:?} needs {missing:?}, which is not a step of this workflow")]
    UnknownNeed { step: String, missing: String },
    #[error("steps {0:?} need each other in a cycle")]
    Cycle(Vec<String>),
    #[error("step {step:?}: {field}: {error}")]
    Expression { step: String, field: &'static str, error: String },
    #[error("step {step:?}: loop.max must be at least 1")]
    NoRounds { step: String },
    #[error("step {0:?}: an id is 1 to 64 characters of letters, digits, '-' and '_'")]
    BadId(String),
    #[error("step {step:?}: loop.from {from:?} is not a step this one needs, directly or through others")]
    LoopFrom { step: String, from: String },
    #[error("step {step:?} is in the loops of both {first:?} and {second:?}: loops do not nest or overlap")]
    LoopsOverlap { step: String, first: String, second: String },
}

impl Workflow {
    /// Every error in the definition, in step order (empty: it may run).
    pub fn check(&self) -> Vec<DefinitionError> {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for step in &self.steps {
            let id_ok = !step.id.is_empty()
                && step.id.len() <= 64
                && step.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !id_ok {
                errors.push(DefinitionError::BadId(step.id.clone()));
            }
            if !seen.insert(step.id.as_str()) {
                errors.push(DefinitionError::DuplicateStep(step.id.clone()));
            }
        }
        for step in &self.steps {
            for need in &step.needs {
                if !seen.contains(need.as_str()) {
                    errors.push(DefinitionError::UnknownNeed { step: step.id.clone(), missing: need.clone() });
                }
            }
            let expressions = [
                ("if", step.when.as_deref()),
                ("loop.until", step.repeat.as_ref().map(|r| r.until.as_str())),
                (
                    "for_each",
                    match &step.for_each {
                        Some(ForEach::Expr(e)) => Some(e.as_str()),
                        _ => None,
                    },
                ),
            ];
            for (field, source) in expressions {
                if let Some(source) = source
                    && let Err(error) = expr::compile(source)
                {
                    errors.push(DefinitionError::Expression { step: step.id.clone(), field, error });
                }
            }
            if step.repeat.as_ref().is_some_and(|r| r.max == 0) {
                errors.push(DefinitionError::NoRounds { step: step.id.clone() });
            }
        }
        // With duplicate ids the order between steps is not defined: said above already.
        if !errors.iter().any(|e| matches!(e, DefinitionError::DuplicateStep(_)))
            && let Some(cycle) = self.cycle()
        {
            errors.push(DefinitionError::Cycle(cycle));
        }
        if errors.is_empty() {
            errors.extend(self.check_groups());
        }
        errors
    }

    /// Each `loop.from` names a step before its loop's, and no step is in two loops.
    fn check_groups(&self) -> Vec<DefinitionError> {
        let mut errors = Vec::new();
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for tail in self.steps.iter().filter(|s| s.repeat.is_some()) {
            if let Some(from) = tail.repeat.as_ref().and_then(|r| r.from.as_deref())
                && (from == tail.id || !self.needed_by(&tail.id).contains(from))
            {
                errors.push(DefinitionError::LoopFrom { step: tail.id.clone(), from: from.to_owned() });
                continue;
            }
            for member in self.loop_group(tail) {
                if let Some(first) = owner.insert(member, &tail.id) {
                    errors.push(DefinitionError::LoopsOverlap {
                        step: member.to_owned(),
                        first: first.to_owned(),
                        second: tail.id.clone(),
                    });
                }
            }
        }
        errors
    }

    /// Every step `id` needs, directly or through others.
    fn needed_by(&self, id: &str) -> BTreeSet<&str> {
        let mut found = BTreeSet::new();
        let mut todo = vec![id];
        while let Some(next) = todo.pop() {
            for need in self.step(next).map(|s| s.needs.as_slice()).unwrap_or_default() {
                if found.insert(need.as_str()) {
                    todo.push(need);
                }
            }
        }
        found
    }

    /// The steps `tail`'s loop repeats, in file order, `tail` last: with `loop.from`, every
    /// step on a path of `needs` from `from` to `tail`; else `tail` alone (none without a loop).
    pub fn loop_group<'a>(&'a self, tail: &'a Step) -> Vec<&'a str> {
        let Some(repeat) = &tail.repeat else { return Vec::new() };
        let Some(from) = repeat.from.as_deref() else { return vec![tail.id.as_str()] };
        let before = self.needed_by(&tail.id);
        let mut group: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| s.id != tail.id && before.contains(s.id.as_str()))
            .filter(|s| s.id == from || self.needed_by(&s.id).contains(from))
            .map(|s| s.id.as_str())
            .collect();
        group.push(&tail.id);
        group
    }

    /// The step whose loop repeats `id`, when `id` is in a group and is not its last step:
    /// steps outside the group that need `id` wait for that loop to end.
    pub fn loop_around(&self, id: &str) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|tail| tail.id != id && tail.repeat.as_ref().is_some_and(|r| r.from.is_some()))
            .find(|tail| self.loop_group(tail).contains(&id))
    }

    /// Steps on a cycle of `needs`, if there is one (Kahn's algorithm: what never becomes ready).
    fn cycle(&self) -> Option<Vec<String>> {
        let ids: BTreeSet<&str> = self.steps.iter().map(|s| s.id.as_str()).collect();
        let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
        for step in &self.steps {
            let known: BTreeSet<&str> = step.needs.iter().map(String::as_str).filter(|n| ids.contains(n)).collect();
            waiting.insert(&step.id, known.len());
        }
        let mut ready: Vec<&str> = waiting.iter().filter(|(_, n)| **n == 0).map(|(id, _)| *id).collect();
        let mut done = BTreeSet::new();
        while let Some(id) = ready.pop() {
            done.insert(id);
            for step in self.steps.iter().filter(|s| s.needs.iter().any(|n| n == id)) {
                let count = waiting.get_mut(step.id.as_str()).expect("every step is counted");
                *count -= 1;
                if *count == 0 {
                    ready.push(&step.id);
                }
            }
        }
        let stuck: Vec<String> = ids.iter().filter(|id| !done.contains(*id)).map(|id| id.to_string()).collect();
        (!stuck.is_empty()).then_some(stuck)
    }

    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }
}

#[cfg(test)]
mod builtin_tests {
    #[test]
    fn every_builtin_workflow_is_valid_and_named_as_listed() {
        for (name, text) in super::BUILTIN {
            let definition = crate::file::load(text).unwrap_or_else(|problems| {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                panic!("{name}: {}", lines.join("\n"))
            });
            assert_eq!(definition.workflow.name, *name);
        }
    }
}
