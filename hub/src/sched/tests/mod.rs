//! Placement's unit and property tests.

use super::*;
use crate::domain::{LlmWork, Placement, SpecDefaults, TaskId, TaskSpec, TokenPrice};
use crate::fleet::Model;

mod properties;

/// A fleet described the short way; [`World::owned`] makes the structures the core keeps, and
/// every decision below runs on their [`Fleet`] view: the rule the hub runs, not a double's.
#[derive(Default, Debug)]
struct World {
    idle: IdleIndex,
    /// (sidecar, capability) pairs that can run; each sidecar named is open.
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
    /// Hostnames per sidecar (absent: "host-" and its id).
    hostnames: HashMap<String, String>,
    /// Allowed repositories per sidecar (absent: none).
    repos: HashMap<String, Vec<String>>,
    gpu_busy: HashMap<String, u32>,
    cordoned: Vec<&'static str>,
    tier_waits: HashMap<TaskId, TierWait>,
    offline: bool,
}

/// What [`World`] describes, as the core keeps it.
struct Owned<'w> {
    world: &'w World,
    sidecars: Sidecars,
    cordons: HashMap<String, crate::fleet::Cordon>,
    registry: crate::fleet::Registry,
    prices: crate::prices::Prices,
}

impl World {
    fn owned(&self) -> Owned<'_> {
        let mut sidecars = Sidecars::default();
        for &(id, capability) in &self.can {
            let sidecar = sidecars.entry(id.to_owned()).or_insert_with(|| Sidecar {
                hostname: self.hostnames.get(id).cloned().unwrap_or_else(|| format!("host-{id}")),
                tags: self.tags.get(id).cloned().unwrap_or_default(),
                repo_allow: self.repos.get(id).cloned().unwrap_or_default(),
                open: true,
                free_memory: self.free.get(id).copied(),
                gpu_busy: self.gpu_busy.get(id).copied().unwrap_or(0),
                ..Sidecar::default()
            });
            sidecar.capabilities.insert(capability);
        }
        let cordon = crate::fleet::Cordon { since_unix_ms: 0, deadline_unix_ms: None };
        let cordons = self.cordoned.iter().map(|id| ((*id).to_owned(), cordon)).collect();
        let mut registry = crate::fleet::Registry::default();
        for endpoint in &self.endpoints {
            registry.put(endpoint.clone());
        }
        let mut prices = crate::prices::Prices { models: Default::default(), ..crate::prices::Prices::default() };
        for (model, price) in &self.prices {
            let price = crate::prices::Price {
                input: price.input,
                output: price.output,
                cache_write_factor: None,
                cache_read_factor: None,
            };
            prices.models.insert(model.clone(), price);
        }
        Owned { world: self, sidecars, cordons, registry, prices }
    }
}

impl Owned<'_> {
    fn view(&self) -> Fleet<'_> {
        Fleet {
            idle: &self.world.idle,
            sidecars: &self.sidecars,
            cordons: &self.cordons,
            registry: &self.registry,
            in_flight: &self.world.in_flight,
            learned: &self.world.learned,
            tier_models: &self.world.tiers,
            prices: &self.prices,
            tier_waits: &self.world.tier_waits,
            offline: self.world.offline,
        }
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
    let mut e = Endpoint::new(Owner::Sidecar(sidecar.into()), format!("http://{sidecar}:11434"), EndpointKind::Ollama);
    e.healthy = true;
    e.models = vec![Model { loaded, size_bytes: size, ..Model::named(model) }];
    e
}

