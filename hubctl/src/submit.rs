//! `hubctl submit`: its flags, and the `POST /api/v1/tasks` body they make.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub(crate) struct SubmitArgs {
    /// urgent, high, normal or low (interactive is the gateway's lane, dispatched first).
    #[arg(long, default_value = "normal")]
    pub(crate) priority: String,
    /// trivial, standard or complex (inferred when left out).
    #[arg(long)]
    pub(crate) tier: Option<String>,
    /// A name to show in listings.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Kill the task after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Working directory on the sidecar.
    #[arg(long)]
    pub(crate) cwd: Option<String>,
    /// Environment variable for the task, NAME=VALUE (repeatable). Stored with the task and shown
    /// by the API: use --secret-env for secrets.
    #[arg(long = "env", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    /// A variable the sidecar fills in from its own --secret NAME=FILE (repeatable); the value
    /// never passes through the hub.
    #[arg(long = "secret-env", value_name = "NAME")]
    pub(crate) secret_env: Vec<String>,
    /// Memory the task's processes may use together, in bytes (cgroup memory.max).
    #[arg(long)]
    pub(crate) max_memory_bytes: Option<u64>,
    /// Processes the task may have at once (cgroup pids.max).
    #[arg(long)]
    pub(crate) max_pids: Option<u64>,
    /// Output kept per stream, in bytes.
    #[arg(long)]
    pub(crate) max_output_bytes: Option<u64>,
    /// Attempts before the task is dead-lettered (lost sidecars, and exit codes given to --retry-on-exit).
    #[arg(long)]
    pub(crate) max_attempts: Option<u32>,
    /// Retry when the command exits with this code (repeatable); other failures are final.
    #[arg(long = "retry-on-exit")]
    pub(crate) retry_on_exit: Vec<i32>,
    /// Run only after this task succeeded (repeatable); cancelled if it fails for good.
    #[arg(long = "after")]
    pub(crate) after: Vec<String>,
    /// A second submit with the same key returns the first task instead of a new one.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Dead-letter the task as expired if it has not started within this long (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) deadline: Option<Duration>,
    /// An LLM prompt instead of a command; with --wait the reply streams to stdout.
    #[arg(long, conflicts_with = "command")]
    pub(crate) prompt: Option<String>,
    /// An agent goal instead of a command: an agent (Claude Code) works on it in a workspace of
    /// --repo, and its changes come back as a diff and a commit on agentcom/TASK_ID.
    #[arg(long, conflicts_with_all = ["command", "prompt"], requires = "repo")]
    pub(crate) agent: Option<String>,
    /// The repository the agent (or a command) works in: a path or URL the sidecar allows
    /// (agentcom-sidecar --repo-allow).
    #[arg(long)]
    pub(crate) repo: Option<String>,
    /// The branch or commit of --repo to start from [default: its default branch].
    #[arg(long, requires = "repo")]
    pub(crate) branch: Option<String>,
    /// Rounds of fixing after a failed --verify, each given what failed [default: 2 with
    /// --agent, 0 with --prompt].
    #[arg(long, conflicts_with = "command")]
    pub(crate) fix_rounds: Option<u32>,
    /// The system prompt (with --prompt).
    #[arg(long, requires = "prompt")]
    pub(crate) system: Option<String>,
    /// The model (with --prompt) [default: the sidecar's choice].
    #[arg(long, requires = "prompt")]
    pub(crate) model: Option<String>,
    /// Most tokens to generate (with --prompt).
    #[arg(long, requires = "prompt")]
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (with --prompt).
    #[arg(long, requires = "prompt")]
    pub(crate) temperature: Option<f32>,
    /// Private work: never send it to a cloud provider (the Claude API, a hosted OpenAI API).
    #[arg(long)]
    pub(crate) local_only: bool,
    /// Budget in US dollars (e.g. 0.05): LLM work stops there and fails as budget_exceeded,
    /// keeping its output so far.
    #[arg(long, value_parser = parse_dollars)]
    pub(crate) max_cost: Option<u64>,
    /// Budget in tokens, read and written together: LLM work stops there like at --max-cost.
    #[arg(long)]
    pub(crate) max_total_tokens: Option<u64>,
    /// Submit every line of this file (JSON lines, each a `POST /api/v1/tasks` body; `-` reads
    /// stdin) over one stream, printing each task's id in line order once it is durable.
    #[arg(long, conflicts_with_all = ["command", "prompt", "wait"])]
    pub(crate) from_file: Option<std::path::PathBuf>,
    /// A check the work must pass, run by the sidecar after it (repeatable, in order):
    /// file_exists=PATH, 'command_succeeds=CMD ARGS', 'test_passes=CMD ARGS', git_clean,
    /// output_contains=TEXT, output_matches=REGEX, http_ok=URL (loopback), llm_judge[=MODEL] (a
    /// model judges the result against --criterion, after the others pass). A failed check fails
    /// the task as verification_failed.
    #[arg(long = "verify", value_name = "KIND[=ARG]", value_parser = crate::work::parse_verify)]
    pub(crate) verify: Vec<Value>,
    /// A success criterion (repeatable): what done means, for people and for llm_judge.
    #[arg(long = "criterion", value_name = "TEXT")]
    pub(crate) criteria: Vec<String>,
    /// Stream the output and exit with the task's exit code.
    #[arg(long)]
    pub(crate) wait: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

