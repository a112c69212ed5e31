//! Placement: which idle agent a ready task goes to, why a task waits, and what was weighed.
//!
//! [`place`] is the whole rule, kept apart from the core:
//! - An expired task is kept back for the tick that dead-letters it.
//! - Candidates are filtered: an open sidecar that runs the work and matches `placement.tags`
//!   and `placement.host` ([`Fleet::admits`]), whose allowlist covers the task's repository and
//!   which has a healthy LLM endpoint for LLM work ([`Fleet::takes`]); for a model, a healthy endpoint that offers it,
//!   never a cloud one for local-only work or on an `--offline` hub, an estimated cost within
//!   `limits.max_cost_micros`, and room for a cold model (or warm models to evict for it).
//! - LLM work with a model (its own, or its tier's: [`model_of`]) goes where it will finish
//!   soonest: each candidate endpoint is scored by its estimated time to completion
//!   ([`Estimate`]): the wait behind that endpoint's requests in flight, the load if the model is
//!   cold, the expected output tokens at the observed speed, and the reload of what a cold model
//!   evicts. Load times and speeds are learned per model and sidecar ([`Learned`]); until
//!   observed, a load is priced from the model's size. Ties go to a warm model, then the less
//!   busy GPUs, then fewer requests in flight, then the smaller ids, so the same view always
//!   gives the same decision.
//! - Verified LLM work placed by its inferred tier's model goes one tier up when that model's
//!   verified results fail often enough that the next tier's model, passing more often, is
//!   expected to finish sooner counting the retries ([`pass_rate_move`]).
//! - Other work goes to the open sidecar that has the capability and the most idle agents
//!   (ties to the smaller id).
//! - A task that cannot be placed gets a [`Wait`] that names why, and a [`Need`] by which the
//!   queue keeps it blocked until the fleet changes for it.
//!
//! [`explain`] runs the same code with a recorder that keeps every candidate and its
//! [`Verdict`]; [`place`] passes a recorder that does nothing, so the hot path pays nothing.
//!
//! **Architecture Invariant:** pure, and the whole rule. The core keeps the fleet's data
//! ([`Sidecar`] per sidecar, the registry, the idle index, what was learned) and lends it as a
//! [`Fleet`] of plain borrowed structures; the admission rule, free memory and the rest are
//! computed here, so the tests (which build the same structures) check the code that runs.
//! Nothing here does I/O or reads a clock.
//!
//! In detail:
//!
//! `sched`: placement. `place(&Task, &Fleet, now) -> Decision`: candidates are filtered
//! (capability, tags and host, healthy endpoint with the model, privacy and `--offline`, the cost
//! budget, room for a cold model); LLM work that names a model goes to the idle agent and endpoint
//! with the lowest estimated time to completion (wait behind requests in flight + cold load +
//! expected tokens at the observed speed + the reload of what a cold model evicts; loads and speeds
//! learned per sidecar and model as `Learned` EWMAs); LLM work that names none takes its tier's
//! model (`--tier-model`; the tier given, inferred by the pure heuristic in `sched/tier.rs`, or
//! moved by `tier::fallback`); agent work that names a model (`placement.model`) or has a tier
//! model is placed the same way, on sidecars that run agents; other work goes to the open sidecar
//! with the capability and the most idle agents. A local OpenAI-compatible endpoint, and any
//! endpoint seen cutting a reply short for another (`Learned::observe_truncation`), takes no more
//! requests than its parallelism (`Fleet::holds_at_parallel`): the rest wait as busy. A task
//! that cannot be placed gets a `Wait` naming why. `explain` runs the same code with a recorder
//! that keeps every candidate and its `Verdict` (`place` passes a no-op one, so the hot path
//! allocates nothing for it; dispatch calls `place_explained`, one pass that places and keeps
//! what it weighed); `summarize` is its one-line reason (both in `sched/explain.rs`; the
//! tests in `sched/tests.rs`). `sched/learned.rs` holds what is learned from results: load times
//! and speeds per sidecar and model, and each endpoint's parallelism from first tokens of requests
//! placed beside others (`Fleet::parallel`: configured, else learned, else 1).
//! `sched::pass_rate_move` moves verified LLM work placed by its inferred tier's model up a tier
//! when that model has at least 5 verdicts, the next tier's model passes more often, and estimated
//! time ÷ pass rate is lower there (`TierSource::PassRate`); the verdicts are counted in `Learned`
//! (by model, kind of work and the tier the lease was placed at) from results, each new count
//! stored (`Op::PutVerdicts`), and seeded at start from the stored counts (a store without any
//! counts them from its tasks once). `sched/judge.rs` picks the model for `llm_judge` steps that
//! name none: the tier model on the placed sidecar expected to answer soonest, never the worker's
//! own model while another can (`Explanation.judge`, carried in the lease and the assignment).
//! `sched/prewarm.rs` is `prewarm::target`: where to load a model ahead of tasks that have waited
//! longer than its load time; the core (`core/placing.rs`, once a second from the tick) asks that
//! sidecar with a `Preload` hub message, which the sidecar carries out as an Ollama preload and
//! answers with `Preloaded`. See `docs/scheduling.md`.

