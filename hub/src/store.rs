//! Durable storage in redb, and the one writer that owns its write transactions.
//!
//! **Architecture Invariant:** only the writer thread started by [`Store::start_writer`] opens
//! write transactions once the hub runs. It drains every change queued since its last commit
//! into one batch, writes it as one record to the write-ahead log and syncs it (one fsync for the
//! batch: group commit), and only then hands the batch's tickets back, so nobody is answered
//! before the sync holding their change returns. The same changes then go into redb without a
//! sync; a periodic checkpoint makes redb durable on its own.
//!
//! Records are the wire contract's `v1::Task`, encoded with prost: compact, and it evolves the
//! way the contract does. redb's API is blocking, so everything here runs off the async workers.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use agentcom_proto::v1 as pb;
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::mpsc;

use crate::domain::{Task, TaskId};
use crate::fleet::{Cordon, Endpoint, Registry};
use crate::wal::{self, Wal};

/// Task id (a ULID as u128, so keys sort by age) -> encoded `v1::Task`.
const TASKS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("tasks");
/// SHA-256 of a token, hex -> its role.
const TOKENS: TableDefinition<'_, &str, &str> = TableDefinition::new("tokens");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Durable fleet settings, JSON by key: `cordon/{sidecar}`, `endpoint/{id}`.
const FLEET: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("fleet");

const SCHEMA_VERSION: u64 = 1;
/// Keys in the `fleet` table.
const CORDON_PREFIX: &str = "cordon/";
const ENDPOINT_PREFIX: &str = "endpoint/";
/// META key: the last write-ahead log record that redb's last durable commit covers.
const CHECKPOINT_LSN: &str = "checkpoint_lsn";
/// Most changes one commit takes; the rest wait for the next.
const MAX_BATCH: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("database {path} is already in use by another process")]
    InUse { path: PathBuf },
    #[error("database {path} has schema version {found}, this hub reads version {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: u64 },
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("stored task {key:032x} is unreadable: {message}")]
    Corrupt { key: u128, message: String },
    #[error("the storage writer has stopped")]
    WriterGone,
    #[error("database {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |err| Error::Io { path: path.to_owned(), message: err.to_string() }
    }

    /// The database cannot be trusted: its content is damaged, not merely unreachable.
    pub fn is_damage(&self) -> bool {
        matches!(self, Error::Damaged { .. } | Error::Corrupt { .. } | Error::Schema { .. })
    }
}

fn redb_err(err: impl Into<redb::Error>) -> Error {
    Error::Redb(err.into())
}

/// A change the writer applies.
#[derive(Debug)]
pub enum Op {
    PutTask(Box<Task>),
    DeleteTask(TaskId),
    PutToken { hash: String, role: String },
    PutCordon { sidecar_id: String, cordon: Cordon },
    DeleteCordon { sidecar_id: String },
    PutEndpoint(Box<Endpoint>),
    DeleteEndpoint { id: String },
}

/// The durable fleet settings: the LLM registry and the cordons.
#[derive(Debug, Default)]
pub struct Fleet {
    pub registry: Registry,
    pub cordons: HashMap<String, Cordon>,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    stats: Arc<Stats>,
    /// The write-ahead log, until the writer thread takes it.
    wal: Arc<std::sync::Mutex<Option<Wal>>>,
}

/// The write-ahead log beside a database file: its full name plus `.wal`.
pub fn wal_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

