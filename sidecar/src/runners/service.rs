//! Service work: a command that runs until it is stopped. The runner reserves the service's
//! ports (held across its restarts, given back when it ends), starts it contained like any
//! shell task, calls its readiness probe until it is ready and then its liveness probe, and
//! restarts it by its policy when it fails. It reports where the service stands (`starting`,
//! `ready`, `unhealthy`, `restarting`, `stopped`) on each change and every few seconds, so a
//! hub that restarted learns it again. The decisions are `crate::service`'s; this module does
//! the I/O.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentcom_types::domain::{
    Exit, Outcome, Probe, ProbeCheck, SERVICE_BACKOFF_BASE_MS, SERVICE_BACKOFF_MAX_MS, SERVICE_RESTART_LIMIT,
    ServiceState, ServiceStatus, ServiceWork, Stream, Work,
};
use tokio_util::sync::CancellationToken;

use super::{failed_to_start, shell};
use crate::attempt::TaskKey;
use crate::job::{Attempt, Quiet, Runner, Running, Sink};
use crate::service::{Health, Next, PortBook, Ports, ProbeTiming, ProbeTracker, RestartPolicy, Restarts};

/// How often a running service's state is said again, changed or not.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// The first readiness check comes this soon after the start, not a whole interval later.
const FIRST_PROBE_AFTER: Duration = Duration::from_millis(100);

pub struct ServiceRunner {
    pub settings: shell::Settings,
    pub ports: Arc<Mutex<PortBook>>,
}

impl Runner for ServiceRunner {
    fn capability(&self) -> &'static str {
        "service"
    }

    fn run(&self, attempt: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let (settings, book) = (self.settings.clone(), self.ports.clone());
        Box::pin(async move {
            let Work::Service(work) = &attempt.assignment.spec.work else {
                return failed_to_start(format!(
                    "{} work is not service work",
                    attempt.assignment.spec.work.capability()
                ));
            };
            let ports = match book.lock().expect("port book lock poisoned").reserve(&work.ports) {
                Ok(ports) => ports,
                Err(error) => return failed_to_start(format!("ports: {error}")),
            };
            let outcome = serve(&attempt, work, &ports, &settings, sink, cancel).await;
            book.lock().expect("port book lock poisoned").release(&ports);
            outcome
        })
    }
}

/// How one run of the service ended.
enum RunEnd {
    /// Its process exited (or was killed by a stop).
    Exited(Outcome),
    /// Its liveness probe failed past the threshold; the process was ended.
    Unhealthy(Outcome, String),
    /// Its readiness probe failed past the threshold before it was ever ready.
    NeverReady(Outcome, String),
}

