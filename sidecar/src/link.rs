//! The sidecar's one stream to the hub: dial out, say hello, run what is assigned, report back,
//! and reconnect with jittered backoff whenever the hub goes away.
//!
//! Work keeps running while the link is down. Finished results wait in a queue and are sent
//! first on the next session; live output produced meanwhile is dropped (the result carries the
//! retained output in full). The hello of a new session lists what is still running, so the
//! hub can keep those leases.
//!
//! In detail:
//!
//! `link`: the stream to the hub, and the only place protobuf appears in the sidecar
//! (`agentcom_types::wire` converts). Before the first hello (`prepare`): containment set up and a
//! crash's leftovers killed. Hello (with the tasks still running and results not yet delivered, so
//! the hub keeps those leases, and the containment in use), welcome, heartbeats, assignments and
//! cancels; reconnects with jittered exponential backoff (through one `agentcom_link` dialer: the
//! identity's certificate and CA when enrolled, else a bearer token); a session ended with
//! `identity revoked` stops the sidecar (its work killed, exit status 78) instead; results are kept
//! until the hub says they are stored (`ResultStored`) and sent again first in every new session (a
//! result the hub cancels the lease of is dropped).
//!
//! A link down longer than the lease TTL abandons its running work without reporting it, so the hub
//! retries those tasks.
//!
//! Reports go out when they change and right after each join.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentcom_link::connect::{Dialer, HubUrl, channel};
use agentcom_link::tls::Pin;
use agentcom_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

use agentcom_types::domain::{AgentStep, Outcome, ServiceStatus, SpecDefaults, Stream, TaskId, TraceParent};
use agentcom_types::link::{Assignment, FromSidecar, Hello, RunningTask, ToSidecar};
use agentcom_types::wire::link::{self as wire, Refused};

use crate::job::{Attempt, Sink};
use crate::reports::Latest;
use crate::runners::{self, Runners};
use crate::{Config, Error, now_ms};

/// Most bytes a message may carry (a result holds up to the output cap per stream).
const MAX_MESSAGE_BYTES: usize = 160 * 1024 * 1024;
const OUTBOUND_CAPACITY: usize = 1024;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a stopping sidecar waits for cancelled work to report.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where a job reports: what it says goes to the hub as it is (`FromSidecar`), through the
/// link's queue of events.
struct JobSink {
    task_id: TaskId,
    lease_generation: u64,
    events: mpsc::Sender<FromSidecar>,
}

impl JobSink {
    fn progress_message(&self, blocked: bool, verifying: bool, message: String, step: Option<&AgentStep>) {
        let _ = self.events.try_send(FromSidecar::Progress {
            task_id: self.task_id,
            lease_generation: self.lease_generation,
            blocked,
            verifying,
            message,
            step: step.map(|step| Box::new(step.clone())),
            service: None,
        });
    }
}

impl Sink for JobSink {
    fn started(&self, pid: u32) {
        let _ = self.events.try_send(FromSidecar::Started {
            task_id: self.task_id,
            lease_generation: self.lease_generation,
            pid,
        });
    }

    fn output(&self, stream: Stream, offset: u64, data: &[u8]) {
        // Secrets this sidecar knows never leave it, not even in a task's own output.
        let data = agentcom_process::logging::redactor().mask(data).unwrap_or_else(|| data.to_vec());
        // Dropped when the link is backed up: the final outcome carries the output anyway.
        let _ = self.events.try_send(FromSidecar::Output {
            task_id: self.task_id,
            lease_generation: self.lease_generation,
            stream,
            offset,
            data,
        });
    }

    fn progress(&self, blocked: bool, message: &str) {
        self.progress_message(blocked, false, message.to_owned(), None);
    }

    fn step(&self, step: &AgentStep) {
        self.progress_message(false, false, format!("{} {}", step.tool, step.summary), Some(step));
    }

    fn verifying(&self) {
        self.progress_message(false, true, "verifying".to_owned(), None);
    }

    fn service(&self, status: &ServiceStatus) {
        // Dropped when the link is backed up: the runner says it again in a few seconds.
        let _ = self.events.try_send(FromSidecar::Progress {
            task_id: self.task_id,
            lease_generation: self.lease_generation,
            blocked: false,
            verifying: false,
            message: format!("service {}", status.state.as_str()),
            step: None,
            service: Some(Box::new(status.clone())),
        });
    }
}

