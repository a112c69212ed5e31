//! The link protocol on the wire: [`crate::link`]'s messages to and from `agentcom.v1`, each way
//! once. The hub decodes what sidecars say (validated and bounded, so one sidecar cannot take
//! its memory); the sidecar decodes what the hub says (an assignment's spec validated as the hub
//! validates a submit).

use std::time::Duration;

use agentcom_proto::v1 as pb;
use pb::hub_message::Msg as HubMsg;
use pb::sidecar_message::Msg as SideMsg;

use super::{
    inventory_from_pb, inventory_to_pb, nonempty, outcome_from_pb, outcome_into_pb, price_from_pb, price_into_pb,
    report_to_pb, resources_from_pb, spec_from_pb, spec_into_pb, step_from_pb, step_into_pb, stream_from_pb,
    stream_to_pb,
};
use crate::domain::{Error, SpecDefaults, TaskId};
use crate::link::{Assignment, FromSidecar, Hello, RunningTask, ToSidecar, Welcome};

/// Most slots one sidecar may offer.
pub const MAX_SLOTS: u32 = 1024;
const MAX_CAPABILITIES: usize = 64;
const MAX_TAGS: usize = 256;
const MAX_HOSTNAME: usize = 256;
const MAX_CONTAINMENT: usize = 1024;
const MAX_REPOSITORIES: usize = 256;
const MAX_REPOSITORY: usize = 4096;
/// Longest progress message kept, in characters.
const MAX_PROGRESS: usize = 512;
const MAX_PRELOAD_NAME: usize = 256;
const MAX_PRELOAD_ERROR: usize = 1024;

fn task_id(what: &'static str, id: &str) -> Result<TaskId, Error> {
    id.parse().map_err(|_| Error::invalid(what, format!("{id:?} is not a task id (a 26-character ULID)")))
}

fn chars(text: String, max: usize) -> String {
    if text.chars().count() <= max { text } else { text.chars().take(max).collect() }
}

/// A sidecar's hello, validated: a usable id, a sane number of slots, bounded lists.
pub fn hello_from_pb(hello: pb::Hello) -> Result<Hello, Error> {
    let id_ok = !hello.sidecar_id.is_empty()
        && hello.sidecar_id.len() <= 128
        && hello.sidecar_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !id_ok {
        return Err(Error::invalid("hello.sidecar_id", "1 to 128 characters of letters, digits, '-', '_', '.', ':'"));
    }
    if hello.slots == 0 || hello.slots > MAX_SLOTS {
        return Err(Error::invalid("hello.slots", format!("must be between 1 and {MAX_SLOTS}")));
    }
    if hello.capabilities.len() > MAX_CAPABILITIES
        || hello.tags.len() > MAX_TAGS
        || hello.hostname.len() > MAX_HOSTNAME
        || hello.containment.len() > MAX_CONTAINMENT
        || hello.repo_allow.len() > MAX_REPOSITORIES
        || hello.repo_allow.iter().any(|r| r.len() > MAX_REPOSITORY)
    {
        return Err(Error::invalid("hello", "too many capabilities, tags or allowed repositories, or one too long"));
    }
    Ok(Hello {
        sidecar_id: hello.sidecar_id,
        hostname: hello.hostname,
        os: hello.os,
        arch: hello.arch,
        version: hello.version,
        slots: hello.slots,
        capabilities: hello.capabilities,
        tags: hello.tags,
        running: running_from_pb(hello.running)?,
        containment: hello.containment,
        instance: hello.instance,
        repo_allow: hello.repo_allow,
    })
}

pub fn hello_into_pb(hello: Hello) -> pb::SidecarMessage {
    let hello = pb::Hello {
        sidecar_id: hello.sidecar_id,
        hostname: hello.hostname,
        os: hello.os,
        arch: hello.arch,
        version: hello.version,
        slots: hello.slots,
        capabilities: hello.capabilities,
        tags: hello.tags,
        running: running_into_pb(hello.running),
        containment: hello.containment,
        instance: hello.instance,
        repo_allow: hello.repo_allow,
    };
    pb::SidecarMessage { msg: Some(SideMsg::Hello(hello)) }
}