async fn serve(
    attempt: &Attempt,
    work: &ServiceWork,
    ports: &Ports,
    settings: &shell::Settings,
    sink: Arc<dyn Sink>,
    cancel: CancellationToken,
) -> Outcome {
    let limits = &attempt.assignment.spec.limits;
    let mut env: Vec<(String, String)> = work.run.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.extend(ports.env());
    env.push(("AGENTCOM_ATTEMPT".to_owned(), attempt.assignment.attempt.to_string()));
    env.sort();
    let job = shell::ShellJob {
        key: attempt.key.clone(),
        program: match &work.run.command {
            agentcom_types::domain::ShellCommand::Argv(argv) => shell::Program::Argv(argv.clone()),
            agentcom_types::domain::ShellCommand::Script(script) => shell::Program::Script(script.clone()),
        },
        cwd: work.run.cwd.as_ref().map(Into::into),
        env,
        secret_env: work.run.secret_env.clone(),
        // A service runs until it is stopped; `timeout_ms` bounds its whole life instead.
        timeout: None,
        max_output_bytes: usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX),
        limits: crate::contain::Limits { max_memory_bytes: limits.max_memory_bytes, max_pids: limits.max_pids },
    };
    let life = limits.timeout_ms.map(Duration::from_millis);
    let started = Instant::now();
    let mut restarts = Restarts::new(restart_policy(work));
    let mut status = ServiceStatus {
        state: ServiceState::Starting,
        ports: ports.0.iter().cloned().collect(),
        restarts: 0,
        evidence: String::new(),
        started_unix_ms: crate::now_ms(),
        ready_unix_ms: None,
    };
    let cap = job.max_output_bytes;
    let mut kept = (Vec::new(), Vec::new());
    let mut shift = (0u64, 0u64);
    loop {
        status.started_unix_ms = crate::now_ms();
        status.ready_unix_ms = None;
        status.state = if work.readiness.is_some() { ServiceState::Starting } else { ServiceState::Ready };
        if status.state == ServiceState::Ready {
            status.ready_unix_ms = Some(status.started_unix_ms);
        }
        sink.service(&status);
        let run_cancel = cancel.child_token();
        let shifted: Arc<dyn Sink> = Arc::new(Offset { inner: sink.clone(), stdout: shift.0, stderr: shift.1 });
        let end = run_once(&job, work, ports, settings, shifted, &run_cancel, &mut status, &sink, life, started).await;
        let mut never_ready = false;
        let (mut outcome, failed, evidence) = match end {
            RunEnd::Exited(outcome) => {
                let failed = !matches!(outcome.exit, Exit::Code(0)) || outcome.error.is_some();
                let evidence = ended_evidence(&outcome);
                (outcome, failed, evidence)
            }
            RunEnd::Unhealthy(outcome, evidence) => (outcome, true, format!("unhealthy: {evidence}")),
            // Not restarted: what keeps it from ready (a wrong port, a broken route) is still
            // there on the next start.
            RunEnd::NeverReady(mut outcome, evidence) => {
                never_ready = true;
                outcome.error = Some(format!("service never became ready: {evidence}"));
                (outcome, true, format!("never ready: {evidence}"))
            }
        };
        shift = (shift.0 + outcome.stdout_total_bytes, shift.1 + outcome.stderr_total_bytes);
        for (into, from) in [(&mut kept.0, &outcome.stdout), (&mut kept.1, &outcome.stderr)] {
            let room = cap.saturating_sub(into.len());
            into.extend_from_slice(&from[..from.len().min(room)]);
        }
        status.evidence = evidence.clone();
        let stopped = cancel.is_cancelled();
        let out_of_time = life.is_some_and(|life| started.elapsed() >= life);
        let next = if stopped || out_of_time || never_ready {
            Next::Stop(String::new())
        } else {
            restarts.ended(Duration::from_millis(outcome.duration_ms), failed)
        };
        match next {
            Next::Restart { after, count } => {
                status.state = ServiceState::Restarting;
                status.restarts = count;
                sink.service(&status);
                let note = format!("[service: {evidence}; restart {count} in {} ms]\n", after.as_millis());
                sink.output(Stream::Stderr, shift.1, note.as_bytes());
                shift.1 += note.len() as u64;
                let room = cap.saturating_sub(kept.1.len());
                kept.1.extend_from_slice(&note.as_bytes()[..note.len().min(room)]);
                tokio::select! {
                    _ = tokio::time::sleep(after) => {}
                    _ = cancel.cancelled() => {}
                }
                if !cancel.is_cancelled() {
                    continue;
                }
                outcome.exit = Exit::Signal(15);
            }
            Next::Stop(why) => {
                if !why.is_empty() && failed && outcome.error.is_none() {
                    outcome.error = Some(format!("service failed: {evidence}; {why}"));
                }
            }
        }
        status.state = ServiceState::Stopped;
        sink.service(&status);
        if out_of_time && !stopped {
            outcome.timed_out = true;
        }
        (outcome.stdout, outcome.stderr) = kept;
        (outcome.stdout_total_bytes, outcome.stderr_total_bytes) = shift;
        outcome.duration_ms = started.elapsed().as_millis() as u64;
        return outcome;
    }
}

