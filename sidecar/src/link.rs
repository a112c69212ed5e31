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
use pb::hub_message::Msg as HubMsg;
use pb::sidecar_message::Msg as SideMsg;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

use agentcom_types::domain::{AgentStep, Outcome, SpecDefaults, Stream, TraceParent};
use agentcom_types::wire;

use crate::attempt::TaskKey;
use crate::job::{Assignment, Sink};
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

/// What a job reports while it runs.
enum JobEvent {
    Started {
        task_id: String,
        lease_generation: u64,
        pid: u32,
    },
    Output {
        task_id: String,
        lease_generation: u64,
        stream: Stream,
        offset: u64,
        data: Vec<u8>,
    },
    Progress {
        task_id: String,
        lease_generation: u64,
        blocked: bool,
        verifying: bool,
        message: String,
    },
    Finished {
        task_id: String,
        lease_generation: u64,
        outcome: Box<Outcome>,
    },
    /// Agent work took a step.
    Step {
        task_id: String,
        lease_generation: u64,
        step: AgentStep,
    },
    /// A preload the hub asked for ended.
    Preloaded(pb::Preloaded),
}

struct JobSink {
    task_id: String,
    lease_generation: u64,
    events: mpsc::Sender<JobEvent>,
}

impl Sink for JobSink {
    fn started(&self, pid: u32) {
        let _ = self.events.try_send(JobEvent::Started {
            task_id: self.task_id.clone(),
            lease_generation: self.lease_generation,
            pid,
        });
    }

    fn output(&self, stream: Stream, offset: u64, data: &[u8]) {
        // Secrets this sidecar knows never leave it, not even in a task's own output.
        let data = agentcom_process::logging::redactor().mask(data).unwrap_or_else(|| data.to_vec());
        // Dropped when the link is backed up: the final outcome carries the output anyway.
        let _ = self.events.try_send(JobEvent::Output {
            task_id: self.task_id.clone(),
            lease_generation: self.lease_generation,
            stream,
            offset,
            data,
        });
    }

    fn progress(&self, blocked: bool, message: &str) {
        let _ = self.events.try_send(JobEvent::Progress {
            task_id: self.task_id.clone(),
            lease_generation: self.lease_generation,
            blocked,
            verifying: false,
            message: message.to_owned(),
        });
    }

    fn step(&self, step: &AgentStep) {
        let _ = self.events.try_send(JobEvent::Step {
            task_id: self.task_id.clone(),
            lease_generation: self.lease_generation,
            step: step.clone(),
        });
    }

    fn verifying(&self) {
        let _ = self.events.try_send(JobEvent::Progress {
            task_id: self.task_id.clone(),
            lease_generation: self.lease_generation,
            blocked: false,
            verifying: true,
            message: "verifying".to_owned(),
        });
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
    running: HashMap<String, RunningJob>,
    /// Results the hub has not said are stored (`ResultStored`), in the order they finished:
    /// sent at the start of every session, and kept until the hub has them durably, so neither
    /// a lost link nor a hub that crashed (or failed to commit) before storing one loses it.
    unacked: VecDeque<pb::SidecarMessage>,
    events_tx: mpsc::Sender<JobEvent>,
    events_rx: mpsc::Receiver<JobEvent>,
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
                Ok(Some(JobEvent::Finished { task_id, .. })) => {
                    self.running.remove(&task_id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        info!("sidecar stopped");
        Ok(())
    }

    fn offline_event(&mut self, event: JobEvent) {
        if let JobEvent::Finished { task_id, lease_generation, outcome } = event
            && self.running.remove(&task_id).is_some_and(|job| !job.abandoned)
        {
            self.unacked.push_back(finished_message(task_id, lease_generation, outcome));
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
                task_id,
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
        let hello = pb::Hello {
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
        let _ = outbound.try_send(pb::SidecarMessage { msg: Some(SideMsg::Hello(hello)) });
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
            Ok(Some(pb::HubMessage { msg: Some(HubMsg::Welcome(welcome)) })) => welcome,
            Ok(_) => return SessionEnd::Lost("the hub did not send a welcome".into()),
            Err(status) => return ended(&status),
        };
        self.joined = true;
        self.metrics.connected(true);
        self.offline_since = None;
        self.lease_ttl = Some(Duration::from_millis(welcome.lease_ttl_ms.max(1)));
        let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(50));
        info!(
            sidecar_id = welcome.sidecar_id,
            agents = welcome.agent_ids.len(),
            heartbeat_ms = interval.as_millis() as u64,
            "joined the hub"
        );

        // Results the hub has not stored yet go first (again, if an earlier session sent them).
        for message in self.unacked.clone() {
            if outbound.send(message).await.is_err() {
                return SessionEnd::Lost("the stream closed while sending results".into());
            }
        }

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
                    Ok(Some(pb::HubMessage { msg: Some(msg) })) => self.on_hub_message(msg),
                    Ok(Some(_)) => {}
                    Ok(None) => return SessionEnd::Closed,
                    Err(status) => return ended(&status),
                },
                Some(event) = self.events_rx.recv() => {
                    if let Err(end) = self.forward(event, &outbound).await {
                        return end;
                    }
                }
                Some(message) = next_report(&mut latest) => {
                    if outbound.try_send(pb::SidecarMessage { msg: Some(message) }).is_err() {
                        debug!("outbound queue full; skipping a report");
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = pb::Heartbeat { sent_unix_ms: now_ms(), running: self.running_list() };
                    if outbound.try_send(pb::SidecarMessage { msg: Some(SideMsg::Heartbeat(beat)) }).is_err() {
                        debug!("outbound queue full; skipping a heartbeat");
                    }
                }
                _ = stop.cancelled() => return SessionEnd::Stop,
            }
        }
    }