/// How often the writer checkpoints redb even when the log has room. Frequent checkpoints keep
/// replay at start short and stop redb's bookkeeping for non-durable commits from growing
/// (measured: full cycles fell from 33k/s to 19k/s with 10 s between checkpoints); each costs
/// one `Immediate` commit (about 200 us), so ten a second cost about 0.2% of one core.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Log bytes after which the writer checkpoints regardless of time.
const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// How long the writer looks for more work before it parks (see `next_batch`).
const SPIN_BEFORE_PARKING: std::time::Duration = std::time::Duration::from_micros(50);

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// `sync_data` calls (fdatasync) made by redb's storage backend, when opened with
    /// [`Store::open_counting_syncs`]; 0 otherwise.
    pub syncs: Arc<AtomicU64>,
    /// `fdatasync`s of the write-ahead log: one per group commit.
    pub wal_syncs: AtomicU64,
    /// Checkpoints: `Immediate` redb commits that make the log's changes durable in redb.
    pub checkpoints: AtomicU64,
}

/// redb's file backend, counting the syncs redb asks for. Everything else is forwarded.
#[derive(Debug)]
struct CountingBackend {
    inner: redb::backends::FileBackend,
    syncs: Arc<AtomicU64>,
}

impl redb::StorageBackend for CountingBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

impl Store {
    /// Opens or creates the database at `path`, checks its integrity and its schema version.
    ///
    /// redb recovers from a crash by itself while opening. A file that then fails the integrity
    /// check is refused, also when redb could repair it, since a repair may have dropped data:
    /// the hub must never start with part of its queue silently gone.
    pub fn open(path: &Path) -> Result<Store, Error> {
        Store::open_with(path, None)
    }

    /// Like [`Store::open`], counting the storage syncs in [`Stats::syncs`] (for benchmarks).
    pub fn open_counting_syncs(path: &Path) -> Result<Store, Error> {
        Store::open_with(path, Some(Arc::new(AtomicU64::new(0))))
    }

