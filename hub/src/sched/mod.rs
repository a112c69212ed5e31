//! Placement: which idle agent a ready task goes to, and why a task waits.
//!
//! [`place`] is the whole rule, kept apart from the core:
//! - An expired task is kept back for the tick that dead-letters it.
//! - LLM work that names a model goes where it will finish soonest: every idle agent's sidecar
//!   with a healthy endpoint that has the model is a candidate, scored by its estimated time to
//!   completion ([`Estimate`]): the wait behind that endpoint's requests in flight, the load
//!   if the model is cold, and the expected output tokens at the observed speed. Load times and
//!   speeds are learned per model and sidecar ([`Learned`]); until observed, a load is priced
//!   from the model's size. Ties go to a warm model, then fewer requests in flight, then the
//!   smaller ids, so the same view always gives the same decision.
//! - Other work goes to the open sidecar that has the capability and the most idle agents
//!   (ties to the smaller id).
//!
//! **Architecture Invariant:** pure. The core owns the fleet and asks through [`FleetView`];
//! nothing here does I/O or reads a clock.

pub mod tier;

use std::collections::{BTreeSet, HashMap};

use crate::domain::{Task, Tier, UnixMs, Work};
use crate::fleet::{Endpoint, EndpointKind, Owner};

/// Idle agents by sidecar, kept in step with agent states by the core, so placement does not
/// scan every agent for every task it places.
#[derive(Debug, Default)]
pub struct IdleIndex {
    by_sidecar: HashMap<String, BTreeSet<String>>,
}

impl IdleIndex {
    pub fn insert(&mut self, sidecar_id: &str, agent_id: &str) {
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
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Behind the requests already in flight there.
    pub wait_ms: f64,
    /// Loading the model first (0 when it is warm).
    pub load_ms: f64,
    /// Generating the expected output.
    pub generate_ms: f64,
}

impl Estimate {
    pub fn total_ms(&self) -> f64 {
        self.wait_ms + self.load_ms + self.generate_ms
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Its deadline passed; the next tick dead-letters it.
    Expired,
    /// No idle agent on an open sidecar that runs its kind of work.
    NoCapableAgent,
}

/// Places one ready task. See the module documentation for the rule.
pub fn place(task: &Task, fleet: &impl FleetView, now: UnixMs) -> Decision {
    if task.spec.limits.deadline_unix_ms.is_some_and(|deadline| deadline <= now) {
        return Decision::Wait(Wait::Expired);
    }
    if let Work::Llm(llm) = &task.spec.work {
        let model = if llm.model.is_empty() { task.spec.placement.model.as_str() } else { llm.model.as_str() };
        let model = match model {
            "" => fleet.tier_model(tier::tier_of(&task.spec)),
            named => Some(named),
        };
        if let Some(model) = model {
            let tokens = if llm.max_tokens > 0 { llm.max_tokens } else { EXPECTED_OUTPUT_TOKENS };
            return place_model(model, tokens, task.spec.placement.local_only, fleet);
        }
    }
    let needed = task.spec.work.capability();
    fleet
        .idle()
        .iter()
        .filter(|(sidecar_id, _)| fleet.can_run(sidecar_id, needed))
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
        .and_then(|(sidecar_id, agents)| {
            Some(Decision::Place {
                sidecar_id: sidecar_id.clone(),
                agent_id: agents.first()?.clone(),
                endpoint_id: None,
                model: None,
                estimate: None,
            })
        })
        .unwrap_or(Decision::Wait(Wait::NoCapableAgent))
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
    if !e.healthy || (local_only && crate::fleet::is_cloud(e)) {
        return None;
    }
    let listed = e.models.iter().find(|m| m.name == model);
    let cloud = e.kind == EndpointKind::Anthropic;
    // The Claude API serves its models by name, listed or not.
    if listed.is_none() && !(cloud && model.starts_with("claude-")) {
        return None;
    }
    let warm = cloud || listed.is_some_and(|m| m.loaded);
    let observed = fleet.learned().get(sidecar_id, model);
    let default_rate = if cloud { DEFAULT_CLOUD_TOKENS_PER_S } else { DEFAULT_LOCAL_TOKENS_PER_S };
    let generate_ms = f64::from(tokens) * 1000.0 / observed.tokens_per_s.unwrap_or(default_rate);
    let load_ms = if warm {
        0.0
    } else {
        let size = listed.map_or(0, |m| m.size_vram_bytes.max(m.size_bytes)) as f64;
        observed.load_ms.unwrap_or(size / DEFAULT_LOAD_BYTES_PER_MS)
    };
    // One request at a time per local server (Ollama's default parallelism); the cloud scales.
    let wait_ms = if cloud { 0.0 } else { f64::from(in_flight) * generate_ms };
    Some((Estimate { wait_ms, load_ms, generate_ms }, warm))
}

fn place_model(model: &str, tokens: u32, local_only: bool, fleet: &impl FleetView) -> Decision {
    // (estimate, warm, in flight, sidecar, agent, endpoint) of the best candidate so far.
    let mut best: Option<(Estimate, bool, u32, &String, &String, &String)> = None;
    for endpoint in fleet.offering(model) {
        let Owner::Sidecar(sidecar_id) = &endpoint.owner else { continue };
        let Some(agent_id) = fleet.idle().first(sidecar_id) else { continue };
        if !fleet.can_run(sidecar_id, "llm") {
            continue;
        }
        let in_flight = fleet.in_flight(&endpoint.id);
        let Some((estimate, warm)) = self::estimate(fleet, sidecar_id, endpoint, model, tokens, local_only, in_flight)
        else {
            continue;
        };
        let better = match &best {
            None => true,
            Some((b, b_warm, b_flight, b_sidecar, _, b_endpoint)) => {
                let key = (estimate.total_ms(), !warm, in_flight);
                let best_key = (b.total_ms(), !b_warm, *b_flight);
                match key.partial_cmp(&best_key) {
                    Some(std::cmp::Ordering::Less) => true,
                    Some(std::cmp::Ordering::Equal) => (sidecar_id, &endpoint.id) < (*b_sidecar, *b_endpoint),
                    _ => false,
                }
            }
        };
        if better {
            best = Some((estimate, warm, in_flight, sidecar_id, agent_id, &endpoint.id));
        }
    }
    match best {
        Some((estimate, _, _, sidecar_id, agent_id, endpoint_id)) => Decision::Place {
            sidecar_id: sidecar_id.clone(),
            agent_id: agent_id.clone(),
            endpoint_id: Some(endpoint_id.clone()),
            model: Some(model.to_owned()),
            estimate: Some(estimate),
        },
        None => Decision::Wait(Wait::NoCapableAgent),
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
    }

    impl FleetView for Fleet {
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
