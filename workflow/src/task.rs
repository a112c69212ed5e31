//! What a step's task is: its work, its settings (the step's own over the workflow's
//! `defaults:`), and what its `outputs:` capture. [`body`] fills the step's templates and makes
//! the task as the JSON submit format (`POST /api/v1/tasks`) takes it; [`capture`] reads a
//! finished task's output into the step's named outputs.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::expr;
use crate::file::Definition;
use crate::run::StepKey;

/// Task settings a step takes, or `defaults:` gives every step; a step's own win.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Settings {
    /// The model of a `prompt:` step, or the model an `agent:` step is placed by. Its name
    /// picks the provider (a Claude model, an Ollama model, an OpenAI-compatible server's).
    pub model: Option<String>,
    pub tier: Option<String>,
    pub priority: Option<String>,
    pub timeout_ms: Option<u64>,
    /// Attempts after the first for failures the hub retries (a lost sidecar, a reply cut
    /// short, an exit code listed as retryable).
    pub retries: Option<u32>,
    pub local_only: Option<bool>,
    pub max_tokens: Option<u64>,
    pub max_cost_micros: Option<u64>,
    pub tags: Option<Vec<String>>,
    pub host: Option<String>,
}

impl Settings {
    /// These settings, each unset one taken from `defaults`.
    pub fn or(&self, defaults: &Settings) -> Settings {
        Settings {
            model: self.model.clone().or_else(|| defaults.model.clone()),
            tier: self.tier.clone().or_else(|| defaults.tier.clone()),
            priority: self.priority.clone().or_else(|| defaults.priority.clone()),
            timeout_ms: self.timeout_ms.or(defaults.timeout_ms),
            retries: self.retries.or(defaults.retries),
            local_only: self.local_only.or(defaults.local_only),
            max_tokens: self.max_tokens.or(defaults.max_tokens),
            max_cost_micros: self.max_cost_micros.or(defaults.max_cost_micros),
            tags: self.tags.clone().or_else(|| defaults.tags.clone()),
            host: self.host.clone().or_else(|| defaults.host.clone()),
        }
    }
}

/// What a step runs, its strings still templates.
#[derive(Clone, Debug, PartialEq)]
pub enum StepWork {
    /// `run:` as argv.
    Argv(Vec<String>),
    /// `run:` as a shell line.
    Script(String),
    Prompt(String),
    Agent(String),
    /// `service:`: a shell line that runs until stopped; the step ends once it is ready.
    Service(ServiceStep),
}

/// A `service:` step's service, its strings templates.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ServiceStep {
    pub run: String,
    /// `ports:`, each filled and split at commas and spaces (`"{{ item.ports | join(',') }}"`).
    pub ports: Vec<String>,
    /// `ready:`: `http [PORT] PATH`, `tcp [PORT]` or `command LINE`; empty: none.
    pub ready: Option<String>,
    /// `alive:`, the same.
    pub alive: Option<String>,
    /// `probe:`: `start_period`, `interval`, `timeout` (durations, templates) and
    /// `failure_threshold`, for both probes.
    pub probe: BTreeMap<String, String>,
    /// `restart:`: `policy` (`on-failure`, `never`), `limit`.
    pub restart: BTreeMap<String, String>,
}

/// How one of a step's `outputs:` is read from its task's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Capture {
    /// `output`: the whole output, without its trailing newline.
    Output,
    /// `{regex: R}`: the first group of the first match (the whole match without groups).
    Regex(String),
    /// `{json: PATH}`: an RFC 9535 JSONPath into the output read as JSON (a Markdown code fence
    /// around it is allowed): the one node it selects, or the list of several.
    Json(String),
}

/// A step's task: what it runs and with what.
#[derive(Clone, Debug, PartialEq)]
pub struct StepTask {
    pub work: StepWork,
    /// The step's own settings; [`body`] applies the workflow's defaults.
    pub settings: Settings,
    /// The system prompt of a `prompt:` step.
    pub system: Option<String>,
    /// Verification steps, as `hubctl submit --verify` writes them (`test_passes=cargo test`).
    pub verify: Vec<String>,
    /// Success criteria, in words.
    pub criteria: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Names of secrets the sidecar puts in the environment (never their values).
    pub secret_env: Vec<String>,
    pub cwd: Option<String>,
    /// `repo:`: the repository the step's work runs in (an agent's workspace, a run or
    /// service step's `context.repository`).
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// `environment:` (`keep`, `fresh`): the repository's kept environment, not a workspace of
    /// the step's own.
    pub environment: Option<String>,
    pub fix_rounds: Option<u32>,
    pub outputs: BTreeMap<String, Capture>,
}