mod explain;
mod fleet;
pub mod judge;
mod learned;
pub mod prewarm;
pub mod tier;

use self::explain::Record;
pub use self::explain::{Candidate, EXPLAINED_CANDIDATES, Explanation, Verdict, explain, place_explained, summarize};
pub use self::fleet::{Capabilities, Fleet, Sidecar, Sidecars, TierWait, free_memory, gpu_busy};
pub use self::learned::{
    Concurrency, EWMA_ALPHA, Learned, MAX_PARALLEL, Observed, PRIOR_FAILS, PRIOR_PASSES, QUEUED_AFTER_MS, Tally,
};

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::domain::{Task, Tier, UnixMs, Work};
use crate::fleet::{Endpoint, EndpointKind, Owner};

/// Idle agents by sidecar, kept in step with agent states by the core, so placement does not
/// scan every agent for every task it places.
#[derive(Debug, Default)]
pub struct IdleIndex {
    by_sidecar: HashMap<String, BTreeSet<String>>,
    /// Sidecars that gained an idle agent (or changed otherwise, see [`IdleIndex::touch`]) since
    /// [`IdleIndex::take_touched`]: where blocked tasks may now go. Kept only while `tracking`
    /// (some task is blocked), so the common path allocates nothing for it.
    touched: HashSet<String>,
    tracking: bool,
}

impl IdleIndex {
    /// Notes that what the sidecar can serve may have grown (an agent freed, its inventory
    /// changed).
    pub fn touch(&mut self, sidecar_id: &str) {
        if self.tracking && !self.touched.contains(sidecar_id) {
            self.touched.insert(sidecar_id.to_owned());
        }
    }

    /// Whether touches are kept: on while any task is blocked.
    pub fn track_touches(&mut self, on: bool) {
        self.tracking = on;
        if !on {
            self.touched.clear();
        }
    }

    pub fn take_touched(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.touched)
    }

    pub fn insert(&mut self, sidecar_id: &str, agent_id: &str) {
        self.touch(sidecar_id);
        match self.by_sidecar.get_mut(sidecar_id) {
            Some(agents) => {
                agents.insert(agent_id.to_owned());
            }
            None => {
                self.by_sidecar.insert(sidecar_id.to_owned(), BTreeSet::from([agent_id.to_owned()]));
            }
        }
    }

    pub fn remove(&mut self, sidecar_id: &str, agent_id: &str) {
        if let Some(agents) = self.by_sidecar.get_mut(sidecar_id) {
            agents.remove(agent_id);
            if agents.is_empty() {
                self.by_sidecar.remove(sidecar_id);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_sidecar.is_empty()
    }

    /// A sidecar's first idle agent, in id order.
    pub fn first(&self, sidecar_id: &str) -> Option<&String> {
        self.by_sidecar.get(sidecar_id)?.first()
    }

    /// Sidecars with idle agents, and those agents in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &BTreeSet<String>)> {
        self.by_sidecar.iter()
    }
}

