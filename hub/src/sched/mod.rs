//! Placement: which idle agent a ready task goes to, why a task waits, and what was weighed.
//!
//! [`place`] is the whole rule, kept apart from the core:
//! - An expired task is kept back for the tick that dead-letters it.
//! - Candidates are filtered: an open sidecar that runs the work and matches `placement.tags`
//!   and `placement.host` ([`FleetView::admits`]); for a model, a healthy endpoint that offers it,
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
//! - Other work goes to the open sidecar that has the capability and the most idle agents
//!   (ties to the smaller id).
//! - A task that cannot be placed gets a [`Wait`] that names why, and a [`Need`] by which the
//!   queue keeps it blocked until the fleet changes for it.
//!
//! [`explain`] runs the same code with a recorder that keeps every candidate and its
//! [`Verdict`]; [`place`] passes a recorder that does nothing, so the hot path pays nothing.
//!
//! **Architecture Invariant:** pure. The core owns the fleet and asks through [`FleetView`];
//! nothing here does I/O or reads a clock.

pub mod tier;

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::domain::{Placement, Task, TaskId, Tier, TokenPrice, UnixMs, Work};
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

/// What placement may ask about the fleet.
pub trait FleetView {
    fn idle(&self) -> &IdleIndex;
    /// The sidecar's session is open and it runs work that needs `capability`.
    fn can_run(&self, sidecar_id: &str, capability: &str) -> bool;
    /// The healthy or not endpoints that can serve `model` (see `Registry::offering`), in a
    /// stable order.
    fn offering(&self, model: &str) -> impl Iterator<Item = &Endpoint>;
    /// Requests the hub has placed on an endpoint that have not finished.
    fn in_flight(&self, endpoint_id: &str) -> u32;
    fn learned(&self) -> &Learned;
    /// The model LLM work of `tier` runs on when it names none (`--tier-model`).
    fn tier_model(&self, _tier: Tier) -> Option<&str> {
        None
    }
    /// The sidecar matches the task's `placement.tags` (it has them all) and `placement.host`
    /// (its hostname or id).
    fn admits(&self, _sidecar_id: &str, _placement: &Placement) -> bool {
        true
    }
    /// Some open sidecar that admits `placement` runs `capability`, idle or not (asked only to
    /// say why a task waits).
    fn any_open(&self, _capability: &str, _placement: &Placement) -> bool {
        false
    }
    /// What `model` costs, if the price table has it.
    fn price(&self, _model: &str) -> Option<TokenPrice> {
        None
    }
    /// Memory free for a model on the sidecar's host: its GPUs' free memory together, or its
    /// available RAM without GPUs; `None` until it reports.
    fn free_memory(&self, _sidecar_id: &str) -> Option<u64> {
        None
    }
    /// How busy the sidecar's GPUs are, 0 to 100 (their mean utilization; 0 without GPUs or a
    /// report): breaks ties between equal estimates.
    fn gpu_busy(&self, _sidecar_id: &str) -> u32 {
        0
    }
    /// The tier a task was moved to after waiting too long at its own (see [`tier::fallback`]).
    fn fallback_tier(&self, _task: TaskId) -> Option<Tier> {
        None
    }
    /// The hub runs `--offline`: every task is local-only.
    fn offline(&self) -> bool {
        false
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

/// What the hub has observed of a model on a sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    /// Of cold loads (Ollama's `load_duration`).
    pub load_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

/// Load times and speeds per (sidecar, model), as exponentially weighted moving averages.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    /// Sidecar -> model -> what was observed (looked up by `&str`, without allocating).
    by: HashMap<String, HashMap<String, Observed>>,
}

/// Weight of the newest observation.
pub const EWMA_ALPHA: f64 = 0.3;
/// Output tokens expected of a task that sets no `max_tokens`.
pub const EXPECTED_OUTPUT_TOKENS: u32 = 256;
/// Speeds assumed until one is observed.
pub const DEFAULT_LOCAL_TOKENS_PER_S: f64 = 30.0;
pub const DEFAULT_CLOUD_TOKENS_PER_S: f64 = 60.0;
/// A cold load is priced at this rate until one is observed (bytes per millisecond: 2 GB/s).
pub const DEFAULT_LOAD_BYTES_PER_MS: f64 = 2_000_000.0;
/// Candidates an explanation keeps (the best ones); the rest are counted.
pub const EXPLAINED_CANDIDATES: usize = 8;

impl Learned {
    pub fn get(&self, sidecar_id: &str, model: &str) -> Observed {
        self.by.get(sidecar_id).and_then(|models| models.get(model)).copied().unwrap_or_default()
    }