impl StepTask {
    /// A step that runs `work` with nothing else set.
    pub fn of(work: StepWork) -> StepTask {
        StepTask {
            work,
            settings: Settings::default(),
            system: None,
            verify: Vec::new(),
            criteria: Vec::new(),
            env: BTreeMap::new(),
            secret_env: Vec::new(),
            cwd: None,
            repo: None,
            branch: None,
            environment: None,
            fix_rounds: None,
            outputs: BTreeMap::new(),
        }
    }

    /// Every template the step fills, with the field it is in.
    pub fn templates(&self) -> Vec<(&'static str, &str)> {
        let mut templates: Vec<(&'static str, &str)> = match &self.work {
            StepWork::Argv(argv) => argv.iter().map(|a| ("run", a.as_str())).collect(),
            StepWork::Script(line) => vec![("run", line)],
            StepWork::Prompt(prompt) => vec![("prompt", prompt)],
            StepWork::Agent(goal) => vec![("agent", goal.as_str())],
            StepWork::Service(service) => {
                let mut t = vec![("service", service.run.as_str())];
                t.extend(service.ports.iter().map(|p| ("ports", p.as_str())));
                t.extend(service.ready.as_deref().map(|r| ("ready", r)));
                t.extend(service.alive.as_deref().map(|a| ("alive", a)));
                t.extend(service.probe.values().map(|v| ("probe", v.as_str())));
                t.extend(service.restart.values().map(|v| ("restart", v.as_str())));
                t
            }
        };
        templates.extend(self.repo.as_deref().map(|r| ("repo", r)));
        templates.extend(self.environment.as_deref().map(|e| ("environment", e)));
        templates.extend(self.settings.host.as_deref().map(|h| ("host", h)));
        templates.extend(self.settings.model.as_deref().map(|m| ("model", m)));
        templates.extend(self.system.as_deref().map(|s| ("system", s)));
        templates.extend(self.verify.iter().map(|v| ("verify", v.as_str())));
        templates.extend(self.criteria.iter().map(|c| ("criteria", c.as_str())));
        templates.extend(self.env.values().map(|v| ("env", v.as_str())));
        templates.extend(self.cwd.as_deref().map(|c| ("cwd", c)));
        templates.extend(self.branch.as_deref().map(|b| ("branch", b)));
        templates
    }
}