fn running_from_pb(running: Vec<pb::RunningTask>) -> Result<Vec<RunningTask>, Error> {
    running
        .into_iter()
        .map(|r| {
            Ok(RunningTask {
                task_id: task_id("running.task_id", &r.task_id)?,
                lease_generation: r.lease_generation,
                agent_id: chars(r.agent_id, 256),
            })
        })
        .collect()
}

fn running_into_pb(running: Vec<RunningTask>) -> Vec<pb::RunningTask> {
    running
        .into_iter()
        .map(|r| pb::RunningTask {
            task_id: r.task_id.to_string(),
            lease_generation: r.lease_generation,
            agent_id: r.agent_id,
        })
        .collect()
}

pub fn welcome_into_pb(welcome: Welcome) -> pb::HubMessage {
    let welcome = pb::Welcome {
        sidecar_id: welcome.sidecar_id,
        agent_ids: welcome.agent_ids,
        heartbeat_interval_ms: welcome.heartbeat_interval.as_millis() as u64,
        lease_ttl_ms: welcome.lease_ttl.as_millis() as u64,
        hub_version: welcome.hub_version,
    };
    pb::HubMessage { msg: Some(HubMsg::Welcome(welcome)) }
}

/// The hub's first message, which must be its welcome. Intervals are kept sane: a heartbeat
/// every 50 ms at most, a lease of at least 1 ms.
pub fn welcome_from_pb(message: pb::HubMessage) -> Result<Welcome, Error> {
    let Some(HubMsg::Welcome(welcome)) = message.msg else {
        return Err(Error::invalid("welcome", "the hub's first message was not a welcome"));
    };
    Ok(Welcome {
        sidecar_id: welcome.sidecar_id,
        agent_ids: welcome.agent_ids,
        heartbeat_interval: Duration::from_millis(welcome.heartbeat_interval_ms.max(50)),
        lease_ttl: Duration::from_millis(welcome.lease_ttl_ms.max(1)),
        hub_version: welcome.hub_version,
    })
}

pub fn to_sidecar_into_pb(message: ToSidecar) -> pb::HubMessage {
    let msg = match message {
        ToSidecar::Assign(assignment) => HubMsg::Assign(assignment_into_pb(*assignment)),
        ToSidecar::Cancel { task_id, lease_generation, reason } => {
            HubMsg::Cancel(pb::CancelTask { task_id: task_id.to_string(), lease_generation, reason })
        }
        ToSidecar::Stored { task_id, lease_generation } => {
            HubMsg::Stored(pb::ResultStored { task_id: task_id.to_string(), lease_generation })
        }
        ToSidecar::Drain { deadline_unix_ms } => {
            HubMsg::Drain(pb::Drain { deadline_unix_ms: deadline_unix_ms.unwrap_or(0) })
        }
        ToSidecar::Preload { endpoint_id, model, keep_alive } => {
            HubMsg::Preload(pb::Preload { endpoint_id, model, keep_alive: keep_alive.unwrap_or_default() })
        }
    };
    pb::HubMessage { msg: Some(msg) }
}

fn assignment_into_pb(assignment: Assignment) -> pb::Assign {
    let (judge_model, judge_endpoint_id) = assignment.judge.unwrap_or_default();
    pb::Assign {
        task_id: assignment.task_id.to_string(),
        lease_generation: assignment.lease_generation,
        attempt: assignment.attempt,
        agent_id: assignment.agent_id,
        spec: Some(spec_into_pb(assignment.spec)),
        endpoint_id: assignment.endpoint_id.unwrap_or_default(),
        model: assignment.model.unwrap_or_default(),
        price: assignment.price.map(price_into_pb),
        judge_model,
        judge_endpoint_id,
        prices: assignment.prices.into_iter().map(|(m, p)| (m, price_into_pb(p))).collect(),
        traceparent: assignment.trace.map(|t| t.to_string()).unwrap_or_default(),
    }
}

