//! `TaskSpec::validate`: the sizes and required fields every edge checks before a spec goes
//! further, each refusal naming the field at fault.

use std::collections::BTreeMap;

use super::limits::{self, *};
use super::{ChatRole, Error, LlmWork, Pattern, ShellCommand, TaskSpec, Verification, Work};

impl TaskSpec {
    /// Checks sizes and required fields. Every edge calls this before a spec goes further.
    pub fn validate(&self) -> Result<(), Error> {
        check_len("name", &self.name, MAX_NAME_BYTES)?;
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() {
                return Err(Error::invalid("idempotency_key", "must not be empty when given"));
            }
            check_len("idempotency_key", key, MAX_KEY_BYTES)?;
        }
        match &self.work {
            Work::Shell(shell) => check_shell(shell, &SHELL)?,
            Work::Service(service) => {
                check_service(service)?;
                if !self.verification.is_empty() {
                    return Err(Error::invalid("verification", "service work takes none: its probes check it"));
                }
            }
            Work::Llm(llm) => {
                if llm.prompt.is_empty() && llm.messages.is_empty() {
                    return Err(Error::invalid("work.llm.prompt", "must not be empty (or give messages)"));
                }
                check_len("work.llm.prompt", &llm.prompt, MAX_PROMPT_BYTES)?;
                check_len("work.llm.system", &llm.system, MAX_PROMPT_BYTES)?;
                check_len("work.llm.model", &llm.model, MAX_NAME_BYTES)?;
                if llm.messages.len() > MAX_LIST_ITEMS {
                    return Err(Error::invalid(
                        "work.llm.messages",
                        format!("at most {MAX_LIST_ITEMS} messages allowed"),
                    ));
                }
                check_tools(llm)?;
                let bytes: usize = llm
                    .messages
                    .iter()
                    .map(|m| m.content.len() + m.tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>())
                    .sum::<usize>()
                    + llm.prompt.len();
                if bytes > MAX_PROMPT_BYTES {
                    return Err(Error::invalid(
                        "work.llm.messages",
                        format!("are {bytes} bytes with the prompt, at most {MAX_PROMPT_BYTES} allowed"),
                    ));
                }
                if let Some(t) = llm.temperature
                    && !(0.0..=2.0).contains(&t)
                {
                    return Err(Error::invalid("work.llm.temperature", "must be between 0 and 2"));
                }
                if llm.stop.len() > 16 {
                    return Err(Error::invalid("work.llm.stop", "at most 16 stop sequences allowed"));
                }
                llm.stop.iter().try_for_each(|stop| check_len("work.llm.stop", stop, MAX_NAME_BYTES))?;
                if let Some(keep_alive) = &llm.keep_alive {
                    check_len("work.llm.keep_alive", keep_alive, 32)?;
                }
            }
            Work::Agent(agent) => {
                if agent.goal.is_empty() {
                    return Err(Error::invalid("work.agent.goal", "must not be empty"));
                }
                check_len("work.agent.goal", &agent.goal, MAX_PROMPT_BYTES)?;
                check_len("work.agent.repository", &agent.repository, MAX_TEXT_BYTES)?;
                check_len("work.agent.branch", &agent.branch, MAX_NAME_BYTES)?;
            }
        }
        check_len("context.repository", &self.context.repository, MAX_TEXT_BYTES)?;
        check_len("context.branch", &self.context.branch, MAX_NAME_BYTES)?;
        check_len("context.notes", &self.context.notes, MAX_PROMPT_BYTES)?;
        check_list("context.files", &self.context.files)?;
        check_env("context.env", &self.context.env)?;
        if self.context.environment != super::Environment::Workspace {
            if matches!(self.work, Work::Llm(_)) {
                return Err(Error::invalid("context.environment", "is for work in a repository, not llm work"));
            }
            if self.workspace_repository().is_none() {
                return Err(Error::invalid("context.environment", "needs context.repository"));
            }
        }
        check_list("success_criteria", &self.success_criteria)?;
        if self.verification.len() > MAX_LIST_ITEMS {
            return Err(Error::invalid("verification", format!("at most {MAX_LIST_ITEMS} steps allowed")));
        }
        for step in &self.verification {
            check_step(step)?;
        }
        if self.verification.iter().any(|s| matches!(s, Verification::LlmJudge { .. }))
            && self.success_criteria.is_empty()
        {
            return Err(Error::invalid(
                "verification.llm_judge",
                "judges the result against success_criteria: give some",
            ));
        }
        let limits = &self.limits;
        if let Some(timeout) = limits.timeout_ms
            && (timeout == 0 || timeout > MAX_TIMEOUT_MS)
        {
            return Err(Error::invalid("limits.timeout_ms", format!("must be between 1 and {MAX_TIMEOUT_MS}")));
        }
        if limits.max_attempts == 0 || limits.max_attempts > MAX_ATTEMPTS {
            return Err(Error::invalid("limits.max_attempts", format!("must be between 1 and {MAX_ATTEMPTS}")));
        }
        if limits.max_output_bytes == 0 || limits.max_output_bytes > MAX_OUTPUT_BYTES {
            return Err(Error::invalid("limits.max_output_bytes", format!("must be between 1 and {MAX_OUTPUT_BYTES}")));
        }
        if let Some(bytes) = limits.max_memory_bytes
            && !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&bytes)
        {
            return Err(Error::invalid(
                "limits.max_memory_bytes",
                format!("must be between {MIN_MEMORY_BYTES} and {MAX_MEMORY_BYTES}"),
            ));
        }
        if let Some(pids) = limits.max_pids
            && !(1..=MAX_PIDS).contains(&pids)
        {
            return Err(Error::invalid("limits.max_pids", format!("must be between 1 and {MAX_PIDS}")));
        }
        check_list("placement.tags", &self.placement.tags)?;
        check_len("placement.host", &self.placement.host, MAX_NAME_BYTES)?;
        check_len("placement.model", &self.placement.model, MAX_NAME_BYTES)?;
        if self.depends_on.len() > MAX_LIST_ITEMS {
            return Err(Error::invalid("depends_on", format!("at most {MAX_LIST_ITEMS} dependencies allowed")));
        }
        check_env("labels", &self.labels)?;
        let retry = &self.retry;
        if retry.backoff_base_ms == 0 || retry.backoff_base_ms > MAX_BACKOFF_MS {
            return Err(Error::invalid("retry.backoff_base_ms", format!("must be between 1 and {MAX_BACKOFF_MS}")));
        }
        if retry.backoff_max_ms < retry.backoff_base_ms || retry.backoff_max_ms > MAX_BACKOFF_MS {
            return Err(Error::invalid(
                "retry.backoff_max_ms",
                format!("must be between backoff_base_ms and {MAX_BACKOFF_MS}"),
            ));
        }
        if retry.retry_on_exit_codes.len() > 64 {
            return Err(Error::invalid("retry.retry_on_exit_codes", "at most 64 codes allowed"));
        }
        if let Some(code) = retry.retry_on_exit_codes.iter().find(|code| !(0..=255).contains(*code)) {
            return Err(Error::invalid("retry.retry_on_exit_codes", format!("{code} is not an exit code (0 to 255)")));
        }
        Ok(())
    }
}