/// The task of `key` in a run of `definition`, as the JSON submit format takes it: the step's
/// templates filled from `scope` ([`crate::run::Run::context_for`]), its settings over the
/// workflow's `defaults:`, `local_only` forced by a workflow that says so, and the run's labels
/// (`workflow`, `workflow_run`, `workflow_step`, `workflow_round`, `workflow_item`) and
/// idempotency key. An error says which field's template or setting is wrong.
pub fn body(
    definition: &Definition,
    run_id: &str,
    key: &StepKey,
    idempotency_key: &str,
    scope: &expr::Scope,
) -> Result<Value, String> {
    let task = definition.tasks.get(&key.step).ok_or_else(|| format!("no step named {:?}", key.step))?;
    let (workflow, defaults, local_only) =
        (definition.workflow.name.as_str(), &definition.defaults, definition.local_only);
    let fill = |field: &str, template: &str| expr::fill(template, scope).map_err(|err| format!("{field}: {err}"));
    let mut settings = task.settings.or(defaults);
    // `model:` and `host:` are templates too; one that fills to nothing is unset.
    settings.model = match &settings.model {
        Some(model) => Some(fill("model", model)?).filter(|m| !m.is_empty()),
        None => None,
    };
    let mut body = Map::new();
    let item = key.item.map_or_else(String::new, |i| format!("[{i}]"));
    let round = if key.round > 1 { format!("#{}", key.round) } else { String::new() };
    body.insert("name".into(), json!(format!("{workflow}/{}{item}{round}", key.step)));
    body.insert("idempotency_key".into(), json!(idempotency_key));
    let mut labels = json!({
        "workflow": workflow,
        "workflow_run": run_id,
        "workflow_step": key.step,
        "workflow_round": key.round.to_string(),
    });
    if let Some(index) = key.item {
        labels["workflow_item"] = json!(index.to_string());
    }
    body.insert("labels".into(), labels);
    let mut env = Map::new();
    for (name, value) in &task.env {
        env.insert(name.clone(), json!(fill("env", value)?));
    }
    let mut placement = Map::new();
    let mut model_for_placement = None;
    let mut context = Map::new();
    if let Some(repo) = &task.repo {
        context.insert("repository".into(), json!(fill("repo", repo)?));
    }
    if let Some(environment) = &task.environment {
        context.insert("environment".into(), json!(fill("environment", environment)?));
    }
    let shell_branch = !matches!(task.work, StepWork::Agent(_) | StepWork::Prompt(_));
    if let (Some(branch), true) = (&task.branch, shell_branch) {
        context.insert("branch".into(), json!(fill("branch", branch)?));
    }
    match &task.work {
        StepWork::Argv(argv) => {
            let argv: Result<Vec<String>, String> = argv.iter().map(|a| fill("run", a)).collect();
            let mut shell = json!({ "argv": argv?, "env": env, "secret_env": task.secret_env });
            if let Some(cwd) = &task.cwd {
                shell["cwd"] = json!(fill("cwd", cwd)?);
            }
            body.insert("shell".into(), shell);
        }
        StepWork::Script(line) => {
            let mut shell = json!({ "script": fill("run", line)?, "env": env, "secret_env": task.secret_env });
            if let Some(cwd) = &task.cwd {
                shell["cwd"] = json!(fill("cwd", cwd)?);
            }
            body.insert("shell".into(), shell);
        }
        StepWork::Service(service) => {
            let mut made = crate::service::body(service, &fill)?;
            made["env"] = json!(env);
            made["secret_env"] = json!(task.secret_env);
            if let Some(cwd) = &task.cwd {
                made["cwd"] = json!(fill("cwd", cwd)?);
            }
            body.insert("service".into(), made);
        }
        StepWork::Prompt(prompt) => {
            let mut llm = json!({ "prompt": fill("prompt", prompt)? });
            if let Some(system) = &task.system {
                llm["system"] = json!(fill("system", system)?);
            }
            if let Some(model) = &settings.model {
                llm["model"] = json!(model);
            }
            if let Some(rounds) = task.fix_rounds {
                llm["fix_rounds"] = json!(rounds);
            }
            body.insert("llm".into(), llm);
            if !env.is_empty() {
                context.insert("env".into(), json!(env));
            }
        }
        StepWork::Agent(goal) => {
            let mut agent = json!({ "goal": fill("agent", goal)? });
            if let Some(repository) = context.remove("repository") {
                agent["repository"] = repository;
            }
            if let Some(branch) = &task.branch {
                agent["branch"] = json!(fill("branch", branch)?);
            }
            if let Some(rounds) = task.fix_rounds {
                agent["fix_rounds"] = json!(rounds);
            }
            body.insert("agent".into(), agent);
            model_for_placement = settings.model.clone();
            if !env.is_empty() {
                context.insert("env".into(), json!(env));
            }
        }
    }
    if !context.is_empty() {
        body.insert("context".into(), Value::Object(context));
    }
    if let Some(model) = model_for_placement {
        placement.insert("model".into(), json!(model));
    }
    if let Some(tags) = &settings.tags {
        placement.insert("tags".into(), json!(tags));
    }
    if let Some(host) = &settings.host {
        placement.insert("host".into(), json!(fill("host", host)?));
    }
    if local_only || settings.local_only == Some(true) {
        placement.insert("local_only".into(), json!(true));
    }
    if !placement.is_empty() {
        body.insert("placement".into(), Value::Object(placement));
    }
    let mut limits = Map::new();
    let limit = |limits: &mut Map<String, Value>, name: &str, value: Option<u64>| {
        if let Some(value) = value {
            limits.insert(name.into(), json!(value));
        }
    };
    limit(&mut limits, "timeout_ms", settings.timeout_ms);
    limit(&mut limits, "max_attempts", settings.retries.map(|r| u64::from(r) + 1));
    limit(&mut limits, "max_tokens", settings.max_tokens);
    limit(&mut limits, "max_cost_micros", settings.max_cost_micros);
    if !limits.is_empty() {
        body.insert("limits".into(), Value::Object(limits));
    }
    if let Some(tier) = &settings.tier {
        body.insert("tier".into(), json!(tier));
    }
    if let Some(priority) = &settings.priority {
        body.insert("priority".into(), json!(priority));
    }
    let mut verification = Vec::new();
    for flag in &task.verify {
        let flag = fill("verify", flag)?;
        verification.push(agentcom_types::json::verify_flag(&flag).map_err(|err| format!("verify: {err}"))?);
    }
    if !verification.is_empty() {
        body.insert("verification".into(), Value::Array(verification));
    }
    let criteria: Result<Vec<String>, String> = task.criteria.iter().map(|c| fill("criteria", c)).collect();
    let criteria = criteria?;
    if !criteria.is_empty() {
        body.insert("success_criteria".into(), json!(criteria));
    }
    Ok(Value::Object(body))
}

