use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::{Repeat, Step};

fn step(id: &str, needs: &[&str]) -> Step {
    Step { id: id.into(), needs: needs.iter().map(|n| n.to_string()).collect(), ..Step::default() }
}

fn ok(code: i32) -> Ended {
    Ended { succeeded: code == 0, exit_code: Some(code), ..Ended::default() }
}

fn keys(submits: &[StepKey]) -> Vec<(String, u32, Option<usize>)> {
    submits.iter().map(|k| (k.step.clone(), k.round, k.item)).collect()
}

#[test]
fn a_branch_is_taken_by_its_condition_and_the_other_is_skipped_then_they_join() {
    let mut bug = step("bug", &["classify"]);
    bug.when = Some("steps.classify.outputs.label == 'bug'".into());
    let mut feature = step("feature", &["classify"]);
    feature.when = Some("steps.classify.outputs.label == 'feature'".into());
    let steps = vec![step("classify", &[]), bug, feature, step("join", &["bug", "feature"])];
    let workflow = Workflow { name: "w".into(), steps };
    assert!(workflow.check().is_empty());
    for label in ["bug", "feature"] {
        let mut run = Run::new(&workflow, json!({}));
        let first = advance(&workflow, &mut run, Event::Start);
        assert_eq!(keys(&first), vec![("classify".into(), 1, None)]);
        let mut ended = ok(0);
        ended.outputs.insert("label".into(), json!(label));
        let next = advance(&workflow, &mut run, Event::Ended { key: first[0].clone(), ended });
        assert_eq!(keys(&next), vec![(label.to_owned(), 1, None)], "only the {label} branch runs");
        let other = if label == "bug" { "feature" } else { "bug" };
        assert_eq!(run.steps[other].state, State::Skipped);
        assert!(run.steps[other].reason.as_deref().unwrap().contains("is false"));
        let join = advance(&workflow, &mut run, Event::Ended { key: next[0].clone(), ended: ok(0) });
        assert_eq!(keys(&join), vec![("join".into(), 1, None)], "a skipped need counts as ended");
        advance(&workflow, &mut run, Event::Ended { key: join[0].clone(), ended: ok(0) });
        assert_eq!(run.state, State::Succeeded);
    }
}

#[test]
fn a_loop_stops_when_its_condition_holds_or_at_max() {
    let mut green = step("green", &[]);
    green.repeat = Some(Repeat { until: "steps.green.exit_code == 0".into(), max: 5, from: None });
    let workflow = Workflow { name: "w".into(), steps: vec![green] };
    let mut run = Run::new(&workflow, json!({}));
    let mut submits = advance(&workflow, &mut run, Event::Start);
    for (round, code) in [(1, 1), (2, 1), (3, 0)] {
        assert_eq!(keys(&submits), vec![("green".into(), round, None)]);
        assert_eq!(run.context_for(&submits[0])["round"], json!(round));
        submits = advance(&workflow, &mut run, Event::Ended { key: submits[0].clone(), ended: ok(code) });
    }
    assert!(submits.is_empty());
    assert_eq!((run.steps["green"].state, run.state), (State::Succeeded, State::Succeeded));

    let mut run = Run::new(&workflow, json!({}));
    let mut submits = advance(&workflow, &mut run, Event::Start);
    for _ in 0..5 {
        submits = advance(&workflow, &mut run, Event::Ended { key: submits[0].clone(), ended: ok(1) });
    }
    assert!(submits.is_empty());
    assert_eq!(run.steps["green"].state, State::Failed);
    assert!(run.steps["green"].reason.as_deref().unwrap().starts_with("loop_exhausted"));
    assert_eq!(run.state, State::Failed);
}

