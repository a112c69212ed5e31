//! The fleet as JSON: agents and their transitions, hosts with their resources and history,
//! cordons, LLM endpoints and their models.

use super::*;

#[derive(Serialize, Debug, PartialEq)]
pub struct AgentDto {
    pub id: String,
    pub sidecar_id: String,
    pub hostname: String,
    pub state: &'static str,
    pub task_id: Option<String>,
    pub state_since_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    pub version: String,
    pub stalled: bool,
    pub last_activity_unix_ms: i64,
    pub cordoned: bool,
    /// Only for a single agent: its last transitions, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<TransitionDto>>,
}

impl From<&AgentView> for AgentDto {
    fn from(agent: &AgentView) -> AgentDto {
        AgentDto {
            id: agent.id.clone(),
            sidecar_id: agent.sidecar_id.clone(),
            hostname: agent.hostname.clone(),
            state: agent.state.as_str(),
            task_id: agent.task_id.map(|id| id.to_string()),
            state_since_unix_ms: agent.state_since_unix_ms,
            last_seen_unix_ms: agent.last_seen_unix_ms,
            capabilities: agent.capabilities.clone(),
            tags: agent.tags.clone(),
            version: agent.version.clone(),
            stalled: agent.stalled,
            last_activity_unix_ms: agent.last_activity_unix_ms,
            cordoned: agent.cordoned,
            history: None,
        }
    }
}

