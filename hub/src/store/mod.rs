//! Durable storage in redb, and the one writer that owns its write transactions.
//!
//! **Architecture Invariant:** only the writer thread started by [`Store::start_writer`] opens
//! write transactions once the hub runs. It drains every change queued since its last commit
//! into one batch, writes it as one record to the write-ahead log and syncs it (one fsync for the
//! batch: group commit), and only then hands the batch's tickets back, so nobody is answered
//! before the sync holding their change returns. The same changes then go into redb without a
//! sync; a periodic checkpoint makes redb durable on its own.
//!
//! Records are the hub's own format (`codec`, from `storage.proto`), not the wire contract, and
//! the database records which version it holds; a database of an older version is migrated once
//! when it opens. redb's API is blocking, so everything here runs off the async workers.
//!
//! `writer` is the writer thread, `wal` the write-ahead log, `backup` online backups and their
//! retention, `codec` the encoding of records and of log payloads.
//!
//! In detail:
//!
//! `store`: redb storage (`store/mod.rs`) and the single writer thread (`store/writer.rs`); an
//! integrity check at open refuses a damaged file.
//!
//! A task's output is not in its record: `Op::PutOutput` stores it apart (`codec::prepare` splits
//! any output a record carries), so loading the queue reads no output, `Store::get_task` joins it
//! back, and retention can drop it (`Op::DropOutput`) while the record stays. Up to 16 KiB it goes
//! in the `output` table in 256 KiB chunks (`(task, stream, chunk)` keys); larger, `store/blobs.rs`
//! writes it as files beside the database (`hub.redb.output/TASK.stdout`), synced before the log
//! record that marks it (`(task, 0, 0)` in the table), so redb never holds large values (its
//! allocator doubles them, its integrity check at open reads them). Files no marker names are swept
//! at open; backups link them. redb's cache is 64 MiB.
//!
//! `Store::load_queue` gives the core each task not finished decoded and each finished one as a
//! `store::Packed` (its record's bytes, with state, finish time and stored output bytes beside
//! them, `store/packed.rs`).
//!
//! Records are the hub's own format, `agentcom.storage.v1`
//! (`hub/proto/agentcom/storage/v1/storage.proto`, compiled by the hub's build script), not the
//! wire contract; `store/codec.rs` is the only code that encodes or decodes stored bytes (tasks,
//! cordons, endpoints, verdict counts; `store/codec/log.rs` the changes a log record holds). The
//! `meta` table records the format version: a database of format 1 (tasks as encoded
//! `agentcom.v1.Task`, fleet settings as JSON) is migrated once at open, after its log is replayed,
//! in one durable transaction that stops at the first record that does not convert; a newer format
//! is refused. `integration/fixtures/datadir-v1` is a data directory of format 1, and tests migrate
//! it.
//!
//! `store/file.rs`: the database file: opened with the hub's settings (its 64 MiB cache; the
//! sync-counting backend for benchmarks), its `Slot`, the disk under it (`free_bytes`), and the
//! replay of log records, shared by the open and the writer's recovery.
//!
//! `store/wal.rs`: the write-ahead log: a preallocated, zero-filled file (32 MiB, or half the free
//! space on a smaller disk) reused from its start after each checkpoint (writing inside the file
//! keeps each `fdatasync` to the data: about 85 us here, against 128 us for an append and 200 us
//! for a one-record redb commit). Records carry a sequence number and a CRC; replay at open applies
//! what follows the checkpoint while numbers follow one another, stops at a torn tail, and refuses
//! damage followed by whole records.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use self::codec::{FORMAT_VERSION, Prepared, prepare};
use self::wal::Wal;
use crate::domain::{Task, TaskId};
use crate::fleet::{Cordon, Endpoint, Registry};

pub mod backup;
mod blobs;
mod codec;
mod file;
mod packed;
mod read;
mod settings;
pub mod wal;
pub mod workflows;
mod writer;