    /// What this sidecar still holds leases for: running jobs, and finished ones whose result
    /// has not reached the hub yet (so the hub keeps those leases and accepts the result).
    fn running_list(&self) -> Vec<pb::RunningTask> {
        let running = self.running.iter().map(|(task_id, job)| pb::RunningTask {
            task_id: task_id.clone(),
            lease_generation: job.lease_generation,
            agent_id: job.agent_id.clone(),
        });
        let unacked = self.unacked.iter().filter_map(|message| match &message.msg {
            Some(SideMsg::Finished(finished)) => Some(pb::RunningTask {
                task_id: finished.task_id.clone(),
                lease_generation: finished.lease_generation,
                agent_id: String::new(),
            }),
            _ => None,
        });
        running.chain(unacked).collect()
    }

    async fn forward(
        &mut self,
        event: JobEvent,
        outbound: &mpsc::Sender<pb::SidecarMessage>,
    ) -> Result<(), SessionEnd> {
        let message = match event {
            JobEvent::Started { task_id, lease_generation, pid } => {
                SideMsg::Started(pb::TaskStarted { task_id, lease_generation, pid })
            }
            JobEvent::Output { task_id, lease_generation, stream, offset, data } => {
                let chunk = pb::OutputChunk { stream: wire::stream_to_pb(stream).into(), offset, data, attempt: 0 };
                let message = SideMsg::Output(pb::TaskOutput { task_id, lease_generation, chunk: Some(chunk) });
                let _ = outbound.try_send(pb::SidecarMessage { msg: Some(message) });
                return Ok(());
            }
            JobEvent::Progress { task_id, lease_generation, blocked, verifying, message } => {
                let progress = pb::TaskProgress {
                    task_id,
                    lease_generation,
                    message,
                    blocked,
                    verifying,
                    fraction: -1.0,
                    ..Default::default()
                };
                let _ = outbound.try_send(pb::SidecarMessage { msg: Some(SideMsg::Progress(progress)) });
                return Ok(());
            }
            JobEvent::Step { task_id, lease_generation, step } => {
                let progress = pb::TaskProgress {
                    task_id,
                    lease_generation,
                    message: format!("{} {}", step.tool, step.summary),
                    fraction: -1.0,
                    step: Some(wire::step_into_pb(step)),
                    ..Default::default()
                };
                let _ = outbound.try_send(pb::SidecarMessage { msg: Some(SideMsg::Progress(progress)) });
                return Ok(());
            }
            JobEvent::Preloaded(preloaded) => SideMsg::Preloaded(preloaded),
            JobEvent::Finished { task_id, lease_generation, outcome } => {
                if self.running.remove(&task_id).is_some_and(|job| job.abandoned) {
                    return Ok(());
                }
                let message = finished_message(task_id, lease_generation, outcome);
                self.unacked.push_back(message.clone());
                if outbound.send(message).await.is_err() {
                    return Err(SessionEnd::Lost("the stream closed while sending a result".into()));
                }
                return Ok(());
            }
        };
        outbound
            .send(pb::SidecarMessage { msg: Some(message) })
            .await
            .map_err(|_| SessionEnd::Lost("the stream closed".into()))
    }