    /// Records a finished request: its load time (`None` or 0 when the model was warm) and speed.
    pub fn observe(&mut self, sidecar_id: &str, model: &str, load_ms: Option<u64>, tokens_per_s: Option<f64>) {
        let entry = self.by.entry(sidecar_id.to_owned()).or_default().entry(model.to_owned()).or_default();
        let blend = |old: Option<f64>, new: f64| Some(old.map_or(new, |old| old + EWMA_ALPHA * (new - old)));
        if let Some(load) = load_ms.filter(|ms| *ms > 0) {
            entry.load_ms = blend(entry.load_ms, load as f64);
        }
        if let Some(rate) = tokens_per_s.filter(|r| r.is_finite() && *r > 0.0) {
            entry.tokens_per_s = blend(entry.tokens_per_s, rate);
        }
    }
}

/// Why a ready task is not placed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wait {
    /// Its deadline passed; the next tick dead-letters it.
    Expired,
    /// No open sidecar runs its kind of work (and matches its tags and host).
    NoCapableAgent,
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
            Wait::NoCapableAgent => "no_capable_agent",
            Wait::AllBusy => "all_busy",
            Wait::ModelNowhere => "model_nowhere",
            Wait::LocalOnly => "local_only",
            Wait::OverBudget => "over_budget",
            Wait::NoRoom => "no_room",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Wait::Expired => "its deadline passed: it is dead-lettered as expired",
            Wait::NoCapableAgent => "no open sidecar runs this kind of work (and matches its tags and host)",
            Wait::AllBusy => "every agent that could run it is busy",
            Wait::ModelNowhere => "no healthy endpoint has its model",
            Wait::LocalOnly => "it is local-only and only a cloud provider offers its model",
            Wait::OverBudget => "every candidate would cost more than its budget",
            Wait::NoRoom => "its model is cold everywhere and fits in no host's free memory",
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
}

/// The tier `task` is placed at now.
pub fn tier_now(task: &Task, fleet: &impl FleetView) -> (Tier, TierSource) {
    let own = tier::tier_of(&task.spec);
    match fleet.fallback_tier(task.id) {
        Some(tier) => (tier, TierSource::Fallback { from: own }),
        None if task.spec.tier.is_some() => (own, TierSource::Given),
        None => (own, TierSource::Inferred),
    }
}

/// The model LLM work runs on: its own (`work.llm.model`, else `placement.model`), or its tier's;
/// `None` for other work and when neither names one (the sidecar then picks).
pub fn model_of<'a>(task: &'a Task, fleet: &'a impl FleetView) -> Option<&'a str> {
    let Work::Llm(llm) = &task.spec.work else { return None };
    match (llm.model.as_str(), task.spec.placement.model.as_str()) {
        ("", "") => fleet.tier_model(tier_now(task, fleet).0),
        ("", placed) => Some(placed),
        (named, _) => Some(named),
    }
}

/// What `task` needs, for the blocked set.
pub fn need_of(task: &Task, fleet: &impl FleetView) -> Need {
    match model_of(task, fleet) {
        Some(model) => Need::Model(model.to_owned()),
        None => Need::Capability(task.spec.work.capability()),
    }
}

/// One candidate a decision weighed.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub sidecar_id: String,
    /// The idle agent it would have gone to; `None` when the sidecar had none.
    pub agent_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub estimate: Option<Estimate>,
    pub warm: bool,
    pub in_flight: u32,
    /// Idle agents on the sidecar (work placed by capability).
    pub idle_agents: u32,
    pub verdict: Verdict,
}

/// What became of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Chosen,
    /// Eligible, and would have finished later (or, placed by capability, has fewer idle agents).
    Slower,
    /// No idle agent there.
    Busy,
    /// Its estimated cost is over the task's budget.
    OverBudget,
    /// The model is cold and does not fit, even evicting what is warm there.
    NoRoom,
    /// A cloud provider, and the task is local-only.
    Cloud,
    /// The endpoint is down.
    Unhealthy,
    /// Not listed by the endpoint.
    NoModel,
    /// The sidecar does not match the task's tags or host, its session is closed, or it is
    /// cordoned.
    Excluded,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Chosen => "chosen",
            Verdict::Slower => "slower",
            Verdict::Busy => "busy",
            Verdict::OverBudget => "over_budget",
            Verdict::NoRoom => "no_room",
            Verdict::Cloud => "cloud_refused",
            Verdict::Unhealthy => "unhealthy",
            Verdict::NoModel => "no_model",
            Verdict::Excluded => "excluded",
        }
    }
}

/// A decision with everything it weighed: what `explain` and `why` show.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub decision: Decision,
    pub tier: Tier,
    pub tier_source: TierSource,
    pub model: Option<String>,
    /// The best candidates, the chosen one first, then by estimated time to completion.
    pub candidates: Vec<Candidate>,
    /// Candidates weighed beyond those kept.
    pub more_candidates: usize,
}

/// Where candidates go as they are weighed: nowhere for [`place`], a list for [`explain`].
trait Record {
    fn note(&mut self, make: impl FnOnce() -> Candidate);
}

impl Record for () {
    #[inline]
    fn note(&mut self, _make: impl FnOnce() -> Candidate) {}
}

