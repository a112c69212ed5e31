use super::*;

/// The issue's example, as written there.
const GOOD: &str = r#"name: fix-and-review
inputs:
  repo: {type: string}
  kind: {type: string, default: bug}
defaults: {model: "qwen2.5:7b", timeout: 10m}
steps:
  - id: classify
    run: ["sh", "-c", "echo {{ inputs.kind }}"]
    outputs: {label: {regex: "^(\\w+)"}}
  - id: fix
    needs: [classify]
    if: steps.classify.outputs.label == "bug"
    agent: "make the failing test pass"
    repo: "{{ inputs.repo }}"
    verify: ["test_passes=cargo test"]
  - id: per-file
    needs: [classify]
    for_each: ["a.rs", "b.rs", "c.rs"]
    max_parallel: 2
    prompt: "Review {{ item }}"
  - id: until-green
    needs: [fix]
    loop:
      until: steps["until-green"].exit_code == 0
      max: 5
    run: "cargo test"
"#;

fn problems(text: &str) -> Vec<String> {
    load(text).expect_err("the file has problems").iter().map(ToString::to_string).collect()
}

#[test]
fn the_issues_example_reads_into_a_definition() {
    let definition = load(GOOD).expect("a good file");
    assert_eq!(definition.workflow.name, "fix-and-review");
    let ids: Vec<&str> = definition.workflow.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["classify", "fix", "per-file", "until-green"]);
    let per_file = definition.workflow.step("per-file").unwrap();
    assert_eq!(per_file.max_parallel, 2);
    assert!(matches!(&per_file.for_each, Some(ForEach::Items(items)) if items.len() == 3));
    let until = definition.workflow.step("until-green").unwrap().repeat.clone().unwrap();
    assert_eq!((until.until.as_str(), until.max), ("steps[\"until-green\"].exit_code == 0", 5));
    assert_eq!(definition.tasks["until-green"].work, StepWork::Script("cargo test".into()));
    assert_eq!(definition.tasks["fix"].work, StepWork::Agent("make the failing test pass".into()));
    assert_eq!(definition.inputs["kind"].default, Some(serde_json::json!("bug")));
    assert_eq!(definition.defaults.model.as_deref(), Some("qwen2.5:7b"));
    assert_eq!(definition.defaults.timeout_ms, Some(600_000));
    assert_eq!(definition.tasks["classify"].outputs["label"], Capture::Regex(r"^(\w+)".into()));
    assert_eq!(definition.tasks["fix"].verify, ["test_passes=cargo test"]);
    // JSON is accepted too.
    let json = r#"{"name": "j", "steps": [{"id": "a", "run": ["true"]}, {"id": "b", "needs": ["a"], "prompt": "hi"}]}"#;
    assert_eq!(load(json).expect("a JSON file").workflow.steps.len(), 2);
}

#[test]
fn an_unknown_field_is_reported_where_it_is() {
    let text = "name: w\nsteps:\n  - id: a\n    run: \"true\"\n    bogus: 1\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("5:5: "), "{found:?}");
    assert!(found[0].contains("bogus"), "{found:?}");
}

#[test]
fn every_semantic_error_names_its_line_column_and_step() {
    let text = r#"name: w
inputs:
  n: {type: number, default: "three"}
steps:
  - id: a
    run: "echo {{ inputs.missing }}"
  - id: b
    needs: [a, nowhere]
    if: steps.a.exit_code ==
    prompt: "x"
  - id: c
    needs: [d]
    run: "true"
  - id: d
    needs: [c]
    prompt: "{{ steps.ghost.output }} {{ item }}"
    agent: "and an agent"
  - id: a
    prompt: "x"
    repo: "/srv"
"#;
    let found = problems(text);
    let has = |needle: &str| assert!(found.iter().any(|p| p.contains(needle)), "no {needle:?} in {found:#?}");
    has("3:30: input n: its default is not a number");
    has("6:10: step a: run: no input named \"missing\"");
    has("8:16: step b: needs \"nowhere\", which is not a step of this workflow");
    has("9:9: step b: if:");
    has("14:5: step d: a step runs only one of run:, prompt:, agent: or service:");
    has("16:13: step d: prompt: no step named \"ghost\"");
    has("16:13: step d: prompt: item is only set in a for_each step");
    has("18:9: step a: step \"a\" appears more than once");
    has("20:11: step a: repo: is for run:, agent: and service: steps");
}