pub use self::codec::encode_token;
use self::file::{Slot, dir_of, open_database};
pub use self::file::{free_bytes, human_bytes};
pub use self::packed::{Packed, stored_output_bytes};
pub use self::read::Loaded;
pub use self::workflows::{Hook, LoadedRun, Memory, RunEvent, RunEventKind, Scheduled, StoredRun};
pub use self::writer::Writer;

/// Task id (a ULID as u128, so keys sort by age) -> a stored task (`codec`).
const TASKS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("tasks");
/// SHA-256 of a token, hex -> its role.
const TOKENS: TableDefinition<'_, &str, &str> = TableDefinition::new("tokens");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Durable fleet settings by key: `cordon/{sidecar}`, `endpoint/{id}` (`codec`).
const FLEET: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("fleet");
/// Admin actions, keyed by a ULID (time order).
const AUDIT: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("audit");
/// A task's output, apart from its record: (task id, stream, chunk number) -> at most
/// [`OUTPUT_CHUNK`] bytes. Stream 1 is stdout, 2 stderr. A task record keeps none of its
/// output, so loading the queue reads no output, and no single value grows with a result.
/// Stream 0 (chunk 0, empty) marks an output kept in files instead (`blobs`): outputs of more
/// than [`blobs::IN_FILE_FROM`] bytes.
const OUTPUT: TableDefinition<'_, (u128, u8, u32), &[u8]> = TableDefinition::new("output");
/// Workflow runs: (run id, 0) -> its record, (run id, n) -> its n-th event (`workflows.rs`).
const WORKFLOWS: TableDefinition<'_, (u128, u32), &[u8]> = TableDefinition::new("workflows");
/// The least free space a new database is made in: its first pages and the smallest log.
const MIN_FREE_TO_CREATE: u64 = 4 * 1024 * 1024;
/// The most bytes one stored chunk of output holds.
pub const OUTPUT_CHUNK: usize = 256 * 1024;
pub use self::blobs::IN_FILE_FROM;
/// The `output` table's key for a task's marker: its output is in files.
fn in_files(key: u128) -> (u128, u8, u32) {
    (key, 0, 0)
}

