//! A task's live feed: its latest snapshot and the output retained so far, for watchers.
//!
//! The core writes to a feed; any number of watchers read from it at their own pace. Each
//! watcher keeps a [`Cursor`] (bytes seen per stream, snapshot version seen), so a slow watcher
//! never makes the core wait or buffer, and a watcher that joins late still gets the retained
//! output from the start. Memory per feed is bounded by the task's output cap per stream (and
//! an agent's steps by [`MAX_STEPS`]).
//!
//! In detail:
//!
//! `feed`: a task's live view for watchers: latest snapshot plus retained output (bounded by the
//! task's output cap) and an agent's steps (at most 1,000).
//!
//! Each watcher reads at its own pace with a cursor of byte offsets, so slow watchers cost nothing
//! and late watchers get the output from the start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{AgentStep, MAX_STEPS, Stream, Task};

#[derive(Debug, Clone)]
pub enum FeedEvent {
    Snapshot(Arc<Task>),
    /// `offset` counts from the start of this attempt's output: a retried task starts again at 0.
    Output {
        attempt: u32,
        stream: Stream,
        offset: u64,
        data: Vec<u8>,
    },
    /// A step agent work took, the attempt's `number`th (from 0).
    Step {
        attempt: u32,
        number: usize,
        step: AgentStep,
    },
    /// The task's end cannot be stored now (storage fails): the stream ends with this, rather
    /// than waiting for an end nobody may be shown yet.
    Failed(String),
}

struct State {
    task: Arc<Task>,
    version: u64,
    /// The attempt whose output `output` holds.
    attempt: u32,
    output: [Vec<u8>; 2],
    steps: Vec<AgentStep>,
    cap: usize,
    finished: bool,
    /// Why the feed ends without the task's end (see [`Feed::fail`]).
    failed: Option<String>,
}

pub struct Feed {
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

/// What one watcher has already been given.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    attempt: u32,
    sent: [usize; 2],
    steps: usize,
    version: Option<u64>,
    done: bool,
}

impl Cursor {
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Most bytes handed to a watcher in one output event.
const MAX_EVENT_BYTES: usize = 64 * 1024;

impl Feed {
    pub fn new(task: Task) -> Arc<Feed> {
        let cap = task.spec.limits.max_output_bytes as usize;
        let feed = Arc::new(Feed {
            state: Mutex::new(State {
                attempt: task.attempt,
                task: Arc::new(task),
                version: 0,
                output: [Vec::new(), Vec::new()],
                steps: Vec::new(),
                cap,
                finished: false,
                failed: None,
            }),
            changed: watch::Sender::new(()),
        });
        let task = feed.snapshot();
        if task.state.is_terminal() {
            feed.finish(&task);
        }
        feed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("feed lock poisoned")
    }

    pub fn snapshot(&self) -> Task {
        Task::clone(&self.lock().task)
    }

    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Records a new snapshot of the task. A new attempt starts its output afresh.
    pub fn update(&self, task: &Task) {
        {
            let mut state = self.lock();
            if state.finished {
                return;
            }
            if task.attempt != state.attempt {
                state.attempt = task.attempt;
                state.output = [Vec::new(), Vec::new()];
                state.steps.clear();
            }
            state.task = Arc::new(task.clone());
            state.version += 1;
        }
        self.changed.send_replace(());
    }

    /// Appends output that starts at `offset` in its stream. Overlap with what is already held
    /// is dropped; a gap (a chunk lost on the way) is left for the final outcome to fill.
    pub fn append(&self, stream: Stream, offset: u64, data: &[u8]) {
        {
            let mut state = self.lock();
            let cap = state.cap;
            let held = &mut state.output[stream.index()];
            let (start, end) = (offset as usize, offset as usize + data.len());
            if start > held.len() || end <= held.len() || held.len() >= cap {
                return;
            }
            let fresh = &data[held.len() - start..];
            let room = cap - held.len();
            held.extend_from_slice(&fresh[..fresh.len().min(room)]);
        }
        self.changed.send_replace(());
    }

    /// A finished attempt's whole output, before its end is announced: fills what was lost on
    /// the way (output chunks are dropped when the link is busy), so the feed holds all of it.
    pub fn fill(&self, attempt: u32, stdout: &[u8], stderr: &[u8]) {
        {
            let mut state = self.lock();
            if state.finished || attempt != state.attempt {
                return;
            }
            let cap = state.cap;
            for (held, full) in state.output.iter_mut().zip([stdout, stderr]) {
                if full.len() > held.len() {
                    held.clear();
                    held.extend_from_slice(&full[..full.len().min(cap.max(held.len()))]);
                }
            }
        }
        self.changed.send_replace(());
    }