/// A portable environment variable name.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 256
}

/// The fields a shell command's refusals name: a shell task's, or a service's `run`.
struct ShellFields {
    argv: &'static str,
    script: &'static str,
    cwd: &'static str,
    env: &'static str,
    secret_env: &'static str,
}

const SHELL: ShellFields = ShellFields {
    argv: "work.shell.argv",
    script: "work.shell.script",
    cwd: "work.shell.cwd",
    env: "work.shell.env",
    secret_env: "work.shell.secret_env",
};

const SERVICE_RUN: ShellFields = ShellFields {
    argv: "work.service.run.argv",
    script: "work.service.run.script",
    cwd: "work.service.run.cwd",
    env: "work.service.run.env",
    secret_env: "work.service.run.secret_env",
};

fn check_shell(shell: &super::ShellWork, fields: &ShellFields) -> Result<(), Error> {
    match &shell.command {
        ShellCommand::Argv(argv) => {
            if argv.is_empty() || argv[0].is_empty() {
                return Err(Error::invalid(fields.argv, "needs a program name"));
            }
            if argv.len() > MAX_ARGV_ITEMS {
                return Err(Error::invalid(
                    fields.argv,
                    format!("has {} items, at most {MAX_ARGV_ITEMS} allowed", argv.len()),
                ));
            }
            let bytes: usize = argv.iter().map(|a| a.len()).sum();
            if bytes > MAX_COMMAND_BYTES {
                return Err(Error::invalid(
                    fields.argv,
                    format!("is {bytes} bytes, at most {MAX_COMMAND_BYTES} allowed"),
                ));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(Error::invalid(fields.argv, "must not contain NUL bytes"));
            }
        }
        ShellCommand::Script(script) => {
            if script.trim().is_empty() {
                return Err(Error::invalid(fields.script, "must not be empty"));
            }
            check_len(fields.script, script, MAX_COMMAND_BYTES)?;
            if script.contains('\0') {
                return Err(Error::invalid(fields.script, "must not contain NUL bytes"));
            }
        }
    }
    if let Some(cwd) = &shell.cwd {
        check_len(fields.cwd, cwd, MAX_TEXT_BYTES)?;
    }
    check_env(fields.env, &shell.env)?;
    if shell.secret_env.len() > MAX_ENV_ITEMS {
        return Err(Error::invalid(fields.secret_env, format!("at most {MAX_ENV_ITEMS} names allowed")));
    }
    for name in &shell.secret_env {
        if !is_env_name(name) {
            return Err(Error::invalid(
                fields.secret_env,
                format!("{name:?} is not a variable name (letters, digits and '_', not starting with a digit)"),
            ));
        }
        if shell.env.contains_key(name) {
            return Err(Error::invalid(fields.secret_env, format!("{name} is also set in env")));
        }
    }
    Ok(())
}

