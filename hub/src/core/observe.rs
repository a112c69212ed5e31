//! What the core records for `/metrics`: the counters and histograms of what happens (submits,
//! dispatches, ends, LLM usage, placements, verdicts), through handles kept in [`Recorded`], and
//! the gauges of a moment ([`State::metrics_snapshot`]).

use std::collections::{BTreeMap, HashMap};

use agentcom_metrics::{Counter, Histogram};

use super::State;
use crate::domain::{Lane, TaskState, Usage};
use crate::metrics::{Metrics, Snapshot, reason_class};

/// Handles registered once; those with open-ended labels (models, reasons) on first use.
pub(super) struct Recorded {
    submitted: Vec<Counter>,
    dispatched: HashMap<&'static str, Counter>,
    queue_wait: Histogram,
    dispatch_latency: Histogram,
    lease_expiries: Counter,
    finished: HashMap<(&'static str, &'static str), Counter>,
    placements: HashMap<(&'static str, &'static str), Counter>,
    llm: HashMap<(String, String), Llm>,
    verdicts: HashMap<(String, &'static str, bool), Counter>,
    runs_started: HashMap<&'static str, Counter>,
    runs_finished: HashMap<&'static str, Counter>,
    steps: HashMap<&'static str, Counter>,
    run_seconds: Histogram,
}

struct Llm {
    requests: Counter,
    input: Counter,
    output: Counter,
    cost: Counter,
    ttft: Histogram,
    speed: Histogram,
}

impl Recorded {
    pub(super) fn new(metrics: &Metrics) -> Recorded {
        Recorded {
            submitted: Lane::ALL
                .iter()
                .map(|lane| metrics.counter("agentcom_tasks_submitted_total", &[("lane", lane.as_str())]))
                .collect(),
            dispatched: HashMap::new(),
            queue_wait: metrics.histogram("agentcom_queue_wait_seconds", &[]),
            dispatch_latency: metrics.histogram("agentcom_dispatch_latency_seconds", &[]),
            lease_expiries: metrics.counter("agentcom_lease_expiries_total", &[]),
            finished: HashMap::new(),
            placements: HashMap::new(),
            llm: HashMap::new(),
            verdicts: HashMap::new(),
            runs_started: HashMap::new(),
            runs_finished: HashMap::new(),
            steps: HashMap::new(),
            run_seconds: metrics.histogram("agentcom_workflow_run_seconds", &[]),
        }
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

impl State {
    pub(super) fn observe_submit(&mut self, lane: Lane) {
        let index = Lane::ALL.iter().position(|l| *l == lane).unwrap_or(0);
        self.recorded.submitted[index].increment(1);
    }

    /// A dispatch: `waited_ms` since the task became ready, at `tier` placed by `source`.
    pub(super) fn observe_dispatch(
        &mut self,
        kind: &'static str,
        waited_ms: i64,
        tier: &'static str,
        source: &'static str,
    ) {
        let metrics = &self.config.metrics;
        let recorded = &mut self.recorded;
        recorded
            .dispatched
            .entry(kind)
            .or_insert_with(|| metrics.counter("agentcom_tasks_dispatched_total", &[("kind", kind)]))
            .increment(1);
        recorded.queue_wait.record(seconds(waited_ms));
        recorded
            .placements
            .entry((tier, source))
            .or_insert_with(|| metrics.counter("agentcom_placements_total", &[("tier", tier), ("source", source)]))
            .increment(1);
    }

    /// An assignment leaves, `ms` after its dispatch was decided.
    pub(super) fn observe_assignment(&mut self, ms: i64) {
        self.recorded.dispatch_latency.record(seconds(ms));
    }

    pub(super) fn observe_lease_expiry(&mut self) {
        self.recorded.lease_expiries.increment(1);
    }

    /// A task reached a final state, for `reason`.
    pub(super) fn observe_end(&mut self, state: TaskState, reason: &str) {
        let (state, class) = (state.as_str(), reason_class(reason));
        let metrics = &self.config.metrics;
        self.recorded
            .finished
            .entry((state, class))
            .or_insert_with(|| metrics.counter("agentcom_tasks_finished_total", &[("state", state), ("reason", class)]))
            .increment(1);
    }
}

impl State {
    /// A workflow run started; `trigger` is `api`, `hook` or `schedule`.
    pub(super) fn observe_run_started(&mut self, trigger: &'static str) {
        let metrics = &self.config.metrics;
        (self.recorded.runs_started.entry(trigger))
            .or_insert_with(|| metrics.counter("agentcom_workflow_runs_started_total", &[("trigger", trigger)]))
            .increment(1);
    }

    /// A workflow run ended in `state`, `ms` after it started.
    pub(super) fn observe_run_finished(&mut self, state: &'static str, ms: i64) {
        let metrics = &self.config.metrics;
        (self.recorded.runs_finished.entry(state))
            .or_insert_with(|| metrics.counter("agentcom_workflow_runs_finished_total", &[("state", state)]))
            .increment(1);
        self.recorded.run_seconds.record(seconds(ms));
    }

    /// Workflow steps (or items) ended in `state`.
    pub(super) fn observe_steps(&mut self, state: &'static str, count: u64) {
        let metrics = &self.config.metrics;
        (self.recorded.steps.entry(state))
            .or_insert_with(|| metrics.counter("agentcom_workflow_steps_total", &[("state", state)]))
            .increment(count);
    }
}

impl Recorded {
    /// An LLM attempt's usage, priced.
    pub(super) fn usage(&mut self, metrics: &Metrics, usage: &Usage) {
        let key = (usage.provider.clone(), usage.model.clone());
        let llm = self.llm.entry(key).or_insert_with(|| {
            let at = [("provider", usage.provider.as_str()), ("model", usage.model.as_str())];
            Llm {
                requests: metrics.counter("agentcom_llm_requests_total", &at),
                input: metrics.counter("agentcom_llm_input_tokens_total", &at),
                output: metrics.counter("agentcom_llm_output_tokens_total", &at),
                cost: metrics.counter("agentcom_llm_cost_microdollars_total", &at),
                ttft: metrics.histogram("agentcom_llm_time_to_first_token_seconds", &at),
                speed: metrics.histogram("agentcom_llm_output_tokens_per_second", &at),
            }
        });
        llm.requests.increment(1);
        llm.input.increment(usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens);
        llm.output.increment(usage.output_tokens);
        if let Some(cost) = usage.cost_micros {
            llm.cost.increment(cost);
        }
        if let Some(ms) = usage.ttft_ms {
            llm.ttft.record(ms as f64 / 1000.0);
        }
        if let Some(speed) = usage.output_tokens_per_s {
            llm.speed.record(speed);
        }
    }
}

impl State {
    pub(super) fn observe_verdict(&mut self, model: &str, kind: &'static str, passed: bool) {
        let metrics = &self.config.metrics;
        let verdict = if passed { "passed" } else { "failed" };
        self.recorded
            .verdicts
            .entry((model.to_owned(), kind, passed))
            .or_insert_with(|| {
                metrics.counter("agentcom_verdicts_total", &[("model", model), ("kind", kind), ("verdict", verdict)])
            })
            .increment(1);
    }

    /// The gauges of this moment: one pass over the tasks and the agents. Every lane and state
    /// not final, and every agent state, is there, 0 when empty (a gauge not set would keep its
    /// last value until it is dropped).
    pub(super) fn metrics_snapshot(&self, now: crate::domain::UnixMs) -> Snapshot {
        let mut by: BTreeMap<(&'static str, &'static str), usize> = BTreeMap::new();
        for lane in Lane::ALL {
            for state in TaskState::ALL.into_iter().filter(|s| !s.is_terminal()) {
                by.insert((lane.as_str(), state.as_str()), 0);
            }
        }
        let (mut dead_letters, mut oldest_ready) = (0, None::<i64>);
        dead_letters += self.tasks.states().filter(|(_, state, _)| *state == TaskState::DeadLettered).count();
        for task in self.tasks.decoded() {
            if task.state.is_terminal() {
                continue;
            }
            *by.entry((task.spec.priority.as_str(), task.state.as_str())).or_default() += 1;
            if matches!(task.state, TaskState::Ready | TaskState::Queued) {
                oldest_ready = Some(oldest_ready.map_or(task.updated_unix_ms, |o| o.min(task.updated_unix_ms)));
            }
        }
        let mut agents: BTreeMap<&'static str, usize> =
            crate::agent::AgentState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for agent in self.agents.values() {
            *agents.entry(agent.state.as_str()).or_default() += 1;
        }
        Snapshot {
            tasks: by.into_iter().map(|((lane, state), n)| (lane, state, n)).collect(),
            dead_letters,
            oldest_ready_ms: oldest_ready.map(|at| now - at),
            agents: agents.into_iter().collect(),
            stale_messages: self.stale_messages,
            tier_fallbacks: self.tier_fallbacks,
            escalations: self.escalations,
            prewarms: self.prewarms,
            storage_ok: self.storage_fault.is_none(),
            tasks_retained: self.retained.tasks(),
            output_retained_bytes: self.retained.output_bytes(),
        }
    }
}