/// A result the hub has not said is stored yet.
#[derive(Clone)]
struct Held {
    task_id: TaskId,
    lease_generation: u64,
    /// Masked already.
    outcome: Box<Outcome>,
}

impl Held {
    fn message(&self) -> pb::SidecarMessage {
        wire::from_sidecar_into_pb(FromSidecar::Finished {
            task_id: self.task_id,
            lease_generation: self.lease_generation,
            outcome: self.outcome.clone(),
        })
    }
}

struct RunningJob {
    lease_generation: u64,
    agent_id: String,
    cancel: CancellationToken,
    /// Given up after the link was down longer than the lease: its result is not reported, so the
    /// hub retries the task rather than recording a kill it caused by losing touch.
    abandoned: bool,
}

pub(crate) struct Link {
    config: Config,
    metrics: Arc<crate::metrics::Metrics>,
    runners: Runners,
    /// How the sidecar contains task processes, in its own words (sent in every hello).
    containment: String,
    running: HashMap<TaskId, RunningJob>,
    /// Results the hub has not said are stored (`ResultStored`), in the order they finished:
    /// sent at the start of every session, and kept until the hub has them durably, so neither
    /// a lost link nor a hub that crashed (or failed to commit) before storing one loses it.
    unacked: VecDeque<Held>,
    events_tx: mpsc::Sender<FromSidecar>,
    events_rx: mpsc::Receiver<FromSidecar>,
    /// The last session got as far as a welcome (so the next retry starts with a short backoff).
    joined: bool,
    /// When the link went down, while it is down.
    offline_since: Option<std::time::Instant>,
    /// The hub's lease TTL, from the last welcome.
    lease_ttl: Option<Duration>,
    /// Resource and model reports, kept by their reporters; `None` until `run` starts them.
    latest: Option<Latest>,
    /// Made at the first connect and kept (a `quic://` dialer keeps its endpoint).
    dialer: Option<Arc<Dialer>>,
    /// Drawn once: every hello of this process carries it (see `Hello.instance`).
    instance: u64,
}

enum SessionEnd {
    Lost(String),
    /// The hub revoked this sidecar's identity.
    Revoked(String),
    /// The hub ended the stream itself (it is shutting down or restarting).
    Closed,
    Stop,
}