/// A hub message the sidecar cannot take.
#[derive(Debug)]
pub enum Refused {
    /// Not a message a session may carry here (a second welcome, an empty one, a bad id).
    Message(Error),
    /// An assignment for a task, whose spec this sidecar cannot run as sent: the sidecar fails
    /// the attempt, saying why, so the hub hears of it.
    Assignment { task_id: TaskId, lease_generation: u64, error: Error },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Message(error) | Refused::Assignment { error, .. } => error.fmt(f),
        }
    }
}

/// A message from the hub after its welcome. An assignment's spec gets `defaults` where it
/// leaves a limit out, as the hub's own submit does.
pub fn to_sidecar_from_pb(message: pb::HubMessage, defaults: &SpecDefaults) -> Result<ToSidecar, Refused> {
    let refused = Refused::Message;
    let message = match message.msg {
        None => return Err(refused(Error::invalid("message", "empty"))),
        Some(HubMsg::Welcome(_)) => return Err(refused(Error::invalid("welcome", "a second welcome"))),
        Some(HubMsg::Assign(assign)) => ToSidecar::Assign(Box::new(assignment_from_pb(assign, defaults)?)),
        Some(HubMsg::Cancel(cancel)) => ToSidecar::Cancel {
            task_id: task_id("cancel.task_id", &cancel.task_id).map_err(refused)?,
            lease_generation: cancel.lease_generation,
            reason: cancel.reason,
        },
        Some(HubMsg::Stored(stored)) => ToSidecar::Stored {
            task_id: task_id("stored.task_id", &stored.task_id).map_err(refused)?,
            lease_generation: stored.lease_generation,
        },
        Some(HubMsg::Drain(drain)) => {
            ToSidecar::Drain { deadline_unix_ms: (drain.deadline_unix_ms != 0).then_some(drain.deadline_unix_ms) }
        }
        Some(HubMsg::Preload(preload)) => ToSidecar::Preload {
            endpoint_id: preload.endpoint_id,
            model: preload.model,
            keep_alive: nonempty(preload.keep_alive),
        },
    };
    Ok(message)
}

fn assignment_from_pb(assign: pb::Assign, defaults: &SpecDefaults) -> Result<Assignment, Refused> {
    let task_id = task_id("assign.task_id", &assign.task_id).map_err(Refused::Message)?;
    let lease_generation = assign.lease_generation;
    let spec = assign
        .spec
        .ok_or_else(|| Error::invalid("assign.spec", "the assignment has no spec"))
        .and_then(|spec| spec_from_pb(spec, defaults))
        .map_err(|error| Refused::Assignment { task_id, lease_generation, error })?;
    let mut prices: Vec<_> = assign.prices.into_iter().filter_map(|(m, p)| Some((m, price_from_pb(p)?))).collect();
    prices.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Assignment {
        task_id,
        lease_generation,
        attempt: assign.attempt,
        agent_id: assign.agent_id,
        spec,
        endpoint_id: nonempty(assign.endpoint_id),
        model: nonempty(assign.model),
        price: assign.price.and_then(price_from_pb),
        judge: nonempty(assign.judge_model).map(|model| (model, assign.judge_endpoint_id)),
        prices,
        trace: assign.traceparent.parse().ok(),
    })
}

