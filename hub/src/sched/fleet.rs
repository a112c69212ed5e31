//! The fleet as placement sees it: plain data the core keeps, lent to each decision, and the
//! admission rule over it (which sidecar may take which task at all).
//!
//! The core keeps one [`Sidecar`] per sidecar beside its session (set at hello, closed with the
//! session, its memory and GPU figures taken from each resource report) and lends its maps as a
//! [`Fleet`]. Tests and `meshbench sched` build the same structures, so they exercise the rule
//! the hub runs.

use std::collections::HashMap;

use super::{IdleIndex, Learned, TierModels};
use crate::domain::{Placement, Task, TaskId, Tier, TokenPrice, UnixMs, Work};
use crate::fleet::{Cordon, Endpoint, EndpointKind, Registry, Resources};
use crate::prices::Prices;

/// What placement knows of one sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sidecar {
    pub hostname: String,
    /// The kinds of work it runs (`shell`, `llm`, `agent`, `claude-code`, ...).
    pub capabilities: Capabilities,
    pub tags: Vec<String>,
    /// Its `--repo-allow` list: work in a repository goes only where this covers it.
    pub repo_allow: Vec<String>,
    /// Its session is open.
    pub open: bool,
    /// Memory free for a model on its host: its GPUs' free memory together, or its available
    /// RAM without GPUs; `None` until it reports.
    pub free_memory: Option<u64>,
    /// How busy its GPUs are, 0 to 100 (their mean utilization; 0 without GPUs or a report):
    /// breaks ties between equal estimates.
    pub gpu_busy: u32,
}

impl Sidecar {
    /// Takes the figures of the host's latest resource report.
    pub fn reported(&mut self, latest: Option<&Resources>) {
        self.free_memory = latest.and_then(free_memory);
        self.gpu_busy = latest.map_or(0, gpu_busy);
    }

    /// Its session is open and it runs work that needs `capability`.
    pub fn runs(&self, capability: &str) -> bool {
        self.open && self.capabilities.contains(capability)
    }

    /// It matches the task's `placement.host` (its hostname or id) and has all of
    /// `placement.tags`.
    pub fn admits(&self, sidecar_id: &str, placement: &Placement) -> bool {
        let host = placement.host.is_empty() || placement.host == self.hostname || placement.host == sidecar_id;
        host && placement.tags.iter().all(|tag| self.tags.contains(tag))
    }

    /// Its `--repo-allow` covers `repository`.
    pub fn allows_repository(&self, repository: &str) -> bool {
        agentcom_types::fleet::repository_allowed(&self.repo_allow, repository)
    }
}

/// The kinds of work a sidecar runs: those placement asks about as bits (asked for every
/// candidate of every decision, without reading the sidecar's strings), any other by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    known: u8,
    other: Vec<String>,
}

/// The capabilities kept as bits, in bit order.
const KNOWN_CAPABILITIES: [&str; 4] = ["shell", "llm", "agent", "claude-code"];

impl Capabilities {
    fn bit(name: &str) -> Option<u8> {
        KNOWN_CAPABILITIES.iter().position(|known| *known == name).map(|i| 1 << i)
    }

