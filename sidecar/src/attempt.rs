//! Which task attempt something belongs to: the key containment scopes, state records,
//! workspaces, uids and the link's held results share. Below all of them.

/// A task's attempt, by the task and the lease generation it runs under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub task_id: String,
    pub lease_generation: u64,
}
