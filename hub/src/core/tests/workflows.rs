//! Workflow runs in the core: steps become tasks with their labels and keys, the run moves on
//! as they settle, cancel and retry, and a restart takes the run back where storage left it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::harness::Harness;
use super::*;
use crate::core::workflows::{Request, RunView, StartRun};
use crate::domain::{Exit, Outcome};

fn start(hub: &mut Harness, yaml: &str, inputs: Value) -> RunView {
    let definition = agentcom_workflow::file::load(yaml).expect("a good workflow");
    let inputs = definition.inputs_for(inputs.as_object().expect("an object")).expect("good inputs");
    let start = StartRun::new(Arc::new(definition), yaml.into(), inputs);
    hub.ask(|reply| Event::Workflow(Request::Start { start: Box::new(start), reply })).expect("started")
}

fn view(hub: &mut Harness, id: ulid::Ulid) -> RunView {
    hub.ask(|reply| Event::Workflow(Request::Get { id, reply })).expect("a run")
}

/// Tasks assigned to `s1` and not finished yet, with their step label.
fn running(hub: &mut Harness, done: &BTreeSet<TaskId>) -> Vec<(TaskId, u64, String)> {
    let assigned = hub.assigned("s1");
    let mut out = Vec::new();
    for (id, generation) in assigned.into_iter().filter(|(id, _)| !done.contains(id)) {
        let task = hub.task(id);
        out.push((id, generation, task.spec.labels["workflow_step"].clone()));
    }
    out
}

fn finish(hub: &mut Harness, id: TaskId, generation: u64, code: i32, stdout: &str) {
    let outcome =
        Outcome { exit: Exit::Code(code), duration_ms: 1, stdout: stdout.as_bytes().to_vec(), ..Outcome::empty() };
    hub.report("s1", FromSidecar::Finished { task_id: id, lease_generation: generation, outcome: Box::new(outcome) });
}

const BRANCHES: &str = r#"
name: branches
inputs: {kind: {type: string}}
steps:
  - id: classify
    run: "echo {{ inputs.kind }}"
    outputs: {label: {regex: "^(\\w+)"}}
  - id: fix
    needs: [classify]
    if: steps.classify.outputs.label == "bug"
    run: "fix"
  - id: feature
    needs: [classify]
    if: steps.classify.outputs.label == "feature"
    run: "build"
  - id: per-file
    needs: [classify]
    for_each: ["a", "b", "c", "d", "e"]
    max_parallel: 2
    run: "review {{ item }}"
  - id: join
    needs: [fix, feature, per-file]
    run: "echo done"
"#;

#[test]
fn a_run_takes_its_branch_keeps_max_parallel_and_joins_after_every_need() {
    for kind in ["bug", "feature"] {
        let mut hub = Harness::new();
        hub.join("s1", 8, Vec::new());
        let run = start(&mut hub, BRANCHES, json!({"kind": kind}));
        assert_eq!(run.state, "running", "{run:?}");
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        loop {
            let now = running(&mut hub, &done);
            let items = now.iter().filter(|(_, _, step)| step == "per-file").count();
            assert!(items <= 2, "{items} items of per-file run at once");
            let Some((id, generation, step)) = now.first().cloned() else { break };
            let task = hub.task(id);
            assert_eq!(task.spec.labels["workflow_run"], run.id.to_string());
            let parent = task.spec.trace_parent.expect("a step's spans hang under its run's");
            assert_eq!(parent.trace_id, run.id.to_bytes(), "the run's trace");
            let item = task.spec.labels.get("workflow_item").map_or("-".to_owned(), Clone::clone);
            assert_eq!(task.spec.idempotency_key.as_deref(), Some(format!("wf:{}:{step}:1:{item}", run.id).as_str()));
            if step == "join" {
                for need in ["classify", "per-file"] {
                    assert!(order.iter().filter(|s: &&String| *s == need).count() >= 1, "join ran before {need}");
                }
                assert_eq!(order.iter().filter(|s| *s == "per-file").count(), 5, "join waits for every item");
            }
            finish(&mut hub, id, generation, 0, &format!("{kind} report\n"));
            done.insert(id);
            order.push(step);
        }
        let run = view(&mut hub, run.id);
        assert_eq!(run.state, "succeeded", "{run:?}");
        let states: BTreeMap<&str, &str> = run.steps.iter().map(|s| (s.id.as_str(), s.step_state)).collect();
        let (taken, skipped) = if kind == "bug" { ("fix", "feature") } else { ("feature", "fix") };
        assert_eq!((states[taken], states[skipped]), ("succeeded", "skipped"));
        assert!(!order.iter().any(|s| s == skipped), "the other branch never ran");
        assert_eq!(run.steps.iter().find(|s| s.id == "classify").unwrap().outputs["label"], json!(kind));
        let items: Vec<Option<usize>> = run.steps.iter().filter(|s| s.id == "per-file").map(|s| s.item).collect();
        assert_eq!(items, (0..5).map(Some).collect::<Vec<_>>(), "a row per item, in item order");
        assert_eq!(run.counts["succeeded"], 8);
    }
}

const CHAIN: &str = r#"
name: chain
steps:
  - id: one
    run: "one"
    outputs: {n: {regex: "(\\d+)"}}
  - id: two
    needs: [one]
    run: "two {{ steps.one.outputs.n }}"
  - id: three
    needs: [two]
    run: "three"
