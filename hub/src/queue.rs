//! The queue's ordering and lease rules, as pure data structures.
//!
//! **Architecture Invariant:** nothing here does I/O or reads a clock. Callers pass `now`.
//! The hub core decides *what* happens to a task; this module answers *which* task is next
//! and *whether* a message about a leased task is current (fencing).
//!
//! Order: lane priority (interactive, urgent, high, normal, low), then age, with aging against starvation:
//! for every `aging_step_ms` a ready task has existed (counted from its submit time, which a
//! ULID carries) it ranks one lane higher, up to urgent. A task submitted at `t` in lane `k`
//! (urgent = 0, low = 3) therefore ranks as urgent from `t + k * aging_step_ms` on, and from then
//! waits only for ready tasks submitted before it. Requeued tasks keep their submit time, so a
//! retry does not go to the back.
//!
//! Tasks waiting out a retry backoff sit in a delayed set until their time comes.
//!
//! A ready task that cannot be placed now goes to the blocked set, keyed by what it needs (like
//! Nomad's blocked evaluations), so the tasks behind it are placed without it being looked at
//! again; it goes back to ready when the fleet changes in a way that could serve that need.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::domain::{Lane, TaskId, TaskState, UnixMs};
use crate::sched::Need;

/// How long a ready task waits before it ranks one lane higher, unless configured.
pub const DEFAULT_AGING_STEP_MS: i64 = 30_000;

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::Interactive => 0,
        Lane::Urgent => 1,
        Lane::High => 2,
        Lane::Normal => 3,
        Lane::Low => 4,
    }
}

/// The submit time a task id carries.
pub fn submitted_at(id: TaskId) -> UnixMs {
    id.0.timestamp_ms() as UnixMs
}

/// The lane a ready task ranks in at `now` (0 = urgent).
pub fn effective_lane(lane: Lane, id: TaskId, now: UnixMs, aging_step_ms: i64) -> usize {
    let lifts = (now - submitted_at(id)).max(0) / aging_step_ms.max(1);
    lane_index(lane).saturating_sub(lifts as usize)
}

/// Where a task with dependencies stands, given each dependency's state (`None`: it no longer
/// exists, which only a purge of a dead letter causes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every dependency succeeded.
    Ready,
    /// These dependencies have not finished yet.
    Waiting(Vec<TaskId>),
    /// This dependency failed for good, in this state (`None`: purged).
    Failed(TaskId, Option<TaskState>),
}

pub fn readiness(dependencies: impl IntoIterator<Item = (TaskId, Option<TaskState>)>) -> Readiness {
    let mut unfinished = Vec::new();
    for (id, state) in dependencies {
        match state {
            Some(TaskState::Succeeded) => {}
            Some(state) if !state.is_terminal() => unfinished.push(id),
            failed => return Readiness::Failed(id, failed),
        }
    }
    if unfinished.is_empty() { Readiness::Ready } else { Readiness::Waiting(unfinished) }
}

/// The backoff before attempt `next_attempt` (2 is the first retry): `base * 2^(next_attempt - 2)`,
/// capped at `max`, times `jitter` taken in [0.5, 1] (so many retries do not land at once).
pub fn retry_delay_ms(next_attempt: u32, base_ms: u64, max_ms: u64, jitter: f64) -> i64 {
    let doublings = next_attempt.saturating_sub(2).min(62);
    let full = base_ms.saturating_mul(1u64 << doublings).min(max_ms);
    let jitter = jitter.clamp(0.5, 1.0);
    (full as f64 * jitter).round() as i64
}

/// Who holds a task, under which generation, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub generation: u64,
    pub sidecar_id: String,
    pub agent_id: String,
    pub expires_at: UnixMs,
    /// The LLM endpoint placement chose, if it chose one (counted in flight while the lease lasts),
    /// and the model.
    pub endpoint_id: Option<String>,
    pub model: Option<String>,
    /// Requests already in flight on that endpoint when this one was placed (to learn how many
    /// it runs at once).
    pub beside: u32,
    /// The tier it was placed at (its own, or where a fallback or escalation moved it).
    pub tier: Option<crate::domain::Tier>,
    /// The model and endpoint placement chose to judge the work's `llm_judge` steps that name
    /// no model (see `sched::judge`).
    pub judge: Option<(String, String)>,
}

/// Why a message about a task was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// No lease is held for the task (it finished, was cancelled, or was never dispatched).
    NotLeased,
    /// A lease exists, under another generation or held by another sidecar.
    Stale { current_generation: u64 },
}

