//! What placement weighed: every candidate with its estimate and verdict, for `explain`,
//! `why` and the decisions the core keeps. [`explain`] runs placement's own `decide` with a
//! recorder that keeps the candidates; [`place`](super::place) passes one that keeps nothing.
//! Dispatch uses [`place_explained`]: one pass that places the task and keeps what it weighed.

use super::{Decision, Estimate, Fleet, TierSource, Wait, decide, model_of, tier_now};
use crate::domain::{Task, Tier, UnixMs};

/// Candidates an explanation keeps (the best ones); the rest are counted.
pub const EXPLAINED_CANDIDATES: usize = 8;

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
    /// Placed work with an `llm_judge` step that names no model: the model that judges it there.
    pub judge: Option<super::judge::Judge>,
}

/// Where candidates go as they are weighed: nowhere for [`place`], a list for [`explain`].
pub(super) trait Record {
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

/// Places one task as [`place`] does, and says what was weighed.
pub fn explain(task: &Task, fleet: &Fleet<'_>, now: UnixMs) -> Explanation {
    let mut candidates = Vec::new();
    let (decision, moved) = decide(task, fleet, now, &mut candidates);
    finish(task, fleet, decision, moved, candidates)
}

/// Places one task and says what was weighed, in one pass: what dispatch keeps for `explain`.
/// A task that waits gets only its reason; nothing is sorted or judged for it.
pub fn place_explained(task: &Task, fleet: &Fleet<'_>, now: UnixMs) -> Result<Explanation, Wait> {
    let mut candidates = Vec::new();
    let (decision, moved) = decide(task, fleet, now, &mut candidates);
    match decision {
        Decision::Wait(why) => Err(why),
        placed => Ok(finish(task, fleet, placed, moved, candidates)),
    }
}

/// The explanation of a decision from the candidates it weighed.
fn finish(
    task: &Task,
    fleet: &Fleet<'_>,
    decision: Decision,
    moved: Option<(Tier, &str)>,
    mut candidates: Vec<Candidate>,
) -> Explanation {
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
    let (tier, tier_source, model) = match moved {
        Some((up, model)) => (up, TierSource::PassRate { from: tier_now(task, fleet).0 }, Some(model)),
        None => {
            let (tier, source) = tier_now(task, fleet);
            (tier, source, model_of(task, fleet))
        }
    };
    let judge = match &decision {
        Decision::Place { sidecar_id, .. } => super::judge::judge(task, sidecar_id, fleet),
        Decision::Wait(_) => None,
    };
    Explanation { decision, tier, tier_source, model: model.map(str::to_owned), candidates, more_candidates, judge }
}

/// One line on an explanation's outcome: where it went and why there, or why it waits.
pub fn summarize(explained: &Explanation) -> String {
    let agent = |c: &Candidate| c.agent_id.clone().unwrap_or_else(|| c.sidecar_id.clone());
    let seconds = |e: &Estimate| format!("{:.1} s", e.total_ms() / 1000.0);
    match &explained.decision {
        Decision::Wait(why) => format!("waits: {}", why.describe()),
        Decision::Place { agent_id, estimate: Some(estimate), model, .. } => {
            let model = model.as_deref().unwrap_or("?");
            // As the candidates' table says it: the chosen one's own warmth.
            let chosen = explained.candidates.iter().find(|c| c.verdict == Verdict::Chosen);
            let warm = chosen.map_or(estimate.load_ms == 0.0, |c| c.warm);
            let how = if warm { "warm" } else { "cold" };
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
