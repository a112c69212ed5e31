//! What the hub keeps of finished tasks, and for how long: their output for `--retain-output`
//! (by age) and within `--retain-output-bytes` (oldest dropped first), their records for
//! `--retain-tasks`. A dropped output leaves the record, which says when it went
//! (`Outcome::output_dropped_unix_ms`); a task past its retention goes whole.
//!
//! The core keeps, per finished task, its finish time and the bytes its output holds in
//! storage, ordered by finish time, so each tick looks only at the oldest. Entries are checked
//! when they reach the front: a task that changed since (a dead letter retried) is skipped.

use std::collections::{BTreeSet, HashMap};

use super::State;
use super::commit::AfterCommit;
use crate::domain::*;
use crate::store::{Op, stored_output_bytes};

/// Most tasks one tick drops or deletes, so that a large backlog (a retention just shortened)
/// never holds the core for long.
const PER_TICK: usize = 1_000;

/// The finished tasks, by when they finished.
#[derive(Default)]
pub(super) struct Retained {
    /// Every settled task's (finish time, id), for `--retain-tasks`.
    tasks: BTreeSet<(UnixMs, TaskId)>,
    /// Finished tasks whose output is stored: finish time and its bytes.
    outputs: HashMap<TaskId, (UnixMs, u64)>,
    /// `outputs` by finish time (entries whose time no longer matches are stale).
    output_order: BTreeSet<(UnixMs, TaskId)>,
    /// The bytes of every output in `outputs`.
    output_bytes: u64,
}

impl Retained {
    /// Finished tasks retention counts.
    pub(super) fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The bytes of stored output retention accounts for.
    pub(super) fn output_bytes(&self) -> u64 {
        self.output_bytes
    }

    fn forget_output(&mut self, id: TaskId) {
        if let Some((at, bytes)) = self.outputs.remove(&id) {
            self.output_order.remove(&(at, id));
            self.output_bytes -= bytes;
        }
    }
}

impl State {
    /// A task is settled (final, its lease ended): from now on retention counts it.
    pub(super) fn retain(&mut self, id: TaskId) {
        let Some(task) = self.tasks.get(&id) else { return };
        let (at, bytes) = (task.finished_unix_ms.unwrap_or(task.updated_unix_ms), stored_output_bytes(&task));
        drop(task);
        self.retain_at(id, at, bytes);
    }

    /// As [`State::retain`], for a task that finished at `at` with `bytes` of output stored.
    pub(super) fn retain_at(&mut self, id: TaskId, at: UnixMs, bytes: u64) {
        let retained = &mut self.retained;
        retained.tasks.insert((at, id));
        retained.forget_output(id);
        if bytes > 0 {
            retained.outputs.insert(id, (at, bytes));
            retained.output_order.insert((at, id));
            retained.output_bytes += bytes;
        }
    }

    /// Drops what retention no longer keeps: outputs past their age or beyond the byte budget
    /// (oldest first), then whole tasks past theirs.
    pub(super) fn apply_retention(&mut self, now: UnixMs) {
        let config = &self.config;
        let output_horizon = now - config.retain_output.as_millis() as i64;
        let task_horizon = now - config.retain_tasks.as_millis() as i64;
        let budget = config.retain_output_bytes;
        let mut done = 0;
        while done < PER_TICK {
            let Some(&(at, id)) = self.retained.output_order.first() else { break };
            if at > output_horizon && self.retained.output_bytes <= budget {
                break;
            }
            done += 1;
            let current = self.retained.outputs.get(&id).map(|(time, _)| *time);
            if current != Some(at) {
                self.retained.output_order.remove(&(at, id));
                continue; // Stale: the task finished again since.
            }
            self.retained.forget_output(id);
            let Some(task) = self.tasks.get_mut(&id) else { continue };
            if !task.state.is_terminal() {
                continue;
            }
            if let Some(outcome) = &mut task.outcome {
                outcome.output_dropped_unix_ms = Some(now);
            }
            let record = Box::new(task.clone());
            self.tasks.pack(&id);
            self.write(vec![Op::DropOutput(id), Op::PutTask(record)], AfterCommit::Changed(id));
        }
        while done < PER_TICK {
            let Some(&(at, id)) = self.retained.tasks.first() else { break };
            if at > task_horizon {
                break;
            }
            done += 1;
            self.retained.tasks.pop_first();
            let Some((state, finished)) = self.tasks.finished(&id) else { continue };
            let settled = state.is_terminal() && self.queue.lease(id).is_none() && !self.shown.contains_key(&id);
            if !settled || finished != at {
                continue; // It changed since: its next end counts anew.
            }
            self.retained.forget_output(id);
            self.decisions.forget(id);
            if let Some(task) = self.tasks.remove(&id)
                && let Some(key) = task.spec.idempotency_key
                && self.by_key.get(&key) == Some(&id)
            {
                self.by_key.remove(&key);
            }
            self.write(vec![Op::DeleteTask(id)], AfterCommit::Nothing);
        }
    }
}
