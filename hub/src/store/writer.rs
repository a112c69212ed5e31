//! The one writer: a thread that owns redb's write transactions once the hub runs, and commits
//! in groups through the write-ahead log (see the `store` module for the invariant).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability};

use super::codec::{encode_ops, encoded_len, prepare};
use super::file::Slot;
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
/// How often a writer whose storage failed tries to recover.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// The free space recovery waits for: room for a checkpoint and the next commits.
const RECOVERY_FREE_BYTES: u64 = 2 * 1024 * 1024;
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
        let wal = self.wal.lock().expect("wal lock poisoned").take().expect("one writer per store");
        let free = self.stats.free_bytes.load(Ordering::Relaxed);
        let largest = 2 * crate::domain::limits::MAX_OUTPUT_BYTES;
        if free > 0 && free < largest {
            tracing::warn!(
                free = %super::human_bytes(free),
                "the database's disk has less room than one task's output may take (two streams of 64 MiB); submits whose caps do not fit are refused"
            );
        }
        let db = Some(self.db().expect("the database is open when the writer starts"));
        let storage = Storage {
            slot: self.db.clone(),
            db,
            path: self.path.clone(),
            blobs: self.blobs.clone(),
            stats: self.stats.clone(),
            wal,
        };
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
            .spawn(move || writer_loop(storage, rx, on_durable, &mut on_commit))
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

/// What the writer owns: the database it commits to (taken from the store's slot, which it may
/// fill again after an I/O error), and the log.
struct Storage {
    slot: Arc<Slot>,
    /// `None` only while recovery has closed it and not yet opened it again.
    db: Option<Arc<Database>>,
    path: PathBuf,
    blobs: super::blobs::Blobs,
    stats: Arc<Stats>,
    wal: Wal,
}

impl Storage {
    fn db(&self) -> &Database {
        self.db.as_deref().expect("the writer commits only while the database is open")
    }

    fn dir(&self) -> &Path {
        super::file::dir_of(&self.path)
    }

    /// The failure as the hub reports it: what failed, and the space left on the disk.
    fn fault(&self, err: Error) -> Arc<Error> {
        let free_bytes = super::free_bytes(self.dir()).unwrap_or(0);
        Arc::new(Error::Fault { detail: format!("storage failed: {err}"), dir: self.dir().to_owned(), free_bytes })
    }

