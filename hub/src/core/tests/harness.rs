//! The harness the core's tests drive the state with: events in at chosen times, every write
//! committed at once the way the writer would, what was sent to each sidecar and the answers
//! to requests kept.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::T0;
use crate::core::*;
use crate::domain::{Exit, Outcome, TaskSpec};

pub(super) struct Harness {
    pub(super) state: State,
    pub(super) now: UnixMs,
    /// Every message for each sidecar, in order.
    pub(super) sent: HashMap<String, Vec<ToSidecar>>,
    /// Each sidecar's current session, and its outbox's other end (kept open).
    pub(super) sessions: HashMap<String, (u64, mpsc::Receiver<ToSidecar>)>,
    /// The verdict counts written, in order: (model, kind, tier, passed, failed).
    pub(super) verdicts_written: Vec<(String, &'static str, Tier, u64, u64)>,
    /// Answers the core gave, by request, until the asker takes them.
    pub(super) answers: HashMap<RequestId, Answer>,
    pub(super) next_request: u64,
    /// What storage would hold: each task's last record, each workflow run's record and events.
    pub(super) stored: Stored,
}

#[derive(Default, Clone)]
pub(super) struct Stored {
    pub(super) tasks: std::collections::BTreeMap<TaskId, Task>,
    pub(super) runs: std::collections::BTreeMap<ulid::Ulid, crate::store::LoadedRun>,
    /// Each task's stored stdout.
    pub(super) outputs: std::collections::BTreeMap<TaskId, Vec<u8>>,
    /// The usage rows written, in order.
    pub(super) usage: Vec<(crate::usage::Row, crate::usage::Spend)>,
}

impl Stored {
    fn apply(&mut self, op: &crate::store::Op) {
        use crate::store::{LoadedRun, Op};
        match op {
            Op::PutTask(task) => drop(self.tasks.insert(task.id, Task::clone(task))),
            Op::PutOutput { id, stdout, .. } => drop(self.outputs.insert(*id, stdout.clone())),
            Op::PutUsage { row, spend } => self.usage.push((row.clone(), *spend)),
            Op::PutRun(run) => match self.runs.get_mut(&run.id) {
                Some(loaded) => loaded.run = (**run).clone(),
                None => drop(self.runs.insert(run.id, LoadedRun { run: (**run).clone(), events: Vec::new() })),
            },
            Op::PutRunEvent { run, seq, event } => {
                let events = &mut self.runs.get_mut(run).expect("a run's record is written before its events").events;
                let index = *seq as usize - 1;
                assert!(index <= events.len(), "run event {seq} written after {}", events.len());
                events.truncate(index);
                events.push((**event).clone());
            }
            _ => {}
        }
    }
}

/// What one event asked for, sorted: the answers went to the harness.
pub(super) struct Taken {
    pub(super) writes: Vec<(Vec<crate::store::Op>, AfterCommit)>,
    pub(super) sends: Vec<(String, ToSidecar)>,
    /// The last storage fault the state reported (`Some(None)`: storage works again).
    pub(super) fault: Option<Option<String>>,
}

impl Harness {
    pub(super) fn new() -> Harness {
        Harness::with(Config::default())
    }

    pub(super) fn with(config: Config) -> Harness {
        let state = State::new(config, fleet::Registry::default(), HashMap::new(), 7);
        Harness {
            state,
            now: T0,
            sent: HashMap::new(),
            sessions: HashMap::new(),
            verdicts_written: Vec::new(),
            answers: HashMap::new(),
            next_request: 1,
            stored: Stored::default(),
        }
    }

    /// A hub started again from what storage holds (no sidecar connected): its tasks and runs
    /// restored, as `Core::start` does; the outputs of tasks are those `outputs` gives.
    pub(super) fn restart(&self, outputs: impl Fn(TaskId) -> Vec<u8>) -> Harness {
        let mut hub = Harness::new();
        hub.now = self.now;
        hub.stored = self.stored.clone();
        let tasks = self.stored.tasks.values().cloned().map(crate::store::Loaded::from_task).collect();
        hub.state.restore(tasks, hub.now);
        let settled = hub.state.restore_runs(self.stored.runs.values().cloned().collect(), hub.now);
        let outputs = settled.into_iter().map(|id| (id, outputs(id))).collect();
        hub.state.steps_settled_at_start(outputs, hub.now);
        hub.event(Event::Tick);
        hub
    }

    /// Takes what the state asked for; answers are kept for their askers (one per request).
    pub(super) fn take(&mut self) -> Taken {
        let mut taken = Taken { writes: Vec::new(), sends: Vec::new(), fault: None };
        for action in self.state.take_actions() {
            match action {
                Action::Write(ops, after) => taken.writes.push((ops, after)),
                Action::Send(sidecar_id, message) => taken.sends.push((sidecar_id, message)),
                Action::Reply(id, answer) => {
                    assert!(self.answers.insert(id, answer).is_none(), "request {id:?} answered twice");
                }
                Action::Publish(_) | Action::Span(..) => {}
                Action::Fault(fault) => taken.fault = Some(fault),
            }
        }
        taken
    }

