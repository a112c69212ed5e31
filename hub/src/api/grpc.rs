//! gRPC services: `Admin` for people and tools, `AgentLink` for sidecars.
//!
//! Authentication happens before these run (see `server`); here messages are converted to
//! domain types, validated, and handed to the core.

use std::pin::Pin;
use std::time::Duration;

use agentcom_proto::v1 as pb;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::http::dto::{DecisionDto, WhyDto};
use super::{ApiError, list_limit};
use crate::core::{self, Handle, ToSidecar};
use crate::domain::now_ms;
use crate::domain::{Numbered, SpecDefaults, TaskId, TaskState};
use crate::feed::{self, FeedEvent};
use agentcom_types::wire as convert;
use agentcom_types::wire::link as link_wire;

/// Submits of one stream that may wait for their commit at once.
const SUBMIT_WINDOW: usize = 4096;

/// Largest message either side accepts: a finished task carries up to its output cap per stream.
pub const MAX_MESSAGE_BYTES: usize = 160 * 1024 * 1024;

#[derive(Clone)]
pub struct AdminService {
    pub hub: Handle,
    pub spec_defaults: SpecDefaults,
    pub backups: crate::backup::Backups,
    pub stop: CancellationToken,
    /// For the streams: each ends when the token that opened it is revoked.
    pub tokens: crate::auth::Tokens,
}

impl AdminService {
    /// Cancelled when the hub stops or the token that made `request` is revoked. Whoever serves
    /// the stream keeps `end.drop_guard()`, so the watch on the token ends with the stream.
    fn stream_end<T>(&self, request: &Request<T>) -> CancellationToken {
        let end = self.stop.child_token();
        if let Some(caller) = request.extensions().get::<crate::auth::Caller>() {
            let (revoked, end) = (self.tokens.revocation(&caller.token_id), end.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = revoked.cancelled() => end.cancel(),
                    _ = end.cancelled() => {}
                }
            });
        }
        end
    }
}

fn parse_id(id: &str) -> Result<TaskId, Status> {
    id.parse::<TaskId>().map_err(|err| ApiError::from(err).into())
}

