//! What the sidecar tells the hub about its machine, whether or not a session is open: resource
//! readings every interval, and the inventory of its LLM endpoints every check cycle.
//!
//! Each reporter keeps only its latest report in a `watch` channel; a session sends a report
//! when it changes and the current one right after joining. Provider keys stay here: the
//! inventory names providers and models, never keys.

use std::time::Duration;

use agentcom_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::llm;
use crate::resources::{self, Sampler};

/// Where Ollama listens unless configured otherwise.
pub const DEFAULT_OLLAMA_URL: &str = "http://127.0.0.1:11434";

/// The Anthropic models a sidecar with a key advertises unless told otherwise.
pub const DEFAULT_ANTHROPIC_MODELS: &[&str] = &["claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"];
pub const ANTHROPIC_URL: &str = "https://api.anthropic.com";

#[derive(Clone, Debug)]
pub struct Settings {
    /// How often resources are read and reported.
    pub resources_every: Duration,
    /// Synthetic GPUs instead of NVML (for development and demos; labelled simulated).
    pub simulate_gpus: u32,
    /// How often LLM endpoints are checked.
    pub llm_check_every: Duration,
    /// Ollama servers on this machine, e.g. `http://127.0.0.1:11434`, reported up or down.
    pub ollama: Vec<String>,
    /// Also look for Ollama at its default address, and report it once it has answered.
    pub discover_ollama: bool,
    pub openai: Option<OpenAi>,
    pub anthropic: Option<Anthropic>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            resources_every: Duration::from_secs(15),
            simulate_gpus: 0,
            llm_check_every: Duration::from_secs(10),
            ollama: Vec::new(),
            discover_ollama: true,
            openai: None,
            anthropic: None,
        }
    }
}

/// An OpenAI-compatible server (vLLM, llama.cpp, a hosted API) this sidecar may call.
#[derive(Clone)]
pub struct OpenAi {
    /// Ending in `/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// Models to offer; empty: whatever `GET /models` lists.
    pub models: Vec<String>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .finish()
    }
}

/// The Claude API, available because this sidecar holds a key.
#[derive(Clone)]
pub struct Anthropic {
    pub api_key: String,
    pub models: Vec<String>,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic").field("api_key", &"<redacted>").field("models", &self.models).finish()
    }
}

/// The latest reports, as sessions read them.
#[derive(Clone)]
pub(crate) struct Latest {
    pub(crate) resources: watch::Receiver<Option<pb::ResourceReport>>,
    pub(crate) models: watch::Receiver<Option<pb::ModelInventory>>,
}

/// Starts both reporters; they stop with `stop`.
pub(crate) fn start(settings: Settings, stop: CancellationToken) -> Latest {
    let (resources_tx, resources) = watch::channel(None);
    let (models_tx, models) = watch::channel(None);
    tokio::spawn(report_resources(settings.clone(), resources_tx, stop.clone()));
    tokio::spawn(report_models(settings, models_tx, stop));
    Latest { resources, models }
}

async fn report_resources(
    settings: Settings,
    latest: watch::Sender<Option<pb::ResourceReport>>,
    stop: CancellationToken,
) {
    let simulate = settings.simulate_gpus;
    let Ok(mut sampler) = tokio::task::spawn_blocking(move || Sampler::new(simulate)).await else { return };
    if simulate > 0 {
        info!(gpus = simulate, "reporting simulated GPUs");
    }
    let mut ticker = tokio::time::interval(settings.resources_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        // sysinfo and NVML block: off the async workers, the sampler moving there and back.
        let Ok((back, report)) = tokio::task::spawn_blocking(move || {
            let report = sampler.sample();
            (sampler, report)
        })
        .await
        else {
            return;
        };
        sampler = back;
        latest.send_replace(Some(report_to_pb(&report)));
    }
}