/// The most ports one service may ask for.
const MAX_SERVICE_PORTS: usize = 16;

fn check_service(service: &super::ServiceWork) -> Result<(), Error> {
    check_shell(&service.run, &SERVICE_RUN)?;
    if service.ports.len() > MAX_SERVICE_PORTS {
        return Err(Error::invalid("work.service.ports", format!("at most {MAX_SERVICE_PORTS} ports allowed")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in &service.ports {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(Error::invalid(
                "work.service.ports",
                format!("{name:?} is not a port name (1 to 32 letters, digits, '-' or '_')"),
            ));
        }
        if !seen.insert(name.to_ascii_uppercase().replace('-', "_")) {
            return Err(Error::invalid("work.service.ports", format!("{name:?} is named twice (as PORT_ variables)")));
        }
    }
    for (field, probe) in [("work.service.readiness", &service.readiness), ("work.service.liveness", &service.liveness)]
    {
        let Some(probe) = probe else { continue };
        match &probe.check {
            super::ProbeCheck::Http { path, .. } if !path.starts_with('/') => {
                return Err(Error::invalid(field, format!("the http path {path:?} must start with '/'")));
            }
            super::ProbeCheck::Http { path, .. } => check_len(field, path, MAX_TEXT_BYTES)?,
            super::ProbeCheck::Command(line) if line.trim().is_empty() => {
                return Err(Error::invalid(field, "the command must not be empty"));
            }
            super::ProbeCheck::Command(line) => check_len(field, line, MAX_COMMAND_BYTES)?,
            super::ProbeCheck::Tcp { .. } => {}
        }
        match probe.check.port() {
            Some(None) if service.ports.is_empty() => {
                return Err(Error::invalid(field, "checks a port, and the service asks for none (set ports)"));
            }
            Some(Some(name)) if !service.ports.iter().any(|p| p == name) => {
                return Err(Error::invalid(field, format!("checks port {name:?}, which is not in ports")));
            }
            _ => {}
        }
        if probe.failure_threshold == Some(0) || probe.interval_ms == Some(0) {
            return Err(Error::invalid(field, "interval and failure threshold must be above 0"));
        }
    }
    Ok(())
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::invalid(field, format!("is {} bytes, at most {max} allowed", value.len())));
    }
    Ok(())
}

fn check_list(field: &'static str, items: &[String]) -> Result<(), Error> {
    if items.len() > limits::MAX_LIST_ITEMS {
        return Err(Error::invalid(
            field,
            format!("has {} items, at most {} allowed", items.len(), limits::MAX_LIST_ITEMS),
        ));
    }
    items.iter().try_for_each(|item| check_len(field, item, limits::MAX_TEXT_BYTES))
}