/// The models LLM work runs on by tier, when it names none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierModels {
    pub trivial: Option<String>,
    pub standard: Option<String>,
    pub complex: Option<String>,
}

impl TierModels {
    pub fn get(&self, tier: Tier) -> Option<&str> {
        match tier {
            Tier::Trivial => self.trivial.as_deref(),
            Tier::Standard => self.standard.as_deref(),
            Tier::Complex => self.complex.as_deref(),
        }
    }

    /// Sets one from `TIER=MODEL`.
    pub fn set(&mut self, text: &str) -> Result<(), String> {
        let (tier, model) = text.split_once('=').ok_or_else(|| format!("{text:?} is not TIER=MODEL"))?;
        let tier: Tier = tier.parse().map_err(|err: crate::domain::Error| err.to_string())?;
        if model.is_empty() {
            return Err(format!("{text:?} names no model"));
        }
        let slot = match tier {
            Tier::Trivial => &mut self.trivial,
            Tier::Standard => &mut self.standard,
            Tier::Complex => &mut self.complex,
        };
        *slot = Some(model.to_owned());
        Ok(())
    }
}

/// Where a task goes, or why it waits.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Place {
        sidecar_id: String,
        agent_id: String,
        /// For LLM work placed on a model: the endpoint the estimate chose, and the model (the
        /// task's own, or its tier's).
        endpoint_id: Option<String>,
        model: Option<String>,
        estimate: Option<Estimate>,
    },
    Wait(Wait),
}

/// The estimated time to completion of LLM work on one endpoint, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Behind the requests already in flight there.
    pub wait_ms: f64,
    /// Loading the model first (0 when it is warm).
    pub load_ms: f64,
    /// Generating the expected output.
    pub generate_ms: f64,
    /// A cold model that does not fit in the free memory evicts warm ones: loading those again
    /// later is priced here.
    pub fit_ms: f64,
}

impl Estimate {
    pub fn total_ms(&self) -> f64 {
        self.wait_ms + self.load_ms + self.generate_ms + self.fit_ms
    }
}

/// Output tokens expected of a task that sets no `max_tokens`.
pub const EXPECTED_OUTPUT_TOKENS: u32 = 256;
/// Output tokens an agent run is expected to write over its turns, for estimates.
pub const EXPECTED_AGENT_TOKENS: u32 = 4_096;
/// Speeds assumed until one is observed.
pub const DEFAULT_LOCAL_TOKENS_PER_S: f64 = 30.0;
pub const DEFAULT_CLOUD_TOKENS_PER_S: f64 = 60.0;
/// A cold load is priced at this rate until one is observed (bytes per millisecond: 2 GB/s).
pub const DEFAULT_LOAD_BYTES_PER_MS: f64 = 2_000_000.0;

/// Why a ready task is not placed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wait {
    /// Its deadline passed; the next tick dead-letters it.
    Expired,
    /// No sidecar is connected at all.
    NoSidecar,
    /// No open sidecar runs its kind of work (and matches its tags and host).
    NoCapableAgent,
    /// LLM work (or agent work without Claude Code) and no open sidecar has a healthy LLM
    /// endpoint.
    NoLlmEndpoint,
    /// Work in a repository that no open sidecar's `--repo-allow` covers.
    RepositoryNotAllowed,
    /// The sidecars that could run it are all busy.
    AllBusy,
    /// No healthy endpoint of an open sidecar has its model.
    ModelNowhere,
    /// Local-only work (or an `--offline` hub) whose model only a cloud provider offers.
    LocalOnly,
    /// Every candidate would cost more than the task's budget.
    OverBudget,
    /// Its model is cold everywhere it could go, and fits in none of their free memory even
    /// after the warm models there are evicted.
    NoRoom,
}

