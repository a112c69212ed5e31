//! Who judges: the model an `llm_judge` step that names none runs on.
//!
//! The judge's chat runs on the sidecar that ran the work (it verifies there, with the result
//! at hand), so the candidates are the tier models (`--tier-model`; standard first, then complex,
//! then trivial) that an endpoint of that sidecar offers. The judge is the one with the lowest
//! estimated time for a short answer ([`JUDGE_TOKENS`]), by the same estimate placement uses;
//! a model never judges its own work while another candidate can. With no tier models, or none
//! there, the sidecar picks (a warm model first).

use super::{Estimate, Fleet, model_of, weigh};
use crate::domain::{Task, Tier, Verification};
use crate::fleet::Owner;

/// Output tokens a judge's answer (one JSON verdict with a reason) is expected to take.
pub const JUDGE_TOKENS: u32 = 64;

/// The model chosen to judge a task's work, where, and how soon it is expected to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Judge {
    pub model: String,
    pub endpoint_id: String,
    pub estimate: Estimate,
}

/// The judge for `task` run on `sidecar_id`, if it has an `llm_judge` step that names no model
/// and a tier model is there to judge. Pure.
pub fn judge(task: &Task, sidecar_id: &str, fleet: &Fleet<'_>) -> Option<Judge> {
    let unnamed = |step: &Verification| matches!(step, Verification::LlmJudge { model } if model.is_empty());
    if !task.spec.verification.iter().any(unnamed) {
        return None;
    }
    let local_only = task.spec.placement.local_only || fleet.offline;
    let own = model_of(task, fleet);
    let mut models: Vec<&str> = Vec::with_capacity(3);
    for tier in [Tier::Standard, Tier::Complex, Tier::Trivial] {
        if let Some(model) = fleet.tier_model(tier)
            && !models.contains(&model)
        {
            models.push(model);
        }
    }
    // (judges its own work, estimated ms, order) of the best so far: the lowest wins.
    let mut best: Option<((bool, f64, usize), Judge)> = None;
    for (order, model) in models.into_iter().enumerate() {
        let here = fleet.offering(model).filter(|e| matches!(&e.owner, Owner::Sidecar(s) if s == sidecar_id));
        for endpoint in here {
            let in_flight = fleet.in_flight(&endpoint.id);
            let free_memory = fleet.free_memory(sidecar_id);
            let weighed = weigh(fleet, sidecar_id, free_memory, endpoint, model, JUDGE_TOKENS, local_only, in_flight);
            let Ok((estimate, _)) = weighed else {
                continue;
            };
            let key = (own == Some(model), estimate.total_ms(), order);
            if best.as_ref().is_none_or(|(b, _)| key.partial_cmp(b) == Some(std::cmp::Ordering::Less)) {
                let judge = Judge { model: model.to_owned(), endpoint_id: endpoint.id.clone(), estimate };
                best = Some((key, judge));
            }
        }
    }
    best.map(|(_, judge)| judge)
}