/// Two sidecars, each one idle agent, one with the model warm and one cold (4 GB: 2 s).
fn warm_and_cold() -> World {
    let mut idle = IdleIndex::default();
    idle.insert("cold", "cold/0");
    idle.insert("warm", "warm/0");
    World {
        idle,
        can: vec![("cold", "llm"), ("warm", "llm")],
        endpoints: vec![ollama("cold", "m", false, 4_000_000_000), ollama("warm", "m", true, 4_000_000_000)],
        ..World::default()
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
    let fleet = World { idle, can: vec![("a", "shell"), ("b", "shell"), ("c", "llm")], ..World::default() };
    let placed = place(&shell_task(), &fleet.owned().view(), 10);
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
    let fleet = World { idle, can: vec![("z", "shell"), ("m", "shell")], ..World::default() };
    assert_eq!(placed_on(&place(&shell_task(), &fleet.owned().view(), 10)), "m");
    let fleet = World { can: vec![("z", "llm")], ..fleet };
    assert_eq!(place(&shell_task(), &fleet.owned().view(), 10), Decision::Wait(Wait::NoCapableAgent));
}

#[test]
fn an_expired_task_is_not_placed() {
    let mut idle = IdleIndex::default();
    idle.insert("a", "a/0");
    let fleet = World { idle, can: vec![("a", "shell")], ..World::default() };
    let mut task = shell_task();
    task.spec.limits.deadline_unix_ms = Some(5);
    assert_eq!(place(&task, &fleet.owned().view(), 5), Decision::Wait(Wait::Expired));
    assert!(matches!(place(&task, &fleet.owned().view(), 4), Decision::Place { .. }));
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
    let decision = place(&llm_task("m"), &fleet.owned().view(), 0);
    assert_eq!(placed_on(&decision), "warm");
    let Decision::Place { endpoint_id, estimate: Some(estimate), .. } = &decision else { unreachable!() };
    assert_eq!(endpoint_id.as_deref(), Some(fleet.endpoints[1].id.as_str()));
    // 100 tokens at 30/s, nothing in flight, no load.
    assert_eq!((estimate.wait_ms, estimate.load_ms), (0.0, 0.0));
    assert!((estimate.generate_ms - 3_333.3).abs() < 1.0, "{estimate:?}");
    // One request in flight on the warm one: 3.3 s of waiting against a 2 s load.
    fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "cold");
}

#[test]
fn an_observed_slow_load_changes_later_placements() {
    let mut fleet = warm_and_cold();
    fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "cold", "a 2 s load beats a 3.3 s wait");
    fleet.learned.observe("cold", "m", Some(20_000), None);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "warm", "a 20 s load does not");
    // Speeds are learned too: a fast warm server makes its queue short.
    let mut fleet = warm_and_cold();
    fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
    fleet.learned.observe("warm", "m", None, Some(300.0));
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "warm");
}

#[test]
fn a_model_nobody_has_waits_and_the_claude_api_takes_its_models_by_name() {
    let fleet = warm_and_cold();
    assert_eq!(place(&llm_task("other"), &fleet.owned().view(), 0), Decision::Wait(Wait::ModelNowhere));
    let mut fleet = warm_and_cold();
    claude_on(&mut fleet, "cloud");
    assert_eq!(placed_on(&place(&llm_task("claude-sonnet-4-5"), &fleet.owned().view(), 0)), "cloud");
}

#[test]
fn llm_work_without_a_model_runs_on_its_tiers_model() {
    let mut fleet = warm_and_cold();
    claude_on(&mut fleet, "cloud");
    let mut unnamed = llm_task("");
    // No tier models configured: placed as plain work, the sidecar picks.
    let Decision::Place { model, .. } = place(&unnamed, &fleet.owned().view(), 0) else { panic!("waits") };
    assert_eq!(model, None);
    fleet.tiers.set("standard=m").unwrap();
    fleet.tiers.set("complex=claude-sonnet-4-5").unwrap();
    fleet.tiers.set("trivial=m").unwrap();
    let Decision::Place { sidecar_id, model, .. } = place(&unnamed, &fleet.owned().view(), 0) else { panic!("waits") };
    assert_eq!((sidecar_id.as_str(), model.as_deref()), ("warm", Some("m")), "a short question is trivial");
    if let Work::Llm(work) = &mut unnamed.spec.work {
        work.prompt = "Refactor the scheduler and design its explanations".into();
    }
    let Decision::Place { sidecar_id, model, .. } = place(&unnamed, &fleet.owned().view(), 0) else { panic!("waits") };
    assert_eq!((sidecar_id.as_str(), model.as_deref()), ("cloud", Some("claude-sonnet-4-5")), "inferred complex");
    unnamed.spec.tier = Some(Tier::Standard);
    assert_eq!(placed_on(&place(&unnamed, &fleet.owned().view(), 0)), "warm", "an explicit tier wins");
    assert!(fleet.tiers.set("huge=m").is_err() && fleet.tiers.set("standard").is_err());
}

