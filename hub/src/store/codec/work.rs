//! A task's work in the stored format: shell, LLM, agent and service work (with its probes).

use super::{known, pb};
use crate::domain::*;

fn shell_into(shell: ShellWork) -> pb::Shell {
    pb::Shell {
        command: Some(match shell.command {
            ShellCommand::Argv(items) => pb::shell::Command::Argv(pb::Argv { items }),
            ShellCommand::Script(script) => pb::shell::Command::Script(script),
        }),
        cwd: shell.cwd,
        env: shell.env,
        secret_env: shell.secret_env,
    }
}

fn shell_from(shell: pb::Shell) -> Result<ShellWork, String> {
    Ok(ShellWork {
        command: match shell.command.ok_or("shell work has no command")? {
            pb::shell::Command::Argv(argv) => ShellCommand::Argv(argv.items),
            pb::shell::Command::Script(script) => ShellCommand::Script(script),
        },
        cwd: shell.cwd,
        env: shell.env,
        secret_env: shell.secret_env,
    })
}

fn probe_into(probe: Probe) -> pb::Probe {
    let check = match probe.check {
        ProbeCheck::Http { port, path } => pb::probe::Check::Http(pb::HttpProbe { port, path }),
        ProbeCheck::Tcp { port } => pb::probe::Check::Tcp(port.unwrap_or_default()),
        ProbeCheck::Command(line) => pb::probe::Check::Command(line),
    };
    pb::Probe {
        check: Some(check),
        start_period_ms: probe.start_period_ms,
        interval_ms: probe.interval_ms,
        timeout_ms: probe.timeout_ms,
        failure_threshold: probe.failure_threshold,
    }
}

fn probe_from(probe: pb::Probe) -> Result<Probe, String> {
    let check = match probe.check.ok_or("a probe has no check")? {
        pb::probe::Check::Http(http) => ProbeCheck::Http { port: http.port, path: http.path },
        pb::probe::Check::Tcp(port) => ProbeCheck::Tcp { port: Some(port).filter(|p| !p.is_empty()) },
        pb::probe::Check::Command(line) => ProbeCheck::Command(line),
    };
    Ok(Probe {
        check,
        start_period_ms: probe.start_period_ms,
        interval_ms: probe.interval_ms,
        timeout_ms: probe.timeout_ms,
        failure_threshold: probe.failure_threshold,
    })
}

pub(super) fn work_into(work: Work) -> pb::spec::Work {
    match work {
        Work::Shell(shell) => pb::spec::Work::Shell(shell_into(shell)),
        Work::Service(service) => pb::spec::Work::Service(pb::Service {
            run: Some(shell_into(service.run)),
            ports: service.ports,
            readiness: service.readiness.map(probe_into),
            liveness: service.liveness.map(probe_into),
            restart_never: service.restart.never,
            restart_limit: service.restart.limit,
            backoff_base_ms: service.restart.backoff_base_ms,
            backoff_max_ms: service.restart.backoff_max_ms,
        }),
        // A redacted prompt is not stored: the record keeps what the request asked of the model.
        Work::Llm(llm) if llm.redact => pb::spec::Work::Llm(pb::Llm {
            model: llm.model,
            max_tokens: llm.max_tokens,
            temperature: llm.temperature,
            json: llm.json,
            keep_alive: llm.keep_alive,
            fix_rounds: llm.fix_rounds,
            redact: true,
            ..pb::Llm::default()
        }),
        Work::Llm(llm) => pb::spec::Work::Llm(pb::Llm {
            prompt: llm.prompt,
            system: llm.system,
            model: llm.model,
            max_tokens: llm.max_tokens,
            messages: llm
                .messages
                .into_iter()
                .map(|m| pb::Turn {
                    role: m.role.number(),
                    content: m.content,
                    tool_calls: m.tool_calls.into_iter().map(tool_call_to).collect(),
                    tool_call_id: m.tool_call_id,
                })
                .collect(),
            temperature: llm.temperature,
            stop: llm.stop,
            json: llm.json,
            keep_alive: llm.keep_alive,
            fix_rounds: llm.fix_rounds,
            redact: false,
            tools: llm
                .tools
                .into_iter()
                .map(|t| pb::ToolSpec { name: t.name, description: t.description, parameters_json: t.parameters })
                .collect(),
        }),
        Work::Agent(agent) => pb::spec::Work::Agent(pb::Agent {
            goal: agent.goal,
            repository: agent.repository,
            branch: agent.branch,
            fix_rounds: agent.fix_rounds,
        }),
    }
}

pub(super) fn work_from(work: Option<pb::spec::Work>) -> Result<Work, String> {
    Ok(match work.ok_or("the spec has no work")? {
        pb::spec::Work::Shell(shell) => Work::Shell(shell_from(shell)?),
        pb::spec::Work::Service(service) => Work::Service(Box::new(ServiceWork {
            run: shell_from(service.run.ok_or("service work has no command")?)?,
            ports: service.ports,
            readiness: service.readiness.map(probe_from).transpose()?,
            liveness: service.liveness.map(probe_from).transpose()?,
            restart: ServiceRestart {
                never: service.restart_never,
                limit: service.restart_limit,
                backoff_base_ms: service.backoff_base_ms,
                backoff_max_ms: service.backoff_max_ms,
            },
        })),
        pb::spec::Work::Llm(llm) => Work::Llm(LlmWork {
            prompt: llm.prompt,
            system: llm.system,
            messages: llm
                .messages
                .into_iter()
                .map(|m| {
                    Ok(ChatMessage {
                        role: known("role", m.role)?,
                        content: m.content,
                        tool_calls: m.tool_calls.into_iter().map(tool_call_from).collect(),
                        tool_call_id: m.tool_call_id,
                    })
                })
                .collect::<Result<_, String>>()?,
            model: llm.model,
            max_tokens: llm.max_tokens,
            temperature: llm.temperature,
            stop: llm.stop,
            json: llm.json,
            keep_alive: llm.keep_alive,
            fix_rounds: llm.fix_rounds,
            redact: llm.redact,
            tools: llm
                .tools
                .into_iter()
                .map(|t| ToolSpec { name: t.name, description: t.description, parameters: t.parameters_json })
                .collect(),
        }),
        pb::spec::Work::Agent(agent) => Work::Agent(AgentWork {
            goal: agent.goal,
            repository: agent.repository,
            branch: agent.branch,
            fix_rounds: agent.fix_rounds,
        }),
    })
}

fn tool_call_to(call: ToolCall) -> pb::ToolCall {
    pb::ToolCall { id: call.id, name: call.name, arguments_json: call.arguments }
}

fn tool_call_from(call: pb::ToolCall) -> ToolCall {
    ToolCall { id: call.id, name: call.name, arguments: call.arguments_json }
}