/// Dollars (`0.05`) as millionths of a dollar.
fn parse_dollars(text: &str) -> Result<u64, String> {
    let dollars: f64 = text.parse().map_err(|_| format!("{text:?} is not an amount of dollars such as 0.05"))?;
    if !dollars.is_finite() || dollars <= 0.0 || dollars > 1e9 {
        return Err(format!("{text:?}: give an amount of dollars above 0"));
    }
    Ok((dollars * 1e6).round() as u64)
}

pub(crate) fn submit_body(args: &SubmitArgs) -> anyhow::Result<Value> {
    let mut body = json!({ "priority": args.priority });
    match (&args.prompt, args.command.is_empty()) {
        _ if args.agent.is_some() => {
            let mut agent = json!({ "goal": args.agent, "repository": args.repo });
            if let Some(branch) = &args.branch {
                agent["branch"] = json!(branch);
            }
            if let Some(rounds) = args.fix_rounds {
                agent["fix_rounds"] = json!(rounds);
            }
            body["agent"] = agent;
        }
        (Some(prompt), true) => {
            let mut llm = json!({ "prompt": prompt });
            if let Some(system) = &args.system {
                llm["system"] = json!(system);
            }
            if let Some(model) = &args.model {
                llm["model"] = json!(model);
            }
            if let Some(max) = args.max_tokens {
                llm["max_tokens"] = json!(max);
            }
            if let Some(t) = args.temperature {
                llm["temperature"] = json!(t);
            }
            if let Some(rounds) = args.fix_rounds {
                llm["fix_rounds"] = json!(rounds);
            }
            body["llm"] = llm;
        }
        (None, false) => {
            let mut shell = json!({ "argv": args.command });
            if let Some(cwd) = &args.cwd {
                shell["cwd"] = json!(cwd);
            }
            if !args.env.is_empty() {
                shell["env"] =
                    args.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>().into();
            }
            if !args.secret_env.is_empty() {
                shell["secret_env"] = json!(args.secret_env);
            }
            body["shell"] = shell;
        }
        (None, true) => {
            bail!("nothing to run: give a command after `--` (hubctl submit -- echo hello), --prompt or --agent")
        }
        (Some(_), false) => bail!("give a command or --prompt, not both"),
    }
    if let (Some(repo), None) = (&args.repo, &args.agent) {
        let mut context = json!({ "repository": repo });
        if let Some(branch) = &args.branch {
            context["branch"] = json!(branch);
        }
        body["context"] = context;
    }
    if let Some(tier) = &args.tier {
        body["tier"] = json!(tier);
    }
    if args.local_only {
        body["placement"] = json!({ "local_only": true });
    }
    if let Some(name) = &args.name {
        body["name"] = json!(name);
    }
    let mut limits = serde_json::Map::new();
    if let Some(timeout) = args.timeout {
        limits.insert("timeout_ms".into(), json!(timeout.as_millis().max(1) as u64));
    }
    if let Some(max) = args.max_output_bytes {
        limits.insert("max_output_bytes".into(), json!(max));
    }
    if let Some(max) = args.max_attempts {
        limits.insert("max_attempts".into(), json!(max));
    }
    if let Some(max) = args.max_memory_bytes {
        limits.insert("max_memory_bytes".into(), json!(max));
    }
    if let Some(max) = args.max_pids {
        limits.insert("max_pids".into(), json!(max));
    }
    if let Some(micros) = args.max_cost {
        limits.insert("max_cost_micros".into(), json!(micros));
    }
    if let Some(tokens) = args.max_total_tokens {
        limits.insert("max_tokens".into(), json!(tokens));
    }
    if let Some(deadline) = args.deadline {
        limits.insert("deadline_unix_ms".into(), json!(crate::now_ms() + deadline.as_millis() as i64));
    }
    if !limits.is_empty() {
        body["limits"] = limits.into();
    }
    if !args.retry_on_exit.is_empty() {
        body["retry"] = json!({ "retry_on_exit_codes": args.retry_on_exit });
    }
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    if !args.after.is_empty() {
        body["depends_on"] = json!(args.after);
    }
    if !args.verify.is_empty() {
        body["verification"] = json!(args.verify);
    }
    if !args.criteria.is_empty() {
        body["success_criteria"] = json!(args.criteria);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_needs_exactly_one_kind_of_work() {
        let args = |command: Vec<&str>, prompt: Option<&str>| SubmitArgs {
            priority: "normal".into(),
            tier: None,
            name: None,
            timeout: Some(Duration::from_secs(2)),
            cwd: None,
            env: vec![("A".into(), "1".into())],
            secret_env: vec!["TOKEN".into()],
            max_memory_bytes: Some(1 << 30),
            max_pids: None,
            max_output_bytes: None,
            max_attempts: None,
            retry_on_exit: vec![75],
            idempotency_key: Some("k".into()),
            after: vec!["01ARZ3NDEKTSV4RRFFQ69G5FAV".into()],
            deadline: None,
            from_file: None,
            prompt: prompt.map(String::from),
            system: prompt.map(|_| "be brief".to_owned()),
            model: None,
            max_tokens: prompt.map(|_| 64),
            temperature: None,
            local_only: prompt.is_some(),
            max_cost: prompt.map(|_| 50_000),
            max_total_tokens: None,
            verify: Vec::new(),
            criteria: Vec::new(),
            agent: None,
            repo: None,
            branch: None,
            fix_rounds: None,
            wait: false,
            command: command.into_iter().map(String::from).collect(),
        };
        let body = submit_body(&args(vec!["echo", "hi"], None)).unwrap();
        assert_eq!(body["shell"]["argv"], json!(["echo", "hi"]));
        assert_eq!(body["shell"]["env"]["A"], "1");
        assert_eq!(body["shell"]["secret_env"], json!(["TOKEN"]));
        assert_eq!(body["limits"]["max_memory_bytes"], 1 << 30);
        assert_eq!(body["limits"]["timeout_ms"], 2000);
        assert_eq!(body["retry"]["retry_on_exit_codes"], json!([75]));
        assert_eq!(body["idempotency_key"], "k");
        assert_eq!(body["depends_on"], json!(["01ARZ3NDEKTSV4RRFFQ69G5FAV"]));
        assert!(submit_body(&args(vec![], None)).is_err());
        let llm = submit_body(&args(vec![], Some("hi"))).unwrap();
        assert_eq!(llm["llm"], json!({ "prompt": "hi", "system": "be brief", "max_tokens": 64 }));
        assert_eq!(llm["placement"], json!({ "local_only": true }));
        assert_eq!(llm["limits"]["max_cost_micros"], 50_000);
        let fixing = SubmitArgs { fix_rounds: Some(2), ..args(vec![], Some("hi")) };
        assert_eq!(submit_body(&fixing).unwrap()["llm"]["fix_rounds"], 2);
        assert_eq!((parse_dollars("0.05"), parse_dollars("2")), (Ok(50_000), Ok(2_000_000)));
        assert!(parse_dollars("-1").is_err() && parse_dollars("$1").is_err() && parse_dollars("inf").is_err());
        let agent = SubmitArgs {
            agent: Some("fix it".into()),
            repo: Some("/srv/repos/app".into()),
            branch: Some("main".into()),
            fix_rounds: Some(3),
            verify: vec![json!({"test_passes": {"argv": ["cargo", "test"]}})],
            ..args(vec![], None)
        };
        let body = submit_body(&agent).unwrap();
        assert_eq!(
            body["agent"],
            json!({"goal": "fix it", "repository": "/srv/repos/app", "branch": "main", "fix_rounds": 3})
        );
        assert_eq!(body["verification"], json!([{"test_passes": {"argv": ["cargo", "test"]}}]));
        assert!(body["shell"].is_null() && body["context"].is_null());
        let in_repo = SubmitArgs { repo: Some("/srv/repos/app".into()), ..args(vec!["make"], None) };
        assert_eq!(submit_body(&in_repo).unwrap()["context"], json!({"repository": "/srv/repos/app"}));
    }
}
