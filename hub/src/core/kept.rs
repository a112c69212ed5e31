//! Every task the hub knows, by id: those not finished (and those just finished, until they
//! settle) decoded, settled ones packed (`store::Packed`, their record's bytes), so that the
//! memory a finished task holds is its record's size, not a decoded `Task`'s.
//!
//! A packed task is unpacked for a read (`get` gives a copy) and in place for a change
//! (`get_mut`: a dead letter retried, retention marking its output dropped); whoever settles
//! it again packs it again (`pack`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::RangeBounds;

use crate::domain::{Task, TaskId, TaskState, UnixMs};
use crate::store::Packed;

enum Kept {
    Full(Box<Task>),
    Packed(Packed),
}

#[derive(Default)]
pub(super) struct Tasks {
    map: BTreeMap<TaskId, Kept>,
}

impl Tasks {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn contains_key(&self, id: &TaskId) -> bool {
        self.map.contains_key(id)
    }

    pub(super) fn insert(&mut self, id: TaskId, task: Box<Task>) {
        self.map.insert(id, Kept::Full(task));
    }

    pub(super) fn insert_packed(&mut self, id: TaskId, packed: Packed) {
        self.map.insert(id, Kept::Packed(packed));
    }

    /// A task as it is now: borrowed if it is decoded, a copy unpacked if not.
    pub(super) fn get(&self, id: &TaskId) -> Option<Cow<'_, Task>> {
        self.map.get(id).map(view)
    }

    pub(super) fn state(&self, id: &TaskId) -> Option<TaskState> {
        self.map.get(id).map(|kept| match kept {
            Kept::Full(task) => task.state,
            Kept::Packed(packed) => packed.state(),
        })
    }

    pub(super) fn is_packed(&self, id: &TaskId) -> bool {
        matches!(self.map.get(id), Some(Kept::Packed(_)))
    }

    /// A task's state and when it finished (its last change, if it never did).
    pub(super) fn finished(&self, id: &TaskId) -> Option<(TaskState, UnixMs)> {
        self.map.get(id).map(|kept| match kept {
            Kept::Full(task) => (task.state, task.finished_unix_ms.unwrap_or(task.updated_unix_ms)),
            Kept::Packed(packed) => (packed.state(), packed.finished_unix_ms()),
        })
    }

    /// A task to change, unpacked in place if it was packed.
    pub(super) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        let kept = self.map.get_mut(id)?;
        if let Kept::Packed(packed) = kept {
            *kept = Kept::Full(Box::new(packed.unpack()));
        }
        match kept {
            Kept::Full(task) => Some(task),
            Kept::Packed(_) => unreachable!("unpacked above"),
        }
    }

    pub(super) fn remove(&mut self, id: &TaskId) -> Option<Box<Task>> {
        self.map.remove(id).map(|kept| match kept {
            Kept::Full(task) => task,
            Kept::Packed(packed) => Box::new(packed.unpack()),
        })
    }

    /// Packs a finished task (one that is not finished stays as it is).
    pub(super) fn pack(&mut self, id: &TaskId) {
        if !matches!(self.map.get(id), Some(Kept::Full(task)) if task.state.is_terminal()) {
            return;
        }
        if let Some(Kept::Full(task)) = self.map.remove(id) {
            self.map.insert(*id, Kept::Packed(Packed::pack(*task)));
        }
    }

    /// Each task's id, state and (for a finished one) when it finished, without unpacking.
    pub(super) fn states(&self) -> impl Iterator<Item = (TaskId, TaskState, Option<UnixMs>)> + '_ {
        self.map.iter().map(|(id, kept)| match kept {
            Kept::Full(task) => (*id, task.state, task.finished_unix_ms),
            Kept::Packed(packed) => (*id, packed.state(), Some(packed.finished_unix_ms())),
        })
    }

    /// The tasks not packed: every task not finished, and those finished but not settled yet.
    pub(super) fn decoded(&self) -> impl Iterator<Item = &Task> + '_ {
        self.map.values().filter_map(|kept| match kept {
            Kept::Full(task) => Some(&**task),
            Kept::Packed(_) => None,
        })
    }

    /// Tasks in a range of ids, each with its state (known without unpacking) and a way to
    /// read it whole.
    pub(super) fn range(
        &self,
        range: impl RangeBounds<TaskId>,
    ) -> impl DoubleEndedIterator<Item = (TaskId, TaskState, Entry<'_>)> + '_ {
        self.map.range(range).map(|(id, kept)| {
            let state = match kept {
                Kept::Full(task) => task.state,
                Kept::Packed(packed) => packed.state(),
            };
            (*id, state, Entry(kept))
        })
    }
}

/// One task of [`Tasks::range`], read whole on demand.
pub(super) struct Entry<'a>(&'a Kept);

impl<'a> Entry<'a> {
    pub(super) fn task(&self) -> Cow<'a, Task> {
        view(self.0)
    }
}

fn view(kept: &Kept) -> Cow<'_, Task> {
    match kept {
        Kept::Full(task) => Cow::Borrowed(&**task),
        Kept::Packed(packed) => Cow::Owned(packed.unpack()),
    }
}

/// A decoded task, by id; panics for a packed one. For tasks that cannot be settled where it is
/// used: leased, ready, waiting, or finished and not yet told (see `State::notify`).
impl std::ops::Index<&TaskId> for Tasks {
    type Output = Task;

    fn index(&self, id: &TaskId) -> &Task {
        match self.map.get(id) {
            Some(Kept::Full(task)) => task,
            Some(Kept::Packed(_)) => panic!("task {id} is settled and packed; read it with `get`"),
            None => panic!("task {id} is not known"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SpecDefaults, TaskSpec};

    fn task(n: i64, state: TaskState) -> Box<Task> {
        let mut task = Task::new(TaskId::new(n), TaskSpec::shell(vec!["true".into()], &SpecDefaults::default()), n);
        task.set_state(state, "", n + 1);
        Box::new(task)
    }

    #[test]
    fn finished_tasks_pack_and_read_back_the_same() {
        let mut tasks = Tasks::default();
        let (done, running) = (task(1, TaskState::Succeeded), task(2, TaskState::Running));
        let (done_id, running_id) = (done.id, running.id);
        tasks.insert(done_id, done.clone());
        tasks.insert(running_id, running.clone());
        tasks.pack(&done_id);
        tasks.pack(&running_id);
        assert!(matches!(tasks.get(&done_id), Some(Cow::Owned(_))), "packed");
        assert!(matches!(tasks.get(&running_id), Some(Cow::Borrowed(_))), "a running task is not packed");
        assert_eq!(*tasks.get(&done_id).unwrap(), *done);
        assert_eq!(tasks.state(&done_id), Some(TaskState::Succeeded));
        assert_eq!(tasks.decoded().count(), 1);
        let states: Vec<_> = tasks.states().collect();
        assert_eq!(states, vec![(done_id, TaskState::Succeeded, Some(2)), (running_id, TaskState::Running, None)]);
        let listed: Vec<Task> = tasks.range(..).rev().map(|(_, _, entry)| entry.task().into_owned()).collect();
        assert_eq!(listed, vec![*running.clone(), *done.clone()]);

        // A change unpacks it in place; packing again packs the change.
        tasks.get_mut(&done_id).unwrap().state_reason = "changed".into();
        assert_eq!(tasks[&done_id].state_reason, "changed");
        tasks.pack(&done_id);
        assert_eq!(tasks.get(&done_id).unwrap().state_reason, "changed");
        assert_eq!(tasks.remove(&done_id).unwrap().state_reason, "changed");
        assert_eq!(tasks.len(), 1);
    }
}
