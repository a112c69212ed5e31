//! A settled task as the hub keeps it in memory: its stored record's bytes, with the few fields
//! the core reads without unpacking (its state, when it finished, the bytes its output takes in
//! storage). A finished task is read rarely (a `get`, a page of a list) and kept long, so it is
//! kept at the size of its record (a few hundred bytes) instead of a decoded `Task` (a few
//! kilobytes, most of it empty fields and their allocations).

use super::codec;
use crate::domain::{Task, TaskState, UnixMs};

pub struct Packed {
    state: TaskState,
    finished_unix_ms: UnixMs,
    output_bytes: u64,
    bytes: Box<[u8]>,
}

impl Packed {
    /// Packs a task; its output, if it still holds any, is left out (it is in storage).
    pub fn pack(mut task: Task) -> Packed {
        let (state, finished_unix_ms, output_bytes) = summary(&task);
        if let Some(outcome) = &mut task.outcome {
            outcome.stdout = Vec::new();
            outcome.stderr = Vec::new();
        }
        Packed { state, finished_unix_ms, output_bytes, bytes: codec::encode_task(task).into_boxed_slice() }
    }

    /// A stored record, decoded as `task`, kept as it is stored.
    pub(super) fn from_record(task: &Task, bytes: Vec<u8>) -> Packed {
        let (state, finished_unix_ms, output_bytes) = summary(task);
        Packed { state, finished_unix_ms, output_bytes, bytes: bytes.into_boxed_slice() }
    }

    /// The task again, without its output.
    pub fn unpack(&self) -> Task {
        // These bytes were encoded by this process or decoded once already at load.
        codec::decode_task(&self.bytes).expect("a packed task decodes")
    }

    pub fn state(&self) -> TaskState {
        self.state
    }

    /// When it finished (its last change, for a record that never said).
    pub fn finished_unix_ms(&self) -> UnixMs {
        self.finished_unix_ms
    }

    /// What its output takes in storage (see [`stored_output_bytes`]).
    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }
}

fn summary(task: &Task) -> (TaskState, UnixMs, u64) {
    (task.state, task.finished_unix_ms.unwrap_or(task.updated_unix_ms), stored_output_bytes(task))
}

/// The bytes a finished task's output takes in storage: what each stream kept, nothing once
/// retention dropped it.
pub fn stored_output_bytes(task: &Task) -> u64 {
    let Some(outcome) = &task.outcome else { return 0 };
    if outcome.output_dropped_unix_ms.is_some() {
        return 0;
    }
    let cap = task.spec.limits.max_output_bytes;
    outcome.stdout_total_bytes.min(cap) + outcome.stderr_total_bytes.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Exit, Outcome, SpecDefaults, TaskId, TaskSpec};

    #[test]
    fn a_packed_task_unpacks_to_itself_without_output() {
        let mut spec = TaskSpec::shell(vec!["true".into()], &SpecDefaults::default());
        spec.limits.max_output_bytes = 100;
        let mut task = Task::new(TaskId::new(7), spec, 7);
        task.set_state(TaskState::Succeeded, "", 9);
        task.outcome = Some(Outcome {
            exit: Exit::Code(0),
            stdout: b"kept in storage".to_vec(),
            stdout_total_bytes: 250,
            stderr_total_bytes: 7,
            ..Outcome::empty()
        });
        let packed = Packed::pack(task.clone());
        assert_eq!((packed.state(), packed.finished_unix_ms(), packed.output_bytes()), (TaskState::Succeeded, 9, 107));
        task.outcome.as_mut().unwrap().stdout.clear();
        assert_eq!(packed.unpack(), task);
        assert!(packed.bytes.len() < 200, "{} bytes", packed.bytes.len());
    }

    #[test]
    fn stored_bytes_are_what_each_stream_kept() {
        let mut spec = TaskSpec::shell(vec!["true".into()], &SpecDefaults::default());
        spec.limits.max_output_bytes = 100;
        let mut task = Task::new(TaskId::new(1), spec, 1);
        assert_eq!(stored_output_bytes(&task), 0);
        task.outcome = Some(Outcome { stdout_total_bytes: 250, stderr_total_bytes: 7, ..Outcome::empty() });
        assert_eq!(stored_output_bytes(&task), 107);
        task.outcome.as_mut().unwrap().output_dropped_unix_ms = Some(5);
        assert_eq!(stored_output_bytes(&task), 0);
    }
}
