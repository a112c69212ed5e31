//! The one writer: a thread that owns redb's write transactions once the hub runs, and commits
//! in groups through the write-ahead log (see the `store` module for the invariant).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability};

use super::codec::{encode_ops, prepare};
use super::wal::{self, Wal};
use super::{Error, Op, Stats, Store, apply_prepared, checkpoint};

/// Most changes one commit takes; the rest wait for the next.
const MAX_BATCH: usize = 16_384;

/// How often the writer checkpoints redb even when the log has room. Frequent checkpoints keep
/// replay at start short and stop redb's bookkeeping for non-durable commits from growing
/// (measured: full cycles fell from 33k/s to 19k/s with 10 s between checkpoints); each costs
/// one `Immediate` commit (about 250 us), so ten a second cost about 0.3% of one core.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// A checkpoint that is due waits for this much quiet, so it does not sit in front of the next
/// change: a submitter answered a moment ago (or the watcher of a task that just ended) usually
/// sends its next one within a millisecond, and would otherwise wait out the whole checkpoint
/// (measured: a lone LLM submit took 1.1 ms beside a 0.11 ms fdatasync).
const QUIET_BEFORE_CHECKPOINT: Duration = Duration::from_millis(2);
/// Under load that never goes quiet, a checkpoint runs anyway once the oldest change it covers
/// is this old.
const CHECKPOINT_AT_THE_LATEST: Duration = Duration::from_millis(200);
/// Log bytes after which the writer checkpoints regardless of time.
const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// How long the writer looks for more work before it parks (see `next`).
const SPIN_BEFORE_PARKING: Duration = Duration::from_micros(50);

impl Store {
    /// Starts the writer thread. Both hooks run on that thread. `on_durable` sees each ticket as
    /// soon as the log record holding its change is synced, before the change reaches redb: an
    /// answer that needs nothing but durability can leave from there, without waiting for the
    /// apply or a hop through whoever owns the tickets. `on_commit` then gets the batch's
    /// tickets once the change is readable in redb, with the error if the commit failed (a
    /// failure after the sync leaves the change durable in the log, replayed at the next start).
    pub fn start_writer<T: Send + 'static>(
        &self,
        on_durable: impl FnMut(&mut T) + Send + 'static,
        mut on_commit: impl FnMut(Vec<T>, Result<(), Arc<Error>>) + Send + 'static,
    ) -> Writer<T> {
        let (tx, rx) = mpsc::channel();
        let (db, stats) = (self.db.clone(), self.stats.clone());
        let wal = self.wal.lock().expect("wal lock poisoned").take().expect("one writer per store");
        let backlog = Arc::new(AtomicUsize::new(0));
        let mut on_commit = {
            let backlog = backlog.clone();
            move |tickets: Vec<T>, result| {
                let n = tickets.len();
                on_commit(tickets, result);
                backlog.fetch_sub(n, Ordering::Relaxed);
            }
        };
        let thread = std::thread::Builder::new()
            .name("agentcom-store".into())
            .spawn(move || writer_loop(db, stats, wal, rx, on_durable, &mut on_commit))
            .expect("spawning the storage writer thread");
        Writer { tx, backlog, thread: Some(thread) }
    }
}

/// Changes sent together: they go into the same commit.
struct Batch<T> {
    ops: Vec<Op>,
    tickets: Vec<T>,
}

/// The handle to the writer thread. Dropping every clone of the sender (through [`Writer::close`])
/// lets the thread commit what is queued and exit.
///
/// The queue itself takes every change, so the core never blocks on it; it is bounded by
/// admission instead: the core reads [`Writer::backlog`] and refuses new submits while storage
/// is that far behind, and every other change is bounded by the work already admitted.
pub struct Writer<T> {
    tx: mpsc::Sender<Batch<T>>,
    /// Changes queued or being committed.
    backlog: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Writer<T> {
    /// Queues changes for the next commit; `ticket` comes back through `on_commit` once durable.
    pub fn write(&self, ops: Vec<Op>, ticket: T) -> Result<(), Error> {
        self.send(Batch { ops, tickets: vec![ticket] })
    }

    /// Queues several changes for the same commit, in order (a submit and the dispatch it
    /// allowed, so the assignment does not wait for a second commit).
    pub fn write_together(&self, writes: Vec<(Vec<Op>, T)>) -> Result<(), Error> {
        let mut batch = Batch { ops: Vec::new(), tickets: Vec::with_capacity(writes.len()) };
        for (ops, ticket) in writes {
            batch.ops.extend(ops);
            batch.tickets.push(ticket);
        }
        self.send(batch)
    }

    fn send(&self, batch: Batch<T>) -> Result<(), Error> {
        let n = batch.tickets.len();
        self.backlog.fetch_add(n, Ordering::Relaxed);
        self.tx.send(batch).map_err(|_| {
            self.backlog.fetch_sub(n, Ordering::Relaxed);
            Error::WriterGone
        })
    }

    /// Changes handed to the writer and not yet reported committed.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Commits what is queued and stops the thread. Blocks: call from a blocking context.
    pub fn close(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("storage writer thread panicked");
        }
    }
}