impl Wait {
    /// The stable code (`hubctl why`, the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Expired => "expired",
            Wait::NoSidecar => "no_sidecar",
            Wait::NoCapableAgent => "no_capable_agent",
            Wait::NoLlmEndpoint => "no_llm_endpoint",
            Wait::RepositoryNotAllowed => "repository_not_allowed",
            Wait::AllBusy => "all_busy",
            Wait::ModelNowhere => "model_nowhere",
            Wait::LocalOnly => "local_only",
            Wait::OverBudget => "over_budget",
            Wait::NoRoom => "no_room",
        }
    }

    /// Why, in words that name the fix (`hubctl why`, `submit --wait`, the dashboard).
    pub fn describe(self) -> &'static str {
        match self {
            Wait::Expired => "its deadline passed: it is dead-lettered as expired",
            Wait::NoSidecar => {
                "no sidecar is connected: start one with `agentcom-sidecar run --hub URL --token-file FILE` (or run `agentcom-hub dev`, which has its own)"
            }
            Wait::NoCapableAgent => {
                "no connected sidecar runs this kind of work with its tags and host: see `hubctl agents` for what each one runs"
            }
            Wait::NoLlmEndpoint => {
                "no connected sidecar has a working LLM endpoint: start Ollama on a sidecar's machine (found at 127.0.0.1:11434), or give a sidecar `--ollama URL`, `--openai-base-url URL` (llama.cpp, vLLM) or ANTHROPIC_API_KEY; `hubctl endpoints ls` shows what there is"
            }
            Wait::RepositoryNotAllowed => {
                "no connected sidecar allows its repository: give a sidecar `--repo-allow PATH` (or a URL prefix) that covers it"
            }
            Wait::AllBusy => "every agent that could run it is busy: it runs when one frees",
            Wait::ModelNowhere => {
                "no healthy endpoint has its model: pull it where a sidecar's Ollama runs (`ollama pull MODEL`), or name a model `hubctl endpoints ls` lists"
            }
            Wait::LocalOnly => {
                "it is local-only (or the hub runs --offline) and only a cloud provider offers its model: serve the model locally, or drop local_only"
            }
            Wait::OverBudget => {
                "every candidate would cost more than its budget: raise --max-cost or name a cheaper model"
            }
            Wait::NoRoom => {
                "its model is cold everywhere and fits in no host's free memory, even with the loaded models unloaded: free memory or name a smaller model"
            }
        }
    }

    /// Waiting cannot help until the fleet changes: nothing there could ever take it (a busy
    /// fleet frees up by itself). Only these move a task to another tier.
    pub fn lacks_capacity(self) -> bool {
        !matches!(self, Wait::AllBusy | Wait::Expired)
    }
}

/// What a task needs of the fleet, by which blocked tasks are kept until the fleet changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Need {
    /// A model on an endpoint (LLM work with a model, named or its tier's).
    Model(String),
    /// An agent that runs this kind of work.
    Capability(&'static str),
}

/// The tier a task is placed at, and whether it was given, inferred, or moved there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierSource {
    Given,
    Inferred,
    /// Moved from `from` after waiting too long there.
    Fallback {
        from: Tier,
    },
    /// Moved up from `from`, whose model's verified results pass so rarely that the next tier's
    /// model is expected to finish sooner counting the retries ([`pass_rate_move`]).
    PassRate {
        from: Tier,
    },
}

/// Verified results a tier's model needs before its pass rate may move work up a tier.
pub const MIN_VERDICTS_TO_MOVE: u64 = 5;