/// What a step's `outputs:` read from its task's `output`; an error names the output that
/// found nothing (a step whose task succeeded but did not say what it promised fails).
pub fn capture(outputs: &BTreeMap<String, Capture>, output: &str) -> Result<Map<String, Value>, String> {
    let mut captured = Map::new();
    for (name, how) in outputs {
        let value = match how {
            Capture::Output => json!(output.strip_suffix('\n').unwrap_or(output)),
            Capture::Regex(pattern) => {
                let regex = regex::Regex::new(pattern).map_err(|err| format!("outputs.{name}: {err}"))?;
                let found = regex.captures(output).ok_or_else(|| {
                    format!("outputs.{name}: the regex {pattern:?} matched nothing in the step's output")
                })?;
                let group = found.get(1).or_else(|| found.get(0)).map_or("", |m| m.as_str());
                json!(group)
            }
            Capture::Json(path) => {
                let path = serde_json_path::JsonPath::parse(path).map_err(|err| format!("outputs.{name}: {err}"))?;
                let document: Value = serde_json::from_str(unfenced(output)).map_err(|err| {
                    format!("outputs.{name}: the step's output is not JSON ({err}), so a JSON path cannot read it")
                })?;
                let nodes = path.query(&document).all();
                match nodes.as_slice() {
                    [] => return Err(format!("outputs.{name}: the JSON path selects nothing in the step's output")),
                    [one] => (*one).clone(),
                    many => Value::Array(many.iter().map(|v| (*v).clone()).collect()),
                }
            }
        };
        captured.insert(name.clone(), value);
    }
    Ok(captured)
}

