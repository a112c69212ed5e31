//! The agent state machine: a transition table and nothing else.
//!
//! **Architecture Invariant:** pure. [`transition`] is the only way an agent's state changes;
//! anything the table does not list is refused, and the caller logs the refusal.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentState {
    Idle,
    Assigned,
    Working,
    Blocked,
    Draining,
    Offline,
}

impl crate::domain::Numbered for AgentState {
    const ALL: &'static [AgentState] = &AgentState::ALL;
}

impl AgentState {
    pub const ALL: [AgentState; 6] = [
        AgentState::Idle,
        AgentState::Assigned,
        AgentState::Working,
        AgentState::Blocked,
        AgentState::Draining,
        AgentState::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Idle => "idle",
            AgentState::Assigned => "assigned",
            AgentState::Working => "working",
            AgentState::Blocked => "blocked",
            AgentState::Draining => "draining",
            AgentState::Offline => "offline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentEvent {
    /// The hub leased a task to the agent.
    Assign,
    /// The sidecar reported the task started.
    Start,
    /// The task ended, or its lease was taken back.
    Release,
    /// Its task waits on a model load, a rate limit or a human.
    Block,
    Unblock,
    /// Take no new work; finish what is running.
    Drain,
    /// Drain lifted with no task in hand.
    Undrain,
    /// Drain lifted while a task still runs.
    Resume,
    /// The sidecar's heartbeat lapsed or its stream closed.
    Lost,
    /// The sidecar came back.
    Rejoin,
}

pub const ALL_EVENTS: [AgentEvent; 10] = [
    AgentEvent::Assign,
    AgentEvent::Start,
    AgentEvent::Release,
    AgentEvent::Block,
    AgentEvent::Unblock,
    AgentEvent::Drain,
    AgentEvent::Undrain,
    AgentEvent::Resume,
    AgentEvent::Lost,
    AgentEvent::Rejoin,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("agent cannot go from {from:?} on {event:?}")]
pub struct IllegalTransition {
    pub from: AgentState,
    pub event: AgentEvent,
}

/// The whole table. `blocked` is a task that waits (on a model load, a rate limit, a human),
/// so only an agent with a task can block. A draining agent keeps its running task, so the
/// task's own events are legal while draining and leave it draining.
pub fn transition(from: AgentState, event: AgentEvent) -> Result<AgentState, IllegalTransition> {
    use AgentEvent as E;
    use AgentState as S;
    let to = match (from, event) {
        (S::Idle, E::Assign) => S::Assigned,
        (S::Assigned, E::Start) => S::Working,
        (S::Assigned | S::Working | S::Blocked, E::Release) => S::Idle,
        (S::Assigned | S::Working, E::Block) => S::Blocked,
        (S::Blocked, E::Unblock) => S::Working,
        (S::Idle | S::Assigned | S::Working | S::Blocked, E::Drain) => S::Draining,
        (S::Draining, E::Start | E::Release | E::Block | E::Unblock) => S::Draining,
        (S::Draining, E::Undrain) => S::Idle,
        (S::Draining, E::Resume) => S::Working,
        (S::Idle | S::Assigned | S::Working | S::Blocked | S::Draining, E::Lost) => S::Offline,
        (S::Offline, E::Rejoin) => S::Idle,
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok(to)
}

/// One recorded transition of an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub at_unix_ms: i64,
    pub from: AgentState,
    pub to: AgentState,
    pub cause: String,
}

/// How many transitions each agent remembers.
pub const HISTORY_LEN: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use AgentEvent as E;
    use AgentState as S;

    /// Every (state, event) pair, legal ones with their target.
    #[test]
    fn the_table_is_exactly_this() {
        let legal = [
            (S::Idle, E::Assign, S::Assigned),
            (S::Idle, E::Drain, S::Draining),
            (S::Idle, E::Lost, S::Offline),
            (S::Assigned, E::Start, S::Working),
            (S::Assigned, E::Release, S::Idle),
            (S::Assigned, E::Block, S::Blocked),
            (S::Assigned, E::Drain, S::Draining),
            (S::Assigned, E::Lost, S::Offline),
            (S::Working, E::Release, S::Idle),
            (S::Working, E::Block, S::Blocked),
            (S::Working, E::Drain, S::Draining),
            (S::Working, E::Lost, S::Offline),
            (S::Blocked, E::Unblock, S::Working),
            (S::Blocked, E::Release, S::Idle),
            (S::Blocked, E::Drain, S::Draining),
            (S::Blocked, E::Lost, S::Offline),
            (S::Draining, E::Start, S::Draining),
            (S::Draining, E::Release, S::Draining),
            (S::Draining, E::Block, S::Draining),
            (S::Draining, E::Unblock, S::Draining),
            (S::Draining, E::Undrain, S::Idle),
            (S::Draining, E::Resume, S::Working),
            (S::Draining, E::Lost, S::Offline),
            (S::Offline, E::Rejoin, S::Idle),
        ];
        for from in AgentState::ALL {
            for event in ALL_EVENTS {
                let expected = legal.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                match expected {
                    Some(to) => assert_eq!(transition(from, event), Ok(to), "{from:?} on {event:?}"),
                    None => assert_eq!(transition(from, event), Err(IllegalTransition { from, event })),
                }
            }
        }
    }
}