/// The tier up that LLM work should go to by pass rates, and its model, or `None`. Only for
/// work with verification steps, placed by its inferred tier's model (a given tier or model
/// always wins), whose model has at least [`MIN_VERDICTS_TO_MOVE`] verdicts at that tier and
/// kind of work. It moves when the next tier's model (placeable now) passes more often and is
/// expected to finish sooner counting the retries a failure costs (estimated time ÷ pass rate):
/// a model that passes as often as the one above keeps its tier's work, which the tier policy
/// sends to the cheaper model.
pub fn pass_rate_move<'a>(task: &Task, fleet: &Fleet<'a>) -> Option<(Tier, &'a str)> {
    let Work::Llm(llm) = &task.spec.work else { return None };
    if task.spec.verification.is_empty() || !llm.model.is_empty() || !task.spec.placement.model.is_empty() {
        return None;
    }
    let (tier, source) = tier_now(task, fleet);
    if source != TierSource::Inferred {
        return None;
    }
    let up = tier::up(tier)?;
    let (here, there) = (fleet.tier_model(tier)?, fleet.tier_model(up)?);
    let kind = task.spec.work.capability();
    let seen = fleet.learned.tally(here, kind, tier);
    if here == there || seen.passed + seen.failed < MIN_VERDICTS_TO_MOVE {
        return None;
    }
    let tokens = if llm.max_tokens > 0 { llm.max_tokens } else { EXPECTED_OUTPUT_TOKENS };
    let expected = |model: &str, pass_rate: f64| match place_model(task, model, tokens, fleet, &mut ()) {
        Decision::Place { estimate: Some(estimate), .. } => Some(estimate.total_ms() / pass_rate.max(0.01)),
        _ => None,
    };
    let (here_rate, there_rate) = (seen.pass_rate(), fleet.learned.pass_rate(there, kind, up));
    if there_rate <= here_rate {
        return None;
    }
    let here_ms = expected(here, here_rate)?;
    let there_ms = expected(there, there_rate)?;
    (there_ms < here_ms).then_some((up, there))
}

/// The tier `task` is placed at now.
pub fn tier_now(task: &Task, fleet: &Fleet<'_>) -> (Tier, TierSource) {
    let own = tier::tier_of(&task.spec);
    match fleet.fallback_tier(task.id) {
        Some(tier) => (tier, TierSource::Fallback { from: own }),
        None if task.spec.tier.is_some() => (own, TierSource::Given),
        None => (own, TierSource::Inferred),
    }
}

/// The model LLM and agent work runs on: its own (`work.llm.model`, else `placement.model`),
/// or its tier's; `None` for shell work and when neither names one (the sidecar then picks).
pub fn model_of<'a>(task: &'a Task, fleet: &Fleet<'a>) -> Option<&'a str> {
    let named = match &task.spec.work {
        Work::Llm(llm) => llm.model.as_str(),
        Work::Agent(_) => "",
        Work::Shell(_) | Work::Service(_) => return None,
    };
    match (named, task.spec.placement.model.as_str()) {
        ("", "") => fleet.tier_model(tier_now(task, fleet).0),
        ("", placed) => Some(placed),
        (named, _) => Some(named),
    }
}

/// What `task` needs, for the blocked set.
pub fn need_of(task: &Task, fleet: &Fleet<'_>) -> Need {
    match model_of(task, fleet) {
        Some(model) => Need::Model(model.to_owned()),
        None => Need::Capability(task.spec.work.capability()),
    }
}

/// Places one ready task. See the module documentation for the rule.
pub fn place(task: &Task, fleet: &Fleet<'_>, now: UnixMs) -> Decision {
    decide(task, fleet, now, &mut ()).0
}

