//! The JSON submit format: the body of `POST /api/v1/tasks`, and one line of
//! `hubctl submit --from-file`, so a file line and an HTTP body mean the same thing.
//!
//! A body becomes the wire contract's `TaskSpec`; it is validated where it is submitted, by the
//! same code as a gRPC submit, so both APIs accept and refuse exactly the same tasks. This is
//! the request half of the HTTP contract (the hub's `api/http/dto.rs` re-exports it beside the
//! response shapes), documented in `docs/api.md`.

use std::collections::HashMap;

use agentcom_proto::v1 as pb;
use serde::Deserialize;

use crate::domain::{Lane, Numbered, Tier};

/// A body that is not a submit: the message says what is wrong, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

impl From<crate::domain::Error> for Error {
    fn from(err: crate::domain::Error) -> Error {
        Error(err.to_string())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShellBody {
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    script: String,
    #[serde(default)]
    cwd: String,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    secret_env: Vec<String>,
}

/// `service`: a shell command's fields, and its ports, probes and restart policy.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    script: String,
    #[serde(default)]
    cwd: String,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    secret_env: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    readiness: Option<ProbeBody>,
    #[serde(default)]
    liveness: Option<ProbeBody>,
    #[serde(default)]
    restart: Option<RestartBody>,
}

/// A probe: exactly one of `http`, `tcp`, `command`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProbeBody {
    #[serde(default)]
    http: Option<HttpProbeBody>,
    /// The port's name; `""`: the first port.
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    start_period_ms: u64,
    #[serde(default)]
    interval_ms: u64,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    failure_threshold: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpProbeBody {
    #[serde(default)]
    port: String,
    path: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    #[serde(default)]
    policy: String,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    backoff_base_ms: u64,
    #[serde(default)]
    backoff_max_ms: u64,
}

impl ProbeBody {
    fn into_pb(self, field: &str) -> Result<pb::Probe, Error> {
        use pb::probe::Check;
        let check = match (self.http, self.tcp, self.command) {
            (Some(http), None, None) => Check::Http(pb::HttpProbe { port: http.port, path: http.path }),
            (None, Some(port), None) => Check::Tcp(port),
            (None, None, Some(line)) => Check::Command(line),
            _ => return Err(Error(format!("invalid {field}: give exactly one of http, tcp, command"))),
        };
        Ok(pb::Probe {
            check: Some(check),
            start_period_ms: self.start_period_ms,
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            failure_threshold: self.failure_threshold,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmBody {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    system: String,
    #[serde(default)]
    messages: Vec<MessageBody>,
    #[serde(default)]
    model: String,
    #[serde(default)]
    max_tokens: u32,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    stop: Vec<String>,
    /// `"json"` asks for one JSON object.
    #[serde(default)]
    format: Option<String>,
    /// `"10m"`, or seconds (negative: for ever), as Ollama takes it.
    #[serde(default)]
    keep_alive: Option<serde_json::Value>,
    #[serde(default)]
    fix_rounds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentBody {
    goal: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    fix_rounds: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ContextBody {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    environment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum VerificationBody {
    FileExists(String),
    CommandSucceeds {
        argv: Vec<String>,
        #[serde(default)]
        timeout_ms: u64,
    },
    TestPasses {
        argv: Vec<String>,
        #[serde(default)]
        timeout_ms: u64,
    },
    GitClean(bool),
    /// `{"output_contains": {"text": "..."}}` or `{"output_contains": {"regex": "..."}}`.
    OutputContains(PatternBody),
    HttpOk(String),
    LlmJudge {
        #[serde(default)]
        model: String,
    },
}

/// A step as JSON takes it: `"git_clean"` (as the API shows it) or an object, with the object's
/// own error when it is wrong.
struct StepBody(VerificationBody);

impl<'de> Deserialize<'de> for StepBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<StepBody, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if value == "git_clean" {
            return Ok(StepBody(VerificationBody::GitClean(true)));
        }
        if value == "llm_judge" {
            return Ok(StepBody(VerificationBody::LlmJudge { model: String::new() }));
        }
        serde_json::from_value(value).map(StepBody).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum PatternBody {
    Text(String),
    Regex(String),
}

/// Limits as JSON takes them: a field left out means the hub's default, and a field given must
/// be in range (0 is refused, where protobuf's 0 can only mean "unset").
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    deadline_unix_ms: Option<i64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_cost_micros: Option<u64>,
    #[serde(default)]
    max_output_bytes: Option<u64>,
    #[serde(default)]
    max_memory_bytes: Option<u64>,
    #[serde(default)]
    max_pids: Option<u64>,
}

/// A number the JSON body gave: 0 is refused, naming the field.
fn given<T: Default + PartialEq + Copy>(field: &str, value: Option<T>) -> Result<T, Error> {
    match value {
        Some(v) if v == T::default() => Err(Error(format!("invalid {field}: must not be 0 when given"))),
        Some(v) => Ok(v),
        None => Ok(T::default()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PlacementBody {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    host: String,
    #[serde(default)]
    model: String,
    /// Never send the task to a cloud provider.
    #[serde(default)]
    local_only: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    backoff_base_ms: Option<u64>,
    #[serde(default)]
    backoff_max_ms: Option<u64>,
    #[serde(default)]
    retry_on_exit_codes: Vec<i32>,
}

/// `POST /api/v1/tasks`. Exactly one of `shell`, `llm`, `agent`, `service`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    shell: Option<ShellBody>,
    #[serde(default)]
    llm: Option<LlmBody>,
    #[serde(default)]
    agent: Option<AgentBody>,
    #[serde(default)]
    service: Option<ServiceBody>,
    #[serde(default)]
    context: Option<ContextBody>,
    #[serde(default)]
    success_criteria: Vec<String>,
    #[serde(default)]
    verification: Vec<StepBody>,
    #[serde(default)]
    limits: Option<LimitsBody>,
    #[serde(default)]
    placement: Option<PlacementBody>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    retry: Option<RetryBody>,
}

impl TryFrom<SubmitBody> for pb::TaskSpec {
    type Error = Error;

    fn try_from(body: SubmitBody) -> Result<pb::TaskSpec, Error> {
        let kind = match (body.shell, body.llm, body.agent, body.service) {
            (None, None, None, Some(service)) => pb::work::Kind::Service(pb::ServiceWork {
                run: Some(pb::ShellWork {
                    argv: service.argv,
                    script: service.script,
                    cwd: service.cwd,
                    env: service.env,
                    secret_env: service.secret_env,
                }),
                ports: service.ports,
                readiness: service.readiness.map(|p| p.into_pb("work.service.readiness")).transpose()?,
                liveness: service.liveness.map(|p| p.into_pb("work.service.liveness")).transpose()?,
                restart: service.restart.map(|r| pb::ServiceRestart {
                    policy: r.policy,
                    limit: r.limit,
                    backoff_base_ms: r.backoff_base_ms,
                    backoff_max_ms: r.backoff_max_ms,
                }),
            }),
            (Some(shell), None, None, None) => pb::work::Kind::Shell(pb::ShellWork {
                argv: shell.argv,
                script: shell.script,
                cwd: shell.cwd,
                env: shell.env,
                secret_env: shell.secret_env,
            }),
            (None, Some(llm), None, None) => {
                let json = match llm.format.as_deref() {
                    None => false,
                    Some("json") => true,
                    Some(other) => return Err(Error(format!("invalid work.llm.format: {other:?} is not \"json\""))),
                };
                let keep_alive = match llm.keep_alive {
                    None => String::new(),
                    Some(serde_json::Value::String(text)) => text,
                    Some(serde_json::Value::Number(seconds)) => seconds.to_string(),
                    Some(_) => {
                        return Err(Error("invalid work.llm.keep_alive: give \"10m\" or a number of seconds".into()));
                    }
                };
                pb::work::Kind::Llm(pb::LlmWork {
                    prompt: llm.prompt,
                    system: llm.system,
                    model: llm.model,
                    max_tokens: llm.max_tokens,
                    messages: llm
                        .messages
                        .into_iter()
                        .map(|m| pb::ChatMessage { role: m.role, content: m.content, ..Default::default() })
                        .collect(),
                    temperature: llm.temperature,
                    stop: llm.stop,
                    json,
                    keep_alive,
                    fix_rounds: llm.fix_rounds,
                    redact: false,
                    tools: Vec::new(),
                })
            }
            (None, None, Some(agent), None) => pb::work::Kind::Agent(pb::AgentWork {
                goal: agent.goal,
                repository: agent.repository,
                branch: agent.branch,
                fix_rounds: agent.fix_rounds,
            }),
            _ => return Err(Error("invalid work: give exactly one of shell, llm, agent, service".to_owned())),
        };
        // 0 is unset: the hub's default lane, and a tier it infers.
        let priority = body.priority.map(|p| p.parse::<Lane>()).transpose()?.map_or(0, Numbered::number);
        let tier = body.tier.map(|t| t.parse::<Tier>()).transpose()?.map_or(0, Numbered::number);
        let context = body.context.unwrap_or_default();
        let limits = body.limits.unwrap_or_default();
        let placement = body.placement.unwrap_or_default();
        let retry = body.retry.unwrap_or_default();
        let verification = body
            .verification
            .into_iter()
            .map(|step| {
                use pb::verification_step::Kind;
                let kind = match step.0 {
                    VerificationBody::FileExists(path) => Kind::FileExists(path),
                    VerificationBody::CommandSucceeds { argv, timeout_ms } => {
                        Kind::CommandSucceeds(pb::CommandCheck { argv, timeout_ms })
                    }
                    VerificationBody::TestPasses { argv, timeout_ms } => {
                        Kind::TestPasses(pb::CommandCheck { argv, timeout_ms })
                    }
                    VerificationBody::GitClean(flag) => Kind::GitClean(flag),
                    VerificationBody::OutputContains(pattern) => Kind::OutputContains(pb::OutputPattern {
                        pattern: Some(match pattern {
                            PatternBody::Text(text) => pb::output_pattern::Pattern::Text(text),
                            PatternBody::Regex(regex) => pb::output_pattern::Pattern::Regex(regex),
                        }),
                    }),
                    VerificationBody::HttpOk(url) => Kind::HttpOk(url),
                    VerificationBody::LlmJudge { model } => Kind::LlmJudge(pb::LlmJudge { model }),
                };
                pb::VerificationStep { kind: Some(kind) }
            })
            .collect();
        Ok(pb::TaskSpec {
            name: body.name,
            idempotency_key: body.idempotency_key,
            priority,
            tier,
            work: Some(pb::Work { kind: Some(kind) }),
            context: Some(pb::TaskContext {
                repository: context.repository,
                branch: context.branch,
                files: context.files,
                env: context.env,
                notes: context.notes,
                environment: context.environment,
            }),
            success_criteria: body.success_criteria,
            verification,
            limits: Some(pb::Limits {
                timeout_ms: given("limits.timeout_ms", limits.timeout_ms)?,
                deadline_unix_ms: given("limits.deadline_unix_ms", limits.deadline_unix_ms)?,
                max_attempts: given("limits.max_attempts", limits.max_attempts)?,
                max_tokens: given("limits.max_tokens", limits.max_tokens)?,
                max_cost_micros: given("limits.max_cost_micros", limits.max_cost_micros)?,
                max_output_bytes: given("limits.max_output_bytes", limits.max_output_bytes)?,
                max_memory_bytes: given("limits.max_memory_bytes", limits.max_memory_bytes)?,
                max_pids: given("limits.max_pids", limits.max_pids)?,
            }),
            placement: Some(pb::Placement {
                tags: placement.tags,
                host: placement.host,
                model: placement.model,
                local_only: placement.local_only,
            }),
            depends_on: body.depends_on,
            labels: body.labels,
            retry: Some(pb::RetryPolicy {
                backoff_base_ms: given("retry.backoff_base_ms", retry.backoff_base_ms)?,
                backoff_max_ms: given("retry.backoff_max_ms", retry.backoff_max_ms)?,
                retry_on_exit_codes: retry.retry_on_exit_codes,
            }),
            // HTTP takes it from the `traceparent` header.
            traceparent: String::new(),
        })
    }
}

/// A submit body already parsed as JSON (a workflow step's task), into a validated domain spec
/// with the hub's defaults: the same checks as `POST /api/v1/tasks`.
pub fn task_spec_from_value(
    body: serde_json::Value,
    defaults: &crate::domain::SpecDefaults,
) -> Result<crate::domain::TaskSpec, Error> {
    let body: SubmitBody = serde_json::from_value(body).map_err(|err| Error(err.to_string()))?;
    let spec = pb::TaskSpec::try_from(body)?;
    Ok(crate::wire::spec_from_pb(spec, defaults)?)
}

/// Reads one submit body (the JSON of `POST /api/v1/tasks`) into the wire contract's spec.
/// Validation happens where the spec is submitted; this only checks the format. `hubctl submit
/// --from-file` uses it, so a file line and an HTTP body are the same thing.
pub fn spec_from_json(json: &str) -> Result<pb::TaskSpec, Error> {
    let body: SubmitBody = serde_json::from_str(json).map_err(|err| Error(err.to_string()))?;
    pb::TaskSpec::try_from(body)
}

/// A verification step written as a flag (`hubctl submit --verify`, a workflow step's `verify:`)
/// as the JSON API takes it: `KIND[=ARG]`. Commands are split on whitespace, with '...' and
/// "..." quoting.
pub fn verify_flag(s: &str) -> Result<serde_json::Value, String> {
    let (kind, arg) = match s.split_once('=') {
        Some((kind, arg)) => (kind.trim(), Some(arg)),
        None => (s.trim(), None),
    };
    let needs =
        |what: &str| arg.filter(|a| !a.trim().is_empty()).ok_or_else(|| format!("{kind} needs {what}: {kind}=..."));
    Ok(match kind {
        "file_exists" => serde_json::json!({ "file_exists": needs("a path")? }),
        "command_succeeds" | "test_passes" => {
            let argv = split_words(needs("a command")?)?;
            serde_json::json!({ kind: { "argv": argv } })
        }
        "git_clean" if arg.is_none() => serde_json::json!("git_clean"),
        "output_contains" => serde_json::json!({ "output_contains": { "text": needs("the text")? } }),
        "output_matches" => serde_json::json!({ "output_contains": { "regex": needs("a regex")? } }),
        "http_ok" => serde_json::json!({ "http_ok": needs("a URL")? }),
        "llm_judge" => serde_json::json!({ "llm_judge": { "model": arg.unwrap_or_default().trim() } }),
        "git_clean" => return Err("git_clean takes no argument".into()),
        other => {
            return Err(format!(
                "unknown check {other:?}: use file_exists, command_succeeds, test_passes, git_clean, output_contains, output_matches, http_ok or llm_judge"
            ));
        }
    })
}

/// Words split on whitespace; '...' and "..." keep spaces inside one word.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in {text:?}"));
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}
