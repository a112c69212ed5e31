//! The workflow file: YAML (JSON is YAML too), read into a [`Definition`] or into every
//! [`Problem`] it has, each with its line and column and the step it belongs to.
//!
//! ```yaml
//! name: fix-and-review
//! inputs:
//!   kind: {type: string, default: bug}
//! steps:
//!   - id: classify
//!     run: ["sh", "-c", "echo {{ inputs.kind }}"]
//!   - id: fix
//!     needs: [classify]
//!     if: steps.classify.exit_code == 0
//!     agent: "make the failing test pass"
//!     repo: "{{ inputs.repo }}"
//! ```
//!
//! Checked here: the file's syntax and fields (unknown ones are errors), one kind of work per
//! step, the definition's rules ([`Workflow::check`]), and every expression and template, which
//! may name only declared inputs, steps of the workflow, and `item`/`index` (in a `for_each`
//! step) and `round`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use crate::task::{Capture, Settings, StepTask, StepWork};
use crate::{DefinitionError, ForEach, Repeat, Step, Workflow};

/// Something wrong in a workflow file, where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// From 1; 0 when the position is not known.
    pub line: u64,
    pub column: u64,
    pub step: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if let Some(step) = &self.step {
            write!(f, "step {step}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A checked workflow file: the order and control of its steps, its inputs, and each step's task.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    pub workflow: Workflow,
    pub description: Option<String>,
    pub inputs: BTreeMap<String, Input>,
    /// `defaults:`: settings every step takes unless it sets its own.
    pub defaults: Settings,
    /// `local_only: true`: no step goes to a cloud provider, whatever its model.
    pub local_only: bool,
    /// Each step's task, by step id.
    pub tasks: BTreeMap<String, StepTask>,
    /// `on: {schedule: ...}`: when the hub starts it by itself, once it is added as a schedule.
    pub schedule: Option<crate::schedule::Schedule>,
    /// `remember:`: values (templates) kept when a run succeeds, which later runs read as
    /// `memory.NAME`.
    pub remember: BTreeMap<String, String>,
}

/// A declared input.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub kind: InputType,
    pub default: Option<Value>,
    pub description: Option<String>,
}

impl Input {
    /// A value written on a command line (`--input NAME=VALUE`) as this input's type: a string
    /// as it is, a number, `true`/`false`, a list or object as JSON.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let value = match self.kind {
            InputType::String => return Ok(Value::String(text.to_owned())),
            InputType::Boolean => match text {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("{text:?} is not true or false")),
            },
            InputType::Number | InputType::List | InputType::Object => {
                serde_json::from_str(text).map_err(|_| format!("{text:?} is not {}", self.kind.described()))?
            }
        };
        if self.kind.admits(&value) { Ok(value) } else { Err(format!("{text:?} is not {}", self.kind.described())) }
    }
}

impl Definition {
    /// A run's inputs: `given` checked against the declared inputs (no unknown names, each of its
    /// type), with defaults filled in; every problem, naming its input.
    pub fn inputs_for(&self, given: &serde_json::Map<String, Value>) -> Result<Value, Vec<String>> {
        let mut problems = Vec::new();
        for (name, value) in given {
            match self.inputs.get(name) {
                None => problems.push(format!("input {name}: the workflow declares no such input")),
                Some(input) if !input.kind.admits(value) => {
                    problems.push(format!("input {name}: {value} is not {}", input.kind.described()))
                }
                Some(_) => {}
            }
        }
        let mut inputs = serde_json::Map::new();
        for (name, input) in &self.inputs {
            match given.get(name).or(input.default.as_ref()) {
                Some(value) => drop(inputs.insert(name.clone(), value.clone())),
                None => problems.push(format!("input {name}: required (it has no default)")),
            }
        }
        if problems.is_empty() { Ok(Value::Object(inputs)) } else { Err(problems) }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputDoc {
    #[serde(rename = "type")]
    kind: InputType,
    #[serde(default)]
    default: Option<Spanned<Value>>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Number,
    Boolean,
    List,
    Object,
}

impl InputType {
    fn described(self) -> &'static str {
        match self {
            InputType::String => "a string",
            InputType::Number => "a number",
            InputType::Boolean => "a boolean",
            InputType::List => "a list",
            InputType::Object => "an object",
        }
    }

    fn admits(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (InputType::String, Value::String(_))
                | (InputType::Number, Value::Number(_))
                | (InputType::Boolean, Value::Bool(_))
                | (InputType::List, Value::Array(_))
                | (InputType::Object, Value::Object(_))
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, InputDoc>,
    #[serde(default)]
    defaults: Option<Spanned<SettingsDoc>>,
    #[serde(default)]
    local_only: bool,
    #[serde(default, rename = "on")]
    triggers: Option<Spanned<OnDoc>>,
    #[serde(default)]
    remember: BTreeMap<String, Spanned<String>>,
    steps: Vec<Spanned<StepDoc>>,
}

/// `on:`: what starts the workflow besides a user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDoc {
    #[serde(default)]
    schedule: Option<String>,
}

/// `defaults:`, and the same settings on a step.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettingsDoc {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    timeout: Option<Spanned<TimeoutDoc>>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    local_only: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_cost_micros: Option<u64>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
}

