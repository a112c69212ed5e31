//! `meshbench sched`: placement decisions for LLM work, timed one by one on one core, at
//! several fleet sizes over 100 endpoints with 20 models each (a random half of them warm, a
//! random number of requests in flight, learned speeds for some), beside the floor measured in
//! the same run: a decision with a single candidate.
//!
//! Every decision is the hub's own `sched::place` over the same structures the core keeps (the
//! registry with its model index, the idle-agent index, what placement knows of each sidecar,
//! requests in flight, what was learned);
//! the fleet does not change between decisions, so each sees every agent idle: the most work a
//! decision can have.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agentcom_hub::domain::{LlmWork, SpecDefaults, Task, TaskId, TaskSpec, Work};
use agentcom_hub::fleet::{Cordon, Endpoint, EndpointKind, Model, Owner, Registry};
use agentcom_hub::prices::Prices;
use agentcom_hub::sched::{self, Decision, IdleIndex, Learned};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

pub(crate) struct Options {
    pub(crate) agents: Vec<usize>,
    pub(crate) decisions: usize,
}

const ENDPOINTS: usize = 100;
const MODELS: usize = 20;

/// The structures the core keeps for placement, owned here; [`World::view`] lends them to
/// `sched::place` as the core does.
struct World {
    idle: IdleIndex,
    sidecars: sched::Sidecars,
    cordons: HashMap<String, Cordon>,
    registry: Registry,
    in_flight: HashMap<String, u32>,
    learned: Learned,
    tier_models: sched::TierModels,
    prices: Prices,
    tier_waits: HashMap<TaskId, sched::TierWait>,
}

impl World {
    fn view(&self) -> sched::Fleet<'_> {
        sched::Fleet {
            idle: &self.idle,
            sidecars: &self.sidecars,
            cordons: &self.cordons,
            registry: &self.registry,
            in_flight: &self.in_flight,
            learned: &self.learned,
            tier_models: &self.tier_models,
            prices: &self.prices,
            tier_waits: &self.tier_waits,
            offline: false,
        }
    }
}

fn model_name(n: usize) -> String {
    format!("model-{n}:7b")
}

/// `agents` agents over `endpoints` sidecars, one endpoint each, `models` models on each.
fn fleet(agents: usize, endpoints: usize, models: usize, rng: &mut impl Rng) -> World {
    let mut fleet = World {
        idle: IdleIndex::default(),
        sidecars: sched::Sidecars::default(),
        cordons: HashMap::new(),
        registry: Registry::default(),
        in_flight: HashMap::new(),
        learned: Learned::default(),
        tier_models: sched::TierModels::default(),
        prices: Prices::default(),
        tier_waits: HashMap::new(),
    };
    for n in 0..endpoints {
        let sidecar = format!("host-{n:04}");
        let mut endpoint =
            Endpoint::new(Owner::Sidecar(sidecar.clone()), format!("http://{sidecar}:11434"), EndpointKind::Ollama);
        endpoint.healthy = true;
        endpoint.models = (0..models)
            .map(|m| Model {
                loaded: rng.random_bool(0.5),
                size_bytes: rng.random_range(1..40) << 30,
                ..Model::named(model_name(m))
            })
            .collect();
        fleet.in_flight.insert(endpoint.id.clone(), rng.random_range(0..4));
        for m in 0..models {
            if rng.random_bool(0.3) {
                fleet.learned.observe(
                    &sidecar,
                    &model_name(m),
                    Some(rng.random_range(500..20_000)),
                    Some(rng.random_range(10.0..200.0)),
                );
            }
        }
        fleet.registry.put(endpoint);
        let facts = sched::Sidecar {
            hostname: sidecar.clone(),
            capabilities: ["llm"].into_iter().collect(),
            open: true,
            ..sched::Sidecar::default()
        };
        fleet.sidecars.insert(sidecar, facts);
    }
    for a in 0..agents {
        let sidecar = format!("host-{:04}", a % endpoints);
        fleet.idle.insert(&sidecar, &format!("{sidecar}/{}", a / endpoints));
    }
    fleet
}

fn task(model: &str) -> Task {
    let mut spec = TaskSpec::shell(vec!["true".into()], &SpecDefaults::default());
    spec.work = Work::Llm(LlmWork { model: model.to_owned(), max_tokens: 200, ..LlmWork::prompt("hi") });
    Task::new(TaskId::new(1), spec, 1)
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// Times `decisions` decisions over `fleet`, each for a random model.
fn measure(world: &World, models: usize, decisions: usize, rng: &mut impl Rng) -> anyhow::Result<Value> {
    let fleet = world.view();
    let tasks: Vec<Task> = (0..models).map(|m| task(&model_name(m))).collect();
    let mut samples = Vec::with_capacity(decisions);
    let mut placed = 0usize;
    let started = Instant::now();
    for _ in 0..decisions {
        let task = &tasks[rng.random_range(0..models)];
        let at = Instant::now();
        let decision = sched::place(task, &fleet, 0);
        samples.push(at.elapsed());
        placed += usize::from(matches!(decision, Decision::Place { .. }));
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(placed == decisions, "only {placed} of {decisions} decisions placed their task");
    samples.sort_unstable();
    Ok(json!({
        "decisions": decisions,
        "decisions_per_s": (decisions as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": (percentile_us(&samples, 0.50) * 100.0).round() / 100.0,
        "p99_us": (percentile_us(&samples, 0.99) * 100.0).round() / 100.0,
        "mean_us": (elapsed.as_secs_f64() * 1e6 / decisions as f64 * 100.0).round() / 100.0,
    }))
}

pub(crate) fn run(options: Options) -> anyhow::Result<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // The floor: one agent, one endpoint, one model.
    let floor = measure(&fleet(1, 1, 1, &mut rng), 1, options.decisions, &mut rng)?;
    let mut sizes = Vec::new();
    for &agents in &options.agents {
        let fleet = fleet(agents, ENDPOINTS, MODELS, &mut rng);
        let mut figures = measure(&fleet, MODELS, options.decisions, &mut rng)?;
        figures["agents"] = json!(agents);
        figures["candidates_per_decision"] = json!(ENDPOINTS);
        sizes.push(figures);
    }
    let per = |v: &Value| v["mean_us"].as_f64().unwrap_or(0.0);
    let ratio = match (sizes.first(), sizes.last()) {
        (Some(small), Some(large)) if per(small) > 0.0 => per(large) / per(small),
        _ => 0.0,
    };
    Ok(json!({
        "benchmark": "sched",
        "endpoints": ENDPOINTS,
        "models_per_endpoint": MODELS,
        "floor_one_candidate": floor,
        "fleets": sizes,
        "cost_largest_over_smallest": (ratio * 100.0).round() / 100.0,
        "targets": {
            "decisions_per_s_at_10000_agents": 20_000,
            "p99_us_at_10000_agents": 100,
            "cost_10000_over_1000_below": 2.0,
        },
    }))
}