fn claude_on(fleet: &mut World, sidecar: &'static str) -> String {
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
    assert_eq!(place(&llm_task("m"), &fleet.owned().view(), 0), Decision::Wait(Wait::AllBusy));
    // Nowhere: no endpoint has it, though llm sidecars are open.
    let fleet = warm_and_cold();
    assert_eq!(place(&llm_task("other"), &fleet.owned().view(), 0), Decision::Wait(Wait::ModelNowhere));
    // Local-only, and only the Claude API offers it.
    let mut fleet = warm_and_cold();
    claude_on(&mut fleet, "cloud");
    let mut private = llm_task("claude-sonnet-4-5");
    private.spec.placement.local_only = true;
    assert_eq!(place(&private, &fleet.owned().view(), 0), Decision::Wait(Wait::LocalOnly));
    // Over budget: 100 output tokens at $15/M are 1,500 millionths.
    fleet.prices.insert("claude-sonnet-4-5".into(), TokenPrice { input: 3.0, output: 15.0 });
    let mut cheap = llm_task("claude-sonnet-4-5");
    cheap.spec.limits.max_cost_micros = Some(1_000);
    assert_eq!(place(&cheap, &fleet.owned().view(), 0), Decision::Wait(Wait::OverBudget));
    cheap.spec.limits.max_cost_micros = Some(2_000);
    assert_eq!(placed_on(&place(&cheap, &fleet.owned().view(), 0)), "cloud");
    // No room: a 4 GB cold model where 1 GB is free and nothing warm can make room.
    let mut fleet = warm_and_cold();
    fleet.endpoints.remove(1);
    fleet.free.insert("cold".into(), 1_000_000_000);
    assert_eq!(place(&llm_task("m"), &fleet.owned().view(), 0), Decision::Wait(Wait::NoRoom));
    // And shell work with no sidecar at all, none that runs shell work, and one only busy.
    let fleet = World::default();
    assert_eq!(place(&shell_task(), &fleet.owned().view(), 0), Decision::Wait(Wait::NoSidecar));
    let fleet = World { can: vec![("a", "llm")], ..World::default() };
    assert_eq!(place(&shell_task(), &fleet.owned().view(), 0), Decision::Wait(Wait::NoCapableAgent));
    let fleet = World { can: vec![("a", "shell")], ..World::default() };
    assert_eq!(place(&shell_task(), &fleet.owned().view(), 0), Decision::Wait(Wait::AllBusy));
}

#[test]
fn between_equal_estimates_the_less_busy_gpus_win() {
    let mut fleet = warm_and_cold();
    fleet.endpoints[0].models[0].loaded = true; // Both warm: a tie, so far to "cold" by id.
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "cold");
    fleet.gpu_busy.insert("cold".into(), 90);
    fleet.gpu_busy.insert("warm".into(), 10);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "warm");
}

#[test]
fn a_server_that_runs_requests_in_parallel_makes_the_wait_behind_them_shorter() {
    let mut fleet = warm_and_cold();
    fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "cold", "one at a time: a 3.3 s wait");
    fleet.endpoints[1].parallel = 2;
    let (one, _) = estimate(&fleet.owned().view(), "warm", &fleet.endpoints[1], "m", 100, false, 1).unwrap();
    assert_eq!(one.wait_ms, 0.0, "a second slot is free");
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "warm");
    let (five, _) = estimate(&fleet.owned().view(), "warm", &fleet.endpoints[1], "m", 100, false, 5).unwrap();
    assert!((five.wait_ms - 2.0 * five.generate_ms).abs() < 1e-9, "five in flight on two: two rounds");
}

#[test]
fn a_cold_model_that_does_not_fit_pays_for_the_eviction() {
    let mut fleet = warm_and_cold();
    // The cold host has another model warm; 1 GB free, so loading 4 GB evicts the 8 GB one.
    fleet.endpoints[0].models.push(Model { loaded: true, size_bytes: 8_000_000_000, ..Model::named("big") });
    fleet.free.insert("cold".into(), 1_000_000_000);
    let (estimate, warm) = estimate(&fleet.owned().view(), "cold", &fleet.endpoints[0], "m", 100, false, 0).unwrap();
    assert!(!warm && (estimate.fit_ms - 4_000.0).abs() < 1e-6, "reloading 8 GB later: {estimate:?}");
    // With the warm host busy behind one request (3.3 s), the 2 s load alone would win; the
    // eviction's 4 s more does not.
    fleet.in_flight.insert(fleet.endpoints[1].id.clone(), 1);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "warm");
    fleet.free.insert("cold".into(), 8_000_000_000);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "cold", "room enough: no eviction");
}