    fn open_with(path: &Path, syncs: Option<Arc<AtomicU64>>) -> Result<Store, Error> {
        let damaged = |detail: String| Error::Damaged { path: path.to_owned(), detail };
        // redb can panic on some damaged files (an `unreachable!` in a page walk) instead of
        // returning `Corrupted`; either way the file is damaged and the answer is the same.
        let panicked = |payload: Box<dyn std::any::Any + Send>| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            damaged(format!("redb could not read it ({what})"))
        };
        let opened = std::panic::catch_unwind(|| match &syncs {
            None => Ok::<_, Error>(Database::create(path)),
            Some(syncs) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(Error::io(path))?;
                let inner = redb::backends::FileBackend::new(file)
                    .map_err(|err| Error::Open { path: path.to_owned(), source: err.into() })?;
                Ok(Database::builder().create_with_backend(CountingBackend { inner, syncs: syncs.clone() }))
            }
        })
        .map_err(panicked)??;
        let mut db = opened.map_err(|err| match err {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse { path: path.to_owned() },
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => damaged(detail),
            other => Error::Open { path: path.to_owned(), source: other.into() },
        })?;
        let checked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity())).map_err(panicked)?;
        match checked {
            Ok(true) => {}
            Ok(false) => {
                return Err(damaged(
                    "it failed redb's integrity check (redb repaired the file, but data may be missing)".into(),
                ));
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail))) => return Err(damaged(detail)),
            Err(err) => return Err(Error::Open { path: path.to_owned(), source: err.into() }),
        }
        let stats = Arc::new(Stats { syncs: syncs.unwrap_or_default(), ..Stats::default() });
        let mut store =
            Store { db: Arc::new(db), path: path.to_owned(), stats, wal: Arc::new(std::sync::Mutex::new(None)) };
        store.init()?;
        store.replay_wal()?;
        Ok(store)
    }

    fn init(&self) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            let found = meta.get("schema_version").map_err(redb_err)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(redb_err)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(Error::Schema { path: self.path.clone(), found }),
            }
            txn.open_table(TASKS).map_err(redb_err)?;
            txn.open_table(TOKENS).map_err(redb_err)?;
            txn.open_table(FLEET).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;
        Ok(())
    }

    /// Applies what the log holds beyond redb's last checkpoint, then checkpoints, so that redb
    /// alone has everything acknowledged before the last stop or crash.
    fn replay_wal(&mut self) -> Result<(), Error> {
        let checkpoint_lsn = {
            let txn = self.db.begin_read().map_err(redb_err)?;
            let meta = txn.open_table(META).map_err(redb_err)?;
            meta.get(CHECKPOINT_LSN).map_err(redb_err)?.map(|v| v.value()).unwrap_or(0)
        };
        let wal_path = wal_path(&self.path);
        let (wal, records) = Wal::open(&wal_path, wal::DEFAULT_CAPACITY, checkpoint_lsn).map_err(|err| match err {
            wal::Error::Damaged { lsn, .. } => Error::Damaged {
                path: wal_path.clone(),
                detail: format!("log record {lsn} is damaged while later records are whole"),
            },
            other => Error::Io { path: wal_path.clone(), message: other.to_string() },
        })?;
        if !records.is_empty() {
            let (first, last) = (records[0].lsn, records[records.len() - 1].lsn);
            let mut prepared = Vec::new();
            for record in &records {
                prepared.extend(decode_ops(&record.payload).ok_or_else(|| Error::Damaged {
                    path: wal_path.clone(),
                    detail: format!("log record {} does not decode", record.lsn),
                })?);
            }
            apply_prepared(&self.db, &prepared, Durability::None)?;
            tracing::info!(first, last, records = records.len(), "replayed the write-ahead log");
        }
        checkpoint(&self.db, &self.stats, wal.lsn())?;
        *self.wal.lock().expect("wal lock poisoned") = Some(wal);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Every stored task, oldest first. A record that does not decode stops the load: the hub
    /// must never start with part of its queue silently missing. Records are copied out of one
    /// read transaction and decoded on every core.
    /// Boxed, because a task record is large and a million of them should move as pointers.
    #[allow(clippy::vec_box)] // Reason: as above; the core keeps these boxes.
    pub fn load_tasks(&self) -> Result<Vec<Box<Task>>, Error> {
        let reading = std::time::Instant::now();
        let raw: Vec<(u128, Vec<u8>)> = {
            let txn = self.db.begin_read().map_err(redb_err)?;
            let table = txn.open_table(TASKS).map_err(redb_err)?;
            let mut raw = Vec::with_capacity(table.len().map_err(redb_err)? as usize);
            for entry in table.iter().map_err(redb_err)? {
                let (key, value) = entry.map_err(redb_err)?;
                raw.push((key.value(), value.value().to_vec()));
            }
            raw
        };
        let decode = |chunk: &[(u128, Vec<u8>)]| -> Result<Vec<Box<Task>>, Error> {
            chunk
                .iter()
                .map(|(key, bytes)| {
                    let record = pb::Task::decode(bytes.as_slice())
                        .map_err(|err| Error::Corrupt { key: *key, message: err.to_string() })?;
                    agentcom_types::wire::task_from_pb(record)
                        .map(Box::new)
                        .map_err(|err| Error::Corrupt { key: *key, message: err.to_string() })
                })
                .collect()
        };
        tracing::debug!(records = raw.len(), read_ms = reading.elapsed().as_millis() as u64, "read stored tasks");
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if raw.len() < 10_000 || threads == 1 {
            return decode(&raw);
        }
        let chunk = raw.len().div_ceil(threads);
        let decoded: Vec<Result<Vec<Box<Task>>, Error>> = std::thread::scope(|scope| {
            let workers: Vec<_> = raw.chunks(chunk).map(|part| scope.spawn(move || decode(part))).collect();
            workers.into_iter().map(|w| w.join().expect("a decoding thread panicked")).collect()
        });
        let mut tasks = Vec::with_capacity(raw.len());
        for part in decoded {
            tasks.extend(part?);
        }
        Ok(tasks)
    }

    /// One stored task. Blocking: call from a blocking context.
    pub fn get_task(&self, id: TaskId) -> Result<Option<Task>, Error> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let table = txn.open_table(TASKS).map_err(redb_err)?;
        let key = u128::from(id.0);
        let Some(value) = table.get(key).map_err(redb_err)? else { return Ok(None) };
        let record = pb::Task::decode(value.value()).map_err(|err| Error::Corrupt { key, message: err.to_string() })?;
        agentcom_types::wire::task_from_pb(record)
            .map(Some)
            .map_err(|err| Error::Corrupt { key, message: err.to_string() })
    }

    /// Token hashes and their roles.
    pub fn load_tokens(&self) -> Result<Vec<(String, String)>, Error> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let table = txn.open_table(TOKENS).map_err(redb_err)?;
        table
            .iter()
            .map_err(redb_err)?
            .map(|entry| {
                let (hash, role) = entry.map_err(redb_err)?;
                Ok((hash.value().to_owned(), role.value().to_owned()))
            })
            .collect()
    }

    /// The registry and the cordons, as stored. A record that does not decode is skipped with a
    /// warning naming it: these are settings an operator can redo, and the queue matters more.
    pub fn load_fleet(&self) -> Result<Fleet, Error> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let table = txn.open_table(FLEET).map_err(redb_err)?;
        let mut fleet = Fleet::default();
        for entry in table.iter().map_err(redb_err)? {
            let (key, value) = entry.map_err(redb_err)?;
            let (key, value) = (key.value(), value.value());
            if let Some(sidecar_id) = key.strip_prefix(CORDON_PREFIX) {
                match serde_json::from_slice::<Cordon>(value) {
                    Ok(cordon) => drop(fleet.cordons.insert(sidecar_id.to_owned(), cordon)),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored cordon that does not decode"),
                }
            } else if key.starts_with(ENDPOINT_PREFIX) {
                match serde_json::from_slice::<Endpoint>(value) {
                    Ok(endpoint) => drop(fleet.registry.put(endpoint)),
                    Err(err) => tracing::warn!(key, error = %err, "skipped a stored endpoint that does not decode"),
                }
            } else {
                tracing::warn!(key, "skipped an unknown fleet setting");
            }
        }
        Ok(fleet)
    }

    /// Writes a consistent copy of the whole database to `dest` (through `dest.partial`, renamed
    /// once durable) and returns how many tasks it holds. Runs beside the writer. Blocking.
    pub fn backup_to(&self, dest: &Path) -> Result<u64, Error> {
        let partial = dest.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        let snapshot = self.db.begin_read().map_err(redb_err)?;
        let copy = Database::create(&partial).map_err(redb_err)?;
        let txn = copy.begin_write().map_err(redb_err)?;
        let tasks = copy_table(&snapshot, &txn, TASKS)?;
        copy_table(&snapshot, &txn, TOKENS)?;
        copy_table(&snapshot, &txn, META)?;
        copy_table(&snapshot, &txn, FLEET)?;
        txn.commit().map_err(redb_err)?;
        drop(copy);
        std::fs::rename(&partial, dest).map_err(Error::io(dest))?;
        if let Some(dir) = dest.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(tasks)
    }

    /// Applies changes in one durable transaction. For use before the writer starts (setup,
    /// tools); once it runs, changes go through it.
    pub fn apply(&self, ops: Vec<Op>) -> Result<(), Error> {
        apply_prepared(&self.db, &prepare(ops), Durability::Immediate)?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

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

struct Batch<T> {
    ops: Vec<Op>,
    ticket: T,
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
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Batch { ops, ticket }).map_err(|_| {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
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
        let mut ops = first.ops;
        let mut tickets = vec![first.ticket];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(batch) => {
                    ops.extend(batch.ops);
                    tickets.push(batch.ticket);
                }
                Err(_) => break,
            }
        }
        lone = tickets.len() == 1;
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

/// The next change to commit. After a commit that held a single change (a lone submitter, not a
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

/// Makes everything applied so far durable in redb, and records the last log record it covers.
fn checkpoint(db: &Database, stats: &Stats, lsn: u64) -> Result<(), Error> {
    let txn = db.begin_write().map_err(redb_err)?;
    txn.open_table(META).map_err(redb_err)?.insert(CHECKPOINT_LSN, lsn).map_err(redb_err)?;
    txn.commit().map_err(redb_err)?;
    stats.checkpoints.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Copies every entry of `table` from a snapshot into a write transaction; returns how many.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<'_, K, V>,
) -> Result<u64, Error> {
    let source = from.open_table(table).map_err(redb_err)?;
    let mut dest = to.open_table(table).map_err(redb_err)?;
    for entry in source.iter().map_err(redb_err)? {
        let (key, value) = entry.map_err(redb_err)?;
        dest.insert(key.value(), value.value()).map_err(redb_err)?;
    }
    dest.len().map_err(redb_err)
}

/// A change in its stored form, ready for the log and for redb.
enum Prepared {
    PutTask { key: u128, bytes: Vec<u8> },
    DeleteTask { key: u128 },
    PutToken { hash: String, role: String },
    PutFleet { key: String, value: Vec<u8> },
    DeleteFleet { key: String },
}

fn prepare(ops: Vec<Op>) -> Vec<Prepared> {
    ops.into_iter()
        .map(|op| match op {
            Op::PutTask(task) => {
                let key = u128::from(task.id.0);
                Prepared::PutTask { key, bytes: agentcom_types::wire::task_into_pb(*task).encode_to_vec() }
            }
            Op::DeleteTask(id) => Prepared::DeleteTask { key: u128::from(id.0) },
            Op::PutToken { hash, role } => Prepared::PutToken { hash, role },
            Op::PutCordon { sidecar_id, cordon } => Prepared::PutFleet {
                key: format!("{CORDON_PREFIX}{sidecar_id}"),
                value: serde_json::to_vec(&cordon).expect("a cordon serializes"),
            },
            Op::DeleteCordon { sidecar_id } => Prepared::DeleteFleet { key: format!("{CORDON_PREFIX}{sidecar_id}") },
            Op::PutEndpoint(endpoint) => Prepared::PutFleet {
                key: format!("{ENDPOINT_PREFIX}{}", endpoint.id),
                value: serde_json::to_vec(&endpoint).expect("an endpoint serializes"),
            },
            Op::DeleteEndpoint { id } => Prepared::DeleteFleet { key: format!("{ENDPOINT_PREFIX}{id}") },
        })
        .collect()
}

const TAG_PUT_TASK: u8 = 1;
const TAG_DELETE_TASK: u8 = 2;
const TAG_PUT_TOKEN: u8 = 3;
const TAG_PUT_FLEET: u8 = 4;
const TAG_DELETE_FLEET: u8 = 5;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_ops(ops: &[Prepared]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Prepared::PutTask { key, bytes } => {
                out.push(TAG_PUT_TASK);
                out.extend_from_slice(&key.to_le_bytes());
                put_bytes(&mut out, bytes);
            }
            Prepared::DeleteTask { key } => {
                out.push(TAG_DELETE_TASK);
                out.extend_from_slice(&key.to_le_bytes());
            }
            Prepared::PutToken { hash, role } => {
                out.push(TAG_PUT_TOKEN);
                put_bytes(&mut out, hash.as_bytes());
                put_bytes(&mut out, role.as_bytes());
            }
            Prepared::PutFleet { key, value } => {
                out.push(TAG_PUT_FLEET);
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, value);
            }
            Prepared::DeleteFleet { key } => {
                out.push(TAG_DELETE_FLEET);
                put_bytes(&mut out, key.as_bytes());
            }
        }
    }
    out
}