/// META key: the version of the record format the database holds.
const SCHEMA_VERSION: &str = "schema_version";
/// Keys in the `fleet` table.
const CORDON_PREFIX: &str = "cordon/";
const ENDPOINT_PREFIX: &str = "endpoint/";
/// `join/{id}`: a join token; `identity/{sidecar_id}`: an enrolled sidecar.
const JOIN_PREFIX: &str = "join/";
const IDENTITY_PREFIX: &str = "identity/";
/// `hook/{name}`, `schedule/{name}`, `memory/{workflow}`: workflows' webhooks, schedules and memory.
const HOOK_PREFIX: &str = "hook/";
const SCHEDULE_PREFIX: &str = "schedule/";
const MEMORY_PREFIX: &str = "memory/";
/// `verdicts/KIND/TIER/MODEL` (the model last: its name may hold a `/`).
const VERDICTS_PREFIX: &str = "verdicts/";
/// `usage/DAY/KEY/MODEL`: what a gateway key spent on a model on a UTC day (the model last).
const USAGE_PREFIX: &str = "usage/";
/// `alias/NAME`: the gateway's model alias, its models one per line.
const ALIAS_PREFIX: &str = "alias/";
/// META key: the last write-ahead log record that redb's last durable commit covers.
const CHECKPOINT_LSN: &str = "checkpoint_lsn";
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("database {path} is already in use by another process")]
    InUse { path: PathBuf },
    #[error(
        "database {path} has format version {found}; this hub reads versions 1 to {FORMAT_VERSION} (a newer hub wrote it?)"
    )]
    Schema { path: PathBuf, found: u64 },
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("stored task {key:032x} is unreadable: {message}")]
    Corrupt { key: u128, message: String },
    #[error("the storage writer has stopped")]
    WriterGone,
    #[error("storage is recovering from an earlier failure; retry shortly")]
    Recovering,
    /// A commit failed: the hub stores nothing more until storage works again.
    #[error("{detail} ({free} free on the file system holding {dir})", free = human_bytes(*free_bytes))]
    Fault { detail: String, dir: PathBuf, free_bytes: u64 },
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
    /// A task's record. Its outcome's output, if any, is not stored with it: that is
    /// [`Op::PutOutput`]'s.
    PutTask(Box<Task>),
    /// A task's output, in place of what was stored for it (stdout, then stderr).
    PutOutput {
        id: TaskId,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// A task's output goes; its record stays (retention).
    DropOutput(TaskId),
    /// A task's record and its output.
    DeleteTask(TaskId),
    /// A token's hash and its stored value (`codec::encode_token`: its role, and for tokens made
    /// through the API when and under what name).
    PutToken {
        hash: String,
        value: String,
    },
    DeleteToken {
        hash: String,
    },
    PutAudit(AuditEntry),
    PutJoinGrant(Box<JoinGrant>),
    DeleteJoinGrant {
        id: String,
    },
    PutIdentity(Box<SidecarIdentity>),
    PutCordon {
        sidecar_id: String,
        cordon: Cordon,
    },
    DeleteCordon {
        sidecar_id: String,
    },
    PutEndpoint(Box<Endpoint>),
    DeleteEndpoint {
        id: String,
    },
    /// A workflow run's record, as it started and as of its last event.
    PutRun(Box<StoredRun>),
    /// The `seq`-th event of a run (from 1).
    PutRunEvent {
        run: ulid::Ulid,
        seq: u32,
        event: Box<RunEvent>,
    },
    /// A webhook, by name.
    PutHook(Box<Hook>),
    DeleteHook {
        name: String,
    },
    /// A scheduled workflow, by name (its last slot with it).
    PutScheduled(Box<Scheduled>),
    DeleteScheduled {
        name: String,
    },
    /// What a workflow's runs keep for later ones.
    PutMemory(Box<Memory>),
    /// The verdicts counted so far for a model, kind of work and tier (a put of the totals).
    PutVerdicts {
        model: String,
        kind: &'static str,
        tier: crate::domain::Tier,
        tally: crate::sched::Tally,
    },
    /// What a gateway key spent on a model on a day (a put of the totals).
    PutUsage {
        row: crate::usage::Row,
        spend: crate::usage::Spend,
    },
    /// A model alias of the gateway: the models it means, first available first.
    PutAlias {
        name: String,
        models: Vec<String>,
    },
    DeleteAlias {
        name: String,
    },
}

/// One admin action, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its key: time-ordered.
    pub id: ulid::Ulid,
    pub at_unix_ms: i64,
    /// The token that did it (`tok-...`) and its role.
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A join token as the hub keeps it: its secret's hash, how often and until when it may enrol
/// a sidecar, and the tags it binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinGrant {
    /// 12 hex digits (the token's `acj_<id>_...`).
    pub id: String,
    pub secret_sha256: String,
    pub uses: u32,
    pub used: u32,
    pub expires_unix_ms: i64,
    pub tags: Vec<String>,
    pub created_unix_ms: i64,
    pub created_by: String,
}

/// A sidecar enrolled with a join token: the certificate it was issued, by fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarIdentity {
    pub sidecar_id: String,
    pub cert_sha256: String,
    pub hostname: String,
    pub tags: Vec<String>,
    pub join_token_id: String,
    pub enrolled_unix_ms: i64,
    /// 0 while it may connect.
    pub revoked_unix_ms: i64,
}

/// The join tokens and enrolled sidecars, as stored.
#[derive(Debug, Default)]
pub struct Enrolled {
    pub joins: Vec<JoinGrant>,
    pub identities: Vec<SidecarIdentity>,
}