#[test]
fn tags_and_host_narrow_the_candidates() {
    let mut fleet = warm_and_cold();
    fleet.tags.insert("cold".into(), vec!["gpu".into(), "eu".into()]);
    let mut task = llm_task("m");
    task.spec.placement.tags = vec!["gpu".into()];
    assert_eq!(placed_on(&place(&task, &fleet.owned().view(), 0)), "cold", "only the tagged host");
    task.spec.placement.tags = vec!["gpu".into(), "us".into()];
    assert_eq!(place(&task, &fleet.owned().view(), 0), Decision::Wait(Wait::NoCapableAgent));
    let mut task = llm_task("m");
    task.spec.placement.host = "cold".into();
    assert_eq!(placed_on(&place(&task, &fleet.owned().view(), 0)), "cold");
    let mut shell = shell_task();
    shell.spec.placement.host = "nowhere".into();
    let mut idle = IdleIndex::default();
    idle.insert("a", "a/0");
    let fleet = World { idle, can: vec![("a", "shell")], ..World::default() };
    assert_eq!(place(&shell, &fleet.owned().view(), 0), Decision::Wait(Wait::NoCapableAgent));
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
    let explained = explain(&llm_task("m"), &fleet.owned().view(), 0);
    assert_eq!(explained.decision, place(&llm_task("m"), &fleet.owned().view(), 0), "explain decides as place does");
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
    let waiting = explain(&llm_task("other"), &fleet.owned().view(), 0);
    assert_eq!(summarize(&waiting), format!("waits: {}", Wait::ModelNowhere.describe()));
}

/// An OpenAI-compatible server on the sidecar's own machine (llama.cpp's, vLLM).
fn local_openai(sidecar: &str, model: &str, loaded: bool) -> Endpoint {
    let url = format!("http://127.0.0.1:8080/{sidecar}/v1");
    let mut e = Endpoint::new(Owner::Sidecar(sidecar.into()), url, EndpointKind::Openai);
    e.healthy = true;
    e.models = vec![Model { loaded, ..Model::named(model) }];
    e
}

#[test]
fn explains_headline_says_warm_or_cold_as_its_table_does() {
    // A model known by name only has no size: nothing to load, yet it is not known warm.
    let mut idle = IdleIndex::default();
    idle.insert("s", "s/0");
    let fleet =
        World { idle, can: vec![("s", "llm")], endpoints: vec![local_openai("s", "m", false)], ..World::default() };
    let explained = explain(&llm_task("m"), &fleet.owned().view(), 0);
    assert!(!explained.candidates[0].warm);
    assert!(summarize(&explained).contains("(m cold)"), "{}", summarize(&explained));
}

#[test]
fn a_local_openai_server_takes_no_more_than_its_parallelism_and_the_rest_waits_busy() {
    let mut idle = IdleIndex::default();
    idle.insert("s", "s/0");
    idle.insert("s", "s/1");
    let endpoint = local_openai("s", "m", true);
    let id = endpoint.id.clone();
    let mut fleet = World { idle, can: vec![("s", "llm")], endpoints: vec![endpoint], ..World::default() };
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "s");
    // One in flight: llama.cpp's server would interrupt it for a second.
    fleet.in_flight.insert(id.clone(), 1);
    assert_eq!(place(&llm_task("m"), &fleet.owned().view(), 0), Decision::Wait(Wait::AllBusy));
    let explained = explain(&llm_task("m"), &fleet.owned().view(), 0);
    assert_eq!(explained.candidates[0].verdict, Verdict::Busy);
    // Configured to run two at once, it takes the second.
    fleet.endpoints[0].parallel = 2;
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 0)), "s");
    // Ollama queues requests itself: it takes more, its estimate counting the wait.
    let mut ollama_fleet = warm_and_cold();
    let warm_id = ollama_fleet.endpoints[1].id.clone();
    ollama_fleet.in_flight.insert(warm_id.clone(), 1);
    assert!(matches!(place(&llm_task("m"), &ollama_fleet.owned().view(), 0), Decision::Place { .. }));
    // Until it is seen cutting a reply short beside another: then one at a time there too.
    ollama_fleet.learned.observe_truncation(&warm_id, 1);
    ollama_fleet.endpoints.remove(0);
    assert_eq!(place(&llm_task("m"), &ollama_fleet.owned().view(), 0), Decision::Wait(Wait::AllBusy));
}