#[test]
fn service_steps_read_their_ports_probes_and_restarts_and_say_what_is_wrong() {
    let text = r#"name: up
inputs: {repo: {type: string}}
steps:
  - id: prepare
    run: "true"
    repo: "{{ inputs.repo }}"
    environment: keep
  - id: web
    needs: [prepare]
    service: "exec python3 web.py"
    repo: "{{ inputs.repo }}"
    environment: keep
    host: "{{ steps.prepare.outputs.host }}"
    ports: [web]
    ready: http web /healthz
    probe: {interval: 500ms, failure_threshold: 4}
    restart: {policy: never}
"#;
    let definition = load(text).expect("a good file");
    let task = &definition.tasks["web"];
    let StepWork::Service(service) = &task.work else { panic!("not a service step: {:?}", task.work) };
    assert_eq!((service.run.as_str(), service.ports.as_slice()), ("exec python3 web.py", &["web".to_owned()][..]));
    assert_eq!(service.probe["failure_threshold"], "4");
    assert_eq!((task.repo.as_deref(), task.environment.as_deref()), (Some("{{ inputs.repo }}"), Some("keep")));

    let bad = r#"name: up
steps:
  - id: web
    service: "sleep 1"
    ports: [web]
    ready: ping web
    probe: {interval: soon, every: 1s}
    restart: {policy: always}
    verify: ["file_exists=x"]
  - id: other
    run: "true"
    ports: [web]
    environment: keep
"#;
    let found = problems(bad);
    let has = |needle: &str| assert!(found.iter().any(|p| p.contains(needle)), "no {needle:?} in {found:#?}");
    has("step web: ready: \"ping web\" is not a probe");
    has("step web: probe.interval: \"soon\"");
    has("step web: probe.every: not a setting");
    has("step web: restart.policy: \"always\" is not on-failure or never");
    has("step web: verify: is not for service: steps");
    has("step other: ports:, ready:, alive:, probe: and restart: are for service: steps");
    has("step other: environment: is for run:, agent: and service: steps with a repo:");
}

#[test]
fn a_cycle_is_reported_at_its_first_step() {
    let text =
        "name: w\nsteps:\n  - id: c\n    needs: [d]\n    run: \"true\"\n  - id: d\n    needs: [c]\n    run: \"true\"\n";
    assert_eq!(problems(text), vec!["3:5: steps [\"c\", \"d\"] need each other in a cycle".to_owned()]);
}

#[test]
fn a_loop_from_that_is_not_before_its_step_is_reported_at_the_loop() {
    let text = "name: w\nsteps:\n  - id: a\n    run: \"true\"\n  - id: b\n    run: \"true\"\n    loop: {until: \"true\", max: 2, from: a}\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("7:11: step b: ") && found[0].contains("loop.from \"a\""), "{found:?}");
    let good = "name: w\nsteps:\n  - id: a\n    run: \"true\"\n  - id: b\n    needs: [a]\n    run: \"true\"\n    loop: {until: \"true\", max: 2, from: a}\n";
    assert!(load(good).is_ok(), "a loop from a step it needs is fine");
}

#[test]
fn a_template_that_does_not_compile_is_a_problem() {
    let found = problems("name: w\nsteps:\n  - id: a\n    run: \"echo {{ inputs.x \"\n");
    assert!(found.iter().any(|p| p.starts_with("4:10: step a: run:")), "{found:?}");
}