/// The decision, and the tier (with its model) pass rates moved the task to, if they did.
fn decide<'a>(
    task: &Task,
    fleet: &Fleet<'a>,
    now: UnixMs,
    record: &mut impl Record,
) -> (Decision, Option<(Tier, &'a str)>) {
    if task.spec.limits.deadline_unix_ms.is_some_and(|deadline| deadline <= now) {
        return (Decision::Wait(Wait::Expired), None);
    }
    if let Some(model) = model_of(task, fleet) {
        let tokens = match &task.spec.work {
            Work::Llm(llm) if llm.max_tokens > 0 => llm.max_tokens,
            Work::Agent(_) => EXPECTED_AGENT_TOKENS,
            _ => EXPECTED_OUTPUT_TOKENS,
        };
        let moved = pass_rate_move(task, fleet);
        let model = moved.map_or(model, |(_, up)| up);
        return (place_model(task, model, tokens, fleet, record), moved);
    }
    let mut best: Option<(&String, &BTreeSet<String>)> = None;
    for (sidecar_id, agents) in fleet.idle.iter() {
        if !fleet.eligible(sidecar_id, task) {
            continue;
        }
        record.note(|| Candidate {
            sidecar_id: sidecar_id.clone(),
            agent_id: agents.first().cloned(),
            endpoint_id: None,
            estimate: None,
            warm: false,
            in_flight: 0,
            idle_agents: agents.len() as u32,
            verdict: Verdict::Slower,
        });
        // The most idle agents; ties to the smaller id.
        let key = (agents.len(), std::cmp::Reverse(sidecar_id));
        if best.is_none_or(|(b_id, b_agents)| key > (b_agents.len(), std::cmp::Reverse(b_id))) {
            best = Some((sidecar_id, agents));
        }
    }
    let decision = match best.and_then(|(sidecar_id, agents)| Some((sidecar_id, agents.first()?))) {
        Some((sidecar_id, agent_id)) => Decision::Place {
            sidecar_id: sidecar_id.clone(),
            agent_id: agent_id.clone(),
            endpoint_id: None,
            model: None,
            estimate: None,
        },
        None => Decision::Wait(unplaced(task, fleet)),
    };
    (decision, None)
}

/// Why a task that names no model has no idle agent to go to, the most basic lack first: no
/// sidecar, none that runs its work, none that allows its repository, none with an LLM
/// endpoint; else they are busy. One pass over the open sidecars, ended by the first that
/// would take the task (then it only waits for a free agent).
fn unplaced(task: &Task, fleet: &Fleet<'_>) -> Wait {
    let (capability, placement) = (task.spec.work.capability(), &task.spec.placement);
    let repository = task.spec.workspace_repository();
    let (mut open, mut runs, mut capable, mut allowed) = (false, false, false, false);
    for (id, sidecar) in fleet.open() {
        open = true;
        if !sidecar.runs(capability) {
            continue;
        }
        runs = true;
        if !sidecar.admits(id, placement) {
            continue;
        }
        capable = true;
        if repository.is_some_and(|r| !sidecar.allows_repository(r)) {
            continue;
        }
        allowed = true;
        if fleet.takes_on(id, sidecar, task) {
            return Wait::AllBusy;
        }
    }
    match (open, runs, capable, allowed) {
        (false, ..) => Wait::NoSidecar,
        // A sidecar runs LLM work only with an endpoint: say how to give it one.
        (true, false, ..) if matches!(task.spec.work, Work::Llm(_)) => Wait::NoLlmEndpoint,
        (true, _, false, _) => Wait::NoCapableAgent,
        (true, true, true, false) => Wait::RepositoryNotAllowed,
        _ => Wait::NoLlmEndpoint,
    }
}

/// Input tokens of LLM work, estimated from its text (four bytes a token), for the cost filter.
pub fn input_tokens_estimate(llm: &crate::domain::LlmWork) -> u64 {
    let bytes = llm.prompt.len() + llm.system.len() + llm.messages.iter().map(|m| m.content.len()).sum::<usize>();
    bytes.div_ceil(4) as u64
}

/// The estimate for `model` on endpoint `e` of `sidecar_id` and whether the model is warm there,
/// or `None` if it cannot run it (or, for `local_only` work, may not: a cloud endpoint).
pub fn estimate(
    fleet: &Fleet<'_>,
    sidecar_id: &str,
    e: &Endpoint,
    model: &str,
    tokens: u32,
    local_only: bool,
    in_flight: u32,
) -> Option<(Estimate, bool)> {
    let free_memory = fleet.free_memory(sidecar_id);
    weigh(fleet, sidecar_id, free_memory, e, model, tokens, local_only, in_flight).ok()
}

/// [`estimate`], or the verdict that rules the endpoint out. `free_memory` is the sidecar's
/// (see [`Sidecar::free_memory`]), which the caller has at hand.
#[allow(clippy::too_many_arguments)] // Reason: the hot loop's values, passed as they are.
fn weigh(
    fleet: &Fleet<'_>,
    sidecar_id: &str,
    free_memory: Option<u64>,
    e: &Endpoint,
    model: &str,
    tokens: u32,
    local_only: bool,
    in_flight: u32,
) -> Result<(Estimate, bool), Verdict> {
    if local_only && crate::fleet::is_cloud(e) {
        return Err(Verdict::Cloud);
    }
    if !e.healthy {
        return Err(Verdict::Unhealthy);
    }
    let listed = e.models.iter().find(|m| m.name == model);
    let cloud = e.kind == EndpointKind::Anthropic;
    // The Claude API serves its models by name, listed or not.
    if listed.is_none() && !(cloud && model.starts_with("claude-")) {
        return Err(Verdict::NoModel);
    }
    if fleet.holds_at_parallel(e) && in_flight >= fleet.parallel(e).max(1) {
        return Err(Verdict::Busy);
    }
    let warm = cloud || listed.is_some_and(|m| m.loaded);
    let observed = fleet.learned.get(sidecar_id, model);
    let default_rate = if cloud { DEFAULT_CLOUD_TOKENS_PER_S } else { DEFAULT_LOCAL_TOKENS_PER_S };
    let generate_ms = f64::from(tokens) * 1000.0 / observed.tokens_per_s.unwrap_or(default_rate);
    let (mut load_ms, mut fit_ms) = (0.0, 0.0);
    if !warm {
        let size = listed.map_or(0, |m| m.size_vram_bytes.max(m.size_bytes));
        load_ms = observed.load_ms.unwrap_or(size as f64 / DEFAULT_LOAD_BYTES_PER_MS);
        if let Some(free) = free_memory
            && size > free
        {
            // Room is made by evicting warm models, which then have to load again later.
            let warm_models = e.models.iter().filter(|m| m.loaded);
            let evictable: u64 = warm_models.clone().map(|m| m.size_vram_bytes.max(m.size_bytes)).sum();
            if size > free + evictable {
                return Err(Verdict::NoRoom);
            }
            fit_ms = warm_models
                .map(|m| {
                    let bytes = m.size_vram_bytes.max(m.size_bytes) as f64;
                    fleet.learned.get(sidecar_id, &m.name).load_ms.unwrap_or(bytes / DEFAULT_LOAD_BYTES_PER_MS)
                })
                .sum();
        }
    }
    // A local server runs `parallel` requests at once (configured or learned; 1 until then,
    // Ollama's default); behind the rest, this one waits its turn. The cloud scales.
    let wait_ms = if cloud { 0.0 } else { f64::from(in_flight / fleet.parallel(e).max(1)) * generate_ms };
    Ok((Estimate { wait_ms, load_ms, generate_ms, fit_ms }, warm))
}

fn place_model(task: &Task, model: &str, tokens: u32, fleet: &Fleet<'_>, record: &mut impl Record) -> Decision {
    let placement = &task.spec.placement;
    let repository = task.spec.workspace_repository();
    let local_only = placement.local_only || fleet.offline;
    // The budget filter, if the model is priced: reading the prompt and writing the reply it
    // asks for (`max_tokens`; one token when it sets none, as a reply's length is not known)
    // must fit. A reply that runs past the budget is stopped there by the sidecar.
    let over_budget = match (task.spec.limits.max_cost_micros, fleet.price(model), &task.spec.work) {
        (Some(max), Some(price), Work::Llm(llm)) => {
            let reply = u64::from(llm.max_tokens.max(1));
            price.micros(input_tokens_estimate(llm), reply) > max as f64
        }
        _ => false,
    };
    // (estimate, warm, in flight, sidecar, agent, endpoint) of the best candidate so far.
    let mut best: Option<(Estimate, bool, u32, &String, &String, &String)> = None;
    // Why nothing was placed, from the most hopeful cause down.
    let (mut busy, mut budget, mut no_room, mut cloud, mut open) = (false, false, false, false, false);
    for endpoint in fleet.offering(model) {
        let Owner::Sidecar(sidecar_id) = &endpoint.owner else { continue };
        let agent_id = fleet.idle.first(sidecar_id);
        let in_flight = fleet.in_flight(&endpoint.id);
        let note = |estimate: Option<(Estimate, bool)>, verdict| Candidate {
            sidecar_id: sidecar_id.clone(),
            agent_id: agent_id.cloned(),
            endpoint_id: Some(endpoint.id.clone()),
            estimate: estimate.map(|(e, _)| e),
            warm: estimate.is_some_and(|(_, warm)| warm),
            in_flight,
            idle_agents: 0,
            verdict,
        };
        // The admission rule (`Fleet::admits` and the allowlist), on the one lookup of the sidecar.
        let admitted = fleet
            .sidecar(sidecar_id)
            .filter(|s| fleet::admitted(sidecar_id, s, task) && repository.is_none_or(|r| s.allows_repository(r)));
        let Some(sidecar) = admitted else {
            record.note(|| note(None, Verdict::Excluded));
            continue;
        };
        open = true;
        let weighed =
            match weigh(fleet, sidecar_id, sidecar.free_memory, endpoint, model, tokens, local_only, in_flight) {
                Ok(weighed) => weighed,
                Err(verdict) => {
                    busy |= verdict == Verdict::Busy;
                    cloud |= verdict == Verdict::Cloud;
                    no_room |= verdict == Verdict::NoRoom;
                    record.note(|| note(None, verdict));
                    continue;
                }
            };
        if over_budget {
            budget = true;
            record.note(|| note(Some(weighed), Verdict::OverBudget));
            continue;
        }
        let Some(agent_id) = agent_id else {
            busy = true;
            record.note(|| note(Some(weighed), Verdict::Busy));
            continue;
        };
        record.note(|| note(Some(weighed), Verdict::Slower));
        let (estimate, warm) = weighed;
        let better = match &best {
            None => true,
            Some((b, b_warm, b_flight, b_sidecar, _, b_endpoint)) => {
                use std::cmp::Ordering::{Equal, Less};
                match (estimate.total_ms(), !warm).partial_cmp(&(b.total_ms(), !b_warm)) {
                    Some(Less) => true,
                    // A tie: the less-loaded GPUs, then fewer in flight, then the smaller ids
                    // (looked up only now: ties are rare, and this is the hot loop).
                    Some(Equal) => {
                        let load = (fleet.gpu_busy(sidecar_id), in_flight);
                        match load.cmp(&(fleet.gpu_busy(b_sidecar), *b_flight)) {
                            Less => true,
                            Equal => (sidecar_id, &endpoint.id) < (*b_sidecar, *b_endpoint),
                            _ => false,
                        }
                    }
                    _ => false,
                }
            }
        };
        if better {
            best = Some((estimate, warm, in_flight, sidecar_id, agent_id, &endpoint.id));
        }
    }
    let wait = if busy {
        Wait::AllBusy
    } else if budget {
        Wait::OverBudget
    } else if no_room {
        Wait::NoRoom
    } else if cloud {
        Wait::LocalOnly
    } else if open {
        Wait::ModelNowhere
    } else {
        // No endpoint with the model on a sidecar that could run the task: say what is lacking
        // most basically (no sidecar, none that runs it or allows its repository), else that
        // the model is nowhere.
        match unplaced(task, fleet) {
            Wait::AllBusy => Wait::ModelNowhere,
            lacking => lacking,
        }
    };
    match best {
        Some((estimate, _, _, sidecar_id, agent_id, endpoint_id)) => Decision::Place {
            sidecar_id: sidecar_id.clone(),
            agent_id: agent_id.clone(),
            endpoint_id: Some(endpoint_id.clone()),
            model: Some(model.to_owned()),
            estimate: Some(estimate),
        },
        None => Decision::Wait(wait),
    }
}

#[cfg(test)]
mod tests;
