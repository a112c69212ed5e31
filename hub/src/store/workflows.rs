//! Workflow runs as stored: each run's record (how it started, and its state as of its last
//! event, for lists) and its events in order, in the `workflows` table under
//! (run id, 0) and (run id, 1..). A run's state is what `agentcom_workflow::run::advance` makes
//! of its events, replayed when the hub starts; the step tasks are ordinary tasks.

use redb::{ReadableDatabase, ReadableTable};
use ulid::Ulid;

use agentcom_workflow::run::{Ended, StepKey};

use super::{Error, Store, WORKFLOWS, codec, redb_err};
use crate::domain::TaskId;

/// A workflow run's record.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRun {
    pub id: Ulid,
    pub name: String,
    /// The workflow file as it was given (YAML or JSON).
    pub source: String,
    pub inputs: serde_json::Value,
    pub created_unix_ms: i64,
    /// `api`, `hook:NAME`, `schedule`.
    pub trigger: String,
    /// As of its last event: `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    pub ended_unix_ms: Option<i64>,
    /// A webhook's delivery id.
    pub delivery: Option<String>,
    /// A schedule's slot.
    pub slot_unix_ms: Option<i64>,
    /// What the run read besides its inputs (`previous`, `memory`), fixed at its start.
    pub given: serde_json::Map<String, serde_json::Value>,
}

/// A webhook: deliveries to `POST /api/v1/hooks/NAME` signed with its secret start its workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    pub name: String,
    pub source: String,
    pub secret: Vec<u8>,
    pub created_unix_ms: i64,
    pub created_by: String,
}

/// A workflow the hub starts on its `on.schedule`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    pub name: String,
    pub source: String,
    pub added_unix_ms: i64,
    /// The last slot a run was started for.
    pub last_slot_unix_ms: i64,
}

/// What a workflow's runs keep for later runs: `remember:` values, and the last successful
/// run's captured outputs by step.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Memory {
    pub workflow: String,
    pub values: serde_json::Map<String, serde_json::Value>,
    pub last_run: Option<Ulid>,
    pub last_outputs: serde_json::Map<String, serde_json::Value>,
    pub updated_unix_ms: i64,
}

/// Something that happened to a run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEvent {
    pub at_unix_ms: i64,
    pub kind: RunEventKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RunEventKind {
    Start,
    /// A step's task ended, or could not be made (`task_id` none).
    Ended {
        key: StepKey,
        ended: Box<Ended>,
        task_id: Option<TaskId>,
    },
    Cancel,
    Retry,
}

/// A stored run with its events, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedRun {
    pub run: StoredRun,
    pub events: Vec<RunEvent>,
}

impl Store {
    /// Every workflow run with its events, oldest run first. A record that does not decode
    /// stops the load, as a task's does: a run must never continue from part of its history.
    pub fn load_workflows(&self) -> Result<Vec<LoadedRun>, Error> {
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let table = txn.open_table(WORKFLOWS).map_err(redb_err)?;
        let mut runs: Vec<LoadedRun> = Vec::new();
        for entry in table.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let ((run, seq), bytes) = (key.value(), value.value());
            let corrupt = |message: String| Error::Corrupt { key: run, message };
            if seq == 0 {
                let stored = codec::workflow::decode_run(Ulid(run), bytes).map_err(corrupt)?;
                runs.push(LoadedRun { run: stored, events: Vec::new() });
                continue;
            }
            let event = codec::workflow::decode_event(bytes).map_err(corrupt)?;
            match runs.last_mut() {
                Some(loaded) if u128::from(loaded.run.id) == run => {
                    if loaded.events.len() + 1 != seq as usize {
                        return Err(corrupt(format!("workflow run event {seq} follows {}", loaded.events.len())));
                    }
                    loaded.events.push(event);
                }
                _ => return Err(corrupt(format!("workflow run event {seq} of a run without its record"))),
            }
        }
        Ok(runs)
    }
}
