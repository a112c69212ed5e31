//! What a runner is given and how it is called: the [`Assignment`] of one attempt, the
//! [`Runner`] trait, the [`Sink`] it reports to. Below `runners` and `verify`, which both use it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use agentcom_types::domain::{AgentStep, Outcome, Stream, TaskSpec, TokenPrice};
use tokio_util::sync::CancellationToken;

use crate::attempt::TaskKey;

/// One attempt of a task, as the hub assigned it.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub key: TaskKey,
    pub attempt: u32,
    pub agent_id: String,
    pub spec: TaskSpec,
    /// LLM work: the endpoint the hub placed it on, if it chose one, and the model when the
    /// spec names none.
    pub endpoint_id: Option<String>,
    pub model: Option<String>,
    /// What the placed model costs, for `limits.max_cost_micros` while the work streams.
    pub price: Option<TokenPrice>,
    /// The model and endpoint the hub chose to judge `llm_judge` steps that name no model.
    pub judge: Option<(String, String)>,
    /// Work with a cost budget placed without a model: the prices of the models this sidecar
    /// offers (it picks one). See [`Assignment::price_of`].
    pub prices: Vec<(String, TokenPrice)>,
    /// Agent work: the workspace it runs in (made by `Runners::run`).
    pub workspace: Option<std::path::PathBuf>,
    /// The attempt's `execute` span, the parent of the runners' spans (traces exported only).
    pub trace: Option<agentcom_types::domain::TraceParent>,
}

impl Assignment {
    /// What `model` costs, for the cost budget: the placed model's price, else the price the hub
    /// sent for the model the sidecar picked; `None` when unknown (the hub still judges the
    /// final usage).
    pub fn price_of(&self, model: &str) -> Option<TokenPrice> {
        match self.model.as_deref() {
            Some(placed) if placed == model => self.price,
            _ => self.prices.iter().find(|(m, _)| m == model).map(|(_, price)| *price),
        }
    }
}

/// Where a running attempt reports. Output chunks may be dropped by the sink (the final outcome
/// carries the retained output in full), so reporting never blocks the work.
pub trait Sink: Send + Sync + 'static {
    fn started(&self, pid: u32);
    fn output(&self, stream: Stream, offset: u64, data: &[u8]);
    /// The work waits (`blocked`: on a model load, a rate limit) or goes on, and why.
    fn progress(&self, _blocked: bool, _message: &str) {}
    /// The work is done and its verification steps run now.
    fn verifying(&self) {}
    /// Agent work took a step (called a tool).
    fn step(&self, _step: &AgentStep) {}
}

/// A sink that keeps nothing: for work whose output goes elsewhere than the task's streams (a
/// verification step's command, an agent tool's command, a judge's chat).
pub struct Quiet;

impl Sink for Quiet {
    fn started(&self, _pid: u32) {}
    fn output(&self, _stream: Stream, _offset: u64, _data: &[u8]) {}
}

/// A future a runner returns.
pub type Running = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Runs one kind of work.
pub trait Runner: Send + Sync + 'static {
    /// The capability it gives, as work names it (`shell`, `llm`, `agent`).
    fn capability(&self) -> &'static str;

    /// What the hello says this runner gives: its capability, and for LLM work the providers.
    fn advertises(&self) -> Vec<String> {
        vec![self.capability().to_owned()]
    }

    /// Runs one attempt to its end. It never fails as such: what went wrong is in the outcome.
    /// `cancel` ends the work early (every process of it, for shell work).
    fn run(&self, assignment: Assignment, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running;
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcom_types::domain::SpecDefaults;

    #[test]
    fn a_model_is_priced_as_placed_else_as_the_hub_listed_it() {
        let price = |input: f64| TokenPrice { input, output: input * 5.0 };
        let mut assignment = Assignment {
            key: TaskKey { task_id: "t".into(), lease_generation: 1 },
            attempt: 1,
            agent_id: String::new(),
            spec: TaskSpec::shell(vec!["true".into()], &SpecDefaults::default()),
            endpoint_id: None,
            model: Some("placed".into()),
            price: Some(price(3.0)),
            judge: None,
            prices: vec![("picked".into(), price(1.0))],
            workspace: None,
            trace: None,
        };
        assert_eq!(assignment.price_of("placed"), Some(price(3.0)));
        assert_eq!(assignment.price_of("picked"), Some(price(1.0)));
        assert_eq!(assignment.price_of("unknown"), None);
        assignment.model = None;
        assert_eq!(assignment.price_of("placed"), None, "no placed model: only the listed prices");
    }
}
