//! What the sidecar tells the hub about its machine, whether or not a session is open: resource
//! readings every interval, and the inventory of its LLM endpoints every check cycle.
//!
//! Each reporter keeps only its latest report in a `watch` channel, as domain types; a session
//! converts and sends a report when it changes, and the current one right after joining. Provider keys stay here: the
//! inventory names providers and models, never keys.
//!
//! Probes never disturb work: an endpoint with requests of this sidecar in flight ([`InFlight`])
//! is not probed (llama.cpp's server interrupts a generation for any request, and answers none
//! while it generates), and keeps what the last probe found; a probe that fails while requests
//! went out meanwhile is set aside the same way. A stream that delivers tokens is better evidence
//! of health than a probe.
//!
//! In detail:
//!
//! `reports`: the resource reporter and the LLM inventory reporter (with `agentcom-llm`'s probes),
//! each keeping its latest report, as domain types, in a `watch` channel, independent of sessions.
//! `InFlight` counts the runners' requests to each endpoint; the reporter sends no probe to a busy
//! endpoint (llama.cpp's server interrupts a generation for any request) and sets aside a probe
//! that failed while requests went out. Provider keys stay in the sidecar: the inventory names
//! providers and models only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcom_llm as llm;
use agentcom_types::fleet::{Endpoint, EndpointKind, Model, Owner, Resources};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::resources::Sampler;

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
    /// Requests each Ollama server runs at once (its `OLLAMA_NUM_PARALLEL`); 0: not said.
    pub ollama_parallel: u32,
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
            ollama_parallel: 0,
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
    /// Requests it runs at once (vLLM's batch, llama.cpp's `--parallel`); 0: not said, and the
    /// hub gives it one at a time (llama.cpp's server interrupts a generation for the next).
    pub parallel: u32,
    /// The model's context window in tokens, when the server does not say it (llama-cpp-python
    /// has no `/props`); agents keep their conversations inside it.
    pub context: Option<u64>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .field("parallel", &self.parallel)
            .field("context", &self.context)
            .finish()
    }
}

/// The flags that give a sidecar an OpenAI-compatible server, shared by `agentcom-sidecar run`
/// and `agentcom-hub dev`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OpenAiArgs {
    /// An OpenAI-compatible server (ending in /v1: llama.cpp's server, vLLM); its key comes from
    /// OPENAI_API_KEY.
    #[arg(long, value_name = "URL")]
    pub openai_base_url: Option<String>,
    /// Models to offer from the OpenAI-compatible server (repeatable) [default: what it lists].
    #[arg(long = "openai-model", value_name = "MODEL")]
    pub openai_models: Vec<String>,
    /// Requests the OpenAI-compatible server runs at once (vLLM's batch, llama.cpp's --parallel);
    /// the hub sends it no more [default: 1, since llama.cpp's server interrupts a generation for
    /// the next request].
    #[arg(long, value_name = "N")]
    pub openai_parallel: Option<u32>,
    /// The context window of the OpenAI-compatible server's model, in tokens, for servers that
    /// do not say it (llama-cpp-python); agents keep their conversations inside it.
    #[arg(long, value_name = "TOKENS")]
    pub openai_context: Option<u64>,
}

impl OpenAiArgs {
    /// The server these flags name, with its key, or why the flags are wrong.
    pub fn openai(&self, api_key: Option<String>) -> Result<Option<OpenAi>, String> {
        let Some(base_url) = &self.openai_base_url else { return Ok(None) };
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(format!("--openai-base-url {base_url:?} must start with http:// or https://"));
        }
        if self.openai_parallel.is_some_and(|n| !(1..=1_024).contains(&n)) {
            return Err("--openai-parallel must be 1 to 1024".to_owned());
        }
        if self.openai_context.is_some_and(|n| n < 512) {
            return Err("--openai-context must be at least 512 tokens".to_owned());
        }
        Ok(Some(OpenAi {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            models: self.openai_models.clone(),
            parallel: self.openai_parallel.unwrap_or(0),
            context: self.openai_context,
        }))
    }
}

/// The Claude API, available because this sidecar holds a key.
#[derive(Clone)]
pub struct Anthropic {
    pub api_key: String,
    /// `https://api.anthropic.com` unless a gateway stands in front of it.
    pub base_url: String,
    pub models: Vec<String>,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("models", &self.models)
            .finish()
    }
}