/// `timeout: 10m` or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum TimeoutDoc {
    Seconds(u64),
    Text(String),
}

/// One of `outputs:`: `output`, `{regex: R}` or `{json: PATH}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum CaptureDoc {
    Whole(String),
    Regex { regex: String },
    Json { json: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDoc {
    id: Spanned<String>,
    #[serde(default)]
    needs: Vec<Spanned<String>>,
    #[serde(default, rename = "if")]
    when: Option<Spanned<String>>,
    #[serde(default)]
    for_each: Option<Spanned<ForEachDoc>>,
    #[serde(default)]
    max_parallel: u32,
    #[serde(default, rename = "loop")]
    repeat: Option<Spanned<LoopDoc>>,
    #[serde(default)]
    run: Option<Spanned<RunDoc>>,
    #[serde(default)]
    prompt: Option<Spanned<String>>,
    #[serde(default)]
    agent: Option<Spanned<String>>,
    #[serde(default)]
    service: Option<Spanned<String>>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    ready: Option<String>,
    #[serde(default)]
    alive: Option<String>,
    #[serde(default)]
    probe: BTreeMap<String, ScalarDoc>,
    #[serde(default)]
    restart: BTreeMap<String, ScalarDoc>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    repo: Option<Spanned<String>>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    verify: Vec<Spanned<String>>,
    #[serde(default)]
    criteria: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secret_env: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    fix_rounds: Option<u32>,
    #[serde(default)]
    outputs: BTreeMap<String, Spanned<CaptureDoc>>,
    // The settings `defaults:` also takes (serde's `flatten` cannot refuse unknown fields).
    #[serde(default)]
    model: Option<Spanned<String>>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    timeout: Option<Spanned<TimeoutDoc>>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    local_only: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_cost_micros: Option<u64>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ForEachDoc {
    Items(Vec<Value>),
    Expr(String),
}

/// A value written as a number or a string (`interval: 500ms`, `failure_threshold: 3`).
#[derive(Deserialize)]
#[serde(untagged)]
enum ScalarDoc {
    Number(u64),
    Text(String),
}

impl ScalarDoc {
    fn text(&self) -> String {
        match self {
            ScalarDoc::Number(n) => n.to_string(),
            ScalarDoc::Text(text) => text.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RunDoc {
    Argv(Vec<String>),
    Script(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopDoc {
    until: String,
    max: u32,
    #[serde(default)]
    from: Option<String>,
}

fn at(location: Location, step: Option<&str>, message: impl Into<String>) -> Problem {
    Problem { line: location.line(), column: location.column(), step: step.map(str::to_owned), message: message.into() }
}

/// Reads and checks a workflow file: its definition, or every problem found.
pub fn load(text: &str) -> Result<Definition, Vec<Problem>> {
    let doc: FileDoc = serde_saphyr::from_str(text).map_err(|err| {
        let message = bare(err.to_string().lines().next().unwrap_or("not a workflow file"));
        let location = err.location();
        vec![Problem {
            line: location.map_or(0, |l| l.line()),
            column: location.map_or(0, |l| l.column()),
            step: None,
            message,
        }]
    })?;
    let mut problems = Vec::new();
    for (name, input) in &doc.inputs {
        if let Some(default) = &input.default
            && !input.kind.admits(&default.value)
        {
            let kind = format!("{:?}", input.kind).to_lowercase();
            problems.push(at(default.referenced, None, format!("input {name}: its default is not a {kind}")));
        }
    }
    let schedule = doc.triggers.as_ref().and_then(|on| {
        let pattern = on.value.schedule.as_ref()?;
        crate::schedule::Schedule::parse(pattern)
            .map_err(|err| problems.push(at(on.referenced, None, format!("on.schedule: {err}"))))
            .ok()
    });
    let defaults = match &doc.defaults {
        Some(defaults) => settings(&defaults.value, None, &mut problems),
        None => Settings::default(),
    };
    let mut steps = Vec::new();
    // Step by step, in file order (ids may repeat until checked).
    let mut works = Vec::new();
    for step in &doc.steps {
        let (doc_step, id) = (&step.value, step.value.id.value.as_str());
        let kinds =
            [doc_step.run.is_some(), doc_step.prompt.is_some(), doc_step.agent.is_some(), doc_step.service.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => problems.push(at(step.referenced, Some(id), "a step runs one of run:, prompt:, agent: or service:")),
            _ => problems.push(at(
                step.referenced,
                Some(id),
                "a step runs only one of run:, prompt:, agent: or service:",
            )),
        }
        if let (Some(repo), Some(_)) = (&doc_step.repo, &doc_step.prompt) {
            problems.push(at(repo.referenced, Some(id), "repo: is for run:, agent: and service: steps"));
        }
        let this_work = match (&doc_step.run, &doc_step.prompt, &doc_step.agent, &doc_step.service) {
            (Some(run), _, _, _) => match &run.value {
                RunDoc::Argv(argv) => StepWork::Argv(argv.clone()),
                RunDoc::Script(line) => StepWork::Script(line.clone()),
            },
            (None, Some(prompt), _, _) => StepWork::Prompt(prompt.value.clone()),
            (None, None, Some(goal), _) => StepWork::Agent(goal.value.clone()),
            (None, None, None, Some(run)) => StepWork::Service(service_step(step, &run.value, &mut problems)),
            (None, None, None, None) => StepWork::Script(String::new()),
        };
        works.push(step_task(step, this_work, &mut problems));
        steps.push(Step {
            id: id.to_owned(),
            needs: doc_step.needs.iter().map(|n| n.value.clone()).collect(),
            when: doc_step.when.as_ref().map(|w| w.value.clone()),
            for_each: doc_step.for_each.as_ref().map(|f| match &f.value {
                ForEachDoc::Items(items) => ForEach::Items(items.clone()),
                ForEachDoc::Expr(source) => ForEach::Expr(source.clone()),
            }),
            max_parallel: doc_step.max_parallel,
            repeat: doc_step.repeat.as_ref().map(|r| Repeat {
                until: r.value.until.clone(),
                max: r.value.max,
                from: r.value.from.clone(),
            }),
        });
    }
    let workflow = Workflow { name: doc.name.clone(), steps };
    for error in workflow.check() {
        problems.push(locate(&doc, error));
    }
    names(&doc, &workflow, &works, &mut problems);
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(problems);
    }
    let tasks = workflow.steps.iter().map(|s| s.id.clone()).zip(works).collect();
    let inputs = doc.inputs.into_iter().map(|(name, input)| {
        let InputDoc { kind, default, description } = input;
        (name, Input { kind, default: default.map(|d| d.value), description })
    });
    Ok(Definition {
        workflow,
        description: doc.description,
        inputs: inputs.collect(),
        defaults,
        local_only: doc.local_only,
        tasks,
        schedule,
        remember: doc.remember.into_iter().map(|(name, value)| (name, value.value)).collect(),
    })
}

/// Settings as written (`defaults:`, or a step's), or the problems in them.
fn settings(doc: &SettingsDoc, step: Option<&str>, problems: &mut Vec<Problem>) -> Settings {
    Settings {
        model: doc.model.clone(),
        tier: doc.tier.clone(),
        priority: doc.priority.clone(),
        timeout_ms: doc.timeout.as_ref().and_then(|t| timeout_ms(t, step, problems)),
        retries: doc.retries,
        local_only: doc.local_only,
        max_tokens: doc.max_tokens,
        max_cost_micros: doc.max_cost_micros,
        tags: doc.tags.clone(),
        host: doc.host.clone(),
    }
}

fn timeout_ms(timeout: &Spanned<TimeoutDoc>, step: Option<&str>, problems: &mut Vec<Problem>) -> Option<u64> {
    let ms = match &timeout.value {
        TimeoutDoc::Seconds(seconds) => seconds.saturating_mul(1000),
        TimeoutDoc::Text(text) => match humantime::parse_duration(text) {
            Ok(duration) => duration.as_millis() as u64,
            Err(err) => {
                problems.push(at(timeout.referenced, step, format!("timeout: {text:?}: {err} (write 90s, 10m or 1h)")));
                return None;
            }
        },
    };
    if ms == 0 {
        problems.push(at(timeout.referenced, step, "timeout: must be more than 0"));
        return None;
    }
    Some(ms)
}

/// A step's task from its fields, with a problem for each that does not fit its kind of work.
fn step_task(step: &Spanned<StepDoc>, work: StepWork, problems: &mut Vec<Problem>) -> StepTask {
    let (doc, id) = (&step.value, Some(step.value.id.value.as_str()));
    let own = SettingsDoc {
        model: doc.model.as_ref().map(|m| m.value.clone()),
        tier: doc.tier.clone(),
        priority: doc.priority.clone(),
        timeout: None,
        retries: doc.retries,
        local_only: doc.local_only,
        max_tokens: doc.max_tokens,
        max_cost_micros: doc.max_cost_micros,
        tags: doc.tags.clone(),
        host: doc.host.clone(),
    };
    let mut settings = settings(&own, id, problems);
    settings.timeout_ms = doc.timeout.as_ref().and_then(|t| timeout_ms(t, id, problems));
    let is_run = matches!(work, StepWork::Argv(_) | StepWork::Script(_));
    let is_service = matches!(work, StepWork::Service(_));
    let runs_a_command = is_run || is_service;
    let is_agent = matches!(work, StepWork::Agent(_));
    let service_only = !doc.ports.is_empty()
        || doc.ready.is_some()
        || doc.alive.is_some()
        || !doc.probe.is_empty()
        || !doc.restart.is_empty();
    let misplaced = [
        ("model: is for prompt: and agent: steps", runs_a_command && doc.model.is_some()),
        ("system: is for prompt: steps", doc.system.is_some() && !matches!(work, StepWork::Prompt(_))),
        (
            "branch: is for agent: steps, and run: and service: steps with a repo:",
            doc.branch.is_some() && !(is_agent || (runs_a_command && doc.repo.is_some())),
        ),
        (
            "environment: is for run:, agent: and service: steps with a repo:",
            doc.environment.is_some() && doc.repo.is_none(),
        ),
        ("cwd: is for run: and service: steps", doc.cwd.is_some() && !runs_a_command),
        ("secret_env: is for run: and service: steps", !doc.secret_env.is_empty() && !runs_a_command),
        ("fix_rounds: is for prompt: and agent: steps", doc.fix_rounds.is_some() && runs_a_command),
        ("ports:, ready:, alive:, probe: and restart: are for service: steps", service_only && !is_service),
        ("verify: is not for service: steps (their probes check them)", is_service && !doc.verify.is_empty()),
    ];
    for (message, wrong) in misplaced {
        if wrong {
            problems.push(at(step.referenced, id, message));
        }
    }
    for flag in &doc.verify {
        if let Err(err) = agentcom_types::json::verify_flag(&flag.value) {
            problems.push(at(flag.referenced, id, format!("verify: {err}")));
        }
    }
    let mut outputs = BTreeMap::new();
    for (name, capture) in &doc.outputs {
        let how = match &capture.value {
            CaptureDoc::Whole(word) if word == "output" => Capture::Output,
            CaptureDoc::Whole(other) => {
                let message = format!(
                    "outputs.{name}: {other:?} is not a capture (write output, {{regex: R}} or {{json: PATH}})"
                );
                problems.push(at(capture.referenced, id, message));
                continue;
            }
            CaptureDoc::Regex { regex } => {
                if let Err(err) = regex::Regex::new(regex) {
                    problems.push(at(capture.referenced, id, format!("outputs.{name}: {err}")));
                }
                Capture::Regex(regex.clone())
            }
            CaptureDoc::Json { json } => {
                if let Err(err) = serde_json_path::JsonPath::parse(json) {
                    problems.push(at(capture.referenced, id, format!("outputs.{name}: {json:?}: {err}")));
                }
                Capture::Json(json.clone())
            }
        };
        outputs.insert(name.clone(), how);
    }
    StepTask {
        work,
        settings,
        system: doc.system.clone(),
        verify: doc.verify.iter().map(|v| v.value.clone()).collect(),
        criteria: doc.criteria.clone(),
        env: doc.env.clone(),
        secret_env: doc.secret_env.clone(),
        cwd: doc.cwd.clone(),
        repo: doc.repo.as_ref().map(|r| r.value.clone()),
        branch: doc.branch.clone(),
        environment: doc.environment.clone(),
        fix_rounds: doc.fix_rounds,
        outputs,
    }
}

/// A `service:` step's service from its fields; what can be checked before a run is.
fn service_step(step: &Spanned<StepDoc>, run: &str, problems: &mut Vec<Problem>) -> crate::task::ServiceStep {
    use crate::service::{PROBE_KEYS, RESTART_KEYS, is_template, millis, probe};
    let (doc, id) = (&step.value, Some(step.value.id.value.as_str()));
    for (name, line) in [("ready", &doc.ready), ("alive", &doc.alive)] {
        if let Some(line) = line.as_deref().filter(|l| !is_template(l))
            && let Err(err) = probe(line)
        {
            problems.push(at(step.referenced, id, format!("{name}: {err}")));
        }
    }
    for (field, map, keys) in [("probe", &doc.probe, &PROBE_KEYS[..]), ("restart", &doc.restart, &RESTART_KEYS[..])] {
        for (key, value) in map {
            if !keys.contains(&key.as_str()) {
                problems.push(at(
                    step.referenced,
                    id,
                    format!("{field}.{key}: not a setting (it takes {})", keys.join(", ")),
                ));
                continue;
            }
            let text = value.text();
            let duration = !matches!(key.as_str(), "failure_threshold" | "limit" | "policy");
            if duration
                && !is_template(&text)
                && let Err(err) = millis(&text)
            {
                problems.push(at(step.referenced, id, format!("{field}.{key}: {err}")));
            }
        }
    }
    if let Some(ScalarDoc::Text(policy)) = doc.restart.get("policy")
        && !is_template(policy)
        && !matches!(policy.as_str(), "on-failure" | "never")
    {
        problems.push(at(step.referenced, id, format!("restart.policy: {policy:?} is not on-failure or never")));
    }
    crate::task::ServiceStep {
        run: run.to_owned(),
        ports: doc.ports.clone(),
        ready: doc.ready.clone(),
        alive: doc.alive.clone(),
        probe: doc.probe.iter().map(|(k, v)| (k.clone(), v.text())).collect(),
        restart: doc.restart.iter().map(|(k, v)| (k.clone(), v.text())).collect(),
    }
}

/// The parser's message without the position it also puts in words (the problem carries it).
fn bare(message: &str) -> String {
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let after_position = message
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(position, _)| position.contains(" column "))
        .map(|(_, rest)| rest);
    after_position.unwrap_or(message).to_owned()
}

/// Where in the file a definition error is.
fn locate(doc: &FileDoc, error: DefinitionError) -> Problem {
    let step_named = |id: &str| doc.steps.iter().find(|s| s.value.id.value == id);
    let (location, step) = match &error {
        DefinitionError::DuplicateStep(id) => {
            let second = doc.steps.iter().filter(|s| s.value.id.value == *id).nth(1);
            (second.map(|s| s.value.id.referenced), Some(id.clone()))
        }
        DefinitionError::UnknownNeed { step, missing } => {
            let need = step_named(step).and_then(|s| s.value.needs.iter().find(|n| n.value == *missing));
            (need.map(|n| n.referenced), Some(step.clone()))
        }
        DefinitionError::Cycle(ids) => (ids.first().and_then(|id| step_named(id)).map(|s| s.referenced), None),
        DefinitionError::Expression { step, field, .. } => {
            let found = step_named(step).and_then(|s| match *field {
                "if" => s.value.when.as_ref().map(|w| w.referenced),
                "loop.until" => s.value.repeat.as_ref().map(|r| r.referenced),
                _ => s.value.for_each.as_ref().map(|f| f.referenced),
            });
            (found, Some(step.clone()))
        }
        DefinitionError::NoRounds { step } => {
            (step_named(step).and_then(|s| s.value.repeat.as_ref()).map(|r| r.referenced), Some(step.clone()))
        }
        DefinitionError::BadId(id) => (step_named(id).map(|s| s.value.id.referenced), Some(id.clone())),
        DefinitionError::LoopFrom { step, .. } | DefinitionError::LoopsOverlap { second: step, .. } => {
            (step_named(step).and_then(|s| s.value.repeat.as_ref()).map(|r| r.referenced), Some(step.clone()))
        }
    };
    let message = match &error {
        DefinitionError::Expression { field, error, .. } => format!("{field}: {error}"),
        DefinitionError::UnknownNeed { missing, .. } => {
            format!("needs {missing:?}, which is not a step of this workflow")
        }
        DefinitionError::NoRounds { .. } => "loop.max must be at least 1".to_owned(),
        other => other.to_string(),
    };
    match location {
        Some(location) => at(location, step.as_deref(), message),
        None => Problem { line: 0, column: 0, step, message },
    }
}

/// Every expression and template names only what exists: declared inputs, steps of the
/// workflow, and `item`, `index` (in a `for_each` step) and `round`.
fn names(doc: &FileDoc, workflow: &Workflow, works: &[StepTask], problems: &mut Vec<Problem>) {
    // `remember:` is filled once a run succeeds: no item, index or round then.
    let whole_run = Step::default();
    for (name, template) in &doc.remember {
        match crate::expr::template_names(&template.value) {
            Ok(named) => {
                for read in named.iter().filter(|n| *n == "round" || n.starts_with("round.")) {
                    problems.push(at(
                        template.referenced,
                        None,
                        format!("remember.{name}: {read} is only set in a step"),
                    ));
                }
                for read in named {
                    if let Some(why) = unknown(&read, &doc.inputs, workflow, &whole_run) {
                        problems.push(at(template.referenced, None, format!("remember.{name}: {why}")));
                    }
                }
            }
            Err(error) => problems.push(at(template.referenced, None, format!("remember.{name}: {error}"))),
        }
    }
    for ((doc_step, step), work) in doc.steps.iter().zip(&workflow.steps).zip(works) {
        let id = step.id.as_str();
        let mut sources: Vec<(Location, &'static str, String, bool)> = Vec::new();
        if let Some(when) = &doc_step.value.when {
            sources.push((when.referenced, "if", when.value.clone(), false));
        }
        if let Some(repeat) = &doc_step.value.repeat {
            sources.push((repeat.referenced, "loop.until", repeat.value.until.clone(), false));
        }
        if let Some(ForEach::Expr(source)) = &step.for_each {
            let location = doc_step.value.for_each.as_ref().map_or(doc_step.referenced, |f| f.referenced);
            sources.push((location, "for_each", source.clone(), false));
        }
        // Each template, where its step is in the file (the step's fields are not spanned one by one).
        let value = &doc_step.value;
        let work_at = match &work.work {
            StepWork::Argv(_) | StepWork::Script(_) => value.run.as_ref().map(|r| r.referenced),
            StepWork::Prompt(_) => value.prompt.as_ref().map(|p| p.referenced),
            StepWork::Agent(_) => value.agent.as_ref().map(|a| a.referenced),
            StepWork::Service(_) => value.service.as_ref().map(|s| s.referenced),
        };
        for (field, template) in work.templates() {
            let location = match field {
                "run" | "prompt" | "agent" | "service" => work_at.unwrap_or(doc_step.referenced),
                "repo" => value.repo.as_ref().map_or(doc_step.referenced, |r| r.referenced),
                "verify" => {
                    value.verify.iter().find(|v| v.value == template).map_or(doc_step.referenced, |v| v.referenced)
                }
                _ => doc_step.referenced,
            };
            sources.push((location, field, template.to_owned(), true));
        }
        for (location, field, source, template) in sources {
            let named = if template { crate::expr::template_names(&source) } else { crate::expr::names(&source) };
            let named = match named {
                Ok(named) => named,
                Err(error) if template => {
                    problems.push(at(location, Some(id), format!("{field}: {error}")));
                    continue;
                }
                Err(_) => continue, // Said by `Workflow::check`.
            };
            for name in named {
                if let Some(why) = unknown(&name, &doc.inputs, workflow, step) {
                    problems.push(at(location, Some(id), format!("{field}: {why}")));
                }
            }
        }
    }
}

/// Why a name an expression or template reads does not exist, if it does not.
fn unknown(name: &str, inputs: &BTreeMap<String, InputDoc>, workflow: &Workflow, step: &Step) -> Option<String> {
    let mut parts = name.split('.');
    let root = parts.next().unwrap_or_default();
    let next = parts.next();
    match (root, next) {
        ("inputs", Some(input)) if !inputs.contains_key(input) => Some(format!("no input named {input:?}")),
        ("steps", Some(other)) if workflow.step(other).is_none() => Some(format!("no step named {other:?}")),
        ("inputs" | "steps" | "round" | "previous" | "memory", _) => None,
        ("item" | "index", _) if step.for_each.is_some() => None,
        ("item" | "index", _) => Some(format!("{root} is only set in a for_each step")),
        _ => {
            Some(format!("{root} is not a name a workflow sets (inputs, steps, item, index, round, previous, memory)"))
        }
    }
}

#[cfg(test)]
mod tests;
