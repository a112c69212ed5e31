//! Placement as JSON: the decisions kept for `explain`, and `why`.

use super::*;

/// One placement decision (`GET /api/v1/tasks/{id}/decision`, and `placement_now` in `why`).
#[derive(Serialize, Debug, PartialEq)]
pub struct DecisionDto {
    /// `placed` or `fallback`; absent for what placement says now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_unix_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub reason: String,
    pub tier: &'static str,
    /// `given`, `inferred` or `fallback from TIER`.
    pub tier_source: String,
    pub model: Option<String>,
    /// Where it went; all `null` when it waited.
    pub sidecar_id: Option<String>,
    pub agent_id: Option<String>,
    pub endpoint_id: Option<String>,
    /// Why it waited (a `why` code); `null` when placed.
    pub wait: Option<&'static str>,
    pub candidates: Vec<CandidateDto>,
    pub more_candidates: usize,
    /// Work with an `llm_judge` step that names no model: the model that judges it, where, and
    /// how soon it is expected to answer; `null` when the sidecar chooses.
    pub judge: Option<JudgeDto>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct JudgeDto {
    pub model: String,
    pub endpoint_id: String,
    pub estimate: EstimateDto,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct CandidateDto {
    pub sidecar_id: String,
    pub agent_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub verdict: &'static str,
    pub warm: bool,
    pub in_flight: u32,
    pub idle_agents: u32,
    /// The estimated time to completion and its parts, in milliseconds; `null` for work placed
    /// without a model.
    pub estimate: Option<EstimateDto>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct EstimateDto {
    pub total_ms: f64,
    pub wait_ms: f64,
    pub load_ms: f64,
    pub generate_ms: f64,
    pub fit_ms: f64,
}

fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

impl DecisionDto {
    pub fn from_explanation(e: &crate::sched::Explanation, reason: String) -> DecisionDto {
        use crate::sched::{Decision, TierSource};
        let (sidecar_id, agent_id, endpoint_id, wait) = match &e.decision {
            Decision::Place { sidecar_id, agent_id, endpoint_id, .. } => {
                (Some(sidecar_id.clone()), Some(agent_id.clone()), endpoint_id.clone(), None)
            }
            Decision::Wait(why) => (None, None, None, Some(why.as_str())),
        };
        let tier_source = match e.tier_source {
            TierSource::Given => "given".to_owned(),
            TierSource::Inferred => "inferred".to_owned(),
            TierSource::Fallback { from } => format!("fallback from {}", from.as_str()),
            TierSource::PassRate { from } => format!("pass rate from {}", from.as_str()),
        };
        let candidates = e
            .candidates
            .iter()
            .map(|c| CandidateDto {
                sidecar_id: c.sidecar_id.clone(),
                agent_id: c.agent_id.clone(),
                endpoint_id: c.endpoint_id.clone(),
                verdict: c.verdict.as_str(),
                warm: c.warm,
                in_flight: c.in_flight,
                idle_agents: c.idle_agents,
                estimate: c.estimate.as_ref().map(EstimateDto::from),
            })
            .collect();
        DecisionDto {
            kind: None,
            at_unix_ms: None,
            attempt: None,
            reason,
            tier: e.tier.as_str(),
            tier_source,
            model: e.model.clone(),
            sidecar_id,
            agent_id,
            endpoint_id,
            wait,
            candidates,
            more_candidates: e.more_candidates,
            judge: e.judge.as_ref().map(|j| JudgeDto {
                model: j.model.clone(),
                endpoint_id: j.endpoint_id.clone(),
                estimate: EstimateDto::from(&j.estimate),
            }),
        }
    }
}

impl From<&crate::sched::Estimate> for EstimateDto {
    fn from(x: &crate::sched::Estimate) -> EstimateDto {
        EstimateDto {
            total_ms: round_ms(x.total_ms()),
            wait_ms: round_ms(x.wait_ms),
            load_ms: round_ms(x.load_ms),
            generate_ms: round_ms(x.generate_ms),
            fit_ms: round_ms(x.fit_ms),
        }
    }
}

impl From<&crate::core::Recorded> for DecisionDto {
    fn from(r: &crate::core::Recorded) -> DecisionDto {
        DecisionDto {
            kind: Some(r.kind.as_str()),
            at_unix_ms: Some(r.at),
            attempt: Some(r.attempt),
            ..DecisionDto::from_explanation(&r.explanation, r.reason())
        }
    }
}

/// `GET /api/v1/tasks/{id}/why`.
#[derive(Serialize, Debug, PartialEq)]
pub struct WhyDto {
    pub task_id: String,
    pub state: &'static str,
    pub waiting: bool,
    /// Nothing connected could ever take it: it waits for the fleet to change.
    pub stuck: bool,
    pub code: String,
    pub message: String,
    pub since_unix_ms: i64,
    pub tier: &'static str,
    pub model: Option<String>,
    pub fallback_at_unix_ms: Option<i64>,
    /// For a ready task: what placement says now, with its candidates.
    pub placement_now: Option<DecisionDto>,
}

impl From<&crate::core::WhyAnswer> for WhyDto {
    fn from(w: &crate::core::WhyAnswer) -> WhyDto {
        WhyDto {
            task_id: w.task_id.to_string(),
            state: w.state.as_str(),
            waiting: w.waiting,
            stuck: w.stuck,
            code: w.code.clone(),
            message: w.message.clone(),
            since_unix_ms: w.since_unix_ms,
            tier: w.tier.as_str(),
            model: w.model.clone(),
            fallback_at_unix_ms: w.fallback_at_unix_ms,
            placement_now: w.explanation.as_ref().map(|e| DecisionDto::from_explanation(e, crate::sched::summarize(e))),
        }
    }
}