/// `None` if the payload is not a sequence of whole changes.
fn decode_ops(mut payload: &[u8]) -> Option<Vec<Prepared>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (input.get(..n)?, input.get(n..)?);
        *input = rest;
        Some(head)
    }
    fn take_bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(take(input, 4)?.try_into().ok()?) as usize;
        take(input, len)
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let tag = take(&mut payload, 1)?[0];
        let op = match tag {
            TAG_PUT_TASK => {
                let key = u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?);
                Prepared::PutTask { key, bytes: take_bytes(&mut payload)?.to_vec() }
            }
            TAG_DELETE_TASK => {
                Prepared::DeleteTask { key: u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?) }
            }
            TAG_PUT_TOKEN => {
                let hash = String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()?;
                let role = String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()?;
                Prepared::PutToken { hash, role }
            }
            TAG_PUT_FLEET => {
                let key = String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()?;
                Prepared::PutFleet { key, value: take_bytes(&mut payload)?.to_vec() }
            }
            TAG_DELETE_FLEET => {
                Prepared::DeleteFleet { key: String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()? }
            }
            _ => return None,
        };
        ops.push(op);
    }
    Some(ops)
}

fn apply_prepared(db: &Database, ops: &[Prepared], durability: Durability) -> Result<(), Error> {
    let mut txn = db.begin_write().map_err(redb_err)?;
    txn.set_durability(durability)
        .map_err(|err| Error::Io { path: PathBuf::from("redb"), message: err.to_string() })?;
    {
        let mut tasks = txn.open_table(TASKS).map_err(redb_err)?;
        for op in ops {
            match op {
                Prepared::PutTask { key, bytes } => {
                    tasks.insert(*key, bytes.as_slice()).map_err(redb_err)?;
                }
                Prepared::DeleteTask { key } => {
                    tasks.remove(*key).map_err(redb_err)?;
                }
                Prepared::PutToken { hash, role } => {
                    let mut tokens = txn.open_table(TOKENS).map_err(redb_err)?;
                    tokens.insert(hash.as_str(), role.as_str()).map_err(redb_err)?;
                }
                Prepared::PutFleet { key, value } => {
                    let mut fleet = txn.open_table(FLEET).map_err(redb_err)?;
                    fleet.insert(key.as_str(), value.as_slice()).map_err(redb_err)?;
                }
                Prepared::DeleteFleet { key } => {
                    let mut fleet = txn.open_table(FLEET).map_err(redb_err)?;
                    fleet.remove(key.as_str()).map_err(redb_err)?;
                }
            }
        }
    }
    txn.commit().map_err(redb_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SpecDefaults, TaskSpec, TaskState};
    use std::sync::mpsc as std_mpsc;

    fn task(n: i64) -> Task {
        Task::new(TaskId::new(n), TaskSpec::shell(vec!["echo".into(), n.to_string()], &SpecDefaults::default()), n)
    }

    #[test]
    fn committed_tasks_are_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let store = Store::open(&path).unwrap();
        // Every ticket is seen as durable before its commit is reported, and each exactly once.
        let (done_tx, done_rx) = std_mpsc::channel();
        let durable = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = durable.clone();
        let writer = store.start_writer(
            move |ticket: &mut u32| seen.lock().unwrap().push(*ticket),
            move |tickets: Vec<u32>, result| {
                result.unwrap();
                done_tx.send(tickets).unwrap();
            },
        );
        let mut tasks: Vec<Task> = (1..=50).map(task).collect();
        for (i, t) in tasks.iter().enumerate() {
            writer.write(vec![Op::PutTask(Box::new(t.clone()))], i as u32).unwrap();
        }
        let mut acked = Vec::new();
        while acked.len() < 50 {
            acked.extend(done_rx.recv().unwrap());
            // The writer may already be past the next sync, so what is durable starts with what
            // is committed.
            assert!(durable.lock().unwrap().starts_with(&acked), "durable before committed, in order");
        }
        assert_eq!(acked, (0..50).collect::<Vec<u32>>());
        tasks[3].set_state(TaskState::Cancelled, "test", 99);
        writer.write(vec![Op::PutTask(Box::new(tasks[3].clone()))], 99).unwrap();
        assert_eq!(done_rx.recv().unwrap(), vec![99]);
        writer.close();
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_tasks().unwrap().into_iter().map(|t| *t).collect::<Vec<_>>(), tasks);
        assert_eq!(store.get_task(tasks[3].id).unwrap().as_ref(), Some(&tasks[3]));
        assert_eq!(store.get_task(TaskId::new(7)).unwrap(), None);
    }

    #[test]
    fn fleet_settings_survive_a_reopen_and_their_log_form_round_trips() {
        use crate::fleet::{EndpointKind, Model, Owner};
        let mut endpoint = Endpoint::new(Owner::Hub, "http://gpu-1:11434".into(), EndpointKind::Ollama);
        endpoint.models = vec![Model { loaded: true, expires_unix_ms: Some(9), ..Model::named("llama3.2:3b") }];
        endpoint.error = Some("not checked yet".into());
        let cordon = |since| Cordon { since_unix_ms: since, deadline_unix_ms: Some(since + 5) };
        let ops = vec![
            Op::PutCordon { sidecar_id: "a".into(), cordon: cordon(1) },
            Op::PutCordon { sidecar_id: "b".into(), cordon: cordon(2) },
            Op::PutEndpoint(Box::new(endpoint.clone())),
            Op::DeleteCordon { sidecar_id: "a".into() },
        ];
        let prepared = prepare(ops);
        let decoded = decode_ops(&encode_ops(&prepared)).expect("decodes");
        assert_eq!(encode_ops(&decoded), encode_ops(&prepared), "the log form round-trips");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let store = Store::open(&path).unwrap();
        let (done_tx, done_rx) = std_mpsc::channel();
        let writer = store.start_writer(
            |_: &mut u32| {},
            move |tickets: Vec<u32>, result| {
                result.unwrap();
                done_tx.send(tickets).unwrap();
            },
        );
        writer.write(vec![Op::PutCordon { sidecar_id: "a".into(), cordon: cordon(1) }], 1).unwrap();
        writer.write(vec![Op::PutCordon { sidecar_id: "b".into(), cordon: cordon(2) }], 2).unwrap();
        writer
            .write(vec![Op::PutEndpoint(Box::new(endpoint.clone())), Op::DeleteCordon { sidecar_id: "a".into() }], 3)
            .unwrap();
        let mut acked = 0;
        while acked < 3 {
            acked += done_rx.recv().unwrap().len();
        }
        writer.close();
        drop(store);
        let fleet = Store::open(&path).unwrap().load_fleet().unwrap();
        assert_eq!(fleet.cordons, HashMap::from([("b".to_owned(), cordon(2))]));
        assert_eq!(fleet.registry.iter().cloned().collect::<Vec<_>>(), vec![endpoint]);
    }

    #[test]
    fn the_counting_backend_sees_one_sync_per_commit_and_keeps_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let store = Store::open_counting_syncs(&path).unwrap();
        let (commits, syncs) =
            (store.stats().commits.load(Ordering::Relaxed), store.stats().syncs.load(Ordering::Relaxed));
        for n in 0..10 {
            store.apply(vec![Op::PutTask(Box::new(task(n)))]).unwrap();
        }
        let commits = store.stats().commits.load(Ordering::Relaxed) - commits;
        let syncs = store.stats().syncs.load(Ordering::Relaxed) - syncs;
        assert_eq!(commits, 10);
        assert!(syncs >= commits, "{syncs} syncs for {commits} commits");
        assert!(matches!(Store::open(&path).err(), Some(Error::InUse { .. })), "the file lock is forwarded");
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).err().expect("second open must fail");
        assert!(matches!(err, Error::InUse { .. }), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// A log record's payload as replay decodes it: arbitrary bytes never panic.
        #[test]
        fn log_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_ops(&bytes);
        }
    }
}