#[test]
fn a_loop_over_a_group_runs_the_group_again_in_order_until_its_condition_holds() {
    // fix -> test -> review, again until the review approves; notify needs test, from outside.
    let mut review = step("review", &["test"]);
    review.repeat =
        Some(Repeat { until: "steps.review.outputs.verdict == 'approve'".into(), max: 3, from: Some("fix".into()) });
    let steps =
        vec![step("plan", &[]), step("fix", &["plan"]), step("test", &["fix"]), review, step("notify", &["test"])];
    let workflow = Workflow { name: "w".into(), steps };
    assert!(workflow.check().is_empty(), "{:?}", workflow.check());
    assert_eq!(workflow.loop_group(workflow.step("review").unwrap()), vec!["fix", "test", "review"]);
    let mut run = Run::new(&workflow, json!({}));
    let plan = advance(&workflow, &mut run, Event::Start);
    let mut next = advance(&workflow, &mut run, Event::Ended { key: plan[0].clone(), ended: ok(0) });
    for (round, verdict) in [(1, "change"), (2, "approve")] {
        assert_eq!(keys(&next), vec![("fix".into(), round, None)]);
        if round == 2 {
            let context = run.context_for(&next[0]);
            assert_eq!(
                context["steps"]["review"]["outputs"]["verdict"],
                json!("change"),
                "round 2 reads round 1's review"
            );
        }
        let test = advance(&workflow, &mut run, Event::Ended { key: next[0].clone(), ended: ok(0) });
        assert_eq!(keys(&test), vec![("test".into(), round, None)]);
        let review = advance(&workflow, &mut run, Event::Ended { key: test[0].clone(), ended: ok(0) });
        assert_eq!(keys(&review), vec![("review".into(), round, None)], "notify waits for the loop");
        let mut ended = ok(0);
        ended.outputs.insert("verdict".into(), json!(verdict));
        next = advance(&workflow, &mut run, Event::Ended { key: review[0].clone(), ended });
    }
    assert_eq!(keys(&next), vec![("notify".into(), 1, None)], "the loop ended, so notify starts");
    advance(&workflow, &mut run, Event::Ended { key: next[0].clone(), ended: ok(0) });
    assert_eq!(run.state, State::Succeeded);

    // At max the loop's last step fails, and a retry runs the whole group again from round 1.
    let mut run = Run::new(&workflow, json!({}));
    let plan = advance(&workflow, &mut run, Event::Start);
    let mut next = advance(&workflow, &mut run, Event::Ended { key: plan[0].clone(), ended: ok(0) });
    while let Some(key) = next.first().cloned() {
        let mut ended = ok(0);
        ended.outputs.insert("verdict".into(), json!("change"));
        next = advance(&workflow, &mut run, Event::Ended { key, ended });
    }
    assert_eq!(run.steps["review"].round, 3);
    assert!(run.steps["review"].reason.as_deref().unwrap().starts_with("loop_exhausted"));
    assert_eq!((run.steps["notify"].state, run.state), (State::Succeeded, State::Failed));
    let again = advance(&workflow, &mut run, Event::Retry);
    assert_eq!(keys(&again), vec![("fix".into(), 1, None)], "the group goes again from its first step");
}

#[test]
fn a_loop_from_must_name_an_earlier_step_and_loops_do_not_overlap() {
    let looped = |id: &str, needs: &[&str], from: &str| {
        let mut s = step(id, needs);
        s.repeat = Some(Repeat { until: "true".into(), max: 2, from: Some(from.into()) });
        s
    };
    let bad_from = Workflow { name: "w".into(), steps: vec![step("a", &[]), looped("b", &[], "a")] };
    assert!(matches!(bad_from.check()[..], [crate::DefinitionError::LoopFrom { .. }]), "{:?}", bad_from.check());
    let overlap =
        Workflow { name: "w".into(), steps: vec![step("a", &[]), looped("b", &["a"], "a"), looped("c", &["b"], "b")] };
    assert!(matches!(overlap.check()[..], [crate::DefinitionError::LoopsOverlap { .. }]), "{:?}", overlap.check());
}

