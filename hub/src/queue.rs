//! The queue's ordering and lease rules, as pure data structures.
//!
//! **Architecture Invariant:** nothing here does I/O or reads a clock. Callers pass `now`.
//! The hub core decides *what* happens to a task; this module answers *which* task is next
//! and *whether* a message about a leased task is current (fencing).
//!
//! Order: strict lane priority (urgent, high, normal, low), then age. Task ids are ULIDs, so
//! ordering by id within a lane is ordering by submit time, also for requeued tasks, which
//! keep their place. Anti-starvation between lanes comes with the full queue semantics.

use std::collections::{BTreeSet, HashMap};

use crate::domain::{Lane, TaskId, UnixMs};

/// Who holds a task, under which generation, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub generation: u64,
    pub sidecar_id: String,
    pub agent_id: String,
    pub expires_at: UnixMs,
}

/// Why a message about a task was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// No lease is held for the task (it finished, was cancelled, or was never dispatched).
    NotLeased,
    /// A lease exists, under another generation or held by another sidecar.
    Stale { current_generation: u64 },
}

#[derive(Debug, Default)]
pub struct Queue {
    ready: BTreeSet<(Lane, TaskId)>,
    ready_lane: HashMap<TaskId, Lane>,
    leases: HashMap<TaskId, Lease>,
}

impl Queue {
    pub fn n_ready(&self) -> usize {
        self.ready.len()
    }

    pub fn n_leased(&self) -> usize {
        self.leases.len()
    }

    pub fn push_ready(&mut self, id: TaskId, lane: Lane) {
        debug_assert!(!self.leases.contains_key(&id), "a leased task cannot be ready");
        if let Some(old) = self.ready_lane.insert(id, lane) {
            self.ready.remove(&(old, id));
        }
        self.ready.insert((lane, id));
    }

    pub fn remove_ready(&mut self, id: TaskId) -> bool {
        match self.ready_lane.remove(&id) {
            Some(lane) => self.ready.remove(&(lane, id)),
            None => false,
        }
    }

    /// Takes the first ready task, in dispatch order, that `accept` takes.
    pub fn pop_ready(&mut self, mut accept: impl FnMut(TaskId) -> bool) -> Option<TaskId> {
        let key = *self.ready.iter().find(|(_, id)| accept(*id))?;
        self.ready.remove(&key);
        self.ready_lane.remove(&key.1);
        Some(key.1)
    }

    /// Ready tasks in dispatch order.
    pub fn ready_in_order(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.ready.iter().map(|(_, id)| *id)
    }

    pub fn grant(&mut self, id: TaskId, lease: Lease) {
        debug_assert!(!self.ready_lane.contains_key(&id), "a ready task must be popped before it is leased");
        self.leases.insert(id, lease);
    }

    pub fn lease(&self, id: TaskId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Checks that `sidecar_id` holds the current lease on `id` under `generation`.
    pub fn check(&self, id: TaskId, generation: u64, sidecar_id: &str) -> Result<&Lease, Fence> {
        match self.leases.get(&id) {
            None => Err(Fence::NotLeased),
            Some(lease) if lease.generation == generation && lease.sidecar_id == sidecar_id => Ok(lease),
            Some(lease) => Err(Fence::Stale { current_generation: lease.generation }),
        }
    }

    /// Extends a current lease to `now + ttl`. Never shortens one.
    pub fn renew(
        &mut self,
        id: TaskId,
        generation: u64,
        sidecar_id: &str,
        now: UnixMs,
        ttl_ms: i64,
    ) -> Result<(), Fence> {
        self.check(id, generation, sidecar_id)?;
        let lease = self.leases.get_mut(&id).expect("checked above");
        lease.expires_at = lease.expires_at.max(now + ttl_ms);
        Ok(())
    }

    pub fn release(&mut self, id: TaskId) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Leases that ran out at `now`, oldest expiry first.
    pub fn expired(&self, now: UnixMs) -> Vec<TaskId> {
        let mut expired: Vec<(UnixMs, TaskId)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.expires_at <= now)
            .map(|(id, l)| (l.expires_at, *id))
            .collect();
        expired.sort_unstable();
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Tasks leased to one sidecar.
    pub fn leased_to<'a>(&'a self, sidecar_id: &'a str) -> impl Iterator<Item = (TaskId, &'a Lease)> + 'a {
        self.leases.iter().filter(move |(_, lease)| lease.sidecar_id == sidecar_id).map(|(id, lease)| (*id, lease))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ulid::Ulid;