#[derive(Debug)]
pub struct Queue {
    /// Ready tasks per lane, oldest first (task ids sort by submit time).
    lanes: [BTreeSet<TaskId>; 5],
    ready_lane: HashMap<TaskId, Lane>,
    /// Tasks waiting out a backoff: (ready at, id).
    delayed: BTreeSet<(UnixMs, TaskId)>,
    delayed_until: HashMap<TaskId, (UnixMs, Lane)>,
    leases: HashMap<TaskId, Lease>,
    /// Ready tasks placement could not place: their lane and need, and the tasks by need.
    blocked: HashMap<TaskId, (Lane, Need)>,
    blocked_by_need: BTreeMap<Need, BTreeSet<TaskId>>,
    aging_step_ms: i64,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue::new(DEFAULT_AGING_STEP_MS)
    }
}

impl Queue {
    pub fn new(aging_step_ms: i64) -> Queue {
        Queue {
            lanes: Default::default(),
            ready_lane: HashMap::new(),
            delayed: BTreeSet::new(),
            delayed_until: HashMap::new(),
            leases: HashMap::new(),
            blocked: HashMap::new(),
            blocked_by_need: BTreeMap::new(),
            aging_step_ms: aging_step_ms.max(1),
        }
    }

    /// Ready tasks placement has yet to look at (blocked ones not counted).
    pub fn n_ready(&self) -> usize {
        self.ready_lane.len()
    }

    /// The task waits out a retry backoff.
    pub fn is_delayed(&self, id: TaskId) -> bool {
        self.delayed_until.contains_key(&id)
    }

    /// Ready tasks, blocked ones included, by lane (urgent first).
    pub fn ready_by_lane(&self) -> [usize; 5] {
        let mut by_lane = [0; 5];
        for (i, lane) in self.lanes.iter().enumerate() {
            by_lane[i] = lane.len();
        }
        for (lane, _) in self.blocked.values() {
            by_lane[lane_index(*lane)] += 1;
        }
        by_lane
    }

    /// The ready task submitted first, blocked ones included (ids sort by submit time).
    pub fn oldest_ready(&self) -> Option<TaskId> {
        let ready = self.lanes.iter().filter_map(|lane| lane.first().copied());
        ready.chain(self.blocked_by_need.values().filter_map(|ids| ids.first().copied())).min()
    }

    /// Ready tasks in the blocked set.
    pub fn n_blocked(&self) -> usize {
        self.blocked.len()
    }

    /// What a blocked task needs; `None` if it is not blocked.
    pub fn blocked_on(&self, id: TaskId) -> Option<&Need> {
        self.blocked.get(&id).map(|(_, need)| need)
    }

    /// The distinct needs of blocked tasks.
    pub fn blocked_needs(&self) -> impl Iterator<Item = &Need> {
        self.blocked_by_need.keys()
    }

