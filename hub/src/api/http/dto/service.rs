//! Service work and where a running service stands.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{CommandDto, ShellDto};
use crate::domain::{Probe, ProbeCheck, ServiceStatus, ServiceWork, Task, Work};

/// `{"service": {...}}`: a shell command's fields with the service's ports, probes and restarts.
#[derive(Serialize, Debug, PartialEq)]
pub struct ServiceWorkDto {
    #[serde(flatten)]
    pub run: ShellDto,
    pub ports: Vec<String>,
    pub readiness: Option<ProbeDto>,
    pub liveness: Option<ProbeDto>,
    pub restart: RestartDto,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct ProbeDto {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbeDto>,
    /// The port's name; `""`: the first port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub start_period_ms: u64,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failure_threshold: u32,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct HttpProbeDto {
    pub port: String,
    pub path: String,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct RestartDto {
    pub policy: &'static str,
    pub limit: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl From<&ServiceWork> for ServiceWorkDto {
    fn from(service: &ServiceWork) -> ServiceWorkDto {
        let restart = &service.restart;
        ServiceWorkDto {
            run: ShellDto::from(&service.run),
            ports: service.ports.clone(),
            readiness: service.readiness.as_ref().map(ProbeDto::from),
            liveness: service.liveness.as_ref().map(ProbeDto::from),
            restart: RestartDto {
                policy: if restart.never { "never" } else { "on-failure" },
                limit: restart.limit.unwrap_or(agentcom_types::domain::SERVICE_RESTART_LIMIT),
                backoff_base_ms: restart.backoff_base_ms.unwrap_or(agentcom_types::domain::SERVICE_BACKOFF_BASE_MS),
                backoff_max_ms: restart.backoff_max_ms.unwrap_or(agentcom_types::domain::SERVICE_BACKOFF_MAX_MS),
            },
        }
    }
}

impl From<&Probe> for ProbeDto {
    fn from(probe: &Probe) -> ProbeDto {
        let timing = probe.timing();
        let (mut http, mut tcp, mut command) = (None, None, None);
        match &probe.check {
            ProbeCheck::Http { port, path } => {
                http = Some(HttpProbeDto { port: port.clone().unwrap_or_default(), path: path.clone() })
            }
            ProbeCheck::Tcp { port } => tcp = Some(port.clone().unwrap_or_default()),
            ProbeCheck::Command(line) => command = Some(line.clone()),
        }
        ProbeDto {
            http,
            tcp,
            command,
            start_period_ms: timing.start_period_ms,
            interval_ms: timing.interval_ms,
            timeout_ms: timing.timeout_ms,
            failure_threshold: timing.failure_threshold,
        }
    }
}

/// A running service as its sidecar last reported it (`task.service`).
#[derive(Serialize, Debug, PartialEq)]
pub struct ServiceStatusDto {
    pub state: &'static str,
    pub ports: BTreeMap<String, u16>,
    pub restarts: u32,
    pub evidence: String,
    pub started_unix_ms: i64,
    pub ready_unix_ms: Option<i64>,
}

impl From<&ServiceStatus> for ServiceStatusDto {
    fn from(status: &ServiceStatus) -> ServiceStatusDto {
        ServiceStatusDto {
            state: status.state.as_str(),
            ports: status.ports.clone(),
            restarts: status.restarts,
            evidence: status.evidence.clone(),
            started_unix_ms: status.started_unix_ms,
            ready_unix_ms: status.ready_unix_ms,
        }
    }
}

/// One entry of `GET /api/v1/services`: a service task that has not ended, with where it runs.
#[derive(Serialize, Debug, PartialEq)]
pub struct ServiceDto {
    /// The task's id.
    pub id: String,
    /// The task's name (its step's in a workflow run), or its command.
    pub name: String,
    /// The task's state while it is not running yet (`queued`, ...), else the service's.
    pub state: &'static str,
    pub host: Option<String>,
    pub sidecar_id: Option<String>,
    pub ports: BTreeMap<String, u16>,
    /// `http://HOST:PORT` of its first port, once it has one.
    pub url: Option<String>,
    pub restarts: u32,
    pub evidence: String,
    pub started_unix_ms: Option<i64>,
    pub ready_unix_ms: Option<i64>,
    /// The workflow run it belongs to, if any.
    pub run_id: Option<String>,
}

impl ServiceDto {
    /// `host` is the hostname of the task's sidecar, when it is known.
    pub fn of(task: &Task, host: Option<String>) -> ServiceDto {
        let status = task.service.as_deref();
        let first = match &task.spec.work {
            Work::Service(work) => work.ports.first().and_then(|name| status?.ports.get(name).copied()),
            _ => None,
        };
        let name = match (&task.spec.name, &task.spec.work) {
            (name, _) if !name.is_empty() => name.clone(),
            (_, Work::Service(work)) => match &ShellDto::from(&work.run).command {
                CommandDto::Argv(argv) => argv.join(" "),
                CommandDto::Script(script) => script.clone(),
            },
            _ => String::new(),
        };
        let url = match (first, &host) {
            (Some(port), Some(host)) => Some(format!("http://{host}:{port}")),
            _ => None,
        };
        ServiceDto {
            id: task.id.to_string(),
            name,
            state: match (task.state.is_terminal(), status) {
                (false, Some(status)) => status.state.as_str(),
                _ => task.state.as_str(),
            },
            host,
            sidecar_id: task.sidecar_id.clone(),
            ports: status.map(|s| s.ports.clone()).unwrap_or_default(),
            url,
            restarts: status.map_or(0, |s| s.restarts),
            evidence: status.map(|s| s.evidence.clone()).unwrap_or_default(),
            started_unix_ms: status.map(|s| s.started_unix_ms),
            ready_unix_ms: status.and_then(|s| s.ready_unix_ms),
            run_id: task.spec.labels.get("workflow_run").cloned(),
        }
    }
}