fn status(err: core::Error) -> Status {
    ApiError::from(err).into()
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        // A `traceparent` in the call's metadata, unless the spec carries one.
        let parent = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut spec =
            request.into_inner().spec.ok_or_else(|| Status::invalid_argument("invalid spec: is required"))?;
        if spec.traceparent.is_empty() {
            spec.traceparent = parent.unwrap_or_default();
        }
        let spec = convert::spec_from_pb(spec, &self.spec_defaults).map_err(ApiError::from)?;
        let submitted = self.hub.submit(spec).await.map_err(status)?;
        Ok(Response::new(pb::SubmitTaskResponse {
            task: Some(convert::task_to_pb(&submitted.task)),
            existing: submitted.existing,
        }))
    }

    type SubmitStreamStream = EventStream<pb::SubmitAck>;

    async fn submit_stream(
        &self,
        request: Request<Streaming<pb::SubmitStreamRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let end = self.stream_end(&request);
        let mut inbound = request.into_inner();
        let (acks, acks_rx) = mpsc::channel::<Result<pb::SubmitAck, Status>>(SUBMIT_WINDOW);
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(SUBMIT_WINDOW));
        let (hub, defaults, stop) = (self.hub.clone(), self.spec_defaults.clone(), end.clone());
        tokio::spawn(async move {
            let _watching = end.drop_guard();
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = stop.cancelled() => return,
                };
                let request = match next {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(err) => {
                        let _ = acks.send(Err(err)).await;
                        return;
                    }
                };
                // Backpressure: at most SUBMIT_WINDOW submits of one stream wait for their commit.
                let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
                let (hub, defaults, acks) = (hub.clone(), defaults.clone(), acks.clone());
                tokio::spawn(async move {
                    let sequence = request.sequence;
                    let result = match request.spec {
                        None => Err(ApiError::invalid("invalid spec: is required")),
                        Some(spec) => match convert::spec_from_pb(spec, &defaults) {
                            Ok(spec) => hub.submit_id(spec).await.map_err(ApiError::from),
                            Err(err) => Err(ApiError::from(err)),
                        },
                    };
                    let ack = match result {
                        Ok((task_id, existing)) => {
                            pb::SubmitAck { sequence, task_id: task_id.to_string(), existing, ..Default::default() }
                        }
                        Err(err) => pb::SubmitAck {
                            sequence,
                            error_code: err.code.as_str().to_owned(),
                            error_message: err.message,
                            ..Default::default()
                        },
                    };
                    let _ = acks.send(Ok(ack)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(acks_rx))))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        let task = self.hub.get(id).await.map_err(status)?;
        Ok(Response::new(convert::task_to_pb(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let request = request.into_inner();
        let state = convert::state_from_pb(request.state).map_err(ApiError::from)?;
        let limit = list_limit((request.limit > 0).then_some(request.limit as usize))?;
        let before = if request.before.is_empty() { None } else { Some(parse_id(&request.before)?) };
        let tasks = self.hub.list_before(state, before, limit).await.map_err(status)?;
        Ok(Response::new(pb::ListTasksResponse { tasks: tasks.iter().map(convert::task_to_pb).collect() }))
    }

    async fn cancel_task(&self, request: Request<pb::CancelTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let id = parse_id(&request.id)?;
        if request.reason.len() > crate::domain::limits::MAX_TEXT_BYTES {
            return Err(Status::invalid_argument("invalid reason: too long"));
        }
        let task = self.hub.cancel(id, request.reason).await.map_err(status)?;
        Ok(Response::new(convert::task_to_pb(&task)))
    }

    type WatchTaskStream = EventStream<pb::TaskEvent>;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let end = self.stream_end(&request);
        let id = parse_id(&request.into_inner().id)?;
        let feed = self.hub.watch(id).await.map_err(status)?;
        let watching = end.clone().drop_guard();
        let stream = feed::events(feed, end).map(move |event| {
            let _ = &watching;
            let kind = match event {
                FeedEvent::Snapshot(task) => pb::task_event::Kind::Snapshot(convert::task_to_pb(&task)),
                FeedEvent::Output { attempt, stream, offset, data } => pb::task_event::Kind::Output(pb::OutputChunk {
                    stream: convert::stream_to_pb(stream).into(),
                    offset,
                    data,
                    attempt,
                }),
                FeedEvent::Step { attempt, number, step } => pb::task_event::Kind::Step(pb::StepEvent {
                    attempt,
                    number: number as u32,
                    step: Some(convert::step_into_pb(step)),
                }),
                FeedEvent::Failed(message) => return Err(Status::unavailable(message)),
            };
            Ok(pb::TaskEvent { kind: Some(kind) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.hub.agents().await.map_err(status)?;
        Ok(Response::new(pb::ListAgentsResponse { agents: agents.iter().map(convert::agent_to_pb).collect() }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let limit = list_limit(Some(request.into_inner().limit as usize).filter(|&n| n > 0))?;
        let tasks = self.hub.list(Some(TaskState::DeadLettered), limit).await.map_err(status)?;
        Ok(Response::new(pb::ListTasksResponse { tasks: tasks.iter().map(convert::task_to_pb).collect() }))
    }

    async fn retry_dead_letter(
        &self,
        request: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let caller = caller_of(&request);
        let id = parse_id(&request.into_inner().id)?;
        let task = self.hub.retry_dead_letter(id).await.map_err(status)?;
        super::audited(&self.hub, caller.as_ref(), "dlq.retry", &id.to_string(), String::new()).await?;
        Ok(Response::new(convert::task_to_pb(&task)))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let caller = caller_of(&request);
        let older_than_ms = request.into_inner().older_than_ms;
        let before = super::purge_cutoff(older_than_ms)?;
        let purged = self.hub.purge_dead_letters(before).await.map_err(status)?;
        let detail = format!("{purged} purged, older than {older_than_ms} ms");
        super::audited(&self.hub, caller.as_ref(), "dlq.purge", "dlq", detail).await?;
        Ok(Response::new(pb::PurgeDeadLettersResponse { purged: purged as u64 }))
    }

    async fn backup(&self, _request: Request<pb::BackupRequest>) -> Result<Response<pb::BackupResponse>, Status> {
        let info = self.backups.take().await.map_err(|err| Status::unavailable(format!("backup failed: {err}")))?;
        Ok(Response::new(pb::BackupResponse {
            path: info.path.display().to_string(),
            tasks: info.tasks,
            bytes: info.bytes,
        }))
    }

    async fn explain_task(
        &self,
        request: Request<pb::ExplainTaskRequest>,
    ) -> Result<Response<pb::ExplainTaskResponse>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        let decisions = self.hub.explain(id).await.map_err(status)?;
        let decisions = decisions.iter().map(|d| decision_to_pb(DecisionDto::from(d))).collect();
        Ok(Response::new(pb::ExplainTaskResponse { decisions }))
    }

    async fn why_task(&self, request: Request<pb::WhyTaskRequest>) -> Result<Response<pb::WhyTaskResponse>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        let why = self.hub.why(id).await.map_err(status)?;
        let state = why.state.number();
        let why = WhyDto::from(&why);
        Ok(Response::new(pb::WhyTaskResponse {
            task_id: why.task_id,
            state,
            waiting: why.waiting,
            code: why.code,
            message: why.message,
            since_unix_ms: why.since_unix_ms,
            tier: why.tier.to_owned(),
            model: why.model.unwrap_or_default(),
            fallback_at_unix_ms: why.fallback_at_unix_ms.unwrap_or(0),
            placement_now: why.placement_now.map(decision_to_pb),
        }))
    }

    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let detail = self.hub.agent(request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(convert::agent_detail_to_pb(&detail)))
    }

    async fn drain_sidecar(&self, request: Request<pb::DrainSidecarRequest>) -> Result<Response<pb::Host>, Status> {
        let caller = caller_of(&request);
        let request = request.into_inner();
        let deadline = (request.deadline_unix_ms != 0).then_some(request.deadline_unix_ms);
        let host = self.hub.drain(request.sidecar_id.clone(), deadline).await.map_err(status)?;
        let detail = deadline.map(|at| format!("deadline at {at}")).unwrap_or_default();
        super::audited(&self.hub, caller.as_ref(), "drain", &request.sidecar_id, detail).await?;
        Ok(Response::new(convert::host_to_pb(&host)))
    }

    async fn uncordon_sidecar(
        &self,
        request: Request<pb::UncordonSidecarRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let caller = caller_of(&request);
        let sidecar_id = request.into_inner().sidecar_id;
        let host = self.hub.uncordon(sidecar_id.clone()).await.map_err(status)?;
        super::audited(&self.hub, caller.as_ref(), "uncordon", &sidecar_id, String::new()).await?;
        Ok(Response::new(convert::host_to_pb(&host)))
    }

    async fn list_hosts(
        &self,
        _request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let hosts = self.hub.hosts().await.map_err(status)?;
        Ok(Response::new(pb::ListHostsResponse { hosts: hosts.iter().map(convert::host_to_pb).collect() }))
    }

    async fn get_host(&self, request: Request<pb::GetHostRequest>) -> Result<Response<pb::Host>, Status> {
        let host = self.hub.host(request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(convert::host_to_pb(&host)))
    }

    async fn list_endpoints(
        &self,
        _request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let endpoints = self.hub.endpoint_listing().await.map_err(status)?;
        let listed =
            |(e, learned): &(_, Option<u32>)| pb::LlmEndpoint { parallel_learned: learned.unwrap_or(0), ..shown(e) };
        Ok(Response::new(pb::ListEndpointsResponse { endpoints: endpoints.iter().map(listed).collect() }))
    }

    async fn add_endpoint(
        &self,
        request: Request<pb::AddEndpointRequest>,
    ) -> Result<Response<pb::LlmEndpoint>, Status> {
        let caller = caller_of(&request);
        let request = request.into_inner();
        let kind = super::endpoint_kind(&request.kind)?;
        let endpoint = self.hub.add_endpoint(request.url, kind).await.map_err(status)?;
        let url = crate::fleet::without_password(&endpoint.url);
        super::audited(&self.hub, caller.as_ref(), "endpoint.add", &endpoint.id, url).await?;
        Ok(Response::new(shown(&endpoint)))
    }

    async fn remove_endpoint(
        &self,
        request: Request<pb::RemoveEndpointRequest>,
    ) -> Result<Response<pb::LlmEndpoint>, Status> {
        let caller = caller_of(&request);
        let endpoint = self.hub.remove_endpoint(request.into_inner().id).await.map_err(status)?;
        let url = crate::fleet::without_password(&endpoint.url);
        super::audited(&self.hub, caller.as_ref(), "endpoint.remove", &endpoint.id, url).await?;
        Ok(Response::new(shown(&endpoint)))
    }
}

#[derive(Clone)]
pub struct AgentLinkService {
    pub hub: Handle,
    pub stop: CancellationToken,
    pub enrolment: crate::enrol::Enrolment,
}

/// Largest certificate signing request an enrolment may send.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// How long a new session may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn invalid(err: crate::domain::Error) -> Status {
    ApiError::from(err).into()
}

/// A decision as the HTTP API flattens it, in its gRPC form (the same fields).
fn decision_to_pb(d: DecisionDto) -> pb::PlacementDecision {
    pb::PlacementDecision {
        kind: d.kind.unwrap_or_default().to_owned(),
        at_unix_ms: d.at_unix_ms.unwrap_or(0),
        attempt: d.attempt.unwrap_or(0),
        reason: d.reason,
        tier: d.tier.to_owned(),
        tier_source: d.tier_source,
        model: d.model.unwrap_or_default(),
        sidecar_id: d.sidecar_id.unwrap_or_default(),
        agent_id: d.agent_id.unwrap_or_default(),
        endpoint_id: d.endpoint_id.unwrap_or_default(),
        wait: d.wait.unwrap_or_default().to_owned(),
        candidates: d
            .candidates
            .into_iter()
            .map(|c| pb::PlacementCandidate {
                sidecar_id: c.sidecar_id,
                agent_id: c.agent_id.unwrap_or_default(),
                endpoint_id: c.endpoint_id.unwrap_or_default(),
                verdict: c.verdict.to_owned(),
                warm: c.warm,
                in_flight: c.in_flight,
                idle_agents: c.idle_agents,
                estimate: c.estimate.map(|e| pb::PlacementEstimate {
                    total_ms: e.total_ms,
                    wait_ms: e.wait_ms,
                    load_ms: e.load_ms,
                    generate_ms: e.generate_ms,
                    fit_ms: e.fit_ms,
                }),
            })
            .collect(),
        more_candidates: d.more_candidates as u32,
    }
}

#[tonic::async_trait]
impl pb::agent_link_server::AgentLink for AgentLinkService {
    type SessionStream = EventStream<pb::HubMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::SidecarMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request.extensions().get::<crate::auth::EnrolledPeer>().cloned();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let mut hello = match first.and_then(|m| m.msg) {
            Some(pb::sidecar_message::Msg::Hello(hello)) => link_wire::hello_from_pb(hello).map_err(invalid)?,
            _ => return Err(Status::invalid_argument("the first message must be hello")),
        };
        // An enrolled sidecar speaks for its own id only, and keeps the tags it was enrolled with.
        if let Some(peer) = &peer {
            if peer.sidecar_id != hello.sidecar_id {
                return Err(Status::permission_denied(format!(
                    "this client certificate belongs to sidecar {}, not {}",
                    peer.sidecar_id, hello.sidecar_id
                )));
            }
            for tag in &peer.tags {
                if !hello.tags.contains(tag) {
                    hello.tags.push(tag.clone());
                }
            }
        }
        let sidecar_id = hello.sidecar_id.clone();
        let (outbox_tx, outbox_rx) = mpsc::channel::<ToSidecar>(1024);
        let (joined, session) = self.hub.hello(hello, outbox_tx).await.map_err(status)?;

        let hub = self.hub.clone();
        // A child token per session: the loop below polls it on every message, and a child
        // has its own waiter list instead of sharing the hub-wide one with every other session.
        // Revoking an enrolled sidecar cancels it too.
        let stop = self.stop.child_token();
        let live = peer.as_ref().map(|peer| self.enrolment.attach(&peer.sidecar_id, stop.clone()));
        let revoked = live.as_ref().map(|live| live.revoked.clone());
        let last_seen = joined.last_seen.clone();
        let session_stop = stop.clone();
        let refused_id = sidecar_id.clone();
        tokio::spawn(async move {
            // Held for the session, so that a revocation finds it.
            let _live = live;
            let cancelled = stop.cancelled();
            tokio::pin!(cancelled);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    next = inbound.message() => next,
                };
                match next {
                    // A heartbeat with nothing to renew is liveness only: no trip to the core.
                    Ok(Some(pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Heartbeat(beat)) }))
                        if beat.running.is_empty() =>
                    {
                        last_seen.fetch_max(now_ms(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Some(message)) => match link_wire::from_sidecar_from_pb(&sidecar_id, message) {
                        Ok(message) => hub.from_sidecar(sidecar_id.clone(), session, message),
                        Err(err) => warn!(sidecar_id, error = %err, "dropping a malformed sidecar message"),
                    },
                    Ok(None) => break,
                    Err(err) => {
                        debug!(sidecar_id, error = %err, "sidecar stream ended with an error");
                        break;
                    }
                }
            }
            hub.session_closed(sidecar_id, session);
        });

        let welcome = link_wire::welcome_into_pb(joined.welcome);
        let outbound = futures_util::stream::once(async move { Ok(welcome) })
            .chain(ReceiverStream::new(outbox_rx).map(|m| Ok(link_wire::to_sidecar_into_pb(m))))
            .take_until(async move { session_stop.cancelled().await });
        let Some(revoked) = revoked else { return Ok(Response::new(Box::pin(outbound))) };
        // A revoked sidecar is told why its stream ends, so it stops instead of reconnecting.
        let refused = futures_util::stream::once(async move {
            revoked.load(std::sync::atomic::Ordering::Acquire).then(|| {
                tracing::info!(sidecar_id = refused_id, "closed the session of a revoked sidecar");
                Err(Status::permission_denied(crate::auth::revoked_message(&refused_id)))
            })
        })
        .filter_map(futures_util::future::ready);
        Ok(Response::new(Box::pin(outbound.chain(refused))))
    }

    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let request = request.into_inner();
        if request.csr_der.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!("csr_der: at most {MAX_CSR_BYTES} bytes")));
        }
        let issued = self.enrolment.enrol(&request.join_token, &request.csr_der, &request.hostname, now_ms()).map_err(
            |err| {
                warn!(error = %err, "refused an enrolment");
                Status::from(crate::api::ApiError::from(err))
            },
        )?;
        let ops = vec![
            crate::store::Op::PutJoinGrant(Box::new(issued.grant.clone())),
            crate::store::Op::PutIdentity(Box::new(issued.identity.clone())),
        ];
        if let Err(err) = self.hub.persist(ops).await {
            self.enrolment.undo(&issued);
            return Err(status(err));
        }
        let caller =
            crate::auth::Caller { role: crate::auth::Role::Join, token_id: format!("acj-{}", issued.grant.id) };
        let identity = &issued.identity;
        let detail = format!("host {:?}, tags {:?}", identity.hostname, identity.tags);
        super::audited(&self.hub, Some(&caller), "sidecar.enrol", &identity.sidecar_id, detail).await?;
        Ok(Response::new(pb::EnrollResponse {
            sidecar_id: identity.sidecar_id.clone(),
            certificate_der: issued.certificate,
            ca_der: issued.ca,
            tags: identity.tags.clone(),
        }))
    }
}

/// Who made the call, as the authentication layer recorded it.
fn caller_of<T>(request: &Request<T>) -> Option<crate::auth::Caller> {
    request.extensions().get::<crate::auth::Caller>().cloned()
}

/// An endpoint as the admin API shows it: passwords in its URL and error masked.
fn shown(endpoint: &crate::fleet::Endpoint) -> pb::LlmEndpoint {
    let masked = |text: &str| crate::fleet::without_password(text);
    let pb = convert::endpoint_to_pb(endpoint);
    pb::LlmEndpoint { url: masked(&pb.url), error: masked(&pb.error), ..pb }
}