impl From<&AgentDetail> for AgentDto {
    fn from(detail: &AgentDetail) -> AgentDto {
        AgentDto {
            history: Some(detail.history.iter().map(TransitionDto::from).collect()),
            ..AgentDto::from(&detail.agent)
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct TransitionDto {
    pub at_unix_ms: i64,
    pub from: &'static str,
    pub to: &'static str,
    pub cause: String,
}

impl From<&Transition> for TransitionDto {
    fn from(t: &Transition) -> TransitionDto {
        TransitionDto { at_unix_ms: t.at_unix_ms, from: t.from.as_str(), to: t.to.as_str(), cause: t.cause.clone() }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct HostDto {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub version: String,
    pub online: bool,
    pub last_seen_unix_ms: i64,
    pub cordon: Option<CordonDto>,
    pub agents: usize,
    pub containment: String,
    pub resources: Option<ResourcesDto>,
    /// Only for a single host: an hour of samples, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<SampleDto>>,
}

impl From<&HostView> for HostDto {
    fn from(host: &HostView) -> HostDto {
        HostDto {
            id: host.id.clone(),
            hostname: host.hostname.clone(),
            os: host.os.clone(),
            arch: host.arch.clone(),
            version: host.version.clone(),
            online: host.online,
            last_seen_unix_ms: host.last_seen_unix_ms,
            cordon: host.cordon.as_ref().map(CordonDto::from),
            agents: host.agents,
            containment: host.containment.clone(),
            resources: host.resources.as_ref().map(ResourcesDto::from),
            history: host.history.as_ref().map(|h| h.iter().map(SampleDto::from).collect()),
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct CordonDto {
    pub since_unix_ms: i64,
    pub deadline_unix_ms: Option<i64>,
}

impl From<&Cordon> for CordonDto {
    fn from(cordon: &Cordon) -> CordonDto {
        CordonDto { since_unix_ms: cordon.since_unix_ms, deadline_unix_ms: cordon.deadline_unix_ms }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct ResourcesDto {
    pub at_unix_ms: i64,
    pub cpu_percent: f64,
    pub cpu_per_core_percent: Vec<f32>,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_available_bytes: u64,
    pub disks: Vec<DiskDto>,
    pub gpus: Vec<GpuDto>,
    pub gpus_simulated: bool,
}

impl From<&Resources> for ResourcesDto {
    fn from(r: &Resources) -> ResourcesDto {
        ResourcesDto {
            at_unix_ms: r.at_unix_ms,
            cpu_percent: r.cpu_percent,
            cpu_per_core_percent: r.cpu_per_core_percent.clone(),
            load1: r.load1,
            load5: r.load5,
            load15: r.load15,
            memory_total_bytes: r.memory_total_bytes,
            memory_used_bytes: r.memory_used_bytes,
            memory_available_bytes: r.memory_available_bytes,
            disks: r
                .disks
                .iter()
                .map(|d| DiskDto {
                    mount: d.mount.clone(),
                    total_bytes: d.total_bytes,
                    available_bytes: d.available_bytes,
                })
                .collect(),
            gpus: r
                .gpus
                .iter()
                .map(|g| GpuDto {
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
                        .map(|p| GpuProcessDto { pid: p.pid, used_memory_bytes: p.used_memory_bytes })
                        .collect(),
                })
                .collect(),
            gpus_simulated: r.gpus_simulated,
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct DiskDto {
    pub mount: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// A metric the device does not report is `null`.
#[derive(Serialize, Debug, PartialEq)]
pub struct GpuDto {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub utilization_percent: Option<u32>,
    pub memory_utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
    pub power_milliwatts: Option<u32>,
    pub processes: Vec<GpuProcessDto>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct GpuProcessDto {
    pub pid: u32,
    pub used_memory_bytes: Option<u64>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct SampleDto {
    pub at_unix_ms: i64,
    pub cpu_percent: f32,
    pub load1: f32,
    pub memory_used_bytes: u64,
    pub gpu_utilization_percent: Option<f32>,
    pub gpu_memory_used_bytes: u64,
}

impl From<&Sample> for SampleDto {
    fn from(s: &Sample) -> SampleDto {
        SampleDto {
            at_unix_ms: s.at_unix_ms,
            cpu_percent: s.cpu_percent,
            load1: s.load1,
            memory_used_bytes: s.memory_used_bytes,
            gpu_utilization_percent: s.gpu_utilization_percent,
            gpu_memory_used_bytes: s.gpu_memory_used_bytes,
        }
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct EndpointDto {
    pub id: String,
    pub url: String,
    pub kind: &'static str,
    pub owner: OwnerDto,
    pub healthy: bool,
    pub version: String,
    pub error: Option<String>,
    pub models: Vec<ModelDto>,
    pub checked_unix_ms: i64,
    /// Requests it runs at once; 0: not said.
    pub parallel: u32,
    /// For one that does not say: how many it has been seen to run at once (listings only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_learned: Option<u32>,
}

impl From<&Endpoint> for EndpointDto {
    fn from(e: &Endpoint) -> EndpointDto {
        EndpointDto {
            id: e.id.clone(),
            url: crate::fleet::without_password(&e.url),
            kind: e.kind.as_str(),
            owner: match &e.owner {
                Owner::Sidecar(id) => OwnerDto::Sidecar { sidecar_id: id.clone() },
                Owner::Hub => OwnerDto::Hub,
            },
            healthy: e.healthy,
            version: e.version.clone(),
            error: e.error.as_deref().map(crate::fleet::without_password),
            models: e.models.iter().map(ModelDto::from).collect(),
            checked_unix_ms: e.checked_unix_ms,
            parallel: e.parallel,
            parallel_learned: None,
        }
    }
}

/// `{"by": "sidecar", "sidecar_id": ...}` or `{"by": "hub"}`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum OwnerDto {
    Sidecar { sidecar_id: String },
    Hub,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct ModelDto {
    pub name: String,
    pub size_bytes: u64,
    pub family: String,
    pub parameter_size: String,
    pub quantization: String,
    pub loaded: bool,
    pub size_vram_bytes: u64,
    pub expires_unix_ms: Option<i64>,
    /// `warm` when loaded, else `cold`.
    pub state: &'static str,
}

impl From<&Model> for ModelDto {
    fn from(m: &Model) -> ModelDto {
        ModelDto {
            name: m.name.clone(),
            size_bytes: m.size_bytes,
            family: m.family.clone(),
            parameter_size: m.parameter_size.clone(),
            quantization: m.quantization.clone(),
            loaded: m.loaded,
            size_vram_bytes: m.size_vram_bytes,
            expires_unix_ms: m.expires_unix_ms,
            state: m.warmth(),
        }
    }
}