    /// Closes the database (readers hold it for a moment at most) and opens it again: after an
    /// I/O error redb refuses everything, reads included, until then. Opened again it serves
    /// reads of what its last checkpoint holds; the log holds the rest.
    fn reopen(&mut self) -> Result<Arc<Database>, Error> {
        drop(self.slot.current.write().expect("database slot poisoned").take());
        if let Some(db) = self.db.take() {
            let waited = Instant::now();
            while Arc::strong_count(&db) > 1 {
                if waited.elapsed() > Duration::from_secs(1) {
                    *self.slot.current.write().expect("database slot poisoned") = Some(db.clone());
                    self.db = Some(db);
                    return Err(Error::Recovering);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let reopened = super::file::open_database(&self.path, self.slot.syncs.as_ref())?
            .map_err(|err| Error::Open { path: self.path.clone(), source: err.into() })?;
        let db = Arc::new(reopened);
        self.db = Some(db.clone());
        *self.slot.current.write().expect("database slot poisoned") = Some(db.clone());
        Ok(db)
    }

    /// After a failure: once the disk has room again, opens the database afresh, gives it what
    /// the log holds beyond its last checkpoint, and checkpoints. The log itself was never
    /// lost: it is preallocated.
    fn recover(&mut self) -> Result<(), Error> {
        let free = super::free_bytes(self.dir()).map_err(Error::io(self.dir()))?;
        if free < RECOVERY_FREE_BYTES {
            return Err(Error::Fault { detail: "still no room".into(), dir: self.dir().to_owned(), free_bytes: free });
        }
        let db = self.reopen()?;
        let log = PathBuf::from("write-ahead log");
        let wal_error = |err: wal::Error| Error::Io { path: log.clone(), message: err.to_string() };
        let records = self.wal.records_after(super::file::checkpoint_lsn(&db)?).map_err(wal_error)?;
        super::file::replay(&db, &records, &log)?;
        checkpoint(&db, &self.stats, self.wal.lsn())?;
        self.wal.rewind();
        Ok(())
    }

    /// A commit or checkpoint failed: from now on changes are refused until [`Storage::recover`]
    /// succeeds; the database is opened again at once so that reads go on meanwhile.
    fn failed(&mut self, err: Error) -> Arc<Error> {
        let fault = self.fault(err);
        tracing::error!(error = %fault, "storage failed; refusing changes until it recovers");
        if let Err(err) = self.reopen() {
            tracing::warn!(error = %err, "could not open the database again for reads; retrying with recovery");
        }
        fault
    }
}

fn writer_loop<T>(
    mut storage: Storage,
    rx: mpsc::Receiver<Batch<T>>,
    mut on_durable: impl FnMut(&mut T),
    on_commit: &mut impl FnMut(Vec<T>, Result<(), Arc<Error>>),
) {
    // When the oldest change the log holds beyond the last checkpoint was committed.
    let mut dirty_since: Option<Instant> = None;
    let mut lone = false;
    // Set after a failed commit or checkpoint: until storage recovers, every change is refused
    // at once (its ticket comes back with this error) and recovery is tried once a second. An
    // empty report then tells the owner: with the error when the fault begins, `Ok` when it ends.
    let mut fault: Option<Arc<Error>> = None;
    loop {
        if let Some(err) = &fault {
            match rx.recv_timeout(RECOVERY_INTERVAL) {
                Ok(batch) => {
                    let mut tickets = batch.tickets;
                    while let Ok(more) = rx.try_recv() {
                        tickets.extend(more.tickets);
                    }
                    on_commit(tickets, Err(err.clone()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => match storage.recover() {
                    Ok(()) => {
                        tracing::info!("storage works again; taking changes");
                        fault = None;
                        dirty_since = None;
                        on_commit(Vec::new(), Ok(()));
                    }
                    Err(err) => tracing::debug!(error = %err, "storage not recovered yet"),
                },
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        // A checkpoint is due once the oldest change it would cover is an interval old (or the
        // log is big). It waits for quiet, up to its latest; with nothing to checkpoint the
        // writer just waits for work.
        let now = Instant::now();
        let age = dirty_since.map(|since| now.saturating_duration_since(since));
        let overdue =
            age.is_some_and(|age| age >= CHECKPOINT_AT_THE_LATEST || storage.wal.position() >= CHECKPOINT_BYTES);
        let quiet_for = age.map(|age| CHECKPOINT_INTERVAL.saturating_sub(age).max(QUIET_BEFORE_CHECKPOINT));
        let first = match if overdue { Next::Quiet } else { next(&rx, lone, quiet_for) } {
            Next::Batch(batch) => batch,
            Next::Quiet => {
                match checkpoint(storage.db(), &storage.stats, storage.wal.lsn()) {
                    Ok(()) => {
                        storage.wal.rewind();
                        dirty_since = None;
                        if let Ok(free) = super::free_bytes(storage.dir()) {
                            storage.stats.free_bytes.store(free, Ordering::Relaxed);
                        }
                    }
                    Err(err) => {
                        // The log keeps the changes; redb takes none until it is opened again.
                        let err = storage.failed(err);
                        on_commit(Vec::new(), Err(err.clone()));
                        fault = Some(err);
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
        let mut durable = false;
        let synced = || {
            durable = true;
            tickets.iter_mut().for_each(&mut on_durable)
        };
        let committed = commit_batch(&mut storage, ops, synced);
        match committed {
            Ok(()) => {
                // (A commit that checkpointed for room leaves the log holding only itself.)
                dirty_since.get_or_insert_with(Instant::now);
                on_commit(tickets, Ok(()));
            }
            Err(err) => {
                let err = storage.failed(err);
                if durable {
                    // In the log, synced: it is durable, and recovery gives it to redb.
                    dirty_since.get_or_insert_with(Instant::now);
                    on_commit(tickets, Ok(()));
                    on_commit(Vec::new(), Err(err.clone()));
                } else {
                    on_commit(tickets, Err(err.clone()));
                }
                fault = Some(err);
            }
        }
    }
    // Stopping: leave redb complete, so the next start has nothing to replay.
    if fault.is_none()
        && let Err(err) = checkpoint(storage.db(), &storage.stats, storage.wal.lsn())
    {
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
///
/// A batch larger than the whole log (a result with much output) goes straight into redb in one
/// `Immediate` commit instead, after a checkpoint that leaves the log empty: that commit is then
/// its durability point. Nothing about a change's size decides whether it can be stored.
fn commit_batch(storage: &mut Storage, ops: Vec<Op>, synced: impl FnOnce()) -> Result<(), Error> {
    let db = &*storage.db.clone().expect("the writer commits only while the database is open");
    let Storage { stats, wal, blobs, .. } = storage;
    let mut prepared = prepare(ops);
    // Large outputs go to files first: the log record then only names them.
    blobs.take_large(&mut prepared).map_err(Error::io(blobs.dir()))?;
    let len = encoded_len(&prepared);
    if !wal.fits(len) {
        checkpoint(db, stats, wal.lsn())?;
        wal.rewind();
    }
    let started = std::time::Instant::now();
    let record = |stats: &Stats| {
        if let Some(metrics) = stats.commit_metrics.get() {
            metrics.seconds.record(started.elapsed().as_secs_f64());
            metrics.changes.record(prepared.len() as f64);
        }
    };
    if !wal.fits(len) {
        apply_prepared(db, &prepared, Durability::Immediate)?;
        stats.direct_commits.fetch_add(1, Ordering::Relaxed);
        record(stats);
        synced();
        blobs.committed(&prepared);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let payload = encode_ops(&prepared);
    let wal_error = |err: wal::Error| Error::Io { path: PathBuf::from("write-ahead log"), message: err.to_string() };
    wal.append(&payload).map_err(wal_error)?;
    drop(payload);
    stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
    record(stats);
    synced();
    apply_prepared(db, &prepared, Durability::None)?;
    blobs.committed(&prepared);
    stats.commits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