#[test]
fn agent_work_that_names_a_model_goes_where_the_model_is() {
    let mut idle = IdleIndex::default();
    idle.insert("with", "with/0");
    idle.insert("without", "without/0");
    idle.insert("without", "without/1");
    let fleet = World {
        idle,
        can: vec![("with", "agent"), ("with", "llm"), ("without", "agent"), ("without", "llm")],
        endpoints: vec![ollama("with", "m", true, 1), ollama("without", "other", true, 1)],
        ..World::default()
    };
    let mut task = shell_task();
    task.spec.work = Work::Agent(crate::domain::AgentWork {
        goal: "fix it".into(),
        repository: String::new(),
        branch: String::new(),
        fix_rounds: None,
    });
    // Naming none, it goes where the most agents are idle.
    assert_eq!(placed_on(&place(&task, &fleet.owned().view(), 0)), "without");
    task.spec.placement.model = "m".into();
    assert_eq!(placed_on(&place(&task, &fleet.owned().view(), 0)), "with");
    task.spec.placement.model = "nowhere".into();
    assert_eq!(place(&task, &fleet.owned().view(), 0), Decision::Wait(Wait::ModelNowhere));
}

#[test]
fn work_goes_only_where_its_endpoint_works_and_its_repository_is_allowed() {
    let mut idle = IdleIndex::default();
    idle.insert("down", "down/0");
    idle.insert("down", "down/1");
    idle.insert("up", "up/0");
    let mut fleet = World {
        idle,
        can: vec![("down", "llm"), ("up", "llm"), ("down", "shell"), ("up", "shell")],
        endpoints: vec![ollama("down", "m", true, 1), ollama("up", "m", true, 1)],
        ..World::default()
    };
    fleet.endpoints[0].healthy = false;
    // LLM work naming no model: not to the sidecar whose only endpoint is down, though it has
    // more idle agents.
    let prompt = llm_task("");
    assert_eq!(placed_on(&place(&prompt, &fleet.owned().view(), 0)), "up");
    fleet.endpoints[1].healthy = false;
    assert_eq!(place(&prompt, &fleet.owned().view(), 0), Decision::Wait(Wait::NoLlmEndpoint));

    // Work in a repository: only where the allowlist covers it.
    fleet.repos.insert("down".into(), vec!["/srv/other".into()]);
    fleet.repos.insert("up".into(), vec!["/srv/repos".into()]);
    let mut in_repo = shell_task();
    in_repo.spec.context.repository = "/srv/repos/app".into();
    assert_eq!(placed_on(&place(&in_repo, &fleet.owned().view(), 0)), "up");
    in_repo.spec.context.repository = "/srv/nowhere/app".into();
    assert_eq!(place(&in_repo, &fleet.owned().view(), 0), Decision::Wait(Wait::RepositoryNotAllowed));
    assert!(Wait::RepositoryNotAllowed.lacks_capacity() && Wait::NoLlmEndpoint.lacks_capacity());

    // Agent work without a model: a sidecar with Claude Code needs no endpoint.
    let mut agent = shell_task();
    agent.spec.work = Work::Agent(crate::domain::AgentWork {
        goal: "fix it".into(),
        repository: "/srv/repos/app".into(),
        branch: String::new(),
        fix_rounds: None,
    });
    fleet.can.extend([("down", "agent"), ("up", "agent")]);
    fleet.repos.insert("down".into(), vec!["/srv".into()]);
    assert_eq!(place(&agent, &fleet.owned().view(), 0), Decision::Wait(Wait::NoLlmEndpoint));
    fleet.can.push(("down", "claude-code"));
    assert_eq!(placed_on(&place(&agent, &fleet.owned().view(), 0)), "down");
}

