//! A model-based property test of the core: random sequences of what clients, sidecars and time
//! can do (submits and cancels; sidecars joining, leaving and coming back claiming what they still
//! run; starts, heartbeats and finishes under current and stale leases; time passing) applied to
//! [`State`], with its invariants checked after every step:
//! - no task is leased twice at once, and every lease's agent holds that task;
//! - a finish under a lease the sender does not hold changes nothing;
//! - every acknowledged task is there;
//! - no task runs more attempts than it allows.

use proptest::prelude::*;

use super::*;

/// Sidecars in a run; each has one slot.
const SIDECARS: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    Submit,
    /// The `n`th task submitted so far (modulo), cancelled.
    Cancel(usize),
    /// Joins, or comes back claiming what it was sent and has not finished.
    Join(usize),
    Leave(usize),
    /// Reports its `n`th assignment ever (modulo): current or stale.
    Start(usize, usize),
    Heartbeat(usize),
    Finish(usize, usize, i32),
    /// Time passes, in milliseconds.
    Wait(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Submit),
        1 => any::<usize>().prop_map(Step::Cancel),
        2 => (0..SIDECARS).prop_map(Step::Join),
        1 => (0..SIDECARS).prop_map(Step::Leave),
        2 => ((0..SIDECARS), any::<usize>()).prop_map(|(s, n)| Step::Start(s, n)),
        1 => (0..SIDECARS).prop_map(Step::Heartbeat),
        3 => ((0..SIDECARS), any::<usize>(), prop_oneof![Just(0), Just(1), Just(75)])
            .prop_map(|(s, n, code)| Step::Finish(s, n, code)),
        2 => prop_oneof![Just(100i64), Just(2_000), Just(20_000), Just(60_000)].prop_map(Step::Wait),
    ]
}

/// What the test knows of one sidecar: whether it is connected, and what it runs (sent and not
/// finished by it).
#[derive(Default)]
struct Machine {
    joined: bool,
    running: Vec<(TaskId, u64)>,
}

struct Run {
    hub: Harness,
    submitted: Vec<TaskId>,
    machines: Vec<Machine>,
}

impl Run {
    fn new() -> Run {
        Run {
            hub: Harness::new(),
            submitted: Vec::new(),
            machines: (0..SIDECARS).map(|_| Machine::default()).collect(),
        }
    }

    fn name(sidecar: usize) -> String {
        format!("s{sidecar}")
    }

    /// Every assignment sent to the sidecar, in order.
    fn sent(&self, sidecar: usize) -> Vec<(TaskId, u64)> {
        self.hub.assigned(&Run::name(sidecar))
    }

