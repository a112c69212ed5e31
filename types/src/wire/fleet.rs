//! The fleet's side of the wire contract: agents, hosts and their resources, LLM endpoints.
//! Inbound reports are bounded, so one report cannot take the hub's memory.

use agentcom_proto::v1 as pb;

use super::nonempty;
use crate::agent::Transition;
use crate::domain::{Error, Numbered};
use crate::fleet::{self, AgentDetail, AgentView, HostView};

/// Bounds on what a sidecar may report, so one report cannot take the hub's memory.
const MAX_CORES: usize = 4096;
const MAX_DISKS: usize = 256;
const MAX_GPUS: usize = 64;
const MAX_GPU_PROCESSES: usize = 256;
const MAX_ENDPOINTS: usize = 64;
const MAX_MODELS: usize = 4096;
const MAX_NAME: usize = 512;

fn bounded<T>(what: &'static str, items: Vec<T>, max: usize) -> Result<Vec<T>, Error> {
    if items.len() > max {
        return Err(Error::invalid(what, format!("{} entries, at most {max}", items.len())));
    }
    Ok(items)
}

fn name(what: &'static str, value: String) -> Result<String, Error> {
    if value.len() > MAX_NAME {
        return Err(Error::invalid(what, format!("{} bytes, at most {MAX_NAME}", value.len())));
    }
    Ok(value)
}