#[test]
fn a_learned_parallelism_lets_a_busy_warm_endpoint_win_again() {
    // One warm endpoint with two requests in flight, one cold and idle (4 GB: 2 s to load).
    let mut fleet = warm_and_cold();
    let warm_endpoint = fleet.endpoints[1].id.clone();
    fleet.in_flight.insert(warm_endpoint.clone(), 2);
    // Taken to run one at a time (Ollama's default), the warm one is two replies away
    // (100 tokens at 30/s each): the cold load is quicker.
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 10)), "cold");
    // A request beside three others got its first token on time there: it runs four at once.
    fleet.learned.observe_concurrency(&warm_endpoint, 0, 50, None);
    fleet.learned.observe_concurrency(&warm_endpoint, 3, 60, None);
    assert_eq!(fleet.owned().view().parallel(&fleet.endpoints[1]), 4);
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 10)), "warm");
    // What the endpoint says wins over what was learned.
    fleet.endpoints[1].parallel = 1;
    assert_eq!(placed_on(&place(&llm_task("m"), &fleet.owned().view(), 10)), "cold");
}

/// Tasks for `m` wait: a warm endpoint is busy, two hosts have it cold and idle, neither with
/// an idle agent.
fn waiting_for_m() -> World {
    let mut busy = ollama("busy", "m", true, 4_000_000_000);
    busy.id = "e-busy".into();
    let mut a = ollama("a", "m", false, 4_000_000_000);
    a.id = "e-a".into();
    let mut b = ollama("b", "m", false, 4_000_000_000);
    b.id = "e-b".into();
    World {
        can: vec![("busy", "llm"), ("a", "llm"), ("b", "llm")],
        endpoints: vec![busy, a, b],
        in_flight: HashMap::from([("e-busy".to_owned(), 1)]),
        free: HashMap::from([("a".to_owned(), 8_000_000_000), ("b".to_owned(), 8_000_000_000)]),
        ..World::default()
    }
}

#[test]
fn a_model_is_prewarmed_where_it_loads_quickest_once_its_tasks_waited_longer_than_that() {
    use super::prewarm::target;
    let task = llm_task("m");
    let mut fleet = waiting_for_m();
    // 4 GB loads in 2 s by default: 1.5 s of waiting is not enough, 2.5 s is; the ids break the tie.
    assert_eq!(target(&task, "m", 3, 1, 1_500, &fleet.owned().view()), None);
    let chosen = target(&task, "m", 3, 1, 2_500, &fleet.owned().view()).expect("a target");
    assert_eq!((chosen.sidecar_id.as_str(), chosen.endpoint_id.as_str()), ("a", "e-a"));
    assert_eq!(chosen.load_ms, 2_000.0);
    // A load learned quicker on b moves it there.
    fleet.learned.observe("b", "m", Some(900), None);
    assert_eq!(target(&task, "m", 3, 1, 1_500, &fleet.owned().view()).map(|p| p.sidecar_id), Some("b".to_owned()));
    // Not where something is in flight, memory is short or unknown, the sidecar is cordoned
    // or the task's tags rule it out.
    fleet.in_flight.insert("e-b".into(), 1);
    assert_eq!(target(&task, "m", 3, 1, 2_500, &fleet.owned().view()).map(|p| p.sidecar_id), Some("a".to_owned()));
    fleet.free.insert("a".into(), 3_000_000_000);
    assert_eq!(target(&task, "m", 3, 1, 2_500, &fleet.owned().view()), None, "4 GB does not fit in 3 GB");
    fleet.free.remove("a");
    assert_eq!(target(&task, "m", 3, 1, 2_500, &fleet.owned().view()), None, "memory unknown");
    fleet.free.insert("a".into(), 8_000_000_000);
    fleet.cordoned.push("a");
    assert_eq!(target(&task, "m", 3, 1, 2_500, &fleet.owned().view()), None);
    fleet.cordoned.clear();
    let mut tagged = task.clone();
    tagged.spec.placement.tags = vec!["gpu".into()];
    assert_eq!(target(&tagged, "m", 3, 1, 2_500, &fleet.owned().view()), None);
    // No more copies than tasks waiting.
    assert_eq!(target(&task, "m", 2, 2, 2_500, &fleet.owned().view()), None);
    assert!(target(&task, "m", 3, 2, 2_500, &fleet.owned().view()).is_some());
    // Only Ollama servers are pre-warmed, and only a model they have cold.
    fleet.endpoints[1].models[0].loaded = true;
    assert_eq!(target(&task, "m", 3, 1, 2_500, &fleet.owned().view()), None);
}