    fn on_hub_message(&mut self, message: HubMsg) {
        match message {
            HubMsg::Assign(assign) => self.start(assign),
            HubMsg::Cancel(cancel) => {
                if let Some(job) = self.running.get(&cancel.task_id)
                    && job.lease_generation <= cancel.lease_generation
                {
                    info!(task_id = cancel.task_id, reason = cancel.reason, "cancelling");
                    job.cancel.cancel();
                }
                // A result the hub will not take (its lease is gone): nothing to keep it for.
                self.unacked.retain(|message| {
                    !matches!(&message.msg, Some(SideMsg::Finished(f))
                        if f.task_id == cancel.task_id && f.lease_generation <= cancel.lease_generation)
                });
            }
            HubMsg::Stored(stored) => self.unacked.retain(|message| {
                !matches!(&message.msg, Some(SideMsg::Finished(f))
                    if f.task_id == stored.task_id && f.lease_generation == stored.lease_generation)
            }),
            HubMsg::Welcome(_) => warn!("ignoring a second welcome"),
            HubMsg::Preload(preload) => self.preload(preload),
            HubMsg::Drain(drain) => match drain.deadline_unix_ms {
                0 => info!("cordoned by the hub: no new work; running tasks go on"),
                deadline => {
                    info!(deadline_unix_ms = deadline, "cordoned by the hub: tasks still running then are requeued")
                }
            },
        }
    }

    /// Loads a model on one of this sidecar's Ollama endpoints, as the hub asked (a pre-warm),
    /// then reports how it went and checks the endpoints at once, so the hub sees it warm.
    fn preload(&self, preload: pb::Preload) {
        let Some(latest) = &self.latest else { return };
        let url = latest.models.borrow().as_ref().and_then(|endpoints| {
            let endpoint = endpoints.iter().find(|e| e.id == preload.endpoint_id)?;
            (endpoint.kind == agentcom_types::fleet::EndpointKind::Ollama).then(|| endpoint.url.clone())
        });
        let (events, recheck) = (self.events_tx.clone(), latest.recheck.clone());
        tokio::spawn(async move {
            let pb::Preload { endpoint_id, model, keep_alive } = preload;
            let keep_alive = (!keep_alive.is_empty()).then_some(keep_alive);
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
                    pb::Preloaded { endpoint_id, model, load_ms: took.as_millis() as u64, error: String::new() }
                }
                Err(error) => {
                    warn!(endpoint_id, model, error, "a pre-warm failed");
                    pb::Preloaded { endpoint_id, model, load_ms: 0, error }
                }
            };
            recheck.notify_one();
            let _ = events.send(JobEvent::Preloaded(preloaded)).await;
        });
    }

    fn start(&mut self, assign: pb::Assign) {
        let task_id = assign.task_id.clone();
        let lease_generation = assign.lease_generation;
        if let Some(existing) = self.running.get(&task_id) {
            if existing.lease_generation >= lease_generation {
                return; // A duplicate assignment.
            }
            existing.cancel.cancel(); // A newer lease supersedes ours.
        }
        let cancel = CancellationToken::new();
        self.running.insert(
            task_id.clone(),
            RunningJob {
                lease_generation,
                agent_id: assign.agent_id.clone(),
                cancel: cancel.clone(),
                abandoned: false,
            },
        );
        let events = self.events_tx.clone();
        info!(task_id, lease_generation, attempt = assign.attempt, agent_id = assign.agent_id, "running task");
        let sink = Arc::new(JobSink { task_id: task_id.clone(), lease_generation, events: events.clone() });
        // The attempt's span, under the hub's dispatch span (when the hub traces and so do we).
        let dispatched = assign.traceparent.parse::<TraceParent>().ok();
        let mut span = crate::spans::child(dispatched.as_ref(), "execute").map(|span| {
            span.kind(agentcom_metrics::trace::Kind::Consumer)
                .remote_parent()
                .attr("agentcom.task.id", task_id.clone())
                .attr("agentcom.task.attempt", i64::from(assign.attempt))
                .attr("agentcom.agent.id", assign.agent_id.clone())
        });
        let (running, kind) = match assignment(assign, self.config.default_max_output_bytes) {
            Ok(mut assignment) => {
                let kind = assignment.spec.work.capability();
                assignment.trace = span
                    .as_ref()
                    .zip(dispatched)
                    .map(|(span, parent)| TraceParent { span_id: span.span_id(), ..parent });
                (self.runners.run(assignment, sink, cancel), kind)
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
                let _ = events.send(JobEvent::Finished { task_id, lease_generation, outcome: Box::new(outcome) }).await;
            },
            in_task,
        ));
    }
}

