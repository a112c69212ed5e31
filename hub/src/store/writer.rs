//! The one writer: a thread that owns redb's write transactions once the hub runs, and commits
//! in groups through the write-ahead log (see the `store` module for the invariant).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use redb::{Database, Durability};
use tokio::sync::mpsc;

use super::codec::{encode_ops, prepare};
use super::wal::{self, Wal};
use super::{Error, Op, Stats, Store, apply_prepared, checkpoint};

/// Most changes one commit takes; the rest wait for the next.
const MAX_BATCH: usize = 16_384;

/// How often the writer checkpoints redb even when the log has room. Frequent checkpoints keep
/// replay at start short and stop redb's bookkeeping for non-durable commits from growing
/// (measured: full cycles fell from 33k/s to 19k/s with 10 s between checkpoints); each costs
/// one `Immediate` commit (about 200 us), so ten a second cost about 0.2% of one core.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Log bytes after which the writer checkpoints regardless of time.
const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// How long the writer looks for more work before it parks (see `next_batch`).
const SPIN_BEFORE_PARKING: std::time::Duration = std::time::Duration::from_micros(50);

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
        let (tx, rx) = mpsc::unbounded_channel();
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
    tx: mpsc::UnboundedSender<Batch<T>>,
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
    mut rx: mpsc::UnboundedReceiver<Batch<T>>,
    mut on_durable: impl FnMut(&mut T),
    on_commit: &mut impl FnMut(Vec<T>, Result<(), Arc<Error>>),
) {
    let mut last_checkpoint = std::time::Instant::now();
    let mut lone = false;
    while let Some(first) = next_batch(&mut rx, lone) {
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
            Ok(()) => on_commit(tickets, Ok(())),
            Err(err) => {
                tracing::error!(error = %err, "commit failed");
                on_commit(tickets, Err(Arc::new(err)));
                continue;
            }
        }
        let due = last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL || wal.position() >= CHECKPOINT_BYTES;
        if due && wal.position() > 0 {
            match checkpoint(&db, &stats, wal.lsn()) {
                Ok(()) => wal.rewind(),
                Err(err) => tracing::error!(error = %err, "checkpoint failed"),
            }
            last_checkpoint = std::time::Instant::now();
        }
    }
    // Stopping: leave redb complete, so the next start has nothing to replay.
    if let Err(err) = checkpoint(&db, &stats, wal.lsn()) {
        tracing::error!(error = %err, "final checkpoint failed; the log will be replayed at the next start");
    }
}

/// The next change to commit. After a commit that held a single send (a lone submitter, not a
/// crowd), the writer looks for the next one for a short while before it parks: that submitter,
/// just answered, usually sends it within tens of microseconds, sooner than a parked thread
/// wakes up. After bigger commits it parks at once, leaving the cores to those producing work.
fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<Batch<T>>, spin: bool) -> Option<Batch<T>> {
    let spinning = std::time::Instant::now();
    while spin && spinning.elapsed() < SPIN_BEFORE_PARKING {
        match rx.try_recv() {
            Ok(batch) => return Some(batch),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    rx.blocking_recv()
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
    wal.append(&payload).map_err(wal_error)?;
    stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
    synced();
    apply_prepared(db, &prepared, Durability::None)?;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