pub fn resources_from_pb(report: pb::ResourceReport) -> Result<fleet::Resources, Error> {
    let disks = bounded("resources.disks", report.disks, MAX_DISKS)?
        .into_iter()
        .map(|d| {
            Ok(fleet::Disk {
                mount: name("resources.disks.mount", d.mount)?,
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
            })
        })
        .collect::<Result<_, Error>>()?;
    let gpus = bounded("resources.gpus", report.gpus, MAX_GPUS)?
        .into_iter()
        .map(|g| {
            Ok(fleet::Gpu {
                index: g.index,
                name: name("resources.gpus.name", g.name)?,
                uuid: name("resources.gpus.uuid", g.uuid)?,
                utilization_percent: g.utilization_percent,
                memory_utilization_percent: g.memory_utilization_percent,
                memory_used_bytes: g.memory_used_bytes,
                memory_total_bytes: g.memory_total_bytes,
                temperature_celsius: g.temperature_celsius,
                power_milliwatts: g.power_milliwatts,
                processes: bounded("resources.gpus.processes", g.processes, MAX_GPU_PROCESSES)?
                    .into_iter()
                    .map(|p| fleet::GpuProcess { pid: p.pid, used_memory_bytes: p.used_memory_bytes })
                    .collect(),
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(fleet::Resources {
        at_unix_ms: report.at_unix_ms,
        cpu_percent: report.cpu_percent,
        cpu_per_core_percent: bounded("resources.cpu_per_core_percent", report.cpu_per_core_percent, MAX_CORES)?,
        load1: report.load1,
        load5: report.load5,
        load15: report.load15,
        memory_total_bytes: report.memory_total_bytes,
        memory_used_bytes: report.memory_used_bytes,
        memory_available_bytes: report.memory_available_bytes,
        disks,
        gpus,
        gpus_simulated: report.gpus_simulated,
    })
}

/// A sidecar's inventory, owned by that sidecar; the hub gives each endpoint its id.
pub fn inventory_from_pb(sidecar_id: &str, inventory: pb::ModelInventory) -> Result<Vec<fleet::Endpoint>, Error> {
    let owner = fleet::Owner::Sidecar(sidecar_id.to_owned());
    bounded("models.endpoints", inventory.endpoints, MAX_ENDPOINTS)?
        .into_iter()
        .map(|e| {
            let kind = fleet::EndpointKind::parse(&e.kind).ok_or_else(|| {
                Error::invalid("models.endpoints.kind", format!("{:?} is not an endpoint kind", e.kind))
            })?;
            let url = name("models.endpoints.url", e.url)?;
            let models = bounded("models.endpoints.models", e.models, MAX_MODELS)?
                .into_iter()
                .map(|m| {
                    Ok(fleet::Model {
                        name: name("models.name", m.name)?,
                        size_bytes: m.size_bytes,
                        family: name("models.family", m.family)?,
                        parameter_size: name("models.parameter_size", m.parameter_size)?,
                        quantization: name("models.quantization", m.quantization)?,
                        loaded: m.loaded,
                        size_vram_bytes: m.size_vram_bytes,
                        expires_unix_ms: (m.expires_unix_ms != 0).then_some(m.expires_unix_ms),
                    })
                })
                .collect::<Result<_, Error>>()?;
            Ok(fleet::Endpoint {
                id: fleet::endpoint_id(&owner, &url),
                url,
                kind,
                owner: owner.clone(),
                healthy: e.healthy,
                version: name("models.endpoints.version", e.version)?,
                error: nonempty(name("models.endpoints.error", e.error)?),
                models,
                checked_unix_ms: e.checked_unix_ms,
                parallel: e.parallel.min(1_024),
            })
        })
        .collect()
}

pub fn report_to_pb(report: &fleet::Resources) -> pb::ResourceReport {
    pb::ResourceReport {
        at_unix_ms: report.at_unix_ms,
        cpu_percent: report.cpu_percent,
        cpu_per_core_percent: report.cpu_per_core_percent.clone(),
        load1: report.load1,
        load5: report.load5,
        load15: report.load15,
        memory_total_bytes: report.memory_total_bytes,
        memory_used_bytes: report.memory_used_bytes,
        memory_available_bytes: report.memory_available_bytes,
        disks: report
            .disks
            .iter()
            .map(|d| pb::Disk {
                mount: d.mount.clone(),
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
            })
            .collect(),
        gpus: report
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                index: g.index,
                name: g.name.clone(),
                uuid: g.uuid.clone(),
                utilization_percent: g.utilization_percent,
                memory_utilization_percent: g.memory_utilization_percent,
                memory_used_bytes: g.memory_used_bytes,
                memory_total_bytes: g.memory_total_bytes,
                temperature_celsius: g.temperature_celsius,
                power_milliwatts: g.power_milliwatts,
                processes: g
                    .processes
                    .iter()
                    .map(|p| pb::GpuProcess { pid: p.pid, used_memory_bytes: p.used_memory_bytes })
                    .collect(),
            })
            .collect(),
        gpus_simulated: report.gpus_simulated,
    }
}

pub fn model_to_pb(m: &fleet::Model) -> pb::Model {
    pb::Model {
        name: m.name.clone(),
        size_bytes: m.size_bytes,
        family: m.family.clone(),
        parameter_size: m.parameter_size.clone(),
        quantization: m.quantization.clone(),
        loaded: m.loaded,
        size_vram_bytes: m.size_vram_bytes,
        expires_unix_ms: m.expires_unix_ms.unwrap_or(0),
    }
}

/// A sidecar's inventory on the wire; the hub gives each endpoint its id and owner again.
pub fn inventory_to_pb(endpoints: &[fleet::Endpoint]) -> pb::ModelInventory {
    pb::ModelInventory { endpoints: endpoints.iter().map(endpoint_to_pb).collect() }
}

pub fn endpoint_to_pb(endpoint: &fleet::Endpoint) -> pb::LlmEndpoint {
    pb::LlmEndpoint {
        id: endpoint.id.clone(),
        url: endpoint.url.clone(),
        kind: endpoint.kind.as_str().to_owned(),
        healthy: endpoint.healthy,
        version: endpoint.version.clone(),
        error: endpoint.error.clone().unwrap_or_default(),
        sidecar_id: match &endpoint.owner {
            fleet::Owner::Sidecar(id) => id.clone(),
            fleet::Owner::Hub => String::new(),
        },
        checked_unix_ms: endpoint.checked_unix_ms,
        models: endpoint.models.iter().map(model_to_pb).collect(),
        parallel: endpoint.parallel,
        parallel_learned: 0,
    }
}

pub fn agent_to_pb(agent: &AgentView) -> pb::Agent {
    pb::Agent {
        id: agent.id.clone(),
        sidecar_id: agent.sidecar_id.clone(),
        hostname: agent.hostname.clone(),
        state: agent.state.number(),
        task_id: agent.task_id.map(|id| id.to_string()).unwrap_or_default(),
        last_seen_unix_ms: agent.last_seen_unix_ms,
        state_since_unix_ms: agent.state_since_unix_ms,
        capabilities: agent.capabilities.clone(),
        tags: agent.tags.clone(),
        version: agent.version.clone(),
        stalled: agent.stalled,
        last_activity_unix_ms: agent.last_activity_unix_ms,
        cordoned: agent.cordoned,
        history: Vec::new(),
    }
}

pub fn agent_detail_to_pb(detail: &AgentDetail) -> pb::Agent {
    let transition = |t: &Transition| pb::AgentTransition {
        at_unix_ms: t.at_unix_ms,
        from: t.from.number(),
        to: t.to.number(),
        cause: t.cause.clone(),
    };
    pb::Agent { history: detail.history.iter().map(transition).collect(), ..agent_to_pb(&detail.agent) }
}

pub fn host_to_pb(host: &HostView) -> pb::Host {
    pb::Host {
        id: host.id.clone(),
        hostname: host.hostname.clone(),
        os: host.os.clone(),
        arch: host.arch.clone(),
        version: host.version.clone(),
        online: host.online,
        last_seen_unix_ms: host.last_seen_unix_ms,
        cordon: host
            .cordon
            .map(|c| pb::Cordon { since_unix_ms: c.since_unix_ms, deadline_unix_ms: c.deadline_unix_ms.unwrap_or(0) }),
        agents: host.agents as u32,
        containment: host.containment.clone(),
        resources: host.resources.as_ref().map(report_to_pb),
        history: host
            .history
            .iter()
            .flatten()
            .map(|s| pb::ResourceSample {
                at_unix_ms: s.at_unix_ms,
                cpu_percent: s.cpu_percent,
                load1: s.load1,
                memory_used_bytes: s.memory_used_bytes,
                gpu_utilization_percent: s.gpu_utilization_percent,
                gpu_memory_used_bytes: s.gpu_memory_used_bytes,
            })
            .collect(),
    }
}