    /// Notes assignments that reached connected sidecars: they run them now.
    fn take_assignments(&mut self, before: &[usize]) {
        for (sidecar, machine) in self.machines.iter_mut().enumerate() {
            let sent = self.hub.assigned(&Run::name(sidecar));
            if machine.joined {
                machine.running.extend(sent.iter().skip(before[sidecar]).copied());
            }
        }
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let before: Vec<usize> = (0..SIDECARS).map(|s| self.sent(s).len()).collect();
        match *step {
            Step::Submit => {
                let mut spec = shell();
                spec.retry.retry_on_exit_codes = vec![75];
                let id = self.hub.submit(spec);
                self.submitted.push(id);
            }
            Step::Cancel(n) => {
                if !self.submitted.is_empty() {
                    let id = self.submitted[n % self.submitted.len()];
                    let _ = self.hub.ask(|reply| Event::Cancel { id, reason: "test".into(), reply });
                }
            }
            Step::Join(s) => {
                if self.machines[s].joined {
                    self.hub.leave(&Run::name(s));
                }
                let running = self.machines[s]
                    .running
                    .iter()
                    .map(|&(task_id, lease_generation)| RunningTask {
                        task_id,
                        lease_generation,
                        agent_id: String::new(),
                    })
                    .collect();
                self.hub.join(&Run::name(s), 1, running);
                self.machines[s].joined = true;
                // Told to stop what it no longer holds: it stops.
                let cancels = self.hub.cancels(&Run::name(s));
                self.machines[s].running.retain(|held| !cancels.contains(held));
            }
            Step::Leave(s) => {
                if self.machines[s].joined {
                    self.hub.leave(&Run::name(s));
                    self.machines[s].joined = false;
                }
            }
            Step::Start(s, n) => {
                let sent = self.sent(s);
                if self.machines[s].joined && !sent.is_empty() {
                    let (task_id, lease_generation) = sent[n % sent.len()];
                    self.hub.report(&Run::name(s), FromSidecar::Started { task_id, lease_generation, pid: 0 });
                }
            }
            Step::Heartbeat(s) => {
                if self.machines[s].joined {
                    let running = self.machines[s]
                        .running
                        .iter()
                        .map(|&(task_id, lease_generation)| RunningTask {
                            task_id,
                            lease_generation,
                            agent_id: String::new(),
                        })
                        .collect();
                    self.hub.report(&Run::name(s), FromSidecar::Heartbeat { sent_unix_ms: 0, running });
                }
            }
            Step::Finish(s, n, code) => {
                let sent = self.sent(s);
                if self.machines[s].joined && !sent.is_empty() {
                    let (task_id, generation) = sent[n % sent.len()];
                    let held = self
                        .hub
                        .state
                        .queue
                        .lease(task_id)
                        .is_some_and(|lease| lease.generation == generation && lease.sidecar_id == Run::name(s));
                    let earlier = self.hub.task(task_id);
                    self.hub.finish(&Run::name(s), task_id, generation, code);
                    self.machines[s].running.retain(|&(id, g)| (id, g) != (task_id, generation));
                    if !held {
                        let after = self.hub.task(task_id);
                        prop_assert_eq!(
                            (after.state, after.attempt, after.lease_generation),
                            (earlier.state, earlier.attempt, earlier.lease_generation),
                            "a finish under a lease not held changed task {}",
                            task_id
                        );
                    }
                }
            }
            Step::Wait(ms) => {
                let at = self.hub.now + ms;
                self.hub.tick_at(at);
            }
        }
        self.take_assignments(&before);
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let state = &self.hub.state;
        // No task leased twice; every lease's agent holds its task, and no agent holds a task
        // that is not leased to it.
        let mut held: HashMap<TaskId, &str> = HashMap::new();
        for agent in state.agents.values() {
            if let Some(task_id) = agent.task_id {
                prop_assert!(held.insert(task_id, &agent.id).is_none(), "task {} held by two agents", task_id);
                let lease = state.queue.lease(task_id);
                prop_assert!(
                    lease.is_some_and(|lease| lease.agent_id == agent.id),
                    "agent {} holds task {} without its lease",
                    agent.id,
                    task_id
                );
            }
        }
        for &id in &self.submitted {
            if let Some(lease) = state.queue.lease(id) {
                prop_assert_eq!(
                    held.get(&id).copied(),
                    Some(lease.agent_id.as_str()),
                    "task {} leased to no agent",
                    id
                );
            }
        }
        // Every acknowledged task is there, within its attempts.
        for id in self.submitted.clone() {
            let found = self.hub.ask(|reply| Event::Get { id, reply });
            prop_assert!(found.is_some(), "acknowledged task {} is gone", id);
            let task = found.expect("checked");
            prop_assert!(
                task.attempt <= task.spec.limits.max_attempts,
                "task {} ran {} attempts of {}",
                id,
                task.attempt,
                task.spec.limits.max_attempts
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_core_keeps_its_invariants_whatever_happens(steps in prop::collection::vec(step(), 1..60)) {
        let mut run = Run::new();
        for step in &steps {
            run.apply(step)?;
        }
    }
}