#[test]
fn a_tier_model_that_fails_its_checks_sends_verified_work_up_a_tier() {
    use crate::domain::Verification;
    let mut fleet = warm_and_cold();
    claude_on(&mut fleet, "cloud");
    let mut task = llm_task("");
    task.spec.verification = vec![Verification::FileExists("out.txt".into())];
    let (tier, source) = tier_now(&task, &fleet.owned().view());
    assert_eq!(source, TierSource::Inferred);
    // The inferred tier runs `m` (local, warm); the tier above runs Claude.
    let up = tier::up(tier).expect("a short prompt is not complex");
    fleet.tiers.set(&format!("{}=m", tier.as_str())).unwrap();
    fleet.tiers.set(&format!("{}=claude-sonnet-4-5", up.as_str())).unwrap();
    let placed_model = |fleet: &Fleet<'_>, task: &Task| match place(task, fleet, 0) {
        Decision::Place { model, .. } => model,
        Decision::Wait(why) => panic!("waits: {why:?}"),
    };
    // With too little evidence, the tier policy stands.
    for _ in 0..4 {
        fleet.learned.observe_verdict("m", "llm", tier, false);
    }
    assert_eq!(pass_rate_move(&task, &fleet.owned().view()), None, "4 verdicts are not enough");
    assert_eq!(placed_model(&fleet.owned().view(), &task).as_deref(), Some("m"));
    // Five failures: m passes 3 in 9 (with the prior), Claude is taken to pass 3 in 4, and the
    // expected time counting retries is lower there.
    fleet.learned.observe_verdict("m", "llm", tier, false);
    assert_eq!(pass_rate_move(&task, &fleet.owned().view()), Some((up, "claude-sonnet-4-5")));
    assert_eq!(placed_model(&fleet.owned().view(), &task).as_deref(), Some("claude-sonnet-4-5"));
    let explained = explain(&task, &fleet.owned().view(), 0);
    assert_eq!((explained.tier, explained.tier_source), (up, TierSource::PassRate { from: tier }));
    assert_eq!(explained.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(explained.decision, place(&task, &fleet.owned().view(), 0), "explain decides as place does");
    // A model that passes as often as the one above keeps its work.
    for _ in 0..20 {
        fleet.learned.observe_verdict("m", "llm", tier, true);
    }
    assert_eq!(pass_rate_move(&task, &fleet.owned().view()), None);
    assert_eq!(placed_model(&fleet.owned().view(), &task).as_deref(), Some("m"));
    // A given tier, or work without checks, is never moved.
    for _ in 0..40 {
        fleet.learned.observe_verdict("m", "llm", tier, false);
    }
    assert!(pass_rate_move(&task, &fleet.owned().view()).is_some());
    let mut given = task.clone();
    given.spec.tier = Some(tier);
    assert_eq!(pass_rate_move(&given, &fleet.owned().view()), None);
    let mut unchecked = task.clone();
    unchecked.spec.verification.clear();
    assert_eq!(pass_rate_move(&unchecked, &fleet.owned().view()), None);
}

