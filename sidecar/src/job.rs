//! What a runner is given and how it is called: the [`Attempt`] (the hub's [`Assignment`] and
//! what the sidecar adds), the [`Runner`] trait, the [`Sink`] it reports to. Below `runners` and
//! `verify`, which both use it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use agentcom_types::domain::{AgentStep, Outcome, ServiceStatus, Stream};
pub use agentcom_types::link::Assignment;
use tokio_util::sync::CancellationToken;

use crate::attempt::TaskKey;

/// One attempt as this sidecar runs it: the hub's [`Assignment`], the key the sidecar files the
/// attempt under (containment, state, uids, workspaces), and what it adds on the way.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub assignment: Assignment,
    pub key: TaskKey,
    /// Agent work: the workspace it runs in (made by `Runners::run`).
    pub workspace: Option<std::path::PathBuf>,
}

impl Attempt {
    pub fn new(assignment: Assignment) -> Attempt {
        let key = TaskKey { task_id: assignment.task_id.to_string(), lease_generation: assignment.lease_generation };
        Attempt { assignment, key, workspace: None }
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
    /// Service work: where the service stands (on each change, and every few seconds).
    fn service(&self, _status: &ServiceStatus) {}
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
    fn run(&self, attempt: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running;
}