/// The next report that changed, as a message; pending forever without reporters.
async fn next_report(latest: &mut Option<Latest>) -> Option<SideMsg> {
    let Some(Latest { resources, models, .. }) = latest else { return std::future::pending().await };
    loop {
        tokio::select! {
            changed = resources.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                if let Some(report) = resources.borrow_and_update().as_ref() {
                    return Some(SideMsg::Resources(wire::report_to_pb(report)));
                }
            }
            changed = models.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                if let Some(inventory) = models.borrow_and_update().as_ref() {
                    return Some(SideMsg::Models(wire::inventory_to_pb(inventory)));
                }
            }
        }
    }
}

/// An assignment as the runners take it: the spec converted and validated by `wire`, as the
/// hub does on submit, or why it cannot run.
fn assignment(assign: pb::Assign, default_max_output_bytes: usize) -> Result<Assignment, String> {
    let spec = assign.spec.ok_or("the assignment has no spec")?;
    let defaults = SpecDefaults { max_output_bytes: default_max_output_bytes as u64, ..SpecDefaults::default() };
    let spec = wire::spec_from_pb(spec, &defaults).map_err(|err| err.to_string())?;
    Ok(Assignment {
        key: TaskKey { task_id: assign.task_id, lease_generation: assign.lease_generation },
        attempt: assign.attempt,
        agent_id: assign.agent_id,
        spec,
        endpoint_id: (!assign.endpoint_id.is_empty()).then_some(assign.endpoint_id),
        model: (!assign.model.is_empty()).then_some(assign.model),
        price: assign.price.and_then(wire::price_from_pb),
        judge: (!assign.judge_model.is_empty()).then_some((assign.judge_model, assign.judge_endpoint_id)),
        prices: assign.prices.into_iter().filter_map(|(m, p)| Some((m, wire::price_from_pb(p)?))).collect(),
        workspace: None,
        trace: None,
    })
}

fn finished_message(task_id: String, lease_generation: u64, mut outcome: Box<Outcome>) -> pb::SidecarMessage {
    mask_outcome(&mut outcome);
    let outcome = Some(wire::outcome_into_pb(*outcome));
    pb::SidecarMessage { msg: Some(SideMsg::Finished(pb::TaskFinished { task_id, lease_generation, outcome })) }
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

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// Whatever the hub sends as an assignment: a job or a reason, never a panic.
        #[test]
        fn assignments_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(assign) = pb::Assign::decode(bytes.as_slice()) {
                let _ = assignment(assign, 1024);
            }
        }
    }

    #[test]
    fn an_assignment_with_argv_and_script_is_refused() {
        let shell = pb::ShellWork { argv: vec!["true".into()], script: "true".into(), ..Default::default() };
        let spec =
            pb::TaskSpec { work: Some(pb::Work { kind: Some(pb::work::Kind::Shell(shell)) }), ..Default::default() };
        let assign = pb::Assign { task_id: "T".into(), spec: Some(spec), ..Default::default() };
        assert_eq!(assignment(assign, 1024).unwrap_err(), "invalid work.shell: takes argv or script, not both");
    }
}