#[test]
fn the_judge_is_the_soonest_tier_model_on_the_sidecar_that_ran_the_work_and_not_the_worker() {
    use crate::domain::Verification;
    let mut fleet = warm_and_cold();
    // "warm" has m warm and j cold; "cold" has j warm. Standard is j, complex is m.
    fleet.endpoints[1].models.push(Model { loaded: false, size_bytes: 8_000_000_000, ..Model::named("j") });
    fleet.endpoints.push(ollama("cold", "j", true, 1));
    fleet.tiers.set("standard=j").unwrap();
    fleet.tiers.set("complex=m").unwrap();
    let mut task = shell_task();
    assert_eq!(judge::judge(&task, "warm", &fleet.owned().view()), None, "no llm_judge step");
    task.spec.verification.push(Verification::LlmJudge { model: "named".into() });
    assert_eq!(judge::judge(&task, "warm", &fleet.owned().view()), None, "the step names its model");
    task.spec.verification.push(Verification::LlmJudge { model: String::new() });
    // On "warm": m is warm there and answers before j loads.
    let chosen = judge::judge(&task, "warm", &fleet.owned().view()).unwrap();
    assert_eq!(chosen.model, "m");
    assert!(chosen.estimate.load_ms == 0.0 && chosen.estimate.generate_ms > 0.0, "{chosen:?}");
    // On "cold" only j is there (m is cold there too, but j is warm).
    assert_eq!(judge::judge(&task, "cold", &fleet.owned().view()).unwrap().model, "j");
    // Work that runs on m is not judged by m while j can judge it, even slower.
    let mut on_m = llm_task("m");
    on_m.spec.verification = task.spec.verification.clone();
    assert_eq!(judge::judge(&on_m, "warm", &fleet.owned().view()).unwrap().model, "j");
    // Local-only work is never judged in the cloud; with no tier model there, the sidecar picks.
    fleet.tiers = TierModels::default();
    fleet.tiers.set("standard=claude-sonnet-4-5").unwrap();
    claude_on(&mut fleet, "warm");
    assert_eq!(judge::judge(&task, "warm", &fleet.owned().view()).unwrap().model, "claude-sonnet-4-5");
    task.spec.placement.local_only = true;
    assert_eq!(judge::judge(&task, "warm", &fleet.owned().view()), None);
    // And explain carries it for placed work.
    task.spec.placement.local_only = false;
    fleet.can.push(("warm", "shell"));
    let explained = explain(&task, &fleet.owned().view(), 0);
    assert_eq!(placed_on(&explained.decision), "warm");
    assert_eq!(explained.judge.map(|j| j.model).as_deref(), Some("claude-sonnet-4-5"));
}

#[test]
fn capabilities_answer_as_their_list_does() {
    let capabilities: Capabilities = ["llm", "claude-code", "gpu-work", "llm"].into_iter().collect();
    let asked = [
        ("llm", true),
        ("claude-code", true),
        ("gpu-work", true),
        ("shell", false),
        ("agent", false),
        ("other", false),
    ];
    for (name, has) in asked {
        assert_eq!(capabilities.contains(name), has, "{name}");
    }
    assert_eq!(
        capabilities,
        ["gpu-work", "claude-code", "llm"].into_iter().collect(),
        "order and repeats do not count"
    );
}

#[test]
fn free_memory_and_gpu_load_come_from_the_latest_report() {
    use crate::fleet::{Gpu, Resources};
    let gpu = |total: Option<u64>, used: Option<u64>, busy: Option<u32>| Gpu {
        memory_total_bytes: total,
        memory_used_bytes: used,
        utilization_percent: busy,
        ..Gpu::default()
    };
    let ram_only = Resources { memory_available_bytes: 8 << 30, ..Resources::default() };
    let two_gpus = Resources {
        memory_available_bytes: 8 << 30,
        gpus: vec![gpu(Some(24 << 30), Some(4 << 30), Some(90)), gpu(Some(16 << 30), Some(16 << 30), Some(30))],
        ..Resources::default()
    };
    let mut sidecar = Sidecar::default();
    sidecar.reported(None);
    assert_eq!((sidecar.free_memory, sidecar.gpu_busy), (None, 0), "nothing until it reports");
    sidecar.reported(Some(&ram_only));
    assert_eq!((sidecar.free_memory, sidecar.gpu_busy), (Some(8 << 30), 0), "without GPUs: its RAM");
    sidecar.reported(Some(&two_gpus));
    assert_eq!((sidecar.free_memory, sidecar.gpu_busy), (Some(20 << 30), 60), "the GPUs' free memory, their mean load");
    // A GPU that does not say its memory makes the whole unknown; one without a load is left out.
    let unknown = Resources { gpus: vec![gpu(Some(24 << 30), None, None), gpu(None, None, Some(40))], ..two_gpus };
    sidecar.reported(Some(&unknown));
    assert_eq!((sidecar.free_memory, sidecar.gpu_busy), (None, 40));
}
