//! The hub's own checks of the LLM endpoints an admin added: every interval, each endpoint the
//! hub owns is probed (if its host is still allowlisted) and the result goes to the core.
//! Sidecars probe their local endpoints themselves; the hub never probes those.
//!
//! In detail:
//!
//! `probe`: the hub's own checks of endpoints an admin added (only allowlisted hosts, re-checked
//! against the allowlist at every probe), with `agentcom-llm`'s probes.

use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::core::Handle;
use crate::domain::now_ms;
use crate::fleet::{self, Endpoint, EndpointKind, Owner};

/// Runs until `stop` is cancelled.
pub async fn run(hub: Handle, allow: Vec<String>, every: Duration, stop: CancellationToken) {
    let client = agentcom_llm::client();
    // The first check after one interval: until then the registry shows what was last stored.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Ok(endpoints) = hub.endpoints().await else { return };
        let owned = endpoints.into_iter().filter(|e| e.owner == Owner::Hub);
        let checks = owned.map(|endpoint| check(&client, &allow, endpoint));
        for checked in join_all(checks).await {
            hub.endpoint_checked(checked);
        }
    }
}

async fn check(client: &reqwest::Client, allow: &[String], endpoint: Endpoint) -> Endpoint {
    let probe = match fleet::check_allowed(&endpoint.url, allow) {
        // Allowed when added, but the allowlist changed since: do not call it.
        Err(why) => agentcom_llm::Probe::failed(why),
        Ok(()) => match endpoint.kind {
            EndpointKind::Ollama => agentcom_llm::probe_ollama(client, &endpoint.url).await,
            EndpointKind::Openai => agentcom_llm::probe_openai(client, &endpoint.url, None).await,
            EndpointKind::Anthropic => return endpoint,
        },
    };
    probe.found(endpoint, now_ms())
}