impl Link {
    pub(crate) fn new(
        config: Config,
        runners: Runners,
        containment: String,
        latest: Latest,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Link {
        let (events_tx, events_rx) = mpsc::channel(4096);
        Link {
            metrics,
            config,
            runners,
            containment,
            running: HashMap::new(),
            unacked: VecDeque::new(),
            events_tx,
            events_rx,
            joined: false,
            offline_since: None,
            lease_ttl: None,
            latest: Some(latest),
            dialer: None,
            instance: rand::random::<u64>() | 1,
        }
    }

    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let stop = CancellationToken::new();
        let stop_on_shutdown = stop.clone();
        let shutdown = async move {
            shutdown.await;
            stop_on_shutdown.cancel();
        };
        tokio::pin!(shutdown);
        let mut backoff = BACKOFF_START;
        loop {
            let session = self.session(&stop);
            let end = tokio::select! {
                end = session => end,
                _ = &mut shutdown => SessionEnd::Stop,
            };
            self.metrics.connected(false);
            match end {
                SessionEnd::Stop => break,
                SessionEnd::Closed => {
                    self.joined = false;
                    backoff = BACKOFF_START;
                    info!(hub = self.config.hub_url, "the hub closed the stream; reconnecting");
                }
                SessionEnd::Revoked(reason) => {
                    error!(hub = self.config.hub_url, reason, "the hub revoked this sidecar; stopping");
                    self.stop_all().await?;
                    return Err(Error::Revoked(reason));
                }
                SessionEnd::Lost(reason) => {
                    if std::mem::take(&mut self.joined) {
                        backoff = BACKOFF_START;
                    }
                    warn!(hub = self.config.hub_url, reason, retry_in_ms = backoff.as_millis() as u64, "hub link down");
                }
            }
            // Full jitter: spread reconnects of many sidecars after a hub restart.
            let delay = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            self.offline_since.get_or_insert_with(std::time::Instant::now);
            loop {
                self.abandon_after_lease();
                let lease_lapses = async {
                    match (self.offline_since, self.lease_ttl) {
                        (Some(since), Some(ttl)) if self.running.values().any(|job| !job.abandoned) => {
                            tokio::time::sleep_until((since + ttl).into()).await
                        }
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = lease_lapses => {}
                    _ = &mut shutdown => return self.stop_all().await,
                    Some(event) = self.events_rx.recv() => self.offline_event(event),
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.stop_all().await
    }

    /// Cancels everything still running and waits (bounded) for the jobs to end.
    async fn stop_all(mut self) -> Result<(), Error> {
        for job in self.running.values() {
            job.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(FromSidecar::Finished { task_id, .. })) => {
                    self.running.remove(&task_id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        info!("sidecar stopped");
        Ok(())
    }

    fn offline_event(&mut self, event: FromSidecar) {
        if let FromSidecar::Finished { task_id, lease_generation, outcome } = event
            && self.running.remove(&task_id).is_some_and(|job| !job.abandoned)
        {
            self.unacked.push_back(held(task_id, lease_generation, outcome));
        }
    }

    /// Cut off longer than the lease: the hub has given this work to someone else by now, so
    /// stop it (fencing from this side).
    fn abandon_after_lease(&mut self) {
        let Some(since) = self.offline_since else { return };
        let Some(lease_ttl) = self.lease_ttl else { return };
        if since.elapsed() < lease_ttl {
            return;
        }
        for (task_id, job) in self.running.iter_mut().filter(|(_, job)| !job.abandoned) {
            warn!(
                task_id = %task_id,
                offline_ms = since.elapsed().as_millis() as u64,
                "cut off longer than the lease; stopping the task"
            );
            job.abandoned = true;
            job.cancel.cancel();
        }
        // Results waiting to be stored are for leases that have lapsed too.
        self.unacked.clear();
    }

    async fn connect(&mut self) -> Result<Channel, String> {
        let dialer = match &self.dialer {
            Some(dialer) => dialer.clone(),
            None => {
                let url = HubUrl::parse(&self.config.hub_url).map_err(|err| err.to_string())?;
                let (pin, identity) = match &self.config.identity {
                    Some(identity) => {
                        let pin = Pin::authority(identity.ca.clone(), "this sidecar's enrolment");
                        (Some(pin), Some(identity.certified_key()))
                    }
                    None => (self.config.ca_fingerprint.map(|ca| Pin::fingerprint(ca, "--ca-fingerprint")), None),
                };
                let dialer = Arc::new(Dialer::new(url, pin, identity.as_ref()).map_err(|err| err.to_string())?);
                self.dialer.insert(dialer).clone()
            }
        };
        channel(dialer).await.map_err(|err| format!("connect: {}", agentcom_link::error_chain(&err)))
    }

    async fn session(&mut self, stop: &CancellationToken) -> SessionEnd {
        let channel = match self.connect().await {
            Ok(channel) => channel,
            Err(reason) => return SessionEnd::Lost(reason),
        };
        let mut client = pb::agent_link_client::AgentLinkClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (outbound, outbound_rx) = mpsc::channel::<pb::SidecarMessage>(OUTBOUND_CAPACITY);
        let hello = Hello {
            sidecar_id: self.config.sidecar_id.clone(),
            hostname: self.config.hostname.clone(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            slots: self.config.slots,
            capabilities: self.runners.capabilities(),
            tags: self.config.tags.clone(),
            running: self.running_list(),
            containment: self.containment.clone(),
            instance: self.instance,
            repo_allow: self.runners.repositories(),
        };
        let _ = outbound.try_send(wire::hello_into_pb(hello));
        let mut request = tonic::Request::new(ReceiverStream::new(outbound_rx));
        // An enrolled sidecar is known by its certificate; a token is for the others.
        if self.config.identity.is_none() {
            let Ok(bearer) = MetadataValue::try_from(format!("Bearer {}", self.config.token)) else {
                return SessionEnd::Lost("the token contains characters a header cannot carry".into());
            };
            request.metadata_mut().insert("authorization", bearer);
        }
        let mut inbound = match client.session(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return ended(&status),
        };
        let welcome = match inbound.message().await {
            Ok(Some(message)) => match wire::welcome_from_pb(message) {
                Ok(welcome) => welcome,
                Err(_) => return SessionEnd::Lost("the hub did not send a welcome".into()),
            },
            Ok(None) => return SessionEnd::Lost("the hub did not send a welcome".into()),
            Err(status) => return ended(&status),
        };
        self.joined = true;
        self.metrics.connected(true);
        self.offline_since = None;
        self.lease_ttl = Some(welcome.lease_ttl);
        let interval = welcome.heartbeat_interval;
        info!(
            sidecar_id = welcome.sidecar_id,
            agents = welcome.agent_ids.len(),
            heartbeat_ms = interval.as_millis() as u64,
            "joined the hub"
        );

        // Results the hub has not stored yet go first (again, if an earlier session sent them).
        for held in self.unacked.clone() {
            if outbound.send(held.message()).await.is_err() {
                return SessionEnd::Lost("the stream closed while sending results".into());
            }
        }

        // An assignment's spec gets this sidecar's defaults where it leaves a limit out.
        let defaults =
            SpecDefaults { max_output_bytes: self.config.default_max_output_bytes as u64, ..SpecDefaults::default() };
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The latest reports go out now, and again each time they change.
        let mut latest = self.latest.clone();
        if let Some(latest) = &mut latest {
            latest.resources.mark_changed();
            latest.models.mark_changed();
        }
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.on_hub_message(wire::to_sidecar_from_pb(message, &defaults)),
                    Ok(None) => return SessionEnd::Closed,
                    Err(status) => return ended(&status),
                },
                Some(event) = self.events_rx.recv() => {
                    if let Err(end) = self.forward(event, &outbound).await {
                        return end;
                    }
                }
                Some(message) = next_report(&mut latest) => {
                    if outbound.try_send(wire::from_sidecar_into_pb(message)).is_err() {
                        debug!("outbound queue full; skipping a report");
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = FromSidecar::Heartbeat { sent_unix_ms: now_ms(), running: self.running_list() };
                    if outbound.try_send(wire::from_sidecar_into_pb(beat)).is_err() {
                        debug!("outbound queue full; skipping a heartbeat");
                    }
                }
                _ = stop.cancelled() => return SessionEnd::Stop,
            }
        }
    }

    /// What this sidecar still holds leases for: running jobs, and finished ones whose result
    /// has not reached the hub yet (so the hub keeps those leases and accepts the result).
    fn running_list(&self) -> Vec<RunningTask> {
        let running = self.running.iter().map(|(task_id, job)| RunningTask {
            task_id: *task_id,
            lease_generation: job.lease_generation,
            agent_id: job.agent_id.clone(),
        });
        let unacked = self.unacked.iter().map(|held| RunningTask {
            task_id: held.task_id,
            lease_generation: held.lease_generation,
            agent_id: String::new(),
        });
        running.chain(unacked).collect()
    }

    /// Sends what a job or a preload said. Live output and progress are dropped when the link
    /// is backed up; a result is kept until the hub has stored it.
    async fn forward(
        &mut self,
        event: FromSidecar,
        outbound: &mpsc::Sender<pb::SidecarMessage>,
    ) -> Result<(), SessionEnd> {
        let message = match event {
            FromSidecar::Output { .. } | FromSidecar::Progress { .. } => {
                let _ = outbound.try_send(wire::from_sidecar_into_pb(event));
                return Ok(());
            }
            FromSidecar::Finished { task_id, lease_generation, outcome } => {
                if self.running.remove(&task_id).is_some_and(|job| job.abandoned) {
                    return Ok(());
                }
                let held = held(task_id, lease_generation, outcome);
                let message = held.message();
                self.unacked.push_back(held);
                if outbound.send(message).await.is_err() {
                    return Err(SessionEnd::Lost("the stream closed while sending a result".into()));
                }
                return Ok(());
            }
            other => wire::from_sidecar_into_pb(other),
        };
        outbound.send(message).await.map_err(|_| SessionEnd::Lost("the stream closed".into()))
    }

    fn on_hub_message(&mut self, message: Result<ToSidecar, Refused>) {
        match message {
            Ok(ToSidecar::Assign(assignment)) => {
                self.start(assignment.task_id, assignment.lease_generation, Ok(*assignment))
            }
            // The task is failed at once, saying why, so the hub hears of it.
            Err(Refused::Assignment { task_id, lease_generation, error }) => {
                self.start(task_id, lease_generation, Err(error.to_string()))
            }
            Err(Refused::Message(error)) => warn!(error = %error, "ignoring a message from the hub"),
            Ok(ToSidecar::Cancel { task_id, lease_generation, reason }) => {
                if let Some(job) = self.running.get(&task_id)
                    && job.lease_generation <= lease_generation
                {
                    info!(task_id = %task_id, reason, "cancelling");
                    job.cancel.cancel();
                }
                // A result the hub will not take (its lease is gone): nothing to keep it for.
                self.unacked.retain(|held| !(held.task_id == task_id && held.lease_generation <= lease_generation));
            }
            Ok(ToSidecar::Stored { task_id, lease_generation }) => {
                self.unacked.retain(|held| !(held.task_id == task_id && held.lease_generation == lease_generation))
            }
            Ok(ToSidecar::Preload { endpoint_id, model, keep_alive }) => self.preload(endpoint_id, model, keep_alive),
            Ok(ToSidecar::Drain { deadline_unix_ms }) => match deadline_unix_ms {
                None => info!("cordoned by the hub: no new work; running tasks go on"),
                Some(deadline) => {
                    info!(deadline_unix_ms = deadline, "cordoned by the hub: tasks still running then are requeued")
                }
            },
        }
    }

    /// Loads a model on one of this sidecar's Ollama endpoints, as the hub asked (a pre-warm),
    /// then reports how it went and checks the endpoints at once, so the hub sees it warm.
    fn preload(&self, endpoint_id: String, model: String, keep_alive: Option<String>) {
        let Some(latest) = &self.latest else { return };
        let url = latest.models.borrow().as_ref().and_then(|endpoints| {
            let endpoint = endpoints.iter().find(|e| e.id == endpoint_id)?;
            (endpoint.kind == agentcom_types::fleet::EndpointKind::Ollama).then(|| endpoint.url.clone())
        });
        let (events, recheck) = (self.events_tx.clone(), latest.recheck.clone());
        tokio::spawn(async move {
            info!(endpoint_id, model, "pre-warming a model, as the hub asked");
            let loaded = match &url {
                Some(url) => {
                    agentcom_llm::preload_ollama(&agentcom_llm::client(), url, &model, keep_alive.as_deref()).await
                }
                None => Err(format!("no Ollama endpoint {endpoint_id} here")),
            };
            let preloaded = match loaded {
                Ok(took) => {
                    info!(endpoint_id, model, load_ms = took.as_millis() as u64, "pre-warmed a model");
                    FromSidecar::Preloaded { endpoint_id, model, load_ms: took.as_millis() as u64, error: None }
                }
                Err(error) => {
                    warn!(endpoint_id, model, error, "a pre-warm failed");
                    FromSidecar::Preloaded { endpoint_id, model, load_ms: 0, error: Some(error) }
                }
            };
            recheck.notify_one();
            let _ = events.send(preloaded).await;
        });
    }

    /// Runs an assignment, or fails it at once with the reason it cannot run.
    fn start(&mut self, task_id: TaskId, lease_generation: u64, assignment: Result<Assignment, String>) {
        if let Some(existing) = self.running.get(&task_id) {
            if existing.lease_generation >= lease_generation {
                return; // A duplicate assignment.
            }
            existing.cancel.cancel(); // A newer lease supersedes ours.
        }
        let (attempt, agent_id) = match &assignment {
            Ok(assignment) => (assignment.attempt, assignment.agent_id.clone()),
            Err(_) => (0, String::new()),
        };
        let cancel = CancellationToken::new();
        let job = RunningJob { lease_generation, agent_id: agent_id.clone(), cancel: cancel.clone(), abandoned: false };
        self.running.insert(task_id, job);
        let events = self.events_tx.clone();
        info!(task_id = %task_id, lease_generation, attempt, agent_id, "running task");
        let sink = Arc::new(JobSink { task_id, lease_generation, events: events.clone() });
        // The attempt's span, under the hub's dispatch span (when the hub traces and so do we).
        let dispatched = assignment.as_ref().ok().and_then(|assignment| assignment.trace);
        let mut span = crate::spans::child(dispatched.as_ref(), "execute").map(|span| {
            span.kind(agentcom_metrics::trace::Kind::Consumer)
                .remote_parent()
                .attr("agentcom.task.id", task_id.to_string())
                .attr("agentcom.task.attempt", i64::from(attempt))
                .attr("agentcom.agent.id", agent_id)
        });
        let (running, kind) = match assignment {
            Ok(mut assignment) => {
                let kind = assignment.spec.work.capability();
                assignment.trace = span
                    .as_ref()
                    .zip(dispatched)
                    .map(|(span, parent)| TraceParent { span_id: span.span_id(), ..parent });
                (self.runners.run(Attempt::new(assignment), sink, cancel), kind)
            }
            Err(error) => (Box::pin(async move { runners::failed_to_start(error) }) as crate::job::Running, "unknown"),
        };
        if let Some(span) = &mut span {
            span.set("agentcom.task.kind", kind);
        }
        let metrics = self.metrics.clone();
        metrics.started(kind);
        let in_task = tracing::info_span!("task", task_id = %task_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome = running.await;
                crate::spans::executed(span, &outcome);
                metrics.finished(kind, &outcome);
                let finished = FromSidecar::Finished { task_id, lease_generation, outcome: Box::new(outcome) };
                let _ = events.send(finished).await;
            },
            in_task,
        ));
    }
}

/// The next report that changed, as a message; pending forever without reporters.
async fn next_report(latest: &mut Option<Latest>) -> Option<FromSidecar> {
    let Some(Latest { resources, models, .. }) = latest else { return std::future::pending().await };
    loop {
        tokio::select! {
            changed = resources.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                if let Some(report) = resources.borrow_and_update().as_ref() {
                    return Some(FromSidecar::Resources(Box::new(report.clone())));
                }
            }
            changed = models.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                if let Some(inventory) = models.borrow_and_update().as_ref() {
                    return Some(FromSidecar::Models(inventory.clone()));
                }
            }
        }
    }
}

/// A result to hold until the hub stores it, with the secrets this sidecar knows masked.
fn held(task_id: TaskId, lease_generation: u64, mut outcome: Box<Outcome>) -> Held {
    mask_outcome(&mut outcome);
    Held { task_id, lease_generation, outcome }
}

/// Masks the secrets this sidecar knows in everything of a result that holds text from the work:
/// its output, error, verification evidence, rounds and workspace diff.
fn mask_outcome(outcome: &mut Outcome) {
    let redactor = agentcom_process::logging::redactor();
    for stream in [&mut outcome.stdout, &mut outcome.stderr] {
        if let Some(masked) = redactor.mask(stream) {
            *stream = masked;
        }
    }
    if let Some(error) = &mut outcome.error {
        redactor.mask_string(error);
    }
    if let Some(report) = &mut outcome.verification {
        for step in &mut report.steps {
            redactor.mask_string(&mut step.evidence);
            redactor.mask_string(&mut step.target);
            if let Some(summary) = &mut step.summary {
                redactor.mask_string(summary);
            }
        }
    }
    for round in &mut outcome.rounds {
        round.failed.iter_mut().for_each(|f| redactor.mask_string(f));
    }
    for step in &mut outcome.steps {
        redactor.mask_string(&mut step.summary);
    }
    if let Some(workspace) = &mut outcome.workspace {
        redactor.mask_string(&mut workspace.diff);
        redactor.mask_string(&mut workspace.diff_stat);
        if let Some(error) = &mut workspace.push_error {
            redactor.mask_string(error);
        }
    }
}

/// How a session ended with `status`: a revocation stops the sidecar, anything else is retried.
fn ended(status: &tonic::Status) -> SessionEnd {
    let reason = format!("{}: {}", code_name(status.code()), status.message());
    if status.code() == tonic::Code::PermissionDenied && status.message().starts_with(agentcom_link::REVOKED) {
        SessionEnd::Revoked(reason)
    } else {
        SessionEnd::Lost(reason)
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => "unauthenticated (check the join token)",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unavailable => "hub unavailable",
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => "refused",
        _ => "error",
    }
}