/// Tools and the turns that call and answer them: a tool has a name of letters, digits, `_` and
/// `-` and a JSON object for its schema; only assistant turns call, only tool turns answer, and
/// each answer names a call.
fn check_tools(llm: &LlmWork) -> Result<(), Error> {
    if llm.tools.len() > MAX_TOOLS {
        return Err(Error::invalid("work.llm.tools", format!("at most {MAX_TOOLS} tools allowed")));
    }
    let is_object = |json: &str| serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| v.is_object());
    for tool in &llm.tools {
        let good_name = !tool.name.is_empty()
            && tool.name.len() <= 64
            && tool.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !good_name {
            let why = format!("{:?} is not a tool name (1 to 64 letters, digits, _ or -)", tool.name);
            return Err(Error::invalid("work.llm.tools.name", why));
        }
        check_len("work.llm.tools.description", &tool.description, MAX_TEXT_BYTES)?;
        check_len("work.llm.tools.parameters", &tool.parameters, MAX_TOOL_JSON_BYTES)?;
        if !is_object(&tool.parameters) {
            return Err(Error::invalid("work.llm.tools.parameters", format!("{}: not a JSON object", tool.name)));
        }
    }
    for message in &llm.messages {
        if !message.tool_calls.is_empty() && message.role != ChatRole::Assistant {
            return Err(Error::invalid("work.llm.messages.tool_calls", "only assistant turns call tools"));
        }
        if message.role == ChatRole::Tool && message.tool_call_id.is_empty() {
            return Err(Error::invalid("work.llm.messages.tool_call_id", "a tool turn must name the call it answers"));
        }
        for call in &message.tool_calls {
            check_len("work.llm.messages.tool_calls.id", &call.id, MAX_NAME_BYTES)?;
            check_len("work.llm.messages.tool_calls.name", &call.name, MAX_NAME_BYTES)?;
            if !is_object(&call.arguments) {
                return Err(Error::invalid("work.llm.messages.tool_calls.arguments", "not a JSON object"));
            }
        }
    }
    Ok(())
}

fn check_env(field: &'static str, env: &BTreeMap<String, String>) -> Result<(), Error> {
    if env.len() > limits::MAX_ENV_ITEMS {
        return Err(Error::invalid(
            field,
            format!("has {} entries, at most {} allowed", env.len(), limits::MAX_ENV_ITEMS),
        ));
    }
    let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > limits::MAX_ENV_BYTES {
        return Err(Error::invalid(field, format!("is {bytes} bytes, at most {} allowed", limits::MAX_ENV_BYTES)));
    }
    for key in env.keys() {
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::invalid(
                field,
                format!("{key:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
    }
    if env.values().any(|v| v.contains('\0')) {
        return Err(Error::invalid(field, "values must not contain NUL bytes"));
    }
    Ok(())
}

/// A verification step is checked as far as it can be without the sidecar's files: a path
/// that stays relative and inside the working directory, a command, a regex that compiles, a
/// loopback URL.
fn check_step(step: &Verification) -> Result<(), Error> {
    let field = match step {
        Verification::FileExists(_) => "verification.file_exists",
        Verification::CommandSucceeds { .. } => "verification.command_succeeds",
        Verification::TestPasses { .. } => "verification.test_passes",
        Verification::GitClean => "verification.git_clean",
        Verification::OutputContains(_) => "verification.output_contains",
        Verification::HttpOk(_) => "verification.http_ok",
        Verification::LlmJudge { .. } => "verification.llm_judge",
    };
    match step {
        Verification::FileExists(path) => {
            check_len(field, path, MAX_TEXT_BYTES)?;
            relative_inside(field, path)
        }
        Verification::CommandSucceeds { argv, timeout_ms } | Verification::TestPasses { argv, timeout_ms } => {
            if argv.is_empty() || argv[0].is_empty() {
                return Err(Error::invalid(field, "the command is empty"));
            }
            check_list(field, argv)?;
            if *timeout_ms > MAX_TIMEOUT_MS {
                return Err(Error::invalid(field, format!("timeout_ms must be at most {MAX_TIMEOUT_MS}")));
            }
            Ok(())
        }
        Verification::GitClean => Ok(()),
        Verification::OutputContains(Pattern::Text(text)) => {
            if text.is_empty() {
                return Err(Error::invalid(field, "the text is empty"));
            }
            check_len(field, text, MAX_TEXT_BYTES)
        }
        Verification::OutputContains(Pattern::Regex(regex)) => {
            check_len(field, regex, MAX_TEXT_BYTES)?;
            regex::RegexBuilder::new(regex)
                .size_limit(1 << 20)
                .build()
                .map(drop)
                .map_err(|err| Error::invalid(field, format!("the regex does not compile: {err}")))
        }
        Verification::HttpOk(url) => {
            check_len(field, url, MAX_TEXT_BYTES)?;
            loopback_url(url).map_err(|why| Error::invalid(field, why))
        }
        Verification::LlmJudge { model } => check_len(field, model, MAX_NAME_BYTES),
    }
}

/// A path relative to the working directory that does not climb out of it by its components
/// (symlinks are the sidecar's to resolve).
fn relative_inside(field: &'static str, path: &str) -> Result<(), Error> {
    let p = std::path::Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return Err(Error::invalid(field, "must be a path relative to the working directory"));
    }
    if p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(Error::invalid(field, "must stay inside the working directory (no `..`)"));
    }
    Ok(())
}