    /// Handles an event, then commits everything it wrote (and what the commits lead to) the way
    /// the writer would: durable first, then reported.
    pub(super) fn event(&mut self, event: Event) {
        self.state.handle(event, self.now);
        loop {
            let Taken { writes, sends, fault } = self.take();
            assert!(fault.is_none());
            for (sidecar_id, message) in sends {
                self.sent.entry(sidecar_id).or_default().push(message);
            }
            if writes.is_empty() {
                return;
            }
            let tickets = writes
                .into_iter()
                .map(|(ops, mut ticket)| {
                    for op in ops {
                        self.stored.apply(&op);
                        if let crate::store::Op::PutVerdicts { model, kind, tier, tally } = op {
                            self.verdicts_written.push((model, kind, tier, tally.passed, tally.failed));
                        }
                    }
                    // The writer thread answers the submitter once the log is synced.
                    if let Some((id, answer)) = ticket.take_early_answer() {
                        self.answers.insert(id, answer);
                    }
                    ticket
                })
                .collect();
            self.state.handle(Event::Committed { tickets, result: Ok(()) }, self.now);
        }
    }

    /// A request, answered within the event and the commits it leads to.
    pub(super) fn ask<T: Send + 'static>(&mut self, make: impl FnOnce(Reply<T>) -> Event) -> T {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.event(make(Reply::new(id)));
        let answer = self.answers.remove(&id).expect("the core answers within the event and its commits");
        *answer.downcast::<T>().expect("answered with the type asked for")
    }

    pub(super) fn submit(&mut self, spec: TaskSpec) -> TaskId {
        self.ask(|reply| Event::Submit { spec: Box::new(spec), reply }).expect("submitted").task.id
    }

    pub(super) fn task(&mut self, id: TaskId) -> Task {
        self.ask(|reply| Event::Get { id, reply }).expect("a known task")
    }

    pub(super) fn join(&mut self, sidecar_id: &str, slots: u32, running: Vec<RunningTask>) {
        let hello = Hello {
            sidecar_id: sidecar_id.to_owned(),
            hostname: "host".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            version: "test".into(),
            slots,
            capabilities: vec!["shell".into()],
            tags: Vec::new(),
            running,
            containment: String::new(),
            instance: 0,
            repo_allow: Vec::new(),
        };
        let (outbox, inbox) = mpsc::channel(1024);
        let (_, session) = self.ask(|reply| Event::Hello { hello, outbox, reply }).expect("joined");
        self.sessions.insert(sidecar_id.to_owned(), (session, inbox));
    }

    /// The sidecar runs LLM work as well as shell commands, as if it had said so at hello.
    pub(super) fn runs_llm(&mut self, sidecar_id: &str) {
        let capabilities = vec!["shell".to_owned(), "llm".to_owned()];
        self.state.sidecars.get_mut(sidecar_id).expect("a joined sidecar").hello.capabilities = capabilities.clone();
        self.state.placing.get_mut(sidecar_id).expect("a joined sidecar").capabilities = capabilities.iter().collect();
    }

    pub(super) fn leave(&mut self, sidecar_id: &str) {
        let (session, _) = self.sessions.remove(sidecar_id).expect("a joined sidecar");
        self.event(Event::SessionClosed { sidecar_id: sidecar_id.to_owned(), session });
    }

    pub(super) fn report(&mut self, sidecar_id: &str, message: FromSidecar) {
        let session = self.sessions[sidecar_id].0;
        self.event(Event::FromSidecar { sidecar_id: sidecar_id.to_owned(), session, message });
    }

    pub(super) fn finish(&mut self, sidecar_id: &str, task_id: TaskId, lease_generation: u64, code: i32) {
        let outcome = Outcome { exit: Exit::Code(code), duration_ms: 1, ..Outcome::empty() };
        self.report(sidecar_id, FromSidecar::Finished { task_id, lease_generation, outcome: Box::new(outcome) });
    }

    pub(super) fn tick_at(&mut self, at: UnixMs) {
        self.now = at;
        self.event(Event::Tick);
    }

    /// Assignments sent to a sidecar so far: (task, generation).
    pub(super) fn assigned(&self, sidecar_id: &str) -> Vec<(TaskId, u64)> {
        let sent = self.sent.get(sidecar_id).map(Vec::as_slice).unwrap_or_default();
        sent.iter()
            .filter_map(|m| match m {
                ToSidecar::Assign(a) => Some((a.task_id, a.lease_generation)),
                _ => None,
            })
            .collect()
    }

    pub(super) fn cancels(&self, sidecar_id: &str) -> Vec<(TaskId, u64)> {
        let sent = self.sent.get(sidecar_id).map(Vec::as_slice).unwrap_or_default();
        sent.iter()
            .filter_map(|m| match m {
                ToSidecar::Cancel { task_id, lease_generation, .. } => Some((*task_id, *lease_generation)),
                _ => None,
            })
            .collect()
    }
}