/// One run of the service's process, with its probes, until it ends one way or another.
#[allow(clippy::too_many_arguments)]
async fn run_once(
    job: &shell::ShellJob,
    work: &ServiceWork,
    ports: &Ports,
    settings: &shell::Settings,
    sink: Arc<dyn Sink>,
    run_cancel: &CancellationToken,
    status: &mut ServiceStatus,
    reports: &Arc<dyn Sink>,
    life: Option<Duration>,
    born: Instant,
) -> RunEnd {
    let process = shell::run(job, settings, sink, run_cancel.clone());
    tokio::pin!(process);
    let started = Instant::now();
    let (mut probe, mut tracker) = match &work.readiness {
        Some(readiness) => (Some(readiness), ProbeTracker::new(timing(readiness))),
        None => (work.liveness.as_ref(), ProbeTracker::ready(work.liveness.as_ref().map(timing).unwrap_or_default())),
    };
    let mut next_probe = tokio::time::Instant::now() + FIRST_PROBE_AFTER;
    let mut next_report = tokio::time::Instant::now() + REPORT_EVERY;
    let mut deadline = life.map(|life| tokio::time::Instant::now() + life.saturating_sub(born.elapsed()));
    let mut failing: Option<(bool, String)> = None;
    loop {
        tokio::select! {
            outcome = &mut process => {
                return match failing {
                    Some((true, evidence)) => RunEnd::NeverReady(outcome, evidence),
                    Some((false, evidence)) => RunEnd::Unhealthy(outcome, evidence),
                    None => RunEnd::Exited(outcome),
                };
            }
            _ = tokio::time::sleep_until(next_probe), if probe.is_some() && failing.is_none() => {
                let check = probe.expect("probed only with a probe");
                let result = call(check, ports, job, settings).await;
                let before = tracker.health();
                let health = tracker.record(started.elapsed(), result);
                next_probe = tokio::time::Instant::now() + Duration::from_millis(check.timing().interval_ms);
                match health {
                    Health::Ready if before != Health::Ready => {
                        status.state = ServiceState::Ready;
                        status.ready_unix_ms = Some(crate::now_ms());
                        status.evidence.clear();
                        reports.service(status);
                        // Ready: the liveness probe, if any, watches it from now on.
                        probe = work.liveness.as_ref();
                        tracker = ProbeTracker::ready(probe.map(timing).unwrap_or_default());
                    }
                    Health::Unhealthy | Health::NeverReady => {
                        let evidence = tracker.last_evidence.clone().unwrap_or_default();
                        status.state = ServiceState::Unhealthy;
                        status.evidence = evidence.clone();
                        reports.service(status);
                        failing = Some((health == Health::NeverReady, evidence));
                        run_cancel.cancel();
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(next_report) => {
                reports.service(status);
                next_report = tokio::time::Instant::now() + REPORT_EVERY;
            }
            _ = async { tokio::time::sleep_until(deadline.expect("checked")).await }, if deadline.is_some() => {
                // Once: the process is ending now.
                deadline = None;
                run_cancel.cancel();
            }
        }
    }
}

/// Calls a probe once: `Ok` when it passes, else what it saw.
async fn call(probe: &Probe, ports: &Ports, job: &shell::ShellJob, settings: &shell::Settings) -> Result<(), String> {
    let timeout = Duration::from_millis(probe.timing().timeout_ms);
    let port_of = |name: Option<&str>| -> Result<u16, String> {
        match name {
            None => ports.0.first().map(|(_, port)| *port).ok_or_else(|| "the service has no port".to_owned()),
            Some(name) => ports
                .0
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, port)| *port)
                .ok_or_else(|| format!("the service has no port named {name}")),
        }
    };
    match &probe.check {
        ProbeCheck::Http { port, path } => {
            let port = port_of(port.as_deref())?;
            let url = format!("http://127.0.0.1:{port}{path}");
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(timeout)
                .build()
                .map_err(|err| format!("GET {url}: {err}"))?;
            match client.get(&url).send().await {
                Ok(response) if response.status().is_success() || response.status().is_redirection() => Ok(()),
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let body: String = body.chars().take(200).collect();
                    Err(format!("GET {url}: {status} {}", body.trim()))
                }
                Err(err) if err.is_timeout() => Err(format!("GET {url}: no answer in {} ms", timeout.as_millis())),
                Err(err) if err.is_connect() => {
                    Err(format!("GET {url}: connection refused (nothing listens on {port})"))
                }
                Err(err) => Err(format!("GET {url}: {err}")),
            }
        }
        ProbeCheck::Tcp { port } => {
            let port = port_of(port.as_deref())?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(format!("connect 127.0.0.1:{port}: {err}")),
                Err(_) => Err(format!("connect 127.0.0.1:{port}: no answer in {} ms", timeout.as_millis())),
            }
        }
        ProbeCheck::Command(line) => {
            // Contained like the service, under a key of its own, recorded nowhere.
            let check = shell::ShellJob {
                key: TaskKey {
                    task_id: format!("{}-probe", job.key.task_id),
                    lease_generation: job.key.lease_generation,
                },
                program: shell::Program::Script(line.clone()),
                timeout: Some(timeout),
                max_output_bytes: 4096,
                ..job.clone()
            };
            let settings = shell::Settings { state: None, ..settings.clone() };
            let outcome = shell::run(&check, &settings, Arc::new(Quiet), CancellationToken::new()).await;
            match (outcome.exit, outcome.timed_out, &outcome.error) {
                (_, _, Some(error)) => Err(format!("{line}: {error}")),
                (_, true, _) => Err(format!("{line}: timed out after {} ms", timeout.as_millis())),
                (Exit::Code(0), _, _) => Ok(()),
                (exit, _, _) => {
                    let said = String::from_utf8_lossy(if outcome.stderr.is_empty() {
                        &outcome.stdout
                    } else {
                        &outcome.stderr
                    });
                    let said: String = said.trim().chars().take(300).collect();
                    Err(format!("{line}: {} {said}", exit_words(exit)))
                }
            }
        }
    }
}