/// The output without a Markdown code fence around it (models often fence the JSON they write).
fn unfenced(output: &str) -> &str {
    let trimmed = output.trim();
    let Some(rest) = trimmed.strip_prefix("```") else { return trimmed };
    let Some(rest) = rest.strip_suffix("```") else { return trimmed };
    // The fence's language tag, if any, ends at the first newline.
    rest.split_once('\n').map_or(rest, |(_, body)| body).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(step: &str, item: Option<usize>, round: u32) -> StepKey {
        StepKey { step: step.into(), round, item }
    }

    #[test]
    fn a_step_becomes_a_submit_body_with_its_templates_filled_and_the_defaults_under_it() {
        let definition = crate::file::load(
            r#"name: fix
local_only: true
inputs: {kind: {type: string}}
defaults: {timeout: 10m, retries: 2, model: qwen}
steps:
  - id: classify
    for_each: ["a.rs"]
    run: ["sh", "-c", "echo {{ inputs.kind }}"]
    timeout: 5
    env: {WHO: "{{ item }}"}
    verify: ["output_contains={{ inputs.kind }}"]
  - id: review
    prompt: "Review {{ inputs.kind }}"
  - id: broken
    run: "echo {{ steps.review.outputs.nope }}"
"#,
        )
        .expect("a good file");
        let context = crate::expr::Scope::of(&json!({"inputs": {"kind": "bug"}, "item": "a.rs", "index": 0,
            "round": 1, "steps": {"review": {"outputs": {}}}}));
        let made = body(&definition, "R1", &key("classify", Some(0), 1), "wf:R1:classify:1:0", &context).unwrap();
        assert_eq!(made["shell"]["argv"], json!(["sh", "-c", "echo bug"]));
        assert_eq!(made["shell"]["env"]["WHO"], json!("a.rs"));
        assert_eq!(made["limits"], json!({"timeout_ms": 5000, "max_attempts": 3}), "the step's own timeout wins");
        assert_eq!(made["placement"], json!({"local_only": true}), "a shell step is placed by no model");
        assert_eq!(made["verification"], json!([{"output_contains": {"text": "bug"}}]));
        assert_eq!(made["labels"]["workflow_item"], json!("0"));
        assert_eq!(made["name"], json!("fix/classify[0]"));
        assert_eq!(made["idempotency_key"], json!("wf:R1:classify:1:0"));
        agentcom_types::json::spec_from_json(&made.to_string()).expect("the submit format takes it");

        let made = body(&definition, "R1", &key("review", None, 2), "k", &context).unwrap();
        assert_eq!(made["llm"], json!({"prompt": "Review bug", "model": "qwen"}), "the default model");
        assert_eq!(made["name"], json!("fix/review#2"));
        agentcom_types::json::spec_from_json(&made.to_string()).expect("the submit format takes it");

        let err = body(&definition, "R1", &key("broken", None, 1), "k", &context).unwrap_err();
        assert!(err.starts_with("run: ") && err.contains("undefined"), "{err}");
    }

    #[test]
    fn a_service_step_in_a_kept_environment_becomes_a_service_task_on_its_host() {
        let definition = crate::file::load(
            r#"name: up
inputs: {repo: {type: string}}
steps:
  - id: web
    for_each: [{run: "python3 web.py", ports: [web, admin]}]
    service: "exec {{ item.run }}"
    repo: "{{ inputs.repo }}"
    branch: "abc123"
    environment: "keep"
    host: "{{ inputs.repo | length }}"
    ports: ["{{ item.ports | join(',') }}"]
    ready: "http /healthz"
    probe: {start_period: 5s}
    secret_env: [API_KEY]
"#,
        )
        .expect("a good file");
        let context = crate::expr::Scope::of(&json!({"inputs": {"repo": "/srv/shop"}, "round": 1, "index": 0,
            "item": {"run": "python3 web.py", "ports": ["web", "admin"]}, "steps": {}}));
        let made = body(&definition, "R1", &key("web", Some(0), 1), "k", &context).unwrap();
        assert_eq!(made["service"]["script"], json!("exec python3 web.py"));
        assert_eq!(made["service"]["ports"], json!(["web", "admin"]));
        assert_eq!(
            made["service"]["readiness"],
            json!({"http": {"port": "", "path": "/healthz"}, "start_period_ms": 5000})
        );
        assert_eq!(made["service"]["secret_env"], json!(["API_KEY"]));
        assert_eq!(made["context"], json!({"repository": "/srv/shop", "branch": "abc123", "environment": "keep"}));
        assert_eq!(made["placement"]["host"], json!("9"), "host: is a template");
        agentcom_types::json::spec_from_json(&made.to_string()).expect("the submit format takes it");
    }

    #[test]
    fn outputs_are_captured_by_regex_json_path_or_whole_and_a_miss_is_an_error() {
        let mut outputs = BTreeMap::new();
        outputs.insert("label".to_owned(), Capture::Regex(r"^(\w+)".into()));
        outputs.insert("all".to_owned(), Capture::Output);
        let captured = capture(&outputs, "bug report\n").unwrap();
        assert_eq!(captured["label"], json!("bug"));
        assert_eq!(captured["all"], json!("bug report"));
        let whole = BTreeMap::from([("n".to_owned(), Capture::Regex(r"\d+".into()))]);
        assert_eq!(capture(&whole, "took 42 ms").unwrap()["n"], json!("42"), "no group: the whole match");
        assert!(capture(&whole, "none").unwrap_err().contains("matched nothing"));

        let files = BTreeMap::from([("files".to_owned(), Capture::Json("$.files".into()))]);
        let fenced = "```json\n{\"files\": [\"a.rs\", \"b.rs\"]}\n```";
        assert_eq!(capture(&files, fenced).unwrap()["files"], json!(["a.rs", "b.rs"]));
        let names = BTreeMap::from([("names".to_owned(), Capture::Json("$.items[*].name".into()))]);
        let many = r#"{"items": [{"name": "x"}, {"name": "y"}]}"#;
        assert_eq!(capture(&names, many).unwrap()["names"], json!(["x", "y"]));
        assert!(capture(&files, "not json").unwrap_err().contains("not JSON"));
        assert!(capture(&files, "{}").unwrap_err().contains("selects nothing"));
    }
}