pub fn from_sidecar_into_pb(message: FromSidecar) -> pb::SidecarMessage {
    let msg = match message {
        FromSidecar::Heartbeat { sent_unix_ms, running } => {
            SideMsg::Heartbeat(pb::Heartbeat { sent_unix_ms, running: running_into_pb(running) })
        }
        FromSidecar::Started { task_id, lease_generation, pid } => {
            SideMsg::Started(pb::TaskStarted { task_id: task_id.to_string(), lease_generation, pid })
        }
        FromSidecar::Output { task_id, lease_generation, stream, offset, data } => {
            let chunk = pb::OutputChunk { stream: stream_to_pb(stream).into(), offset, data, attempt: 0 };
            SideMsg::Output(pb::TaskOutput { task_id: task_id.to_string(), lease_generation, chunk: Some(chunk) })
        }
        FromSidecar::Finished { task_id, lease_generation, outcome } => SideMsg::Finished(pb::TaskFinished {
            task_id: task_id.to_string(),
            lease_generation,
            outcome: Some(outcome_into_pb(*outcome)),
        }),
        FromSidecar::Progress { task_id, lease_generation, blocked, verifying, message, step, service } => {
            SideMsg::Progress(pb::TaskProgress {
                task_id: task_id.to_string(),
                lease_generation,
                message,
                fraction: -1.0,
                blocked,
                verifying,
                step: step.map(|step| step_into_pb(*step)),
                service: service.map(|status| super::service::status_into_pb(*status)),
                ..Default::default()
            })
        }
        FromSidecar::Resources(report) => SideMsg::Resources(report_to_pb(&report)),
        FromSidecar::Models(endpoints) => SideMsg::Models(inventory_to_pb(&endpoints)),
        FromSidecar::Preloaded { endpoint_id, model, load_ms, error } => {
            SideMsg::Preloaded(pb::Preloaded { endpoint_id, model, load_ms, error: error.unwrap_or_default() })
        }
    };
    pb::SidecarMessage { msg: Some(msg) }
}

/// A message from sidecar `sidecar_id` after its hello, validated and bounded; its endpoints
/// are given their ids and owner.
pub fn from_sidecar_from_pb(sidecar_id: &str, message: pb::SidecarMessage) -> Result<FromSidecar, Error> {
    let message = match message.msg {
        None => return Err(Error::invalid("message", "empty")),
        Some(SideMsg::Hello(_)) => return Err(Error::invalid("hello", "hello may only be the first message")),
        Some(SideMsg::Heartbeat(beat)) => {
            FromSidecar::Heartbeat { sent_unix_ms: beat.sent_unix_ms, running: running_from_pb(beat.running)? }
        }
        Some(SideMsg::Started(started)) => FromSidecar::Started {
            task_id: task_id("started.task_id", &started.task_id)?,
            lease_generation: started.lease_generation,
            pid: started.pid,
        },
        Some(SideMsg::Output(output)) => {
            let chunk = output.chunk.ok_or_else(|| Error::invalid("output.chunk", "required"))?;
            let stream = stream_from_pb(chunk.stream)
                .ok_or_else(|| Error::invalid("output.chunk.stream", format!("{} is not a stream", chunk.stream)))?;
            FromSidecar::Output {
                task_id: task_id("output.task_id", &output.task_id)?,
                lease_generation: output.lease_generation,
                stream,
                offset: chunk.offset,
                data: chunk.data,
            }
        }
        Some(SideMsg::Finished(finished)) => FromSidecar::Finished {
            task_id: task_id("finished.task_id", &finished.task_id)?,
            lease_generation: finished.lease_generation,
            outcome: Box::new(outcome_from_pb(
                finished.outcome.ok_or_else(|| Error::invalid("finished.outcome", "required"))?,
            )),
        },
        Some(SideMsg::Progress(progress)) => FromSidecar::Progress {
            task_id: task_id("progress.task_id", &progress.task_id)?,
            lease_generation: progress.lease_generation,
            blocked: progress.blocked,
            verifying: progress.verifying,
            message: chars(progress.message, MAX_PROGRESS),
            step: progress.step.map(|step| Box::new(step_from_pb(step))),
            service: progress.service.map(super::service::status_from_pb).transpose()?.map(Box::new),
        },
        Some(SideMsg::Resources(report)) => FromSidecar::Resources(Box::new(resources_from_pb(report)?)),
        Some(SideMsg::Models(inventory)) => FromSidecar::Models(inventory_from_pb(sidecar_id, inventory)?),
        Some(SideMsg::Preloaded(preloaded)) => FromSidecar::Preloaded {
            endpoint_id: chars(preloaded.endpoint_id, MAX_PRELOAD_NAME),
            model: chars(preloaded.model, MAX_PRELOAD_NAME),
            load_ms: preloaded.load_ms,
            error: nonempty(chars(preloaded.error, MAX_PRELOAD_ERROR)),
        },
    };
    Ok(message)
}

#[cfg(test)]
mod tests;