fn exit_words(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Signal(signal) => format!("killed by signal {signal}"),
        Exit::Unknown => "ended without an exit status".to_owned(),
    }
}

/// What a run's end says: its exit, and the last line it wrote to stderr.
fn ended_evidence(outcome: &Outcome) -> String {
    if let Some(error) = &outcome.error {
        return error.clone();
    }
    let last = String::from_utf8_lossy(&outcome.stderr);
    let last = last.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
    let last: String = last.chars().take(300).collect();
    match last.is_empty() {
        true => exit_words(outcome.exit),
        false => format!("{}: {last}", exit_words(outcome.exit)),
    }
}

fn timing(probe: &Probe) -> ProbeTiming {
    let t = probe.timing();
    ProbeTiming {
        start_period: Duration::from_millis(t.start_period_ms),
        interval: Duration::from_millis(t.interval_ms),
        timeout: Duration::from_millis(t.timeout_ms),
        failure_threshold: t.failure_threshold,
    }
}

fn restart_policy(work: &ServiceWork) -> RestartPolicy {
    let restart = &work.restart;
    let base = Duration::from_millis(restart.backoff_base_ms.unwrap_or(SERVICE_BACKOFF_BASE_MS));
    RestartPolicy {
        on_failure: !restart.never,
        limit: restart.limit.unwrap_or(SERVICE_RESTART_LIMIT),
        backoff_base: base,
        backoff_max: Duration::from_millis(restart.backoff_max_ms.unwrap_or(SERVICE_BACKOFF_MAX_MS)).max(base),
        ..RestartPolicy::default()
    }
}

/// A sink for one run of the service: its output goes after the runs before it.
struct Offset {
    inner: Arc<dyn Sink>,
    stdout: u64,
    stderr: u64,
}

impl Sink for Offset {
    fn started(&self, pid: u32) {
        self.inner.started(pid);
    }

    fn output(&self, stream: Stream, offset: u64, data: &[u8]) {
        let base = if stream == Stream::Stdout { self.stdout } else { self.stderr };
        self.inner.output(stream, base + offset, data);
    }
}
