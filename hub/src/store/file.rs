//! The database file: opening it with the hub's settings (and again after an I/O error, which
//! the writer's recovery does through [`Slot`]), the backend that counts its syncs for
//! benchmarks, the disk it lives on, and the replay of log records into it.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, ReadableDatabase};

use super::wal::Record;
use super::{CHECKPOINT_LSN, Error, META, Store, apply_prepared, codec, redb_err};

/// redb's page cache (reads and the write buffer of commits not yet checkpointed). redb's own
/// default is 1 GiB, which a hub reading results back would fill with output it has no more use
/// for; the hot path (submits, dispatches, ends) touches a few pages per commit.
pub(super) const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Bytes as people read them: `512 B`, `3.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Space left to an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// The open database. After an I/O error redb refuses everything until it is opened again, so
/// the writer may close it and open it again (`writer.rs`, `recover`); while it does, the slot
/// is empty and readers are told storage is recovering.
pub(super) struct Slot {
    pub(super) current: std::sync::RwLock<Option<Arc<Database>>>,
    /// Counts the syncs of the database opened next (benchmarks).
    pub(super) syncs: Option<Arc<AtomicU64>>,
}

impl Store {
    pub(super) fn db(&self) -> Result<Arc<Database>, Error> {
        self.db.current.read().expect("database slot poisoned").clone().ok_or(Error::Recovering)
    }
}

/// Opens (or creates) the database file with the hub's settings; `syncs` counts its syncs.
pub(super) fn open_database(
    path: &Path,
    syncs: Option<&Arc<AtomicU64>>,
) -> Result<Result<Database, redb::DatabaseError>, Error> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    match syncs {
        None => Ok(builder.create(path)),
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
            Ok(builder.create_with_backend(CountingBackend { inner, syncs: syncs.clone() }))
        }
    }
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

/// The directory a file is in (`.` for a bare name).
pub(super) fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The last log record the database's last checkpoint covers.
pub(super) fn checkpoint_lsn(db: &Database) -> Result<u64, Error> {
    let txn = db.begin_read().map_err(redb_err)?;
    let meta = txn.open_table(META).map_err(redb_err)?;
    Ok(meta.get(CHECKPOINT_LSN).map_err(redb_err)?.map(|v| v.value()).unwrap_or(0))
}

/// Applies log records past the last checkpoint, as at open and after a recovery: a record
/// that does not decode is damage.
pub(super) fn replay(db: &Database, records: &[Record], log: &Path) -> Result<(), Error> {
    let mut prepared = Vec::new();
    for record in records {
        prepared.extend(codec::decode_ops(&record.payload).ok_or_else(|| Error::Damaged {
            path: log.to_owned(),
            detail: format!("log record {} does not decode", record.lsn),
        })?);
    }
    apply_prepared(db, &prepared, Durability::None)
}