/// `http://` or `https://` to a loopback host (`localhost`, 127.0.0.0/8, `[::1]`), with an
/// optional port and path: verification may not reach out of the machine.
pub fn loopback_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must be an http:// or https:// URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not carry credentials".into());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(host, _)| host)
    };
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!("must be a loopback URL (localhost, 127.0.0.0/8 or [::1]), not {host:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChatMessage, ChatRole, LlmWork, ShellWork, SpecDefaults};

    fn shell(argv: &[&str]) -> TaskSpec {
        TaskSpec::shell(argv.iter().map(|s| s.to_string()).collect(), &SpecDefaults::default())
    }

    #[test]
    fn a_plain_shell_spec_is_valid() {
        assert_eq!(shell(&["echo", "hi"]).validate(), Ok(()));
    }

    #[test]
    fn bad_specs_name_the_field_at_fault() {
        let check = |mutate: &dyn Fn(&mut TaskSpec), field: &str| {
            let mut spec = shell(&["echo"]);
            mutate(&mut spec);
            let err = spec.validate().expect_err("spec should be refused");
            assert_eq!(err.field, field, "{err}");
        };
        check(&|s| s.work = shell(&[""]).work, "work.shell.argv");
        check(
            &|s| {
                s.work = Work::Shell(ShellWork {
                    command: ShellCommand::Argv(vec![]),
                    cwd: None,
                    env: BTreeMap::new(),
                    secret_env: Vec::new(),
                })
            },
            "work.shell.argv",
        );
        check(
            &|s| {
                s.work = Work::Shell(ShellWork {
                    command: ShellCommand::Script("  ".into()),
                    cwd: None,
                    env: BTreeMap::new(),
                    secret_env: Vec::new(),
                })
            },
            "work.shell.script",
        );
        check(&|s| s.name = "x".repeat(limits::MAX_NAME_BYTES + 1), "name");
        check(&|s| s.idempotency_key = Some(String::new()), "idempotency_key");
        check(&|s| s.limits.max_attempts = 0, "limits.max_attempts");
        check(&|s| s.limits.timeout_ms = Some(0), "limits.timeout_ms");
        check(&|s| s.limits.max_output_bytes = limits::MAX_OUTPUT_BYTES + 1, "limits.max_output_bytes");
        check(&|s| s.retry.backoff_base_ms = 0, "retry.backoff_base_ms");
        check(&|s| s.retry.backoff_max_ms = s.retry.backoff_base_ms - 1, "retry.backoff_max_ms");
        check(
            &|s| {
                if let Work::Shell(w) = &mut s.work {
                    w.env.insert("1BAD".into(), "x".into());
                }
            },
            "work.shell.env",
        );
        check(&|s| s.labels.insert("bad-key".into(), "v".into()).map(drop).unwrap_or(()), "labels");
        check(&|s| s.retry.retry_on_exit_codes = vec![1, -1], "retry.retry_on_exit_codes");
        check(&|s| s.retry.retry_on_exit_codes = vec![256], "retry.retry_on_exit_codes");
        check(&|s| s.limits.max_memory_bytes = Some(0), "limits.max_memory_bytes");
        check(&|s| s.limits.max_pids = Some(0), "limits.max_pids");
        let secret = |names: &[&str], env: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let env: BTreeMap<String, String> = env.iter().map(|n| (n.to_string(), "v".to_owned())).collect();
            move |s: &mut TaskSpec| {
                if let Work::Shell(w) = &mut s.work {
                    w.secret_env = names.clone();
                    w.env = env.clone();
                }
            }
        };
        check(&secret(&["1BAD"], &[]), "work.shell.secret_env");
        check(&secret(&["A=B"], &[]), "work.shell.secret_env");
        check(&secret(&["TOKEN"], &["TOKEN"]), "work.shell.secret_env");
        let mut spec = shell(&["echo"]);
        secret(&["API_TOKEN", "_X1"], &["OTHER"])(&mut spec);
        spec.validate().unwrap();
        check(&|s| s.work = Work::Llm(LlmWork::prompt("")), "work.llm.prompt");
        let llm = |change: fn(&mut LlmWork)| {
            move |s: &mut TaskSpec| {
                let mut work = LlmWork::prompt("hi");
                change(&mut work);
                s.work = Work::Llm(work);
            }
        };
        check(&llm(|w| w.temperature = Some(2.5)), "work.llm.temperature");
        check(&llm(|w| w.temperature = Some(f32::NAN)), "work.llm.temperature");
        check(&llm(|w| w.stop = vec!["x".into(); 17]), "work.llm.stop");
        check(&llm(|w| w.keep_alive = Some("x".repeat(33))), "work.llm.keep_alive");
        check(
            &llm(|w| w.messages = vec![ChatMessage::new(ChatRole::User, "x".repeat(limits::MAX_PROMPT_BYTES))]),
            "work.llm.messages",
        );
        // Messages alone are a conversation to continue: no prompt needed.
        let mut spec = shell(&["echo"]);
        llm(|w| {
            w.prompt.clear();
            w.messages = vec![ChatMessage::new(ChatRole::User, "hi")];
        })(&mut spec);
        spec.validate().unwrap();
        assert_eq!("system".parse::<ChatRole>().unwrap_err().field, "work.llm.messages.role");
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;
    use crate::domain::SpecDefaults;

    fn with(step: Verification) -> Result<(), Error> {
        let mut spec = TaskSpec::shell(vec!["true".into()], &SpecDefaults::default());
        spec.verification = vec![step];
        spec.validate()
    }

    #[test]
    fn verification_steps_are_checked_before_they_reach_a_sidecar() {
        let refused = |step: Verification, field: &str, why: &str| {
            let err = with(step).expect_err("refused");
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(why), "{err}");
        };
        assert_eq!(with(Verification::FileExists("out/report.txt".into())), Ok(()));
        refused(Verification::FileExists("/etc/passwd".into()), "verification.file_exists", "relative");
        refused(Verification::FileExists("a/../../x".into()), "verification.file_exists", "no `..`");
        refused(Verification::FileExists(String::new()), "verification.file_exists", "relative");
        let command = |argv: &[&str], timeout_ms| Verification::CommandSucceeds {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms,
        };
        assert_eq!(with(command(&["test", "-s", "out.txt"], 0)), Ok(()));
        refused(command(&[], 0), "verification.command_succeeds", "empty");
        refused(command(&["x"], MAX_TIMEOUT_MS + 1), "verification.command_succeeds", "timeout_ms");
        assert_eq!(with(Verification::OutputContains(Pattern::Regex(r"^ok \d+$".into()))), Ok(()));
        refused(Verification::OutputContains(Pattern::Regex("(".into())), "verification.output_contains", "compile");
        refused(Verification::OutputContains(Pattern::Text(String::new())), "verification.output_contains", "empty");
        for url in ["http://127.0.0.1:8080/health", "http://localhost/", "https://[::1]:9/x", "http://127.3.4.5"] {
            assert_eq!(with(Verification::HttpOk(url.into())), Ok(()), "{url}");
        }
        for url in ["http://example.com/", "http://10.0.0.1/", "ftp://127.0.0.1/", "http://user@127.0.0.1@evil/"] {
            refused(Verification::HttpOk(url.into()), "verification.http_ok", "must");
        }
    }
}