#[test]
fn problems_come_in_file_order_and_a_syntax_error_says_where() {
    let found = problems("name: w\nsteps:\n  - id: b\n    needs: [zz]\n    run: \"{{ inputs.q }}\"\n");
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("4:") && found[1].starts_with("5:"), "{found:?}");
    let syntax = problems("name: [\n");
    assert_eq!(syntax.len(), 1);
    assert!(syntax[0].starts_with("1:7: ") && !syntax[0].contains("line 1"), "{syntax:?}");
}

#[test]
fn settings_that_do_not_fit_are_reported_with_their_step() {
    let text = r#"name: w
defaults: {timeout: soon}
steps:
  - id: a
    run: "true"
    model: qwen
    outputs: {x: {regex: "("}, y: everything, z: {json: "$$"}}
    verify: ["nope=1"]
  - id: b
    prompt: "hi"
    cwd: /tmp
    timeout: 0
    env: {X: "{{ inputs.missing }}"}
"#;
    let found = problems(text).join("\n");
    for expected in [
        "2:", // the defaults' timeout
        "timeout: \"soon\"",
        "step a: model: is for prompt: and agent: steps",
        "step a: outputs.x:",
        "step a: outputs.y: \"everything\" is not a capture",
        "step a: outputs.z:",
        "step a: verify: unknown check \"nope\"",
        "step b: cwd: is for run: and service: steps",
        "step b: timeout: must be more than 0",
        "step b: env: no input named \"missing\"",
    ] {
        assert!(found.contains(expected), "{expected:?} not in:\n{found}");
    }
}

#[test]
fn a_runs_inputs_are_checked_typed_and_defaulted() {
    let definition = load("name: w\ninputs:\n  repo: {type: string}\n  n: {type: number, default: 3}\n  files: {type: list}\nsteps:\n  - id: a\n    run: \"true\"\n").unwrap();
    let given = serde_json::json!({"repo": "r", "files": ["a"]});
    let inputs = definition.inputs_for(given.as_object().unwrap()).unwrap();
    assert_eq!(inputs, serde_json::json!({"repo": "r", "n": 3, "files": ["a"]}));
    let bad = serde_json::json!({"n": "x", "other": 1, "files": ["a"]});
    let problems = definition.inputs_for(bad.as_object().unwrap()).unwrap_err().join("\n");
    for expected in
        ["input n: \"x\" is not a number", "input other: the workflow declares no such input", "input repo: required"]
    {
        assert!(problems.contains(expected), "{expected:?} not in {problems}");
    }
    assert_eq!(definition.inputs["n"].parse("4.5"), Ok(serde_json::json!(4.5)));
    assert_eq!(definition.inputs["files"].parse(r#"["x","y"]"#), Ok(serde_json::json!(["x", "y"])));
    assert_eq!(definition.inputs["repo"].parse("[1]"), Ok(serde_json::json!("[1]")), "a string is taken as it is");
    assert!(definition.inputs["files"].parse("x").is_err());
}

#[test]
fn a_schedule_and_what_runs_remember_are_read_and_checked() {
    let good = "name: w\non: {schedule: \"*/15 * * * *\"}\nremember: {label: \"{{ steps.a.outputs.x }}\"}\nsteps:\n  - id: a\n    run: \"echo {{ previous.outputs.x }} {{ memory.label }}\"\n";
    let definition = load(good).unwrap();
    assert_eq!(definition.schedule.unwrap().pattern(), "*/15 * * * *");
    assert_eq!(definition.remember["label"], "{{ steps.a.outputs.x }}");
    let bad = "name: w\non: {schedule: \"every hour\"}\nremember: {x: \"{{ item }}\", y: \"{{ steps.nope.outputs }}\"}\nsteps:\n  - id: a\n    run: \"true\"\n";
    let found = problems(bad).join("\n");
    for expected in
        ["2:", "on.schedule:", "remember.x: item is only set in a for_each step", "remember.y: no step named \"nope\""]
    {
        assert!(found.contains(expected), "{expected:?} not in:\n{found}");
    }
}