    /// Appends a step agent work took.
    pub fn step(&self, step: AgentStep) {
        {
            let mut state = self.lock();
            if state.finished || state.steps.len() >= MAX_STEPS {
                return;
            }
            state.steps.push(step);
        }
        self.changed.send_replace(());
    }

    /// The task reached a final state: its outcome's output is authoritative from here on.
    pub fn finish(&self, task: &Task) {
        {
            let mut state = self.lock();
            if task.attempt != state.attempt {
                state.attempt = task.attempt;
                state.output = [Vec::new(), Vec::new()];
                state.steps.clear();
            }
            if let Some(outcome) = &task.outcome {
                // The outcome holds at least what streamed live (same bytes, same cap), so a
                // watcher's cursor stays valid.
                for (held, full) in state.output.iter_mut().zip([&outcome.stdout, &outcome.stderr]) {
                    if full.len() >= held.len() {
                        held.clone_from(full);
                    }
                }
                // Steps lost on the way are in the outcome too.
                if outcome.steps.len() >= state.steps.len() {
                    state.steps.clone_from(&outcome.steps);
                }
            }
            state.task = Arc::new(task.clone());
            state.version += 1;
            state.finished = true;
        }
        self.changed.send_replace(());
    }

    /// The task's result cannot be stored now: its watchers are told why and their streams
    /// end. (The task ends later, once storage works again and the result is stored.)
    pub fn fail(&self, reason: String) {
        self.lock().failed = Some(reason);
        self.changed.send_replace(());
    }