/// A stored token: its role, and for those made through the API, when and under what name.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredToken {
    pub hash: String,
    pub role: String,
    pub created_unix_ms: i64,
    pub name: String,
    pub limits: crate::auth::KeyLimits,
}

/// The durable fleet settings: the LLM registry, the cordons, and the verdicts counted by model.
#[derive(Debug, Default)]
pub struct Fleet {
    pub registry: Registry,
    pub cordons: HashMap<String, Cordon>,
    pub verdicts: Vec<(String, &'static str, crate::domain::Tier, crate::sched::Tally)>,
    pub usage: Vec<(crate::usage::Row, crate::usage::Spend)>,
    /// The gateway's model aliases: a name, and the models it means.
    pub aliases: Vec<(String, Vec<String>)>,
    pub hooks: Vec<Hook>,
    pub schedules: Vec<Scheduled>,
    pub memories: Vec<Memory>,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Slot>,
    path: PathBuf,
    /// Outputs too large for the log, as files beside the database.
    blobs: blobs::Blobs,
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
    /// Batches too large for the log, committed straight into redb.
    pub direct_commits: AtomicU64,
    /// Free space on the database's file system, as of the last checkpoint (0: unknown).
    pub free_bytes: AtomicU64,
    /// Where each group commit's time (log write and sync) and size are recorded, once set.
    pub commit_metrics: std::sync::OnceLock<CommitMetrics>,
}

/// The storage writer's histograms.
#[derive(Debug)]
pub struct CommitMetrics {
    pub seconds: agentcom_metrics::Histogram,
    pub changes: agentcom_metrics::Histogram,
}

impl Store {
    /// Opens or creates the database at `path`, checks its integrity and its schema version.
    ///
    /// redb recovers from a crash by itself while opening. A file that then fails the integrity
    /// check is refused, also when redb could repair it, since a repair may have dropped data:
    /// the hub must never start with part of its queue silently gone.
    pub fn open(path: &Path) -> Result<Store, Error> {
        Store::open_fresh_or_not(path, None)
    }

    /// Like [`Store::open`], counting the storage syncs in [`Stats::syncs`] (for benchmarks).
    pub fn open_counting_syncs(path: &Path) -> Result<Store, Error> {
        Store::open_fresh_or_not(path, Some(Arc::new(AtomicU64::new(0))))
    }

    /// A database this start creates and cannot finish making (a disk too full for it) leaves
    /// nothing behind.
    fn open_fresh_or_not(path: &Path, syncs: Option<Arc<AtomicU64>>) -> Result<Store, Error> {
        let fresh = !path.exists() && !wal_path(path).exists();
        let dir = dir_of(path);
        if fresh
            && let Ok(free) = free_bytes(dir)
            && free < MIN_FREE_TO_CREATE
        {
            return Err(Error::Fault {
                detail: format!("not enough space to create the database {}", path.display()),
                dir: dir.to_owned(),
                free_bytes: free,
            });
        }
        let opened = Store::open_with(path, syncs);
        if opened.is_err() && fresh {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(wal_path(path));
        }
        opened
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
        let opened = std::panic::catch_unwind(|| open_database(path, syncs.as_ref())).map_err(panicked)??;
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
        let stats = Arc::new(Stats { syncs: syncs.clone().unwrap_or_default(), ..Stats::default() });
        let slot = Slot { current: std::sync::RwLock::new(Some(Arc::new(db))), syncs };
        let blobs = blobs::Blobs::beside(path);
        let mut store = Store {
            db: Arc::new(slot),
            path: path.to_owned(),
            blobs,
            stats,
            wal: Arc::new(std::sync::Mutex::new(None)),
        };
        store.note_free_space();
        let older = store.init()?;
        store.replay_wal()?;
        if let Some(from) = older {
            store.migrate(from)?;
        }
        store.sweep_output_files()?;
        Ok(store)
    }

