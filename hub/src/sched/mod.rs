//! Placement: which idle agent a ready task goes to, and why a task waits.
//!
//! [`place`] is the whole rule, kept apart from the core so the model-aware scheduler can
//! replace it without touching dispatch: today it puts a task on the open sidecar that has the
//! capability its work needs and the most idle agents (ties to the smaller id, so placement is
//! deterministic), and keeps an expired task back for the tick that dead-letters it.
//!
//! **Architecture Invariant:** pure. The core owns the fleet and asks through [`FleetView`];
//! nothing here does I/O or reads a clock.

use std::collections::{BTreeSet, HashMap};

use crate::domain::{Task, UnixMs};

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
}

/// Where a task goes, or why it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Place { sidecar_id: String, agent_id: String },
    Wait(Wait),
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
    let needed = task.spec.work.capability();
    fleet
        .idle()
        .iter()
        .filter(|(sidecar_id, _)| fleet.can_run(sidecar_id, needed))
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
        .and_then(|(sidecar_id, agents)| {
            Some(Decision::Place { sidecar_id: sidecar_id.clone(), agent_id: agents.first()?.clone() })
        })
        .unwrap_or(Decision::Wait(Wait::NoCapableAgent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SpecDefaults, TaskId, TaskSpec};

    struct Fleet {
        idle: IdleIndex,
        /// (sidecar, capability) pairs that can run.
        can: Vec<(&'static str, &'static str)>,
    }

    impl FleetView for Fleet {
        fn idle(&self) -> &IdleIndex {
            &self.idle
        }
        fn can_run(&self, sidecar_id: &str, capability: &str) -> bool {
            self.can.iter().any(|&(s, c)| s == sidecar_id && c == capability)
        }
    }

    fn shell_task() -> Task {
        Task::new(TaskId::new(1), TaskSpec::shell(vec!["true".into()], &SpecDefaults::default()), 1)
    }

    #[test]
    fn a_task_goes_to_the_capable_sidecar_with_the_most_idle_agents() {
        let mut idle = IdleIndex::default();
        for (sidecar, agent) in [("a", "a/0"), ("b", "b/0"), ("b", "b/1"), ("c", "c/0"), ("c", "c/1"), ("c", "c/2")] {
            idle.insert(sidecar, agent);
        }
        let fleet = Fleet { idle, can: vec![("a", "shell"), ("b", "shell"), ("c", "llm")] };
        let placed = place(&shell_task(), &fleet, 10);
        assert_eq!(placed, Decision::Place { sidecar_id: "b".into(), agent_id: "b/0".into() });
    }

    #[test]
    fn ties_go_to_the_smaller_sidecar_id_and_nothing_capable_waits() {
        let mut idle = IdleIndex::default();
        idle.insert("z", "z/0");
        idle.insert("m", "m/0");
        let fleet = Fleet { idle, can: vec![("z", "shell"), ("m", "shell")] };
        assert_eq!(
            place(&shell_task(), &fleet, 10),
            Decision::Place { sidecar_id: "m".into(), agent_id: "m/0".into() }
        );
        let fleet = Fleet { can: vec![("z", "llm")], ..fleet };
        assert_eq!(place(&shell_task(), &fleet, 10), Decision::Wait(Wait::NoCapableAgent));
    }

    #[test]
    fn an_expired_task_is_not_placed() {
        let mut idle = IdleIndex::default();
        idle.insert("a", "a/0");
        let fleet = Fleet { idle, can: vec![("a", "shell")] };
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
}