/// A resource report on the wire. The hub answers its API with the same conversion.
pub fn report_to_pb(report: &resources::Report) -> pb::ResourceReport {
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

/// A model on the wire. The hub answers its API with the same conversion.
pub fn model_to_pb(m: &llm::Model) -> pb::Model {
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

async fn report_models(settings: Settings, latest: watch::Sender<Option<pb::ModelInventory>>, stop: CancellationToken) {
    let mut settings = settings;
    let discover = settings.discover_ollama && !settings.ollama.iter().any(|u| same_url(u, DEFAULT_OLLAMA_URL));
    if discover {
        settings.ollama.push(DEFAULT_OLLAMA_URL.to_owned());
    }
    let mut discovered = false;
    let client = llm::client();
    let mut ticker = tokio::time::interval(settings.llm_check_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy: Vec<Option<bool>> = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut inventory = check_all(&client, &settings).await;
        if discover && !discovered {
            // The default address counts only once something has answered there.
            match inventory.endpoints.iter().position(|e| same_url(&e.url, DEFAULT_OLLAMA_URL)) {
                Some(at) if inventory.endpoints[at].healthy => {
                    discovered = true;
                    info!(url = DEFAULT_OLLAMA_URL, "found a local Ollama");
                }
                Some(at) => drop(inventory.endpoints.remove(at)),
                None => {}
            }
        }
        log_health_changes(&inventory, &mut was_healthy);
        latest.send_replace(Some(inventory));
    }
}

/// One check of every configured endpoint, all at once.
pub(crate) async fn check_all(client: &reqwest::Client, settings: &Settings) -> pb::ModelInventory {
    let ollama = futures_util::future::join_all(
        settings
            .ollama
            .iter()
            .map(|url| async move { endpoint_to_pb(url, "ollama", llm::probe_ollama(client, url).await) }),
    );
    let openai = async {
        match &settings.openai {
            Some(openai) => {
                let mut probe = llm::probe_openai(client, &openai.base_url, openai.api_key.as_deref()).await;
                if !openai.models.is_empty() {
                    probe.models =
                        openai.models.iter().map(|m| llm::Model { name: m.clone(), ..Default::default() }).collect();
                }
                Some(endpoint_to_pb(&openai.base_url, "openai", probe))
            }
            None => None,
        }
    };
    let (mut endpoints, openai) = tokio::join!(ollama, openai);
    endpoints.extend(openai);
    if let Some(anthropic) = &settings.anthropic {
        // Not probed: a call would cost money and send the key out on a timer. The key's
        // presence is the capability; failures show up on the first task.
        let models = anthropic.models.iter().map(|m| llm::Model { name: m.clone(), ..Default::default() }).collect();
        endpoints.push(endpoint_to_pb(
            ANTHROPIC_URL,
            "anthropic",
            llm::Probe { healthy: true, models, ..Default::default() },
        ));
    }
    pb::ModelInventory { endpoints }
}

fn endpoint_to_pb(url: &str, kind: &str, probe: llm::Probe) -> pb::LlmEndpoint {
    pb::LlmEndpoint {
        url: url.to_owned(),
        kind: kind.to_owned(),
        healthy: probe.healthy,
        version: probe.version,
        error: probe.error.unwrap_or_default(),
        checked_unix_ms: crate::now_ms(),
        models: probe.models.iter().map(model_to_pb).collect(),
        ..Default::default()
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// One line when an endpoint comes up or goes down, not one per check.
fn log_health_changes(inventory: &pb::ModelInventory, was: &mut Vec<Option<bool>>) {
    was.resize(inventory.endpoints.len(), None);
    for (endpoint, was) in inventory.endpoints.iter().zip(was.iter_mut()) {
        if *was != Some(endpoint.healthy) {
            if endpoint.healthy {
                info!(url = endpoint.url, kind = endpoint.kind, models = endpoint.models.len(), "LLM endpoint up");
            } else {
                info!(url = endpoint.url, kind = endpoint.kind, error = endpoint.error, "LLM endpoint down");
            }
            *was = Some(endpoint.healthy);
        }
    }
}