    /// Creates the tables and reads the format version: `Some(v)` when the records are of an
    /// older version `v` and must be migrated (after the log is replayed, since its records are
    /// of that version too).
    fn init(&self) -> Result<Option<u64>, Error> {
        let txn = self.db()?.begin_write().map_err(redb_err)?;
        let older = {
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            let found = meta.get(SCHEMA_VERSION).map_err(redb_err)?.map(|v| v.value());
            let tasks = txn.open_table(TASKS).map_err(redb_err)?;
            let empty = tasks.is_empty().map_err(redb_err)?;
            drop(tasks);
            match found {
                // A new database, or one made by a hub that stopped before it wrote anything.
                None if empty => {
                    meta.insert(SCHEMA_VERSION, FORMAT_VERSION).map_err(redb_err)?;
                    None
                }
                None => Some(1),
                Some(FORMAT_VERSION) => None,
                Some(1) => Some(1),
                Some(found) => return Err(Error::Schema { path: self.path.clone(), found }),
            }
        };
        txn.open_table(TOKENS).map_err(redb_err)?;
        txn.open_table(FLEET).map_err(redb_err)?;
        txn.open_table(AUDIT).map_err(redb_err)?;
        txn.open_table(OUTPUT).map_err(redb_err)?;
        txn.open_table(WORKFLOWS).map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        Ok(older)
    }

