//! Service work: a command that runs until it is stopped, with ports the sidecar reserves for
//! it, a readiness and a liveness probe, and restarts on failure; and where a running service
//! stands, as its sidecar reports it.

use std::collections::BTreeMap;

use super::{ShellWork, UnixMs};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceWork {
    /// The command, its directory, environment and secrets, as a shell task's.
    pub run: ShellWork,
    /// Port names: each gets a free port, passed as `PORT` (the first) and `PORT_<NAME>`.
    pub ports: Vec<String>,
    /// Ready at its first success; `None`: ready once started.
    pub readiness: Option<Probe>,
    /// Checked once ready: failures past the threshold end the run, which restarts by policy.
    pub liveness: Option<Probe>,
    pub restart: ServiceRestart,
}

/// A check of a service and how often and how patiently it is made (as Kubernetes' probes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub check: ProbeCheck,
    /// Failures before this do not count. Unset: 30 s.
    pub start_period_ms: Option<u64>,
    /// Unset: 2 s.
    pub interval_ms: Option<u64>,
    /// Unset: 2 s.
    pub timeout_ms: Option<u64>,
    /// Failures in a row that count. Unset: 3.
    pub failure_threshold: Option<u32>,
}

/// Restarts a failing service gets when its policy sets none.
pub const SERVICE_RESTART_LIMIT: u32 = 5;
pub const SERVICE_BACKOFF_BASE_MS: u64 = 1_000;
pub const SERVICE_BACKOFF_MAX_MS: u64 = 60_000;

/// A probe's timing with the defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTimingMs {
    pub start_period_ms: u64,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failure_threshold: u32,
}

impl Probe {
    pub fn timing(&self) -> ProbeTimingMs {
        ProbeTimingMs {
            start_period_ms: self.start_period_ms.unwrap_or(30_000),
            interval_ms: self.interval_ms.unwrap_or(2_000).max(1),
            timeout_ms: self.timeout_ms.unwrap_or(2_000).max(1),
            failure_threshold: self.failure_threshold.unwrap_or(3).max(1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    /// `GET http://127.0.0.1:PORT/PATH` answers 2xx or 3xx; `port` is a port name, `None` the
    /// first port.
    Http { port: Option<String>, path: String },
    /// A TCP connect to the named port (`None`: the first) on loopback.
    Tcp { port: Option<String> },
    /// A shell line run in the service's directory, with its ports; exit 0 passes.
    Command(String),
}

impl ProbeCheck {
    /// The port this check reaches, if any: `Some(None)` for the first port.
    pub fn port(&self) -> Option<Option<&str>> {
        match self {
            ProbeCheck::Http { port, .. } | ProbeCheck::Tcp { port } => Some(port.as_deref()),
            ProbeCheck::Command(_) => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRestart {
    /// `false`: a failed service stays ended (`policy: never`).
    pub never: bool,
    /// Unset: 5.
    pub limit: Option<u32>,
    /// Unset: 1 s.
    pub backoff_base_ms: Option<u64>,
    /// Unset: 60 s.
    pub backoff_max_ms: Option<u64>,
}

/// Where a service stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// Started, not ready yet.
    Starting,
    Ready,
    /// Was ready; its liveness probe fails.
    Unhealthy,
    /// Ended, and waits out its backoff before it starts again.
    Restarting,
    /// Ended for good: stopped, or failed past its restart policy.
    Stopped,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Ready => "ready",
            ServiceState::Unhealthy => "unhealthy",
            ServiceState::Restarting => "restarting",
            ServiceState::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<ServiceState> {
        Some(match text {
            "starting" => ServiceState::Starting,
            "ready" => ServiceState::Ready,
            "unhealthy" => ServiceState::Unhealthy,
            "restarting" => ServiceState::Restarting,
            "stopped" => ServiceState::Stopped,
            _ => return None,
        })
    }
}

/// A running service as its sidecar last reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    pub state: ServiceState,
    pub ports: BTreeMap<String, u16>,
    /// Restarts so far.
    pub restarts: u32,
    /// What the last failed probe or exit said; empty when nothing failed.
    pub evidence: String,
    /// When the current run of it started.
    pub started_unix_ms: UnixMs,
    /// When it became ready, if it has.
    pub ready_unix_ms: Option<UnixMs>,
}

impl ServiceWork {
    /// A service with every field set: for the round trips and the documented shape.
    pub fn example() -> ServiceWork {
        let mut run = ShellWork {
            command: super::ShellCommand::Script("python3 app.py".into()),
            cwd: Some("shop".into()),
            env: BTreeMap::new(),
            secret_env: vec!["API_KEY".into()],
        };
        run.env.insert("MODE".into(), "dev".into());
        ServiceWork {
            run,
            ports: vec!["web".into(), "admin".into()],
            readiness: Some(Probe {
                check: ProbeCheck::Http { port: Some("web".into()), path: "/healthz".into() },
                start_period_ms: Some(10_000),
                interval_ms: Some(500),
                timeout_ms: Some(1_000),
                failure_threshold: Some(5),
            }),
            liveness: Some(Probe {
                check: ProbeCheck::Tcp { port: Some("admin".into()) },
                start_period_ms: None,
                interval_ms: None,
                timeout_ms: None,
                failure_threshold: None,
            }),
            restart: ServiceRestart { never: false, limit: Some(3), backoff_base_ms: Some(200), backoff_max_ms: None },
        }
    }
}