#[test]
fn for_each_runs_at_most_max_parallel_and_collects_results_in_item_order() {
    let mut each = step("each", &[]);
    each.for_each = Some(ForEach::Expr("inputs.files".into()));
    each.max_parallel = 4;
    let workflow = Workflow { name: "w".into(), steps: vec![each, step("after", &["each"])] };
    let files: Vec<Value> = (0..20).map(|n| json!(format!("f{n}"))).collect();
    let mut run = Run::new(&workflow, json!({ "files": files }));
    let mut running: Vec<StepKey> = advance(&workflow, &mut run, Event::Start);
    assert_eq!(running.len(), 4);
    assert_eq!(run.context_for(&running[2])["item"], json!("f2"));
    assert_eq!(run.context_for(&running[2])["index"], json!(2));
    let mut after = Vec::new();
    // Finished in reverse order of start: the results still come back in item order.
    while let Some(done) = running.pop() {
        let index = done.item.unwrap();
        let mut ended = ok(0);
        ended.output = format!("out{index}");
        let more = advance(&workflow, &mut run, Event::Ended { key: done, ended });
        for submit in more {
            if submit.step == "each" {
                running.push(submit);
            } else {
                after.push(submit);
            }
        }
        assert!(running.len() <= 4, "never more than max_parallel running");
    }
    assert_eq!(keys(&after), vec![("after".into(), 1, None)]);
    let results = run.context_for(&after[0])["steps"]["each"]["results"].as_array().unwrap().clone();
    let outputs: Vec<&str> = results.iter().map(|r| r["output"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..20).map(|n| format!("out{n}")).collect();
    assert_eq!(outputs, expected);
}

#[test]
fn a_failed_need_skips_a_step_unless_its_condition_asks_for_it_and_ends_are_taken_once() {
    let mut cleanup = step("cleanup", &["build"]);
    cleanup.when = Some("steps.build.state == 'failed'".into());
    let workflow = Workflow { name: "w".into(), steps: vec![step("build", &[]), step("test", &["build"]), cleanup] };
    let mut run = Run::new(&workflow, json!({}));
    let first = advance(&workflow, &mut run, Event::Start);
    let end = Event::Ended { key: first[0].clone(), ended: ok(2) };
    let next = advance(&workflow, &mut run, end.clone());
    assert_eq!(keys(&next), vec![("cleanup".into(), 1, None)]);
    assert_eq!(run.steps["test"].state, State::Skipped);
    assert!(advance(&workflow, &mut run, end).is_empty(), "a duplicate end changes nothing");
    advance(&workflow, &mut run, Event::Ended { key: next[0].clone(), ended: ok(0) });
    assert_eq!(run.state, State::Failed, "a failed step fails the run");
}

#[test]
fn a_condition_that_names_nothing_fails_its_step_and_a_cancel_stops_everything() {
    let mut typo = step("typo", &[]);
    typo.when = Some("inputs.kindd == 'bug'".into());
    let workflow = Workflow { name: "w".into(), steps: vec![typo, step("slow", &[]), step("later", &["slow"])] };
    let mut run = Run::new(&workflow, json!({ "kind": "bug" }));
    let submits = advance(&workflow, &mut run, Event::Start);
    assert_eq!(keys(&submits), vec![("slow".into(), 1, None)]);
    assert_eq!(run.steps["typo"].state, State::Failed);
    assert!(run.steps["typo"].reason.as_deref().unwrap().starts_with("if:"));
    assert!(advance(&workflow, &mut run, Event::Cancel).is_empty());
    assert_eq!(run.state, State::Cancelled);
    assert_eq!(run.steps["later"].state, State::Cancelled);
    let late = Event::Ended { key: submits[0].clone(), ended: ok(0) };
    assert!(advance(&workflow, &mut run, late).is_empty());
    assert_eq!(run.state, State::Cancelled);
}

#[test]
fn a_definition_is_checked_for_every_error_at_once() {
    let mut bad = step("b", &["nowhere"]);
    bad.when = Some("steps.a ==".into());
    let mut looped = step("c", &[]);
    looped.repeat = Some(Repeat { until: "true".into(), max: 0, from: None });
    let steps = vec![step("a", &["d"]), bad, looped, step("d", &["a"]), step("a", &[]), step("bad id!", &[])];
    let errors: Vec<String> = Workflow { name: "w".into(), steps }.check().iter().map(ToString::to_string).collect();
    assert!(errors.iter().any(|e| e.contains("\"a\" appears more than once")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("needs \"nowhere\"")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("step \"b\": if:")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("loop.max")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("\"bad id!\"")), "{errors:?}");
    let cyclic = Workflow { name: "w".into(), steps: vec![step("a", &["d"]), step("d", &["a"]), step("e", &[])] };
    assert_eq!(cyclic.check(), vec![crate::DefinitionError::Cycle(vec!["a".into(), "d".into()])]);
}

/// A random acyclic workflow: each step may need earlier ones, branch, fan out and loop.
fn workflows() -> impl Strategy<Value = Workflow> {
    let one = (
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        0..4u8,
        prop::option::of((0..6usize, 0..4u32)),
        prop::option::of((0..3u8, 1..4u32)),
    );
    prop::collection::vec(one, 1..8)
        .prop_map(|specs| {
            let mut steps: Vec<Step> = Vec::new();
            for (n, (needs, when, fan, repeat)) in specs.into_iter().enumerate() {
                let id = format!("s{n}");
                let mut needs: Vec<String> =
                    if n == 0 { Vec::new() } else { needs.iter().map(|i| format!("s{}", i.index(n))).collect() };
                needs.sort();
                needs.dedup();
                let when = match (when, needs.first()) {
                    (1, _) => Some("true".to_owned()),
                    (2, _) => Some("inputs.go".to_owned()),
                    (3, Some(need)) => Some(format!("steps.{need}.state == 'failed'")),
                    _ => None,
                };
                let (for_each, max_parallel) = match fan {
                    Some((items, max)) => (Some(ForEach::Items((0..items).map(|i| json!(i)).collect())), max),
                    None => (None, 0),
                };
                // Kind 2 loops over a group: from the first step this one needs to this one.
                let repeat = repeat.map(|(kind, max)| Repeat {
                    until: if kind == 0 {
                        format!("steps.{id}.state == 'running' and round >= 2")
                    } else {
                        "false".into()
                    },
                    max,
                    from: if kind == 2 { needs.first().cloned() } else { None },
                });
                steps.push(Step { id, needs, when, for_each, max_parallel, repeat });
            }
            Workflow { name: "random".into(), steps }
        })
        .prop_filter("loops that overlap are refused by check", |w| w.check().is_empty())
}

/// Checks what a batch of submits may be, and adds it to what runs.
fn accept(
    workflow: &Workflow,
    run: &Run,
    seen: &mut HashSet<StepKey>,
    outstanding: &mut Vec<StepKey>,
    submits: Vec<StepKey>,
) -> Result<(), TestCaseError> {
    for submit in submits {
        prop_assert!(seen.insert(submit.clone()), "{:?} submitted twice", submit);
        let step = workflow.step(&submit.step).unwrap();
        for need in &step.needs {
            prop_assert!(run.steps[need].state.is_final(), "{} started before {} ended", step.id, need);
            if let Some(tail) = workflow.loop_around(need)
                && !workflow.loop_group(tail).contains(&step.id.as_str())
            {
                prop_assert!(run.steps[&tail.id].state.is_final(), "{} started inside {}'s loop", step.id, tail.id);
            }
        }
        outstanding.push(submit);
    }
    for step in workflow.steps.iter().filter(|s| s.for_each.is_some() && s.max_parallel > 0) {
        let running = outstanding.iter().filter(|k| k.step == step.id).count();
        prop_assert!(running <= step.max_parallel as usize, "{} runs {} items", step.id, running);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever order tasks finish in and however they end: every (step, round, item) is
    /// submitted at most once, only after its needs ended, never more items of a step at once
    /// than its max_parallel; a duplicate end changes nothing; and the run always ends.
    #[test]
    fn any_finishing_order_ends_the_run_and_keeps_every_rule(
        workflow in workflows(),
        go in any::<bool>(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0..3i32), 0..400),
    ) {
        prop_assert!(workflow.check().is_empty(), "{:?}", workflow.check());
        let mut run = Run::new(&workflow, json!({ "go": go }));
        let (mut seen, mut outstanding) = (HashSet::new(), Vec::new());
        let started = advance(&workflow, &mut run, Event::Start);
        accept(&workflow, &run, &mut seen, &mut outstanding, started)?;
        let mut picks = picks.into_iter();
        let mut events = 0;
        while !outstanding.is_empty() {
            events += 1;
            prop_assert!(events < 10_000, "the run does not end");
            let (index, code) = match picks.next() {
                Some((index, code)) => (index.index(outstanding.len()), code),
                None => (0, 0),
            };
            let done = outstanding.remove(index);
            let end = Event::Ended { key: done, ended: ok(code) };
            let submits = advance(&workflow, &mut run, end.clone());
            accept(&workflow, &run, &mut seen, &mut outstanding, submits)?;
            prop_assert!(advance(&workflow, &mut run, end).is_empty(), "a duplicate end submitted something");
        }
        prop_assert!(run.state.is_final(), "nothing runs and the run is {:?}", run.state);
        prop_assert!(run.steps.values().all(|s| s.state.is_final()));
        let failed: BTreeSet<&String> =
            run.steps.iter().filter(|(_, s)| s.state == State::Failed).map(|(id, _)| id).collect();
        prop_assert_eq!(run.state == State::Failed, !failed.is_empty());
    }
}

#[test]
fn a_retry_runs_again_from_the_failed_step_and_keeps_what_succeeded() {
    let workflow = Workflow { name: "w".into(), steps: vec![step("a", &[]), step("b", &["a"]), step("c", &["b"])] };
    let mut run = Run::new(&workflow, json!({}));
    let a = advance(&workflow, &mut run, Event::Start);
    let mut done = ok(0);
    done.outputs.insert("x".into(), json!(1));
    let b = advance(&workflow, &mut run, Event::Ended { key: a[0].clone(), ended: done });
    let mut failed = ok(2);
    failed.reason = Some("exit code 2".into());
    assert!(advance(&workflow, &mut run, Event::Ended { key: b[0].clone(), ended: failed }).is_empty());
    assert_eq!(run.state, State::Failed);
    assert_eq!(run.steps["b"].reason.as_deref(), Some("exit code 2"), "the task's reason is the step's");
    assert_eq!(run.steps["c"].state, State::Skipped);
    assert!(run.running().is_empty());
    let again = advance(&workflow, &mut run, Event::Retry);
    assert_eq!(keys(&again), vec![("b".into(), 1, None)], "only what did not succeed runs again");
    assert_eq!(run.running(), again);
    assert_eq!(run.steps["a"].ended.as_ref().unwrap().outputs["x"], json!(1), "a keeps its outputs");
    assert!(advance(&workflow, &mut run, Event::Retry).is_empty(), "a running run is not retried");
    let c = advance(&workflow, &mut run, Event::Ended { key: again[0].clone(), ended: ok(0) });
    advance(&workflow, &mut run, Event::Ended { key: c[0].clone(), ended: ok(0) });
    assert_eq!(run.state, State::Succeeded);
}

#[test]
fn a_condition_that_reads_a_failed_needs_outputs_skips_its_step() {
    let mut reads = step("reads", &["a"]);
    reads.when = Some("steps.a.outputs.label == 'bug'".into());
    let mut asks = step("asks", &["a"]);
    asks.when = Some("steps.a.state == 'failed'".into());
    let workflow = Workflow { name: "w".into(), steps: vec![step("a", &[]), reads, asks] };
    let mut run = Run::new(&workflow, json!({}));
    let a = advance(&workflow, &mut run, Event::Start);
    let next = advance(&workflow, &mut run, Event::Ended { key: a[0].clone(), ended: ok(1) });
    assert_eq!(keys(&next), vec![("asks".into(), 1, None)], "the step that asks for the failure runs");
    assert_eq!(run.steps["reads"].state, State::Skipped);
    assert_eq!(run.steps["reads"].reason.as_deref(), Some("needs a, which failed"));
}
