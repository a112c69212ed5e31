//! Online backups, their retention, and restoring one.
//!
//! A backup is a complete redb file written from one read transaction, so it is a consistent
//! snapshot taken while the hub keeps serving (redb readers do not block the writer). It is
//! written beside its final name and renamed into place once durable, so a crash mid-backup
//! never leaves a half backup that looks whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::blobs::Blobs;
use super::{AUDIT, FLEET, META, OUTPUT, TASKS, TOKENS, WORKFLOWS, redb_err};
use crate::store::{self, Error, Store};

/// Where backups go, how often, and how many are kept.
#[derive(Clone, Debug)]
pub struct Policy {
    pub dir: PathBuf,
    /// `None`: only on demand.
    pub every: Option<Duration>,
    pub keep: usize,
}

#[derive(Clone, Debug)]
pub struct BackupInfo {
    pub path: PathBuf,
    pub tasks: u64,
    pub bytes: u64,
}

const PREFIX: &str = "hub-";
const SUFFIX: &str = ".redb";

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Backups in `dir`, oldest first (names carry the time they were taken).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut backups: Vec<(u128, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse::<u128>().ok()?;
            Some((stamp, entry.path()))
        })
        .collect();
    backups.sort();
    backups.into_iter().map(|(_, path)| path).collect()
}

pub fn latest(dir: &Path) -> Option<PathBuf> {
    list(dir).pop()
}

/// Takes a backup into the policy's directory and prunes the oldest beyond `keep`. Blocking.
pub fn take(store: &Store, policy: &Policy) -> Result<BackupInfo, store::Error> {
    std::fs::create_dir_all(&policy.dir).map_err(store::Error::io(&policy.dir))?;
    let mut stamp = now_ms();
    // Two backups in one millisecond must not share a name.
    while policy.dir.join(format!("{PREFIX}{stamp}{SUFFIX}")).exists() {
        stamp += 1;
    }
    let path = policy.dir.join(format!("{PREFIX}{stamp}{SUFFIX}"));
    let tasks = store.backup_to(&path)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let all = list(&policy.dir);
    for old in all.iter().take(all.len().saturating_sub(policy.keep.max(1))) {
        if let Err(err) = std::fs::remove_file(old).and_then(|()| Blobs::beside(old).remove_all()) {
            warn!(path = %old.display(), error = %err, "could not remove an old backup");
        }
    }
    info!(path = %path.display(), tasks, bytes, "backup written");
    Ok(BackupInfo { path, tasks, bytes })
}

/// Takes backups on the policy's schedule until `stop`.
pub async fn run_periodic(store: Store, policy: Policy, stop: CancellationToken) {
    let Some(every) = policy.every else { return };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let (store, policy) = (store.clone(), policy.clone());
        match tokio::task::spawn_blocking(move || take(&store, &policy)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!(error = %err, "periodic backup failed"),
            Err(err) => warn!(error = %err, "periodic backup task failed"),
        }
    }
}