    pub fn insert(&mut self, name: &str) {
        match Capabilities::bit(name) {
            Some(bit) => self.known |= bit,
            None if !self.other.iter().any(|c| c == name) => self.other.push(name.to_owned()),
            None => {}
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match Capabilities::bit(name) {
            Some(bit) => self.known & bit != 0,
            None => self.other.iter().any(|c| c == name),
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for Capabilities {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Capabilities {
        let mut capabilities = Capabilities::default();
        for name in names {
            capabilities.insert(name.as_ref());
        }
        capabilities
    }
}

/// [`Fleet::admits`] for a sidecar already looked up.
pub(super) fn admitted(sidecar_id: &str, sidecar: &Sidecar, task: &Task) -> bool {
    sidecar.runs(task.spec.work.capability()) && sidecar.admits(sidecar_id, &task.spec.placement)
}

/// Memory free for a model: the GPUs' free memory together, or the available RAM without GPUs;
/// `None` when a GPU does not say its memory.
pub fn free_memory(report: &Resources) -> Option<u64> {
    if report.gpus.is_empty() {
        return Some(report.memory_available_bytes);
    }
    report.gpus.iter().map(|g| Some(g.memory_total_bytes?.saturating_sub(g.memory_used_bytes?))).sum()
}

/// The GPUs' mean utilization, 0 to 100; 0 without GPUs that say it.
pub fn gpu_busy(report: &Resources) -> u32 {
    let busy: Vec<u32> = report.gpus.iter().filter_map(|g| g.utilization_percent).collect();
    if busy.is_empty() { 0 } else { busy.iter().sum::<u32>() / busy.len() as u32 }
}

/// A task placed by its tier's model that waits, for the tier fallback (`tier::fallback`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierWait {
    /// Since when it has waited at the tier it is at now.
    pub since: UnixMs,
    /// The tier it was moved to; `None` while at its own.
    pub moved_to: Option<Tier>,
    /// The tiers it has been at.
    pub left: Vec<Tier>,
}

/// What placement knows of each sidecar, by id. Looked up once per candidate of every decision,
/// so with a fast hasher (foldhash, randomly seeded) rather than SipHash.
pub type Sidecars = HashMap<String, Sidecar, foldhash::fast::RandomState>;

/// Everything a decision reads, borrowed from whoever keeps it (the core, a test, a benchmark).
#[derive(Clone, Copy)]
pub struct Fleet<'a> {
    pub idle: &'a IdleIndex,
    pub sidecars: &'a Sidecars,
    /// Cordoned sidecars take no new work; a sidecar may be cordoned while away.
    pub cordons: &'a HashMap<String, Cordon>,
    pub registry: &'a Registry,
    /// Requests the hub has placed on each endpoint that have not finished.
    pub in_flight: &'a HashMap<String, u32>,
    pub learned: &'a Learned,
    /// The model LLM work of each tier runs on when it names none (`--tier-model`).
    pub tier_models: &'a TierModels,
    pub prices: &'a Prices,
    pub tier_waits: &'a HashMap<TaskId, TierWait>,
    /// The hub runs `--offline`: every task is local-only.
    pub offline: bool,
}

impl<'a> Fleet<'a> {
    pub fn sidecar(&self, sidecar_id: &str) -> Option<&'a Sidecar> {
        self.sidecars.get(sidecar_id)
    }

    /// The sidecar's session is open and it runs work that needs `capability`.
    pub fn can_run(&self, sidecar_id: &str, capability: &str) -> bool {
        self.sidecar(sidecar_id).is_some_and(|s| s.runs(capability))
    }

    /// The sidecar may take the task as far as who it is goes: it runs its kind of work and
    /// matches its tags and host.
    pub fn admits(&self, sidecar_id: &str, task: &Task) -> bool {
        self.sidecar(sidecar_id).is_some_and(|s| admitted(sidecar_id, s, task))
    }

    /// Whether the sidecar can take the task as far as what it has goes (beyond its capability,
    /// tags and host): the repository its work runs in is on its allowlist, and LLM work (or
    /// agent work on a sidecar without Claude Code) has a healthy LLM endpoint there.
    pub fn takes(&self, sidecar_id: &str, task: &Task) -> bool {
        self.sidecar(sidecar_id).is_some_and(|s| self.takes_on(sidecar_id, s, task))
    }

    /// [`Fleet::admits`] and [`Fleet::takes`] together, on one lookup of the sidecar: the whole
    /// admission rule for work placed by capability.
    pub fn eligible(&self, sidecar_id: &str, task: &Task) -> bool {
        self.sidecar(sidecar_id).is_some_and(|s| admitted(sidecar_id, s, task) && self.takes_on(sidecar_id, s, task))
    }

    /// [`Fleet::takes`] for a sidecar already looked up.
    pub(super) fn takes_on(&self, sidecar_id: &str, sidecar: &Sidecar, task: &Task) -> bool {
        let repository_ok = task.spec.workspace_repository().is_none_or(|r| sidecar.allows_repository(r));
        let llm_ok = match &task.spec.work {
            Work::Llm(_) => self.registry.has_healthy(sidecar_id),
            Work::Agent(_) => sidecar.runs("claude-code") || self.registry.has_healthy(sidecar_id),
            Work::Shell(_) | Work::Service(_) => true,
        };
        repository_ok && llm_ok
    }

    /// The sidecars whose session is open and that are not cordoned, idle or not (asked only to
    /// say why a task waits).
    pub fn open(&self) -> impl Iterator<Item = (&'a str, &'a Sidecar)> + use<'a> {
        let cordons = self.cordons;
        self.sidecars.iter().filter(move |(id, s)| s.open && !cordons.contains_key(*id)).map(|(id, s)| (id.as_str(), s))
    }

    pub fn cordoned(&self, sidecar_id: &str) -> bool {
        self.cordons.contains_key(sidecar_id)
    }

    /// The healthy or not endpoints that can serve `model` (see `Registry::offering`), in a
    /// stable order.
    pub fn offering<'m>(&self, model: &'m str) -> impl Iterator<Item = &'a Endpoint> + use<'a, 'm> {
        self.registry.offering(model)
    }

    pub fn in_flight(&self, endpoint_id: &str) -> u32 {
        self.in_flight.get(endpoint_id).copied().unwrap_or(0)
    }

    pub fn free_memory(&self, sidecar_id: &str) -> Option<u64> {
        self.sidecar(sidecar_id)?.free_memory
    }

    pub fn gpu_busy(&self, sidecar_id: &str) -> u32 {
        self.sidecar(sidecar_id).map_or(0, |s| s.gpu_busy)
    }

    /// What `model` costs, if the price table has it.
    pub fn price(&self, model: &str) -> Option<TokenPrice> {
        self.prices.token_price(model)
    }

    pub fn tier_model(&self, tier: Tier) -> Option<&'a str> {
        self.tier_models.get(tier)
    }

    /// The tier a task was moved to after waiting too long at its own (see `tier::fallback`).
    pub fn fallback_tier(&self, task: TaskId) -> Option<Tier> {
        self.tier_waits.get(&task)?.moved_to
    }

    /// Whether a second request to the endpoint must wait, at the hub, until it has fewer than
    /// [`Fleet::parallel`] in flight, rather than queue at the server: a local
    /// OpenAI-compatible server (llama.cpp's interrupts the running generation for the next
    /// request; vLLM says its parallelism with `--openai-parallel`), and any endpoint seen
    /// cutting a reply short for another. Ollama queues requests itself.
    pub fn holds_at_parallel(&self, endpoint: &Endpoint) -> bool {
        (endpoint.kind == EndpointKind::Openai && !crate::fleet::is_cloud(endpoint))
            || self.learned.concurrency(&endpoint.id).interrupts
    }

    /// How many requests a local endpoint serves at once: what it says, else what was learned,
    /// else one (Ollama's default).
    pub fn parallel(&self, endpoint: &Endpoint) -> u32 {
        match endpoint.parallel {
            0 => self.learned.parallel(&endpoint.id).unwrap_or(1),
            configured => configured,
        }
    }
}