fn writer_loop<T>(
    db: Arc<Database>,
    stats: Arc<Stats>,
    mut wal: Wal,
    rx: mpsc::Receiver<Batch<T>>,
    mut on_durable: impl FnMut(&mut T),
    on_commit: &mut impl FnMut(Vec<T>, Result<(), Arc<Error>>),
) {
    // When the oldest change the log holds beyond the last checkpoint was committed.
    let mut dirty_since: Option<Instant> = None;
    // After a failed checkpoint the next waits an interval (one failing every commit would
    // only fill the log with errors).
    let mut not_before = Instant::now();
    let mut lone = false;
    loop {
        // A checkpoint is due once the oldest change it would cover is an interval old (or the
        // log is big). It waits for quiet, up to its latest; with nothing to checkpoint the
        // writer just waits for work.
        let now = Instant::now();
        let age = dirty_since.map(|since| now.saturating_duration_since(since));
        let overdue = now >= not_before
            && age.is_some_and(|age| age >= CHECKPOINT_AT_THE_LATEST || wal.position() >= CHECKPOINT_BYTES);
        let quiet_for = age.map(|age| {
            let due_in = CHECKPOINT_INTERVAL.saturating_sub(age).max(not_before.saturating_duration_since(now));
            due_in.max(QUIET_BEFORE_CHECKPOINT)
        });
        let first = match if overdue { Next::Quiet } else { next(&rx, lone, quiet_for) } {
            Next::Batch(batch) => batch,
            Next::Quiet => {
                match checkpoint(&db, &stats, wal.lsn()) {
                    Ok(()) => {
                        wal.rewind();
                        dirty_since = None;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "checkpoint failed; the log keeps the changes");
                        not_before = Instant::now() + CHECKPOINT_INTERVAL;
                    }
                }
                lone = false;
                continue;
            }
            Next::Closed => break,
        };
        let (mut ops, mut tickets) = (first.ops, first.tickets);
        let mut sent = 1;
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(batch) => {
                    ops.extend(batch.ops);
                    tickets.extend(batch.tickets);
                    sent += 1;
                }
                Err(_) => break,
            }
        }
        lone = sent == 1;
        let synced = || tickets.iter_mut().for_each(&mut on_durable);
        match commit_batch(&db, &stats, &mut wal, ops, synced) {
            Ok(()) => {
                // (A commit that checkpointed for room leaves the log holding only itself.)
                dirty_since.get_or_insert_with(Instant::now);
                on_commit(tickets, Ok(()));
            }
            Err(err) => {
                tracing::error!(error = %err, "commit failed");
                on_commit(tickets, Err(Arc::new(err)));
            }
        }
    }
    // Stopping: leave redb complete, so the next start has nothing to replay.
    if let Err(err) = checkpoint(&db, &stats, wal.lsn()) {
        tracing::error!(error = %err, "final checkpoint failed; the log will be replayed at the next start");
    }
}

/// What the writer does next.
enum Next<T> {
    /// Commit this (and whatever else is queued).
    Batch(Batch<T>),
    /// Nothing came for the while asked: checkpoint.
    Quiet,
    /// Every sender is gone.
    Closed,
}

/// The next change to commit, or quiet after `quiet_for`. After a commit that held a single
/// send (a lone submitter, not a crowd), the writer looks for the next one for a short while
/// before it parks: that submitter, just answered, usually sends it within tens of microseconds,
/// sooner than a parked thread wakes up. After bigger commits it parks at once, leaving the
/// cores to those producing work.
fn next<T>(rx: &mpsc::Receiver<Batch<T>>, spin: bool, quiet_for: Option<Duration>) -> Next<T> {
    let spinning = Instant::now();
    while spin && spinning.elapsed() < SPIN_BEFORE_PARKING {
        match rx.try_recv() {
            Ok(batch) => return Next::Batch(batch),
            Err(mpsc::TryRecvError::Disconnected) => return Next::Closed,
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    match quiet_for {
        None => rx.recv().map_or(Next::Closed, Next::Batch),
        Some(wait) => match rx.recv_timeout(wait) {
            Ok(batch) => Next::Batch(batch),
            Err(mpsc::RecvTimeoutError::Timeout) => Next::Quiet,
            Err(mpsc::RecvTimeoutError::Disconnected) => Next::Closed,
        },
    }
}

/// One group commit: the log record first (the durability point, after which `synced` runs),
/// then the same changes into redb without a sync, so readers see them before `on_commit`.
fn commit_batch(db: &Database, stats: &Stats, wal: &mut Wal, ops: Vec<Op>, synced: impl FnOnce()) -> Result<(), Error> {
    let prepared = prepare(ops);
    let payload = encode_ops(&prepared);
    if !wal.fits(payload.len()) {
        checkpoint(db, stats, wal.lsn())?;
        wal.rewind();
    }
    let wal_error = |err: wal::Error| Error::Io { path: PathBuf::from("write-ahead log"), message: err.to_string() };
    let started = std::time::Instant::now();
    wal.append(&payload).map_err(wal_error)?;
    stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
    if let Some(metrics) = stats.commit_metrics.get() {
        metrics.seconds.record(started.elapsed().as_secs_f64());
        metrics.changes.record(prepared.len() as f64);
    }
    synced();
    apply_prepared(db, &prepared, Durability::None)?;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