/// Requests this sidecar has in flight to each endpoint (by URL), counted by the runners that
/// send them: the model reporter sends no probe to a busy endpoint.
#[derive(Clone, Default, Debug)]
pub struct InFlight(Arc<Mutex<HashMap<String, u32>>>);

/// One request in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlightGuard {
    in_flight: InFlight,
    url: String,
}

impl InFlight {
    /// Counts a request to `url` until the guard is dropped.
    pub fn enter(&self, url: &str) -> InFlightGuard {
        let url = url.trim_end_matches('/').to_owned();
        *self.0.lock().expect("in-flight lock poisoned").entry(url.clone()).or_default() += 1;
        InFlightGuard { in_flight: self.clone(), url }
    }

    /// Requests in flight to `url` now.
    pub fn count(&self, url: &str) -> u32 {
        self.0.lock().expect("in-flight lock poisoned").get(url.trim_end_matches('/')).copied().unwrap_or(0)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = self.in_flight.0.lock().expect("in-flight lock poisoned");
        if let Some(n) = map.get_mut(&self.url) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.url);
            }
        }
    }
}

/// The latest reports, as sessions read them.
#[derive(Clone)]
pub(crate) struct Latest {
    pub(crate) resources: watch::Receiver<Option<Resources>>,
    /// The endpoints, owned by this sidecar.
    pub(crate) models: watch::Receiver<Option<Vec<Endpoint>>>,
    /// Asks the model reporter to check its endpoints now (after a preload) rather than at its
    /// next tick.
    pub(crate) recheck: Arc<Notify>,
    /// Requests the runners have in flight, which the model reporter does not probe over.
    pub(crate) in_flight: InFlight,
}

/// Starts both reporters; they stop with `stop`.
pub(crate) fn start(sidecar_id: &str, settings: Settings, stop: CancellationToken) -> Latest {
    let (resources_tx, resources) = watch::channel(None);
    let (models_tx, models) = watch::channel(None);
    tokio::spawn(report_resources(settings.clone(), resources_tx, stop.clone()));
    let owner = Owner::Sidecar(sidecar_id.to_owned());
    let recheck = Arc::new(Notify::new());
    let in_flight = InFlight::default();
    tokio::spawn(report_models(owner, settings, models_tx, recheck.clone(), in_flight.clone(), stop));
    Latest { resources, models, recheck, in_flight }
}

async fn report_resources(settings: Settings, latest: watch::Sender<Option<Resources>>, stop: CancellationToken) {
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
        latest.send_replace(Some(report));
    }
}

async fn report_models(
    owner: Owner,
    settings: Settings,
    latest: watch::Sender<Option<Vec<Endpoint>>>,
    recheck: Arc<Notify>,
    in_flight: InFlight,
    stop: CancellationToken,
) {
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
            _ = recheck.notified() => {}
            _ = stop.cancelled() => return,
        }
        let previous = latest.borrow().clone().unwrap_or_default();
        let mut inventory = check_all(&client, &owner, &settings, &in_flight, &previous).await;
        if discover && !discovered {
            // The default address counts only once something has answered there.
            match inventory.iter().position(|e| same_url(&e.url, DEFAULT_OLLAMA_URL)) {
                Some(at) if inventory[at].healthy => {
                    discovered = true;
                    info!(url = DEFAULT_OLLAMA_URL, "found a local Ollama");
                }
                Some(at) => drop(inventory.remove(at)),
                None => {}
            }
        }
        log_health_changes(&inventory, &mut was_healthy);
        latest.send_replace(Some(inventory));
    }
}