    /// Rewrites every record of format `from` in this format, in one durable transaction, and
    /// records the new version. A record that does not convert stops the migration (nothing is
    /// changed): the hub must never start with part of its queue silently gone.
    fn migrate(&self, from: u64) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let mut txn = self.db()?.begin_write().map_err(redb_err)?;
        txn.set_durability(Durability::Immediate)
            .map_err(|err| Error::Io { path: self.path.clone(), message: err.to_string() })?;
        let (mut tasks, mut settings) = (0u64, 0u64);
        {
            let mut table = txn.open_table(TASKS).map_err(redb_err)?;
            let old: Vec<(u128, Vec<u8>)> = table
                .iter()
                .map_err(redb_err)?
                .map(|entry| entry.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(redb_err))
                .collect::<Result<_, _>>()?;
            for (key, bytes) in old {
                let new = codec::task_from_v1(&bytes).map_err(|message| Error::Corrupt { key, message })?;
                table.insert(key, new.as_slice()).map_err(redb_err)?;
                tasks += 1;
            }
            let mut table = txn.open_table(FLEET).map_err(redb_err)?;
            let old: Vec<(String, Vec<u8>)> = table
                .iter()
                .map_err(redb_err)?
                .map(|entry| entry.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())).map_err(redb_err))
                .collect::<Result<_, _>>()?;
            for (key, value) in old {
                match codec::fleet_from_v1(&key, &value) {
                    Ok(new) => drop(table.insert(key.as_str(), new.as_slice()).map_err(redb_err)?),
                    // Settings an operator can redo; the queue matters more.
                    Err(err) => {
                        tracing::warn!(key, error = %err, "dropped a stored fleet setting that does not convert");
                        table.remove(key.as_str()).map_err(redb_err)?;
                    }
                }
                settings += 1;
            }
            txn.open_table(META).map_err(redb_err)?.insert(SCHEMA_VERSION, FORMAT_VERSION).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(from, to = FORMAT_VERSION, tasks, settings, ms, "migrated the database's records");
        Ok(())
    }

    /// Applies what the log holds beyond redb's last checkpoint, then checkpoints, so that redb
    /// alone has everything acknowledged before the last stop or crash.
    fn replay_wal(&mut self) -> Result<(), Error> {
        let checkpoint_lsn = file::checkpoint_lsn(self.db()?.as_ref())?;
        let wal_path = wal_path(&self.path);
        let capacity = self.log_capacity(&wal_path)?;
        let (wal, records) = Wal::open(&wal_path, capacity, checkpoint_lsn).map_err(|err| match err {
            wal::Error::Damaged { lsn, .. } => Error::Damaged {
                path: wal_path.clone(),
                detail: format!("log record {lsn} is damaged while later records are whole"),
            },
            other => Error::Io { path: wal_path.clone(), message: other.to_string() },
        })?;
        if !records.is_empty() {
            let (first, last) = (records[0].lsn, records[records.len() - 1].lsn);
            file::replay(self.db()?.as_ref(), &records, &wal_path)?;
            tracing::info!(first, last, records = records.len(), "replayed the write-ahead log");
        }
        checkpoint(self.db()?.as_ref(), &self.stats, wal.lsn())?;
        *self.wal.lock().expect("wal lock poisoned") = Some(wal);
        Ok(())
    }

    /// The log's size: [`wal::DEFAULT_CAPACITY`], or what half the free space allows on a
    /// disk with less (never less than a log it finds); refused below [`wal::MIN_CAPACITY`].
    fn log_capacity(&self, wal_path: &Path) -> Result<u64, Error> {
        let existing = std::fs::metadata(wal_path).map(|m| m.len()).unwrap_or(0);
        if existing >= wal::DEFAULT_CAPACITY {
            return Ok(existing);
        }
        let dir = dir_of(wal_path);
        let free = free_bytes(dir).map_err(Error::io(dir))?;
        const MIB: u64 = 1024 * 1024;
        let fits = (existing + free / 2) / MIB * MIB;
        let capacity = fits.min(wal::DEFAULT_CAPACITY).max(existing);
        if capacity < wal::MIN_CAPACITY {
            return Err(Error::Fault {
                detail: format!(
                    "not enough space for the write-ahead log {} (it needs {})",
                    wal_path.display(),
                    human_bytes(wal::MIN_CAPACITY * 2 - existing)
                ),
                dir: dir.to_owned(),
                free_bytes: free,
            });
        }
        Ok(capacity)
    }

    /// Records the free space of the database's file system in [`Stats::free_bytes`].
    pub fn note_free_space(&self) {
        let dir = dir_of(&self.path);
        if let Ok(free) = free_bytes(dir) {
            self.stats.free_bytes.store(free, Ordering::Relaxed);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Token hashes and their roles.
    pub fn load_tokens(&self) -> Result<Vec<StoredToken>, Error> {
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let table = txn.open_table(TOKENS).map_err(redb_err)?;
        table
            .iter()
            .map_err(redb_err)?
            .map(|entry| {
                let (hash, value) = entry.map_err(redb_err)?;
                Ok(codec::decode_token(hash.value(), value.value()))
            })
            .collect()
    }

    /// The newest `limit` admin actions, newest first (a record that does not decode is skipped).
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, Error> {
        let txn = self.db()?.begin_read().map_err(redb_err)?;
        let table = match txn.open_table(AUDIT) {
            Ok(table) => table,
            // A database from before the audit log: nothing recorded yet.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(err) => return Err(redb_err(err)),
        };
        let mut entries = Vec::new();
        for entry in table.iter().map_err(redb_err)?.rev().take(limit) {
            let (key, bytes) = entry.map_err(redb_err)?;
            match codec::decode_audit(key.value(), bytes.value()) {
                Ok(entry) => entries.push(entry),
                Err(err) => tracing::warn!(error = err, "skipping an audit record that does not decode"),
            }
        }
        Ok(entries)
    }

    /// Applies changes in one durable transaction. For use before the writer starts (setup,
    /// tools); once it runs, changes go through it.
    pub fn apply(&self, ops: Vec<Op>) -> Result<(), Error> {
        let mut prepared = prepare(ops);
        self.blobs.take_large(&mut prepared).map_err(Error::io(self.blobs.dir()))?;
        apply_prepared(self.db()?.as_ref(), &prepared, Durability::Immediate)?;
        self.blobs.committed(&prepared);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Removes a task's stored output (both streams).
fn remove_output(table: &mut redb::Table<'_, (u128, u8, u32), &'static [u8]>, key: u128) -> Result<(), Error> {
    table.retain_in((key, 0, 0)..=(key, u8::MAX, u32::MAX), |_, _| false).map_err(redb_err)
}

/// Makes everything applied so far durable in redb, and records the last log record it covers.
fn checkpoint(db: &Database, stats: &Stats, lsn: u64) -> Result<(), Error> {
    let txn = db.begin_write().map_err(redb_err)?;
    txn.open_table(META).map_err(redb_err)?.insert(CHECKPOINT_LSN, lsn).map_err(redb_err)?;
    txn.commit().map_err(redb_err)?;
    stats.checkpoints.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn apply_prepared(db: &Database, ops: &[Prepared], durability: Durability) -> Result<(), Error> {
    let mut txn = db.begin_write().map_err(redb_err)?;
    txn.set_durability(durability)
        .map_err(|err| Error::Io { path: PathBuf::from("redb"), message: err.to_string() })?;
    {
        let mut tasks = txn.open_table(TASKS).map_err(redb_err)?;
        let mut output = txn.open_table(OUTPUT).map_err(redb_err)?;
        for op in ops {
            match op {
                Prepared::PutTask { key, bytes } => {
                    tasks.insert(*key, bytes.as_slice()).map_err(redb_err)?;
                }
                Prepared::PutOutput { key, stdout, stderr } => {
                    remove_output(&mut output, *key)?;
                    for (stream, bytes) in [(1u8, stdout), (2u8, stderr)] {
                        for (n, chunk) in bytes.chunks(OUTPUT_CHUNK).enumerate() {
                            output.insert((*key, stream, n as u32), chunk).map_err(redb_err)?;
                        }
                    }
                }
                Prepared::OutputInFiles { key } => {
                    remove_output(&mut output, *key)?;
                    output.insert(in_files(*key), [].as_slice()).map_err(redb_err)?;
                }
                Prepared::DropOutput { key } => remove_output(&mut output, *key)?,
                Prepared::DeleteTask { key } => {
                    tasks.remove(*key).map_err(redb_err)?;
                    remove_output(&mut output, *key)?;
                }
                Prepared::PutToken { hash, value } => {
                    let mut tokens = txn.open_table(TOKENS).map_err(redb_err)?;
                    tokens.insert(hash.as_str(), value.as_str()).map_err(redb_err)?;
                }
                Prepared::DeleteToken { hash } => {
                    let mut tokens = txn.open_table(TOKENS).map_err(redb_err)?;
                    tokens.remove(hash.as_str()).map_err(redb_err)?;
                }
                Prepared::PutAudit { key, bytes } => {
                    let mut audit = txn.open_table(AUDIT).map_err(redb_err)?;
                    audit.insert(*key, bytes.as_slice()).map_err(redb_err)?;
                }
                Prepared::PutFleet { key, value } => {
                    let mut fleet = txn.open_table(FLEET).map_err(redb_err)?;
                    fleet.insert(key.as_str(), value.as_slice()).map_err(redb_err)?;
                }
                Prepared::DeleteFleet { key } => {
                    let mut fleet = txn.open_table(FLEET).map_err(redb_err)?;
                    fleet.remove(key.as_str()).map_err(redb_err)?;
                }
                Prepared::PutWorkflow { key, bytes } => {
                    let mut workflows = txn.open_table(WORKFLOWS).map_err(redb_err)?;
                    workflows.insert(*key, bytes.as_slice()).map_err(redb_err)?;
                }
            }
        }
    }
    txn.commit().map_err(redb_err)?;
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// A log record's payload as replay decodes it: arbitrary bytes never panic.
        #[test]
        fn log_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = codec::decode_ops(&bytes);
        }
    }
}