    /// What `cursor` has not seen yet: new output first, then the snapshot if it changed (the
    /// first read always includes one). Marks the cursor done once the final snapshot is read.
    pub fn read(&self, cursor: &mut Cursor) -> Vec<FeedEvent> {
        let state = self.lock();
        let mut events = Vec::new();
        if cursor.version.is_none() && !state.finished {
            events.push(FeedEvent::Snapshot(state.task.clone()));
            cursor.version = Some(state.version);
        }
        if cursor.attempt != state.attempt {
            cursor.attempt = state.attempt;
            cursor.sent = [0, 0];
            cursor.steps = 0;
        }
        for (number, step) in state.steps.iter().enumerate().skip(cursor.steps) {
            events.push(FeedEvent::Step { attempt: state.attempt, number, step: step.clone() });
        }
        cursor.steps = cursor.steps.max(state.steps.len());
        for stream in [Stream::Stdout, Stream::Stderr] {
            let held = &state.output[stream.index()];
            let sent = &mut cursor.sent[stream.index()];
            while *sent < held.len() {
                let end = held.len().min(*sent + MAX_EVENT_BYTES);
                events.push(FeedEvent::Output {
                    attempt: state.attempt,
                    stream,
                    offset: *sent as u64,
                    data: held[*sent..end].to_vec(),
                });
                *sent = end;
            }
        }
        if cursor.version != Some(state.version) {
            events.push(FeedEvent::Snapshot(state.task.clone()));
            cursor.version = Some(state.version);
        }
        if let Some(reason) = &state.failed {
            events.push(FeedEvent::Failed(reason.clone()));
            cursor.done = true;
        }
        if state.finished {
            cursor.done = true;
        }
        events
    }
}

/// A watcher's view of a feed as a stream: everything retained so far, then changes as they
/// come, ending after the final snapshot or when `stop` fires.
pub fn events(
    feed: Arc<Feed>,
    stop: CancellationToken,
) -> impl futures_util::Stream<Item = FeedEvent> + Send + 'static {
    let changed = feed.subscribe();
    let state = (feed, Cursor::default(), changed, VecDeque::new(), stop);
    futures_util::stream::unfold(state, |(feed, mut cursor, mut changed, mut pending, stop)| async move {
        loop {
            if let Some(event) = pending.pop_front() {
                return Some((event, (feed, cursor, changed, pending, stop)));
            }
            if cursor.is_done() {
                return None;
            }
            changed.mark_unchanged();
            pending.extend(feed.read(&mut cursor));
            if pending.is_empty() {
                tokio::select! {
                    result = changed.changed() => if result.is_err() { return None },
                    _ = stop.cancelled() => return None,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Exit, Outcome, SpecDefaults, TaskId, TaskSpec, TaskState};

    fn task() -> Task {
        let mut spec = TaskSpec::shell(vec!["x".into()], &SpecDefaults::default());
        spec.limits.max_output_bytes = 10;
        Task::new(TaskId::new(1), spec, 1)
    }

    fn output(events: &[FeedEvent]) -> Vec<(Stream, u64, Vec<u8>)> {
        events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::Output { stream, offset, data, .. } => Some((*stream, *offset, data.clone())),
                FeedEvent::Snapshot(_) | FeedEvent::Step { .. } | FeedEvent::Failed(_) => None,
            })
            .collect()
    }

    #[test]
    fn watchers_get_each_byte_once_up_to_the_cap() {
        let feed = Feed::new(task());
        let mut early = Cursor::default();
        assert!(matches!(feed.read(&mut early)[..], [FeedEvent::Snapshot(_)]));
        feed.append(Stream::Stdout, 0, b"hello");
        feed.append(Stream::Stdout, 3, b"lo wor"); // overlaps by two bytes
        feed.append(Stream::Stdout, 50, b"gap"); // ignored
        assert_eq!(output(&feed.read(&mut early)), vec![(Stream::Stdout, 0, b"hello wor".to_vec())]);
        feed.append(Stream::Stdout, 9, b"ld and more");
        assert_eq!(output(&feed.read(&mut early)), vec![(Stream::Stdout, 9, b"l".to_vec())]);

        let mut late = Cursor::default();
        let events = feed.read(&mut late);
        assert!(matches!(events[0], FeedEvent::Snapshot(_)));
        assert_eq!(output(&events), vec![(Stream::Stdout, 0, b"hello worl".to_vec())]);
    }

    #[test]
    fn a_new_attempt_starts_its_output_afresh() {
        let mut first = task();
        first.attempt = 1;
        let feed = Feed::new(first.clone());
        let mut cursor = Cursor::default();
        feed.append(Stream::Stdout, 0, b"first");
        feed.read(&mut cursor);
        let mut second = first;
        second.attempt = 2;
        feed.update(&second);
        feed.append(Stream::Stdout, 0, b"again");
        let events = feed.read(&mut cursor);
        assert_eq!(output(&events), vec![(Stream::Stdout, 0, b"again".to_vec())]);
        assert!(events.iter().any(|e| matches!(e, FeedEvent::Output { attempt: 2, .. })));
    }

    #[test]
    fn finishing_fills_gaps_from_the_outcome_and_ends_with_the_final_snapshot() {
        let feed = Feed::new(task());
        let mut cursor = Cursor::default();
        feed.read(&mut cursor);
        feed.append(Stream::Stderr, 0, b"ab");
        let mut done = task();
        done.set_state(TaskState::Succeeded, "", 5);
        done.outcome = Some(Outcome {
            exit: Exit::Code(0),
            duration_ms: 1,
            stdout: b"out".to_vec(),
            stderr: b"abc".to_vec(),
            stdout_total_bytes: 3,
            stderr_total_bytes: 3,
            timed_out: false,
            error: None,
            usage: None,
            ..Outcome::empty()
        });
        feed.finish(&done);
        let events = feed.read(&mut cursor);
        assert_eq!(output(&events), vec![(Stream::Stdout, 0, b"out".to_vec()), (Stream::Stderr, 0, b"abc".to_vec())]);
        assert!(matches!(events.last(), Some(FeedEvent::Snapshot(t)) if t.state == TaskState::Succeeded));
        assert!(cursor.is_done());
        assert!(feed.read(&mut cursor).is_empty());
    }

    #[test]
    fn steps_reach_each_watcher_once_and_the_outcome_fills_those_lost() {
        let step = |tool: &str| AgentStep { round: 1, tool: tool.into(), ok: true, ..AgentStep::default() };
        let steps = |events: &[FeedEvent]| -> Vec<(usize, String)> {
            events
                .iter()
                .filter_map(|e| match e {
                    FeedEvent::Step { number, step, .. } => Some((*number, step.tool.clone())),
                    _ => None,
                })
                .collect()
        };
        let feed = Feed::new(task());
        let mut early = Cursor::default();
        feed.step(step("read_file"));
        assert_eq!(steps(&feed.read(&mut early)), vec![(0, "read_file".to_owned())]);
        feed.step(step("write_file"));
        assert_eq!(steps(&feed.read(&mut early)), vec![(1, "write_file".to_owned())]);
        assert!(steps(&feed.read(&mut early)).is_empty());
        let mut late = Cursor::default();
        assert_eq!(steps(&feed.read(&mut late)).len(), 2);
        // The third step never arrived live; the outcome has it.
        let mut done = task();
        done.set_state(TaskState::Succeeded, "", 5);
        done.outcome = Some(Outcome {
            steps: vec![step("read_file"), step("write_file"), step("run_command")],
            ..Outcome::empty()
        });
        feed.finish(&done);
        assert_eq!(steps(&feed.read(&mut early)), vec![(2, "run_command".to_owned())]);
    }
}