    fn id(ms: u64, n: u128) -> TaskId {
        TaskId(Ulid::from_parts(ms, n))
    }

    fn lease(generation: u64, sidecar: &str, expires_at: UnixMs) -> Lease {
        Lease { generation, sidecar_id: sidecar.into(), agent_id: format!("{sidecar}-0"), expires_at }
    }

    proptest! {
        /// Popping everything yields lanes in priority order and, within a lane, submit order.
        #[test]
        fn pops_follow_lane_then_age(tasks in prop::collection::vec((0usize..4, 0u64..1_000), 0..200)) {
            let mut queue = Queue::default();
            // The index makes every id unique; the millisecond part gives it an age.
            let tasks: Vec<(Lane, TaskId)> =
                tasks.iter().enumerate().map(|(i, (lane, ms))| (Lane::ALL[*lane], id(*ms, i as u128))).collect();
            for (lane, task) in &tasks {
                queue.push_ready(*task, *lane);
            }
            let mut popped = Vec::new();
            while let Some(task) = queue.pop_ready(|_| true) {
                popped.push(task);
            }
            let mut expected = tasks.clone();
            expected.sort();
            prop_assert_eq!(popped, expected.into_iter().map(|(_, task)| task).collect::<Vec<_>>());
            prop_assert_eq!(queue.n_ready(), 0);
        }

        /// Only the holder of the current generation passes the fence; renewals never shorten a lease.
        #[test]
        fn fencing_admits_only_the_current_holder(generation in 1u64..1_000, other in 0u64..1_000, now in 0i64..1_000_000, ttl in 1i64..100_000) {
            let mut queue = Queue::default();
            let task = id(1, 1);
            queue.grant(task, lease(generation, "a", now + ttl));
            prop_assert!(queue.check(task, generation, "a").is_ok());
            if other != generation {
                prop_assert_eq!(queue.check(task, other, "a").unwrap_err(), Fence::Stale { current_generation: generation });
            }
            prop_assert_eq!(queue.check(task, generation, "b").unwrap_err(), Fence::Stale { current_generation: generation });
            queue.renew(task, generation, "a", now - 10, ttl).unwrap();
            prop_assert_eq!(queue.lease(task).unwrap().expires_at, now + ttl);
            queue.renew(task, generation, "a", now + 5, ttl).unwrap();
            prop_assert_eq!(queue.lease(task).unwrap().expires_at, now + 5 + ttl);
            queue.release(task);
            prop_assert_eq!(queue.check(task, generation, "a").unwrap_err(), Fence::NotLeased);
        }
    }

    #[test]
    fn pop_skips_tasks_the_caller_cannot_place() {
        let mut queue = Queue::default();
        let (a, b) = (id(1, 0), id(2, 0));
        queue.push_ready(a, Lane::Urgent);
        queue.push_ready(b, Lane::Low);
        assert_eq!(queue.pop_ready(|task| task == b), Some(b));
        assert_eq!(queue.ready_in_order().collect::<Vec<_>>(), vec![a]);
        assert!(queue.remove_ready(a));
        assert!(!queue.remove_ready(a));
    }

    #[test]
    fn expiry_lists_only_lapsed_leases_oldest_first() {
        let mut queue = Queue::default();
        queue.grant(id(1, 0), lease(1, "a", 300));
        queue.grant(id(2, 0), lease(1, "a", 100));
        queue.grant(id(3, 0), lease(1, "b", 900));
        assert_eq!(queue.expired(50), vec![]);
        assert_eq!(queue.expired(300), vec![id(2, 0), id(1, 0)]);
        assert_eq!(queue.leased_to("b").map(|(task, _)| task).collect::<Vec<_>>(), vec![id(3, 0)]);
    }
}