impl Record for Vec<Candidate> {
    fn note(&mut self, make: impl FnOnce() -> Candidate) {
        self.push(make());
    }
}

/// Places one ready task. See the module documentation for the rule.
pub fn place(task: &Task, fleet: &impl FleetView, now: UnixMs) -> Decision {
    decide(task, fleet, now, &mut ())
}

/// Places one task as [`place`] does, and says what was weighed.
pub fn explain(task: &Task, fleet: &impl FleetView, now: UnixMs) -> Explanation {
    let mut candidates = Vec::new();
    let decision = decide(task, fleet, now, &mut candidates);
    let chosen = match &decision {
        Decision::Place { sidecar_id, endpoint_id, .. } => Some((sidecar_id, endpoint_id)),
        Decision::Wait(_) => None,
    };
    for c in &mut candidates {
        if c.verdict == Verdict::Slower && chosen == Some((&c.sidecar_id, &c.endpoint_id)) {
            c.verdict = Verdict::Chosen;
        }
    }
    let total = |c: &Candidate| c.estimate.map_or(0.0, |e| e.total_ms());
    candidates.sort_by(|a, b| {
        (a.verdict, total(a), std::cmp::Reverse(a.idle_agents), &a.sidecar_id, &a.endpoint_id)
            .partial_cmp(&(b.verdict, total(b), std::cmp::Reverse(b.idle_agents), &b.sidecar_id, &b.endpoint_id))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let more_candidates = candidates.len().saturating_sub(EXPLAINED_CANDIDATES);
    candidates.truncate(EXPLAINED_CANDIDATES);
    let (tier, tier_source) = tier_now(task, fleet);
    Explanation {
        decision,
        tier,
        tier_source,
        model: model_of(task, fleet).map(str::to_owned),
        candidates,
        more_candidates,
    }
}

/// One line on an explanation's outcome: where it went and why there, or why it waits.
pub fn summarize(explained: &Explanation) -> String {
    let agent = |c: &Candidate| c.agent_id.clone().unwrap_or_else(|| c.sidecar_id.clone());
    let seconds = |e: &Estimate| format!("{:.1} s", e.total_ms() / 1000.0);
    match &explained.decision {
        Decision::Wait(why) => format!("waits: {}", why.describe()),
        Decision::Place { agent_id, estimate: Some(estimate), model, .. } => {
            let model = model.as_deref().unwrap_or("?");
            let how = if estimate.load_ms > 0.0 { "cold" } else { "warm" };
            let next = explained.candidates.iter().find(|c| c.verdict == Verdict::Slower);
            let next = match next.and_then(|c| Some((c, c.estimate?))) {
                Some((c, e)) => format!("; next best {} on {}", seconds(&e), agent(c)),
                None => "; the only agent free for it".to_owned(),
            };
            format!("finishes soonest: {} on {agent_id} ({model} {how}){next}", seconds(estimate))
        }
        Decision::Place { agent_id, .. } => {
            let idle = explained.candidates.iter().find(|c| c.verdict == Verdict::Chosen).map_or(1, |c| c.idle_agents);
            format!("to {agent_id}: its sidecar has the most idle agents that run this work ({idle})")
        }
    }
}

fn decide(task: &Task, fleet: &impl FleetView, now: UnixMs, record: &mut impl Record) -> Decision {
    if task.spec.limits.deadline_unix_ms.is_some_and(|deadline| deadline <= now) {
        return Decision::Wait(Wait::Expired);
    }
    if let Work::Llm(llm) = &task.spec.work
        && let Some(model) = model_of(task, fleet)
    {
        let tokens = if llm.max_tokens > 0 { llm.max_tokens } else { EXPECTED_OUTPUT_TOKENS };
        return place_model(task, model, tokens, fleet, record);
    }
    let needed = task.spec.work.capability();
    let placement = &task.spec.placement;
    let mut best: Option<(&String, &BTreeSet<String>)> = None;
    for (sidecar_id, agents) in fleet.idle().iter() {
        if !fleet.can_run(sidecar_id, needed) || !fleet.admits(sidecar_id, placement) {
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
    match best.and_then(|(sidecar_id, agents)| Some((sidecar_id, agents.first()?))) {
        Some((sidecar_id, agent_id)) => Decision::Place {
            sidecar_id: sidecar_id.clone(),
            agent_id: agent_id.clone(),
            endpoint_id: None,
            model: None,
            estimate: None,
        },
        None if fleet.any_open(needed, placement) => Decision::Wait(Wait::AllBusy),
        None => Decision::Wait(Wait::NoCapableAgent),
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
    fleet: &impl FleetView,
    sidecar_id: &str,
    e: &Endpoint,
    model: &str,
    tokens: u32,
    local_only: bool,
    in_flight: u32,
) -> Option<(Estimate, bool)> {
    weigh(fleet, sidecar_id, e, model, tokens, local_only, in_flight).ok()
}

/// [`estimate`], or the verdict that rules the endpoint out.
fn weigh(
    fleet: &impl FleetView,
    sidecar_id: &str,
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
    let warm = cloud || listed.is_some_and(|m| m.loaded);
    let observed = fleet.learned().get(sidecar_id, model);
    let default_rate = if cloud { DEFAULT_CLOUD_TOKENS_PER_S } else { DEFAULT_LOCAL_TOKENS_PER_S };
    let generate_ms = f64::from(tokens) * 1000.0 / observed.tokens_per_s.unwrap_or(default_rate);
    let (mut load_ms, mut fit_ms) = (0.0, 0.0);
    if !warm {
        let size = listed.map_or(0, |m| m.size_vram_bytes.max(m.size_bytes));
        load_ms = observed.load_ms.unwrap_or(size as f64 / DEFAULT_LOAD_BYTES_PER_MS);
        if let Some(free) = fleet.free_memory(sidecar_id)
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
                    fleet.learned().get(sidecar_id, &m.name).load_ms.unwrap_or(bytes / DEFAULT_LOAD_BYTES_PER_MS)
                })
                .sum();
        }
    }
    // A local server runs `parallel` requests at once (1 unless configured: Ollama's default);
    // behind the rest, this one waits its turn. The cloud scales.
    let wait_ms = if cloud { 0.0 } else { f64::from(in_flight / e.parallel.max(1)) * generate_ms };
    Ok((Estimate { wait_ms, load_ms, generate_ms, fit_ms }, warm))
}

fn place_model(task: &Task, model: &str, tokens: u32, fleet: &impl FleetView, record: &mut impl Record) -> Decision {
    let placement = &task.spec.placement;
    let local_only = placement.local_only || fleet.offline();
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
        let agent_id = fleet.idle().first(sidecar_id);
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
        if !fleet.can_run(sidecar_id, "llm") || !fleet.admits(sidecar_id, placement) {
            record.note(|| note(None, Verdict::Excluded));
            continue;
        }
        open = true;
        let weighed = match weigh(fleet, sidecar_id, endpoint, model, tokens, local_only, in_flight) {
            Ok(weighed) => weighed,
            Err(verdict) => {
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
    } else if open || fleet.any_open("llm", placement) {
        Wait::ModelNowhere
    } else {
        Wait::NoCapableAgent
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
mod tests {
    use super::*;
    use crate::domain::{LlmWork, SpecDefaults, TaskId, TaskSpec};
    use crate::fleet::Model;

    #[derive(Default, Debug)]
    struct Fleet {
        idle: IdleIndex,
        /// (sidecar, capability) pairs that can run.
        can: Vec<(&'static str, &'static str)>,
        endpoints: Vec<Endpoint>,
        in_flight: HashMap<String, u32>,
        learned: Learned,
        tiers: TierModels,
        /// Free memory per sidecar (unknown when absent).
        free: HashMap<String, u64>,
        prices: HashMap<String, TokenPrice>,
        /// Tags per sidecar.
        tags: HashMap<String, Vec<String>>,
        /// What `any_open` answers.
        open_any: bool,
        gpu_busy: HashMap<String, u32>,
    }

    impl FleetView for Fleet {
        fn admits(&self, sidecar_id: &str, placement: &Placement) -> bool {
            let tags = self.tags.get(sidecar_id).cloned().unwrap_or_default();
            (placement.host.is_empty() || placement.host == sidecar_id)
                && placement.tags.iter().all(|t| tags.contains(t))
        }
        fn any_open(&self, _capability: &str, _placement: &Placement) -> bool {
            self.open_any
        }
        fn price(&self, model: &str) -> Option<TokenPrice> {
            self.prices.get(model).copied()
        }
        fn free_memory(&self, sidecar_id: &str) -> Option<u64> {
            self.free.get(sidecar_id).copied()
        }
        fn gpu_busy(&self, sidecar_id: &str) -> u32 {
            self.gpu_busy.get(sidecar_id).copied().unwrap_or(0)
        }
        fn idle(&self) -> &IdleIndex {
            &self.idle
        }
        fn can_run(&self, sidecar_id: &str, capability: &str) -> bool {
            self.can.iter().any(|&(s, c)| s == sidecar_id && c == capability)
        }
        fn offering(&self, model: &str) -> impl Iterator<Item = &Endpoint> {
            let model = model.to_owned();
            self.endpoints.iter().filter(move |e| {
                e.models.iter().any(|m| m.name == model)
                    || (e.kind == EndpointKind::Anthropic && model.starts_with("claude-"))
            })
        }
        fn in_flight(&self, endpoint_id: &str) -> u32 {
            self.in_flight.get(endpoint_id).copied().unwrap_or(0)
        }
        fn learned(&self) -> &Learned {
            &self.learned
        }
        fn tier_model(&self, tier: Tier) -> Option<&str> {
            self.tiers.get(tier)
        }
    }

    fn shell_task() -> Task {
        Task::new(TaskId::new(1), TaskSpec::shell(vec!["true".into()], &SpecDefaults::default()), 1)
    }

    fn llm_task(model: &str) -> Task {
        let mut task = shell_task();
        task.spec.work = Work::Llm(LlmWork { model: model.into(), max_tokens: 100, ..LlmWork::prompt("hi") });
        task
    }

    fn ollama(sidecar: &str, model: &str, loaded: bool, size: u64) -> Endpoint {
        let mut e =
            Endpoint::new(Owner::Sidecar(sidecar.into()), format!("http://{sidecar}:11434"), EndpointKind::Ollama);
        e.healthy = true;
        e.models = vec![Model { loaded, size_bytes: size, ..Model::named(model) }];
        e
    }

    /// Two sidecars, each one idle agent, one with the model warm and one cold (4 GB: 2 s).
    fn warm_and_cold() -> Fleet {
        let mut idle = IdleIndex::default();
        idle.insert("cold", "cold/0");
        idle.insert("warm", "warm/0");
        Fleet {
            idle,
            can: vec![("cold", "llm"), ("warm", "llm")],
            endpoints: vec![ollama("cold", "m", false, 4_000_000_000), ollama("warm", "m", true, 4_000_000_000)],
            ..Fleet::default()
        }
    }

    fn placed_on(decision: &Decision) -> &str {
        match decision {
            Decision::Place { sidecar_id, .. } => sidecar_id,
            Decision::Wait(why) => panic!("waits: {why:?}"),
        }
    }

    #[test]
    fn a_task_goes_to_the_capable_sidecar_with_the_most_idle_agents() {
        let mut idle = IdleIndex::default();
        for (sidecar, agent) in [("a", "a/0"), ("b", "b/0"), ("b", "b/1"), ("c", "c/0"), ("c", "c/1"), ("c", "c/2")] {
            idle.insert(sidecar, agent);
        }
        let fleet = Fleet { idle, can: vec![("a", "shell"), ("b", "shell"), ("c", "llm")], ..Fleet::default() };
        let placed = place(&shell_task(), &fleet, 10);
        let expected = Decision::Place {
            sidecar_id: "b".into(),
            agent_id: "b/0".into(),
            endpoint_id: None,
            model: None,
            estimate: None,
        };
        assert_eq!(placed, expected);
    }

    #[test]
    fn ties_go_to_the_smaller_sidecar_id_and_nothing_capable_waits() {
        let mut idle = IdleIndex::default();
        idle.insert("z", "z/0");
        idle.insert("m", "m/0");
        let fleet = Fleet { idle, can: vec![("z", "shell"), ("m", "shell")], ..Fleet::default() };
        assert_eq!(placed_on(&place(&shell_task(), &fleet, 10)), "m");
        let fleet = Fleet { can: vec![("z", "llm")], ..fleet };
        assert_eq!(place(&shell_task(), &fleet, 10), Decision::Wait(Wait::NoCapableAgent));
    }

    #[test]
    fn an_expired_task_is_not_placed() {
        let mut idle = IdleIndex::default();
        idle.insert("a", "a/0");
        let fleet = Fleet { idle, can: vec![("a", "shell")], ..Fleet::default() };
        let mut task = shell_task();
        task.spec.limits.deadline_unix_ms = Some(5);
        assert_eq!(place(&task, &fleet, 5), Decision::Wait(Wait::Expired));
        assert!(matches!(place(&task, &fleet, 4), Decision::Place { .. }));
    }

    #[test]
    fn the_index_forgets_sidecars_without_idle_agents() {
        let mut idle = IdleIndex::default();
        idle.insert("a", "a/0");
        idle.remove("a", "a/0");
        assert!(idle.is_empty());
    }

    #[test]
    fn a_model_goes_where_it_is_warm_until_the_wait_there_costs_more_than_a_load() {
        let mut fleet = warm_and_cold();
        let decision = place(&llm_task("m"), &fleet, 0);
        assert_eq!(placed_on(&decision), "warm");
        let Decision::Place { endpoint_id, estimate: Some(estimate), .. } = &decision else { unreachable!() };
        assert_eq!(endpoint_id.as_deref(), Some(fleet.endpoints[1].id.as_str()));
        // 100 tokens at 30/s, nothing in flight, no load.
        assert_eq!((estimate.wait_ms, estimate.load_ms), (0.0, 0.0));
        assert!((estimate.generate_ms - 3_333.3).abs() < 1.0, "{estimate:?}");
        // One request in flight on the warm one: 3.3 s of waiting against a 2 s load.
        fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "cold");
    }

    #[test]
    fn an_observed_slow_load_changes_later_placements() {
        let mut fleet = warm_and_cold();
        fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "cold", "a 2 s load beats a 3.3 s wait");
        fleet.learned.observe("cold", "m", Some(20_000), None);
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "warm", "a 20 s load does not");
        // Speeds are learned too: a fast warm server makes its queue short.
        let mut fleet = warm_and_cold();
        fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
        fleet.learned.observe("warm", "m", None, Some(300.0));
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "warm");
    }

    #[test]
    fn a_model_nobody_has_waits_and_the_claude_api_takes_its_models_by_name() {
        let fleet = warm_and_cold();
        assert_eq!(place(&llm_task("other"), &fleet, 0), Decision::Wait(Wait::NoCapableAgent));
        let mut fleet = warm_and_cold();
        let mut claude =
            Endpoint::new(Owner::Sidecar("cloud".into()), "https://api.anthropic.com".into(), EndpointKind::Anthropic);
        claude.healthy = true;
        fleet.endpoints.push(claude);
        fleet.idle.insert("cloud", "cloud/0");
        fleet.can.push(("cloud", "llm"));
        assert_eq!(placed_on(&place(&llm_task("claude-sonnet-4-5"), &fleet, 0)), "cloud");
    }

    #[test]
    fn llm_work_without_a_model_runs_on_its_tiers_model() {
        let mut fleet = warm_and_cold();
        let mut claude =
            Endpoint::new(Owner::Sidecar("cloud".into()), "https://api.anthropic.com".into(), EndpointKind::Anthropic);
        claude.healthy = true;
        fleet.endpoints.push(claude);
        fleet.idle.insert("cloud", "cloud/0");
        fleet.can.push(("cloud", "llm"));
        let mut unnamed = llm_task("");
        // No tier models configured: placed as plain work, the sidecar picks.
        let Decision::Place { model, .. } = place(&unnamed, &fleet, 0) else { panic!("waits") };
        assert_eq!(model, None);
        fleet.tiers.set("standard=m").unwrap();
        fleet.tiers.set("complex=claude-sonnet-4-5").unwrap();
        fleet.tiers.set("trivial=m").unwrap();
        let Decision::Place { sidecar_id, model, .. } = place(&unnamed, &fleet, 0) else { panic!("waits") };
        assert_eq!((sidecar_id.as_str(), model.as_deref()), ("warm", Some("m")), "a short question is trivial");
        if let Work::Llm(work) = &mut unnamed.spec.work {
            work.prompt = "Refactor the scheduler and design its explanations".into();
        }
        let Decision::Place { sidecar_id, model, .. } = place(&unnamed, &fleet, 0) else { panic!("waits") };
        assert_eq!((sidecar_id.as_str(), model.as_deref()), ("cloud", Some("claude-sonnet-4-5")), "inferred complex");
        unnamed.spec.tier = Some(Tier::Standard);
        assert_eq!(placed_on(&place(&unnamed, &fleet, 0)), "warm", "an explicit tier wins");
        assert!(fleet.tiers.set("huge=m").is_err() && fleet.tiers.set("standard").is_err());
    }

    fn claude_on(fleet: &mut Fleet, sidecar: &'static str) -> String {
        let mut claude =
            Endpoint::new(Owner::Sidecar(sidecar.into()), "https://api.anthropic.com".into(), EndpointKind::Anthropic);
        claude.healthy = true;
        let id = claude.id.clone();
        fleet.endpoints.push(claude);
        fleet.idle.insert(sidecar, &format!("{sidecar}/0"));
        fleet.can.push((sidecar, "llm"));
        id
    }

    #[test]
    fn a_waiting_task_names_its_reason() {
        // Busy: the model is there, but no agent is idle.
        let mut fleet = warm_and_cold();
        fleet.idle = IdleIndex::default();
        assert_eq!(place(&llm_task("m"), &fleet, 0), Decision::Wait(Wait::AllBusy));
        // Nowhere: no endpoint has it, though llm sidecars are open.
        let fleet = Fleet { open_any: true, ..warm_and_cold() };
        assert_eq!(place(&llm_task("other"), &fleet, 0), Decision::Wait(Wait::ModelNowhere));
        // Local-only, and only the Claude API offers it.
        let mut fleet = warm_and_cold();
        claude_on(&mut fleet, "cloud");
        let mut private = llm_task("claude-sonnet-4-5");
        private.spec.placement.local_only = true;
        assert_eq!(place(&private, &fleet, 0), Decision::Wait(Wait::LocalOnly));
        // Over budget: 100 output tokens at $15/M are 1,500 millionths.
        fleet.prices.insert("claude-sonnet-4-5".into(), TokenPrice { input: 3.0, output: 15.0 });
        let mut cheap = llm_task("claude-sonnet-4-5");
        cheap.spec.limits.max_cost_micros = Some(1_000);
        assert_eq!(place(&cheap, &fleet, 0), Decision::Wait(Wait::OverBudget));
        cheap.spec.limits.max_cost_micros = Some(2_000);
        assert_eq!(placed_on(&place(&cheap, &fleet, 0)), "cloud");
        // No room: a 4 GB cold model where 1 GB is free and nothing warm can make room.
        let mut fleet = warm_and_cold();
        fleet.endpoints.remove(1);
        fleet.free.insert("cold".into(), 1_000_000_000);
        assert_eq!(place(&llm_task("m"), &fleet, 0), Decision::Wait(Wait::NoRoom));
        // And shell work with no capable sidecar at all, against one that is only busy.
        let fleet = Fleet::default();
        assert_eq!(place(&shell_task(), &fleet, 0), Decision::Wait(Wait::NoCapableAgent));
        let fleet = Fleet { open_any: true, ..Fleet::default() };
        assert_eq!(place(&shell_task(), &fleet, 0), Decision::Wait(Wait::AllBusy));
    }

    #[test]
    fn between_equal_estimates_the_less_busy_gpus_win() {
        let mut fleet = warm_and_cold();
        fleet.endpoints[0].models[0].loaded = true; // Both warm: a tie, so far to "cold" by id.
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "cold");
        fleet.gpu_busy.insert("cold".into(), 90);
        fleet.gpu_busy.insert("warm".into(), 10);
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "warm");
    }

    #[test]
    fn a_server_that_runs_requests_in_parallel_makes_the_wait_behind_them_shorter() {
        let mut fleet = warm_and_cold();
        fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "cold", "one at a time: a 3.3 s wait");
        fleet.endpoints[1].parallel = 2;
        let (one, _) = estimate(&fleet, "warm", &fleet.endpoints[1], "m", 100, false, 1).unwrap();
        assert_eq!(one.wait_ms, 0.0, "a second slot is free");
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "warm");
        let (five, _) = estimate(&fleet, "warm", &fleet.endpoints[1], "m", 100, false, 5).unwrap();
        assert!((five.wait_ms - 2.0 * five.generate_ms).abs() < 1e-9, "five in flight on two: two rounds");
    }

    #[test]
    fn a_cold_model_that_does_not_fit_pays_for_the_eviction() {
        let mut fleet = warm_and_cold();
        // The cold host has another model warm; 1 GB free, so loading 4 GB evicts the 8 GB one.
        fleet.endpoints[0].models.push(Model { loaded: true, size_bytes: 8_000_000_000, ..Model::named("big") });
        fleet.free.insert("cold".into(), 1_000_000_000);
        let (estimate, warm) = estimate(&fleet, "cold", &fleet.endpoints[0], "m", 100, false, 0).unwrap();
        assert!(!warm && (estimate.fit_ms - 4_000.0).abs() < 1e-6, "reloading 8 GB later: {estimate:?}");
        // With the warm host busy behind one request (3.3 s), the 2 s load alone would win; the
        // eviction's 4 s more does not.
        fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "warm");
        fleet.free.insert("cold".into(), 8_000_000_000);
        assert_eq!(placed_on(&place(&llm_task("m"), &fleet, 0)), "cold", "room enough: no eviction");
    }

    #[test]
    fn tags_and_host_narrow_the_candidates() {
        let mut fleet = warm_and_cold();
        fleet.tags.insert("cold".into(), vec!["gpu".into(), "eu".into()]);
        let mut task = llm_task("m");
        task.spec.placement.tags = vec!["gpu".into()];
        assert_eq!(placed_on(&place(&task, &fleet, 0)), "cold", "only the tagged host");
        task.spec.placement.tags = vec!["gpu".into(), "us".into()];
        assert_eq!(place(&task, &fleet, 0), Decision::Wait(Wait::NoCapableAgent));
        let mut task = llm_task("m");
        task.spec.placement.host = "cold".into();
        assert_eq!(placed_on(&place(&task, &fleet, 0)), "cold");
        let mut shell = shell_task();
        shell.spec.placement.host = "nowhere".into();
        let mut idle = IdleIndex::default();
        idle.insert("a", "a/0");
        let fleet = Fleet { idle, can: vec![("a", "shell")], ..Fleet::default() };
        assert_eq!(place(&shell, &fleet, 0), Decision::Wait(Wait::NoCapableAgent));
    }

    #[test]
    fn an_explanation_lists_every_candidate_with_its_verdict_the_winner_first() {
        let mut fleet = warm_and_cold();
        let mut down = ollama("down", "m", true, 1);
        down.healthy = false;
        fleet.endpoints.push(down);
        fleet.can.push(("down", "llm"));
        fleet.idle.insert("down", "down/0");
        fleet.endpoints.push(ollama("busy", "m", true, 1));
        fleet.can.push(("busy", "llm"));
        let explained = explain(&llm_task("m"), &fleet, 0);
        assert_eq!(explained.decision, place(&llm_task("m"), &fleet, 0), "explain decides as place does");
        let verdicts: Vec<(&str, Verdict)> =
            explained.candidates.iter().map(|c| (c.sidecar_id.as_str(), c.verdict)).collect();
        assert_eq!(
            verdicts,
            vec![
                ("warm", Verdict::Chosen),
                ("cold", Verdict::Slower),
                ("busy", Verdict::Busy),
                ("down", Verdict::Unhealthy)
            ]
        );
        let cold = &explained.candidates[1];
        assert!(!cold.warm && cold.estimate.unwrap().load_ms > 0.0);
        assert_eq!((explained.model.as_deref(), explained.tier_source), (Some("m"), TierSource::Inferred));
        let line = summarize(&explained);
        assert!(line.starts_with("finishes soonest: 3.3 s on warm/0 (m warm); next best 5.3 s on cold/0"), "{line}");
        let waiting = explain(&llm_task("other"), &fleet, 0);
        assert_eq!(
            summarize(&waiting),
            "waits: no open sidecar runs this kind of work (and matches its tags and host)"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_fleet() -> impl Strategy<Value = Fleet> {
            let endpoint = (0..4usize, 0..3usize, any::<bool>(), any::<bool>(), 1u64..8_000_000_000, 0u32..3);
            (prop::collection::vec(endpoint, 0..10), prop::collection::vec((0..4usize, 0..3u8), 0..8), any::<u8>())
                .prop_map(|(endpoints, agents, capable)| {
                    let sidecar = |n: usize| format!("s{n}");
                    let mut fleet = Fleet::default();
                    for (n, slot) in agents {
                        fleet.idle.insert(&sidecar(n), &format!("s{n}/{slot}"));
                    }
                    for (n, model, loaded, healthy, size, flight) in endpoints {
                        let mut e = ollama(&sidecar(n), &format!("m{model}"), loaded, size);
                        e.url = format!("{}/{}", e.url, fleet.endpoints.len());
                        e.id = crate::fleet::endpoint_id(&e.owner, &e.url);
                        e.healthy = healthy;
                        fleet.in_flight.insert(e.id.clone(), flight);
                        fleet.endpoints.push(e);
                    }
                    let names: [&'static str; 4] = ["s0", "s1", "s2", "s3"];
                    fleet.can = (0..4).filter(|n| capable & (1 << n) != 0).map(|n| (names[n], "llm")).collect();
                    fleet
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

            /// Never an ineligible agent: idle, on a capable sidecar, with a healthy endpoint that
            /// has the model; and the same view gives the same decision.
            #[test]
            fn placements_are_eligible_and_deterministic(fleet in arb_fleet(), model in 0..3usize) {
                let task = llm_task(&format!("m{model}"));
                let decision = place(&task, &fleet, 0);
                prop_assert_eq!(&decision, &place(&task, &fleet, 0));
                let eligible: Vec<&Endpoint> = fleet
                    .endpoints
                    .iter()
                    .filter(|e| e.healthy && e.models.iter().any(|m| m.name == format!("m{model}")))
                    .filter(|e| {
                        let Owner::Sidecar(s) = &e.owner else { return false };
                        fleet.can_run(s, "llm") && fleet.idle.iter().any(|(id, agents)| id == s && !agents.is_empty())
                    })
                    .collect();
                match &decision {
                    Decision::Place { sidecar_id, agent_id, endpoint_id, .. } => {
                        let endpoint = eligible.iter().find(|e| Some(&e.id) == endpoint_id.as_ref());
                        prop_assert!(endpoint.is_some(), "placed on an ineligible endpoint");
                        prop_assert_eq!(&endpoint.unwrap().owner, &Owner::Sidecar(sidecar_id.clone()));
                        prop_assert!(fleet.idle.iter().any(|(s, agents)| s == sidecar_id && agents.contains(agent_id)));
                    }
                    Decision::Wait(_) => prop_assert!(eligible.is_empty(), "waits while {} candidates exist", eligible.len()),
                }
            }

            /// `local_only` work never reaches a cloud candidate, however much sooner it would finish.
            #[test]
            fn local_only_never_reaches_a_cloud_candidate(fleet in arb_fleet(), model in 0..3usize, cloud_in in 0..4usize) {
                let mut fleet = fleet;
                let mut claude = Endpoint::new(Owner::Sidecar(format!("s{cloud_in}")), "https://api.anthropic.com".into(), EndpointKind::Anthropic);
                claude.healthy = true;
                claude.models = vec![Model { loaded: true, ..Model::named(format!("m{model}")) }];
                let claude_id = claude.id.clone();
                fleet.endpoints.push(claude);
                let mut task = llm_task(&format!("m{model}"));
                task.spec.placement.local_only = true;
                match place(&task, &fleet, 0) {
                    Decision::Place { endpoint_id, .. } => prop_assert_ne!(endpoint_id, Some(claude_id)),
                    Decision::Wait(_) => {}
                }
            }

            /// Warm beats cold when all else is equal.
            #[test]
            fn warm_beats_cold_when_all_else_is_equal(size in 1u64..100_000_000_000, flight in 0u32..5) {
                let mut fleet = warm_and_cold();
                for e in &mut fleet.endpoints {
                    e.models[0].size_bytes = size;
                    fleet.in_flight.insert(e.id.clone(), flight);
                }
                let decision = place(&llm_task("m"), &fleet, 0);
                prop_assert_eq!(placed_on(&decision), "warm");
            }
        }
    }
}