/// Backups on demand, one at a time, for the admin APIs.
#[derive(Clone)]
pub struct Backups {
    store: Store,
    policy: Policy,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl Backups {
    pub fn new(store: Store, policy: Policy) -> Backups {
        Backups { store, policy, one_at_a_time: Arc::new(tokio::sync::Mutex::new(())) }
    }

    pub async fn take(&self) -> Result<BackupInfo, store::Error> {
        let _guard = self.one_at_a_time.lock().await;
        let (store, policy) = (self.store.clone(), self.policy.clone());
        tokio::task::spawn_blocking(move || take(&store, &policy))
            .await
            .map_err(|err| store::Error::Io { path: PathBuf::from("backup"), message: err.to_string() })?
    }
}

#[derive(Debug)]
pub struct Restored {
    pub tasks: usize,
    /// Where the database that was replaced now is, if there was one.
    pub kept_aside: Option<PathBuf>,
}

/// Replaces the database at `database` with the backup `from`, after checking the backup opens,
/// passes redb's integrity check and decodes completely. The replaced file is kept aside, never
/// deleted. Refuses while a hub has the database open. Blocking.
pub fn restore(from: &Path, database: &Path) -> Result<Restored, store::Error> {
    if !from.is_file() {
        return Err(store::Error::Io { path: from.to_owned(), message: "no such backup file".to_owned() });
    }
    // Opening takes redb's lock: this fails clearly if a hub is running on it. Any other outcome
    // (it opens, or it is damaged) lets the restore go on.
    if database.exists()
        && let Err(err @ store::Error::InUse { .. }) = Store::open(database)
    {
        return Err(err);
    }
    let staging = database.with_extension("restoring");
    let (from_files, staging_files) = (Blobs::beside(from), Blobs::beside(&staging));
    staging_files.remove_all().map_err(store::Error::io(staging_files.dir()))?;
    std::fs::copy(from, &staging).map_err(store::Error::io(&staging))?;
    let validated = from_files
        .link_into(&staging_files, &from_files.keys())
        .map_err(store::Error::io(staging_files.dir()))
        .and_then(|_| Store::open(&staging))
        .and_then(|store| store.load_tasks());
    // Opening the staging copy made it a log of its own, which nothing needs.
    let _ = std::fs::remove_file(store::wal_path(&staging));
    let tasks = match validated {
        Ok(tasks) => tasks.len(),
        Err(err) => {
            let _ = std::fs::remove_file(&staging);
            let _ = staging_files.remove_all();
            return Err(err);
        }
    };
    let stamp = now_ms();
    let files = Blobs::beside(database);
    let kept_aside = if database.exists() {
        let aside = database.with_extension(format!("damaged-{stamp}"));
        std::fs::rename(database, &aside).map_err(store::Error::io(database))?;
        if files.dir().exists() {
            let aside_files = Blobs::beside(&aside);
            std::fs::rename(files.dir(), aside_files.dir()).map_err(store::Error::io(files.dir()))?;
        }
        Some(aside)
    } else {
        None
    };
    files.remove_all().map_err(store::Error::io(files.dir()))?;
    if staging_files.dir().exists() {
        std::fs::rename(staging_files.dir(), files.dir()).map_err(store::Error::io(files.dir()))?;
    }
    // The log belongs to the replaced database: replayed onto the backup it would mix two pasts.
    let log = store::wal_path(database);
    if log.exists() {
        let aside = database.with_extension(format!("damaged-{stamp}.wal"));
        std::fs::rename(&log, &aside).map_err(store::Error::io(&log))?;
    }
    std::fs::rename(&staging, database).map_err(store::Error::io(database))?;
    if let Some(dir) = database.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(Restored { tasks, kept_aside })
}

impl Store {
    /// Writes a consistent copy of the whole database to `dest` (through `dest.partial`, renamed
    /// once durable) and returns how many tasks it holds. Runs beside the writer. Blocking.
    pub fn backup_to(&self, dest: &Path) -> Result<u64, Error> {
        let partial = dest.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        let snapshot = self.db()?.begin_read().map_err(redb_err)?;
        let copy = Database::create(&partial).map_err(redb_err)?;
        let txn = copy.begin_write().map_err(redb_err)?;
        let tasks = copy_table(&snapshot, &txn, TASKS)?;
        copy_table(&snapshot, &txn, TOKENS)?;
        copy_table(&snapshot, &txn, META)?;
        copy_table(&snapshot, &txn, FLEET)?;
        copy_table(&snapshot, &txn, AUDIT)?;
        copy_table(&snapshot, &txn, WORKFLOWS)?;
        copy_table(&snapshot, &txn, OUTPUT)?;
        // Outputs in files: linked (they never change once written), kept only where the
        // snapshot names them.
        let mut marked = Vec::new();
        for entry in snapshot.open_table(OUTPUT).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (task, stream, _) = entry.map_err(redb_err)?.0.value();
            if stream == 0 {
                marked.push(task);
            }
        }
        let (files, partial_files) = (self.blobs.clone(), Blobs::beside(&partial));
        partial_files.remove_all().map_err(Error::io(partial_files.dir()))?;
        if !marked.is_empty() {
            let whole = files.link_into(&partial_files, &marked).map_err(Error::io(partial_files.dir()))?;
            if whole.len() < marked.len() {
                warn!(missing = marked.len() - whole.len(), "outputs dropped while the backup was taken are not in it");
            }
        }
        txn.commit().map_err(redb_err)?;
        drop(copy);
        let dest_files = Blobs::beside(dest);
        dest_files.remove_all().map_err(Error::io(dest_files.dir()))?;
        if partial_files.dir().exists() {
            std::fs::rename(partial_files.dir(), dest_files.dir()).map_err(Error::io(dest_files.dir()))?;
        }
        std::fs::rename(&partial, dest).map_err(Error::io(dest))?;
        if let Some(dir) = dest.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(tasks)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SpecDefaults, Task, TaskId, TaskSpec};
    use crate::store::Op;

    fn task(n: i64) -> Task {
        Task::new(TaskId::new(n), TaskSpec::shell(vec!["echo".into()], &SpecDefaults::default()), n)
    }

    #[test]
    fn backups_are_complete_pruned_to_keep_and_restorable() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("hub.redb");
        let store = Store::open(&database).unwrap();
        store.apply((1..=20).map(|n| Op::PutTask(Box::new(task(n)))).collect()).unwrap();
        // Output of both kinds: in the database (small) and in a file (large).
        let (small, large) = (b"small".to_vec(), vec![b'L'; 100_000]);
        let (small_id, large_id) = (TaskId::new(1), TaskId::new(2));
        store.apply(vec![Op::PutOutput { id: small_id, stdout: small.clone(), stderr: Vec::new() }]).unwrap();
        store.apply(vec![Op::PutOutput { id: large_id, stdout: large.clone(), stderr: Vec::new() }]).unwrap();
        let policy = Policy { dir: dir.path().join("backups"), every: None, keep: 2 };
        let first = take(&store, &policy).unwrap();
        assert_eq!(first.tasks, 20);
        let first_files = Blobs::beside(&first.path);
        assert_eq!(first_files.keys(), vec![u128::from(large_id.0)], "the large output's file is in the backup");
        store.apply(vec![Op::PutTask(Box::new(task(21)))]).unwrap();
        take(&store, &policy).unwrap();
        let newest = take(&store, &policy).unwrap();
        assert_eq!(list(&policy.dir), vec![list(&policy.dir)[0].clone(), newest.path.clone()]);
        assert_eq!(list(&policy.dir).len(), 2, "pruned to keep");
        assert!(!first.path.exists(), "the oldest went first");
        assert!(!first_files.dir().exists(), "with its output files");

        // A running hub's database cannot be replaced under it.
        let err = restore(&newest.path, &database).unwrap_err();
        assert!(matches!(err, store::Error::InUse { .. }), "{err}");
        // The live output goes after the backup: the restore brings it back.
        store.apply(vec![Op::DropOutput(large_id)]).unwrap();
        drop(store);
        let restored = restore(&newest.path, &database).unwrap();
        assert_eq!(restored.tasks, 21);
        let aside = restored.kept_aside.unwrap();
        assert!(aside.exists());
        let store = Store::open(&database).unwrap();
        assert_eq!(store.load_tasks().unwrap().len(), 21);
        assert_eq!(store.output(small_id).unwrap().0, small);
        assert_eq!(store.output(large_id).unwrap().0, large);
    }
}