"#;

#[test]
fn a_failed_step_fails_the_run_and_a_retry_runs_it_again_keeping_what_succeeded() {
    let mut hub = Harness::new();
    hub.join("s1", 2, Vec::new());
    let run = start(&mut hub, CHAIN, json!({}));
    let mut done = BTreeSet::new();
    let (one, generation, _) = running(&mut hub, &done)[0].clone();
    finish(&mut hub, one, generation, 0, "took 42 ms");
    done.insert(one);
    let (two, generation, _) = running(&mut hub, &done)[0].clone();
    let crate::domain::Work::Shell(shell) = hub.task(two).spec.work else { panic!("a shell step") };
    assert_eq!(shell.command, crate::domain::ShellCommand::Script("two 42".into()), "the template read the capture");
    finish(&mut hub, two, generation, 3, "");
    done.insert(two);
    let failed = view(&mut hub, run.id);
    assert_eq!(failed.state, "failed");
    let row = |run: &RunView, id: &str| run.steps.iter().find(|s| s.id == id).unwrap().clone();
    assert!(row(&failed, "two").reason.unwrap().contains("failed"), "{:?}", row(&failed, "two"));
    assert_eq!(row(&failed, "three").state, "skipped");

    let retried = hub.ask(|reply| Event::Workflow(Request::Retry { id: run.id, reply })).expect("retried");
    assert_eq!(retried.state, "running");
    assert_eq!(row(&retried, "one").state, "succeeded", "what succeeded is kept");
    let again = running(&mut hub, &done);
    assert_eq!(again.len(), 1);
    let (two_again, generation, step) = again[0].clone();
    assert_eq!(step, "two");
    assert_ne!(two_again, two, "a new task");
    let key = hub.task(two_again).spec.idempotency_key.unwrap();
    assert!(key.ends_with(":r1"), "{key}");
    finish(&mut hub, two_again, generation, 0, "");
    done.insert(two_again);
    let (three, generation, _) = running(&mut hub, &done)[0].clone();
    finish(&mut hub, three, generation, 0, "");
    assert_eq!(view(&mut hub, run.id).state, "succeeded");
    let again = hub.ask(|reply| Event::Workflow(Request::Retry { id: run.id, reply }));
    assert!(matches!(again, Err(Error::Conflict(_))), "a succeeded run is not retried");
}

#[test]
fn a_cancel_stops_the_running_steps_and_submits_nothing_more() {
    let mut hub = Harness::new();
    hub.join("s1", 2, Vec::new());
    let run = start(&mut hub, CHAIN, json!({}));
    let (one, generation, _) = running(&mut hub, &BTreeSet::new())[0].clone();
    let cancelled = hub.ask(|reply| Event::Workflow(Request::Cancel { id: run.id, reply })).expect("cancelled");
    assert_eq!(cancelled.state, "cancelled");
    assert_eq!(hub.cancels("s1"), vec![(one, generation)], "its running task is stopped");
    finish(&mut hub, one, generation, 0, "1");
    assert_eq!(hub.assigned("s1").len(), 1, "nothing more runs");
    assert_eq!(view(&mut hub, run.id).state, "cancelled");
}

#[test]
fn a_restart_takes_a_run_back_and_ends_a_step_whose_end_was_not_recorded() {
    let mut hub = Harness::new();
    hub.join("s1", 2, Vec::new());
    let run = start(&mut hub, CHAIN, json!({}));
    let mut done = BTreeSet::new();
    let (one, generation, _) = running(&mut hub, &done)[0].clone();
    finish(&mut hub, one, generation, 0, "n=7");
    done.insert(one);
    let (two, generation, _) = running(&mut hub, &done)[0].clone();

    // A clean restart while `two` runs: the run waits for the same task.
    let mut again = hub.restart(|_| Vec::new());
    assert_eq!(view(&mut again, run.id).steps[1].task_id, Some(two));
    assert_eq!(view(&mut again, run.id).state, "running");

    // `two` settles, and the hub dies after the task's commit, before the run's event: storage
    // has the task final and the run still waiting for it.
    finish(&mut hub, two, generation, 0, "second");
    let mut stored = hub.stored.clone();
    let events = &mut stored.runs.get_mut(&run.id).unwrap().events;
    let last = events.pop().unwrap();
    assert!(matches!(&last.kind, crate::store::RunEventKind::Ended { key, .. } if key.step == "two"));
    let three = *hub.state.by_key.get(&format!("wf:{}:three:1:-", run.id)).unwrap();
    stored.tasks.remove(&three); // Written with the event it came from.
    hub.stored = stored;
    let mut restarted = hub.restart(|id| if id == two { b"second".to_vec() } else { Vec::new() });
    let after = view(&mut restarted, run.id);
    assert_eq!(after.steps[1].state, "succeeded", "the step's end is taken from its task: {after:?}");
    let threes: Vec<_> = restarted.state.tasks.states().filter(|(id, ..)| *id != one && *id != two).collect();
    assert_eq!(threes.len(), 1, "step three is submitted once");
    restarted.join("s1", 2, Vec::new());
    let assigned = restarted.assigned("s1");
    assert_eq!(assigned.len(), 1);
    finish(&mut restarted, assigned[0].0, assigned[0].1, 0, "");
    assert_eq!(view(&mut restarted, run.id).state, "succeeded");
}