/// One check of every configured endpoint, all at once; an endpoint busy with this sidecar's
/// requests keeps what `previous` says of it (see the module's docs).
pub(crate) async fn check_all(
    client: &reqwest::Client,
    owner: &Owner,
    settings: &Settings,
    in_flight: &InFlight,
    previous: &[Endpoint],
) -> Vec<Endpoint> {
    let found = |url: &str, kind, probe: llm::Probe| {
        probe.found(Endpoint::new(owner.clone(), url.to_owned(), kind), crate::now_ms())
    };
    let ollama = futures_util::future::join_all(settings.ollama.iter().map(|url| {
        undisturbed(url, in_flight, previous, async move {
            found(url, EndpointKind::Ollama, llm::probe_ollama(client, url).await)
        })
    }));
    let ollama = async {
        let mut endpoints = ollama.await;
        for endpoint in &mut endpoints {
            endpoint.parallel = settings.ollama_parallel;
        }
        endpoints
    };
    let openai = async {
        match &settings.openai {
            Some(openai) => Some(
                undisturbed(&openai.base_url, in_flight, previous, async {
                    let mut probe = llm::probe_openai(client, &openai.base_url, openai.api_key.as_deref()).await;
                    if !openai.models.is_empty() {
                        let serving = probe.models.iter().find(|m| m.loaded).map(|m| m.name.clone());
                        probe.models = openai
                            .models
                            .iter()
                            .map(|name| Model { loaded: serving.as_ref() == Some(name), ..Model::named(name) })
                            .collect();
                    }
                    Endpoint { parallel: openai.parallel, ..found(&openai.base_url, EndpointKind::Openai, probe) }
                })
                .await,
            ),
            None => None,
        }
    };
    let (mut endpoints, openai) = tokio::join!(ollama, openai);
    endpoints.extend(openai);
    if let Some(anthropic) = &settings.anthropic {
        // Not probed: a call would cost money and send the key out on a timer. The key's
        // presence is the capability; failures show up on the first task.
        let models = anthropic.models.iter().map(Model::named).collect();
        let probe = llm::Probe { healthy: true, models, ..Default::default() };
        endpoints.push(found(&anthropic.base_url, EndpointKind::Anthropic, probe));
    }
    endpoints
}

/// `probe`'s finding for the endpoint at `url`, unless this sidecar's own requests are in flight
/// there: then no probe is sent, and what the last check found stands (a probe that failed while
/// requests went out is set aside the same way, since a busy server answers late).
async fn undisturbed(
    url: &str,
    in_flight: &InFlight,
    previous: &[Endpoint],
    probe: impl Future<Output = Endpoint>,
) -> Endpoint {
    let last = || previous.iter().find(|e| same_url(&e.url, url)).cloned();
    if in_flight.count(url) > 0
        && let Some(last) = last()
    {
        return last;
    }
    let found = probe.await;
    match last() {
        Some(last) if !found.healthy && in_flight.count(url) > 0 => last,
        _ => found,
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// One line when an endpoint comes up or goes down, not one per check.
fn log_health_changes(inventory: &[Endpoint], was: &mut Vec<Option<bool>>) {
    was.resize(inventory.len(), None);
    for (endpoint, was) in inventory.iter().zip(was.iter_mut()) {
        if *was != Some(endpoint.healthy) {
            if endpoint.healthy {
                let kind = endpoint.kind.as_str();
                info!(url = endpoint.url, kind, models = endpoint.models.len(), "LLM endpoint up");
            } else {
                let kind = endpoint.kind.as_str();
                info!(url = endpoint.url, kind, error = endpoint.error, "LLM endpoint down");
            }
            *was = Some(endpoint.healthy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_flags_make_a_server_or_say_what_is_wrong() {
        let flags = |url: &str, parallel: Option<u32>, context: Option<u64>| OpenAiArgs {
            openai_base_url: Some(url.to_owned()),
            openai_models: vec!["m".into()],
            openai_parallel: parallel,
            openai_context: context,
        };
        assert!(matches!(OpenAiArgs::default().openai(None), Ok(None)));
        let server = flags("http://127.0.0.1:8080/v1/", Some(2), Some(4096)).openai(Some("k".into())).unwrap().unwrap();
        assert_eq!(
            (server.base_url.as_str(), server.parallel, server.context),
            ("http://127.0.0.1:8080/v1", 2, Some(4096))
        );
        assert_eq!(
            flags("http://h/v1", None, None).openai(None).unwrap().unwrap().parallel,
            0,
            "not said: the hub's 1"
        );
        assert!(flags("127.0.0.1:8080", None, None).openai(None).unwrap_err().contains("must start with http://"));
        assert!(flags("http://h/v1", Some(0), None).openai(None).unwrap_err().contains("--openai-parallel"));
        assert!(flags("http://h/v1", None, Some(100)).openai(None).unwrap_err().contains("--openai-context"));
    }
}
