//! The sidecar's own small durable state, in its state directory: its id, and a record of each
//! running attempt (first pid, its start time, its cgroup), so the next start of a sidecar with
//! the same id can kill what a `kill -9` left behind before it says hello.
//!
//! A record is one small file per attempt, written after the spawn and removed once the
//! attempt's processes are known dead. It is not fsynced: it has to survive the sidecar's
//! process, not the machine, and a machine that goes down takes the processes with it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::contain::TaskKey;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub task_id: String,
    pub lease_generation: u64,
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks since boot, so a reused pid is never killed.
    pub pid_start_ticks: Option<u64>,
    pub cgroup: Option<PathBuf>,
}

/// The state directory. Records live under `running/SIDECAR_ID/`, so sidecars that share a
/// work directory never read (or kill) each other's.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
    running: PathBuf,
}

impl StateDir {
    /// Creates the directory (mode 0700).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<StateDir> {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        Ok(StateDir { running: root.join("running"), root })
    }

    /// The records of one sidecar id.
    pub fn for_sidecar(&self, sidecar_id: &str) -> io::Result<StateDir> {
        let name: String =
            sidecar_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        let running = self.root.join("running").join(name);
        fs::create_dir_all(&running)?;
        Ok(StateDir { root: self.root.clone(), running })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The sidecar id kept here, or `make()`'s, which is then kept.
    pub fn sidecar_id(&self, make: impl FnOnce() -> String) -> io::Result<String> {
        let path = self.root.join("sidecar.id");
        match fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
            Ok(_) => self.keep_id(&path, make()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => self.keep_id(&path, make()),
            Err(err) => Err(err),
        }
    }

    fn keep_id(&self, path: &Path, id: String) -> io::Result<String> {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, format!("{id}\n"))?;
        fs::rename(&tmp, path)?;
        Ok(id)
    }

    fn record_path(&self, key: &TaskKey) -> PathBuf {
        let name: String = key.task_id.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        self.running.join(format!("{name}.g{}.json", key.lease_generation))
    }

    /// Notes a running attempt.
    pub fn started(&self, record: &Record) -> io::Result<()> {
        let key = TaskKey { task_id: record.task_id.clone(), lease_generation: record.lease_generation };
        let path = self.record_path(&key);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(record).map_err(io::Error::other)?)?;
        fs::rename(&tmp, &path)
    }

    /// Forgets an attempt whose processes are gone.
    pub fn finished(&self, key: &TaskKey) {
        let _ = fs::remove_file(self.record_path(key));
    }

    /// Every record left, unreadable ones skipped (and removed).
    pub fn records(&self) -> Vec<Record> {
        let Ok(entries) = fs::read_dir(&self.running) else { return Vec::new() };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            match fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok()) {
                Some(record) => records.push(record),
                None => {
                    tracing::warn!(path = %path.display(), "removing an unreadable run record");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        records
    }

    /// Removes every record (after their processes were killed).
    pub fn clear(&self) {
        if let Ok(entries) = fs::read_dir(&self.running) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state")).unwrap().for_sidecar("side/1").unwrap();
        let other = StateDir::open(dir.path().join("state")).unwrap().for_sidecar("side-2").unwrap();
        let record = Record {
            task_id: "01JTASK".into(),
            lease_generation: 3,
            pid: Some(42),
            pid_start_ticks: Some(1234),
            cgroup: Some("/sys/fs/cgroup/x".into()),
        };
        state.started(&record).unwrap();
        assert_eq!(state.records(), vec![record.clone()]);
        assert!(other.records().is_empty(), "another sidecar's records are its own");
        state.finished(&TaskKey { task_id: "01JTASK".into(), lease_generation: 3 });
        assert!(state.records().is_empty());
        fs::write(dir.path().join("state/running/side_1/bad.json"), b"{").unwrap();
        assert!(state.records().is_empty());
        assert!(!dir.path().join("state/running/side_1/bad.json").exists());
    }

    #[test]
    fn the_sidecar_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.sidecar_id(|| "first".into()).unwrap(), "first");
        assert_eq!(state.sidecar_id(|| "second".into()).unwrap(), "first");
    }
}