    /// The oldest `per_set` ready tasks of each lane and blocked tasks of each need (task ids
    /// sort by submit time): a bounded look at what waits.
    pub fn waiting_sample(&self, per_set: usize) -> impl Iterator<Item = TaskId> + '_ {
        let ready = self.lanes.iter().flat_map(move |lane| lane.iter().take(per_set).copied());
        ready.chain(self.blocked_by_need.values().flat_map(move |ids| ids.iter().take(per_set).copied()))
    }

    /// Moves the blocked tasks whose need `serves` says yes to back to ready; returns how many.
    pub fn unblock(&mut self, mut serves: impl FnMut(&Need) -> bool) -> usize {
        let needs: Vec<Need> = self.blocked_by_need.keys().filter(|need| serves(need)).cloned().collect();
        let mut count = 0;
        for need in needs {
            for id in self.blocked_by_need.remove(&need).unwrap_or_default() {
                let (lane, _) = self.blocked.remove(&id).expect("indexed blocked tasks are blocked");
                self.ready_lane.insert(id, lane);
                self.lanes[lane_index(lane)].insert(id);
                count += 1;
            }
        }
        count
    }

    /// Moves one blocked task back to ready (its need changed); false if it was not blocked.
    pub fn unblock_task(&mut self, id: TaskId) -> bool {
        let Some((lane, _)) = self.take_blocked(id) else { return false };
        self.push_ready(id, lane);
        true
    }

    fn take_blocked(&mut self, id: TaskId) -> Option<(Lane, Need)> {
        let (lane, need) = self.blocked.remove(&id)?;
        if let Some(ids) = self.blocked_by_need.get_mut(&need) {
            ids.remove(&id);
            if ids.is_empty() {
                self.blocked_by_need.remove(&need);
            }
        }
        Some((lane, need))
    }

    fn block(&mut self, id: TaskId, need: Need) {
        let Some(lane) = self.ready_lane.remove(&id) else { return };
        self.lanes[lane_index(lane)].remove(&id);
        self.blocked_by_need.entry(need.clone()).or_default().insert(id);
        self.blocked.insert(id, (lane, need));
    }

    pub fn n_delayed(&self) -> usize {
        self.delayed_until.len()
    }

    pub fn n_leased(&self) -> usize {
        self.leases.len()
    }

    pub fn push_ready(&mut self, id: TaskId, lane: Lane) {
        debug_assert!(!self.leases.contains_key(&id), "a leased task cannot be ready");
        self.remove_waiting(id);
        self.ready_lane.insert(id, lane);
        self.lanes[lane_index(lane)].insert(id);
    }

    /// Makes the task ready at `ready_at` (a retry backoff).
    pub fn push_delayed(&mut self, id: TaskId, lane: Lane, ready_at: UnixMs) {
        debug_assert!(!self.leases.contains_key(&id), "a leased task cannot wait");
        self.remove_waiting(id);
        self.delayed_until.insert(id, (ready_at, lane));
        self.delayed.insert((ready_at, id));
    }

    /// Moves delayed tasks whose time has come to ready; returns them.
    pub fn promote_due(&mut self, now: UnixMs) -> Vec<TaskId> {
        let due: Vec<(UnixMs, TaskId)> = self.delayed.range(..(now + 1, TaskId(ulid::Ulid::nil()))).copied().collect();
        for (_, id) in &due {
            let (_, lane) = self.delayed_until[id];
            self.push_ready(*id, lane);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// Takes a task out of the ready, blocked or delayed set (a cancel, an expiry).
    pub fn remove_waiting(&mut self, id: TaskId) -> bool {
        if self.take_blocked(id).is_some() {
            return true;
        }
        if let Some(lane) = self.ready_lane.remove(&id) {
            self.lanes[lane_index(lane)].remove(&id);
            return true;
        }
        if let Some((ready_at, _)) = self.delayed_until.remove(&id) {
            self.delayed.remove(&(ready_at, id));
            return true;
        }
        false
    }

    /// Takes the ready task that ranks first at `now` among those `place` can place, and what
    /// `place` said about it. Within a lane the oldest placeable task is that lane's best, so
    /// only one candidate per lane is compared. A task `place` refuses with a need moves to the
    /// blocked set (and its id to `blocked`); one refused without (expired) stays ready.
    pub fn pop_ready<T>(
        &mut self,
        now: UnixMs,
        mut place: impl FnMut(TaskId) -> Result<T, Option<Need>>,
        blocked: &mut Vec<(TaskId, Need)>,
    ) -> Option<(TaskId, T)> {
        let first = blocked.len();
        let mut best: Option<((usize, TaskId), T)> = None;
        for (index, lane) in self.lanes.iter().enumerate() {
            let found = lane.iter().find_map(|id| match place(*id) {
                Ok(placement) => Some((*id, placement)),
                Err(Some(need)) => {
                    blocked.push((*id, need));
                    None
                }
                Err(None) => None,
            });
            let Some((id, placement)) = found else { continue };
            let rank = (effective_lane(Lane::ALL[index], id, now, self.aging_step_ms), id);
            if best.as_ref().is_none_or(|(best_rank, _)| rank < *best_rank) {
                best = Some((rank, placement));
            }
        }
        for (id, need) in &blocked[first..] {
            self.block(*id, need.clone());
        }
        let ((_, id), placement) = best?;
        self.remove_waiting(id);
        Some((id, placement))
    }

    /// Ready tasks, blocked ones included, in the order they would be taken at `now` (for
    /// listings and tests).
    pub fn ready_in_order(&self, now: UnixMs) -> Vec<TaskId> {
        let mut ready: Vec<(usize, TaskId)> = self
            .ready_lane
            .iter()
            .chain(self.blocked.iter().map(|(id, (lane, _))| (id, lane)))
            .map(|(id, lane)| (effective_lane(*lane, *id, now, self.aging_step_ms), *id))
            .collect();
        ready.sort_unstable();
        ready.into_iter().map(|(_, id)| id).collect()
    }

    /// How many ready tasks (blocked ones included) would be taken before `id` at `now`; `None`
    /// if it is not ready.
    pub fn ahead_of(&self, id: TaskId, now: UnixMs) -> Option<usize> {
        let lane = self.ready_lane.get(&id).or_else(|| self.blocked.get(&id).map(|(lane, _)| lane))?;
        let rank = (effective_lane(*lane, id, now, self.aging_step_ms), id);
        let ahead = self
            .ready_lane
            .iter()
            .chain(self.blocked.iter().map(|(id, (lane, _))| (id, lane)))
            .filter(|(other, lane)| (effective_lane(**lane, **other, now, self.aging_step_ms), **other) < rank)
            .count();
        Some(ahead)
    }

    pub fn grant(&mut self, id: TaskId, lease: Lease) {
        debug_assert!(
            !self.ready_lane.contains_key(&id)
                && !self.delayed_until.contains_key(&id)
                && !self.blocked.contains_key(&id),
            "a waiting task must be taken out before it is leased"
        );
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
        Lease {
            generation,
            sidecar_id: sidecar.into(),
            agent_id: format!("{sidecar}-0"),
            expires_at,
            endpoint_id: None,
            model: None,
            beside: 0,
            tier: None,
            judge: None,
        }
    }

    proptest! {
        /// Without aging, popping everything yields lanes in priority order and, within a lane,
        /// submit order.
        #[test]
        fn pops_follow_lane_then_age(tasks in prop::collection::vec((0usize..5, 0u64..1_000), 0..200)) {
            let mut queue = Queue::new(i64::MAX);
            // The index makes every id unique; the millisecond part gives it an age.
            let tasks: Vec<(Lane, TaskId)> =
                tasks.iter().enumerate().map(|(i, (lane, ms))| (Lane::ALL[*lane], id(*ms, i as u128))).collect();
            for (lane, task) in &tasks {
                queue.push_ready(*task, *lane);
            }
            let mut expected = tasks.clone();
            expected.sort();
            let expected: Vec<TaskId> = expected.into_iter().map(|(_, task)| task).collect();
            prop_assert_eq!(queue.ready_in_order(1_000), expected.clone());
            let mut popped = Vec::new();
            while let Some((task, ())) = queue.pop_ready(1_000, |_| Ok(()), &mut Vec::new()) {
                popped.push(task);
            }
            prop_assert_eq!(popped, expected);
            prop_assert_eq!(queue.n_ready(), 0);
        }

        /// The anti-starvation bound: `lane * step` after its submit, a task is taken before
        /// every task submitted after it, whatever their lanes.
        #[test]
        fn aging_bounds_how_long_a_lower_lane_waits(
            lane in 0usize..5,
            step in 1i64..10_000,
            others in prop::collection::vec((0usize..5, 1u64..100_000), 0..100),
            extra in 0i64..100_000,
        ) {
            let mut queue = Queue::new(step);
            let target = id(1_000, u128::MAX);
            queue.push_ready(target, Lane::ALL[lane]);
            for (i, (other_lane, delay)) in others.iter().enumerate() {
                queue.push_ready(id(1_000 + delay, i as u128), Lane::ALL[*other_lane]);
            }
            let now = 1_000 + lane as i64 * step + extra;
            prop_assert_eq!(queue.pop_ready(now, |_| Ok(()), &mut Vec::new()).map(|(task, ())| task), Some(target));
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

    proptest! {
        /// Backoff grows by doubling, never passes the cap, and jitter keeps at least half.
        #[test]
        fn backoff_stays_within_its_bounds(attempt in 2u32..200, base in 1u64..100_000, extra in 0u64..1_000_000, jitter in 0.0f64..2.0) {
            let max = base + extra;
            let delay = retry_delay_ms(attempt, base, max, jitter);
            let full = (base as u128 * (1u128 << (attempt - 2).min(62))).min(max as u128) as i64;
            prop_assert!(delay <= full && delay * 2 >= full - 1, "{delay} vs {full}");
            prop_assert!(delay <= max as i64);
        }
    }

    proptest! {
        /// Ready exactly when every dependency succeeded; failed as soon as one failed for good
        /// (or was purged); otherwise waiting on exactly the unfinished ones.
        #[test]
        fn dependency_readiness(states in prop::collection::vec(prop::option::weighted(0.95, 0usize..11), 0..20)) {
            let deps: Vec<(TaskId, Option<TaskState>)> =
                states.iter().enumerate().map(|(i, s)| (id(1, i as u128), s.map(|s| TaskState::ALL[s]))).collect();
            let result = readiness(deps.clone());
            let failed_for_good = |s: &Option<TaskState>| s.is_none_or(|s| s.is_terminal() && s != TaskState::Succeeded);
            match result {
                Readiness::Ready => prop_assert!(deps.iter().all(|(_, s)| *s == Some(TaskState::Succeeded))),
                Readiness::Failed(dep, state) => {
                    prop_assert!(failed_for_good(&state));
                    prop_assert!(deps.contains(&(dep, state)));
                }
                Readiness::Waiting(unfinished) => {
                    prop_assert!(!deps.iter().any(|(_, s)| failed_for_good(s)));
                    let expected: Vec<TaskId> =
                        deps.iter().filter(|(_, s)| s.is_some_and(|s| !s.is_terminal())).map(|(id, _)| *id).collect();
                    prop_assert_eq!(unfinished, expected);
                }
            }
        }
    }

    #[test]
    fn backoff_doubles_from_the_base() {
        let delays: Vec<i64> = (2..=6).map(|attempt| retry_delay_ms(attempt, 100, 1_000, 1.0)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000]);
        assert_eq!(retry_delay_ms(3, 100, 1_000, 0.5), 100);
    }

    #[test]
    fn pop_skips_tasks_the_caller_cannot_place() {
        let mut queue = Queue::default();
        let (a, b) = (id(1, 0), id(2, 0));
        queue.push_ready(a, Lane::Urgent);
        queue.push_ready(b, Lane::Low);
        let mut blocked = Vec::new();
        let placed = queue.pop_ready(2, |task| if task == b { Ok("placed") } else { Err(None) }, &mut blocked);
        assert_eq!((placed, blocked.len()), (Some((b, "placed")), 0));
        assert_eq!(queue.ready_in_order(2), vec![a]);
        assert!(queue.remove_waiting(a));
        assert!(!queue.remove_waiting(a));
    }

    #[test]
    fn a_task_that_cannot_be_placed_is_blocked_by_its_need_until_that_is_served() {
        let mut queue = Queue::default();
        let (a, b, c) = (id(1, 0), id(2, 0), id(3, 0));
        queue.push_ready(a, Lane::Urgent);
        queue.push_ready(b, Lane::Urgent);
        queue.push_ready(c, Lane::Normal);
        let need = |task: TaskId| if task == c { Need::Capability("shell") } else { Need::Model("m".into()) };
        let mut blocked = Vec::new();
        let placed = queue.pop_ready(5, |task| if task == c { Ok(()) } else { Err(Some(need(task))) }, &mut blocked);
        assert_eq!(placed, Some((c, ())), "the tasks behind the unplaceable ones run");
        assert_eq!(blocked, vec![(a, need(a)), (b, need(b))]);
        assert_eq!((queue.n_ready(), queue.n_blocked()), (0, 2));
        assert_eq!(queue.ready_in_order(5), vec![a, b], "blocked tasks are still ready");
        // Nothing is looked at again until its need is served.
        let mut looked = 0;
        assert_eq!(
            queue.pop_ready(
                5,
                |_| {
                    looked += 1;
                    Ok(())
                },
                &mut blocked
            ),
            None
        );
        assert_eq!(looked, 0);
        assert_eq!(queue.unblock(|n| *n == Need::Capability("shell")), 0);
        assert!(queue.unblock_task(b));
        assert_eq!(queue.blocked_on(a), Some(&Need::Model("m".into())));
        assert_eq!(queue.unblock(|n| *n == Need::Model("m".into())), 1);
        assert_eq!((queue.n_ready(), queue.n_blocked(), queue.blocked_needs().count()), (2, 0, 0));
        // A blocked task can be cancelled.
        queue.pop_ready(5, |task| Err::<(), _>(Some(need(task))), &mut Vec::new());
        assert!(queue.remove_waiting(a) && queue.blocked_on(a).is_none());
        assert_eq!(queue.blocked_needs().count(), 1);
    }

    #[test]
    fn delayed_tasks_become_ready_when_their_time_comes() {
        let mut queue = Queue::default();
        let (a, b) = (id(1, 0), id(2, 0));
        queue.push_delayed(a, Lane::Normal, 500);
        queue.push_delayed(b, Lane::High, 900);
        assert_eq!(queue.pop_ready(100, |_| Ok(()), &mut Vec::new()), None);
        assert_eq!(queue.promote_due(499), vec![]);
        assert_eq!(queue.promote_due(500), vec![a]);
        assert_eq!((queue.n_ready(), queue.n_delayed()), (1, 1));
        assert!(queue.remove_waiting(b));
        assert_eq!(queue.promote_due(10_000), vec![]);
        assert_eq!(queue.pop_ready(600, |_| Ok(()), &mut Vec::new()), Some((a, ())));
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
