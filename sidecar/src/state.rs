//! The sidecar's own small durable state, in its state directory: its id, and a record of each
//! running attempt (first pid, its start time, its cgroup), so the next start of a sidecar with
//! the same id can kill what a `kill -9` left behind before it says hello.
//!
//! The record is an append-only log per sidecar id: a `+` line when an attempt starts and a `-`
//! line once its processes are known dead, compacted when it grows. One `write` per change
//! keeps it off the task's path. It is not fsynced: it has to survive the sidecar's process,
//! not the machine, and a machine that goes down takes the processes with it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::attempt::TaskKey;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub task_id: String,
    pub lease_generation: u64,
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks since boot, so a reused pid is never killed.
    pub pid_start_ticks: Option<u64>,
    pub cgroup: Option<PathBuf>,
}

/// The log is rewritten with only the live records once it is this large.
const COMPACT_BYTES: u64 = 1 << 20;

/// The state directory. Records live under `running/SIDECAR_ID/`, so sidecars that share a
/// work directory never read (or kill) each other's.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
    running: PathBuf,
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    file: Option<File>,
    live: HashMap<(String, u64), Record>,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    Started(Record),
    Finished { task_id: String, lease_generation: u64 },
}

impl StateDir {
    /// Creates the directory (mode 0700).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<StateDir> {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        Ok(StateDir { running: root.join("running"), root, log: Arc::default() })
    }

    /// The records of one sidecar id.
    pub fn for_sidecar(&self, sidecar_id: &str) -> io::Result<StateDir> {
        let name: String =
            sidecar_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        let running = self.root.join("running").join(name);
        fs::create_dir_all(&running)?;
        Ok(StateDir { root: self.root.clone(), running, log: Arc::default() })
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

    fn log_path(&self) -> PathBuf {
        self.running.join("runs.log")
    }

    fn append(&self, log: &mut Log, line: &Line) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if log.file.is_none() {
            log.file = Some(OpenOptions::new().create(true).append(true).open(self.log_path())?);
        }
        log.file.as_mut().expect("opened above").write_all(&bytes)?;
        log.bytes += bytes.len() as u64;
        if log.bytes > COMPACT_BYTES {
            self.compact(log)?;
        }
        Ok(())
    }

    /// Rewrites the log with the live records only.
    fn compact(&self, log: &mut Log) -> io::Result<()> {
        let tmp = self.running.join("runs.log.tmp");
        let mut out = Vec::new();
        for record in log.live.values() {
            out.extend(serde_json::to_vec(&Line::Started(record.clone())).map_err(io::Error::other)?);
            out.push(b'\n');
        }
        fs::write(&tmp, &out)?;
        fs::rename(&tmp, self.log_path())?;
        log.file = None;
        log.bytes = out.len() as u64;
        Ok(())
    }

    /// Notes a running attempt.
    pub fn started(&self, record: &Record) -> io::Result<()> {
        let mut log = self.log.lock().expect("state log lock poisoned");
        log.live.insert((record.task_id.clone(), record.lease_generation), record.clone());
        self.append(&mut log, &Line::Started(record.clone()))
    }

    /// Forgets an attempt whose processes are gone.
    pub fn finished(&self, key: &TaskKey) {
        let mut log = self.log.lock().expect("state log lock poisoned");
        if log.live.remove(&(key.task_id.clone(), key.lease_generation)).is_none() {
            return;
        }
        let line = Line::Finished { task_id: key.task_id.clone(), lease_generation: key.lease_generation };
        if let Err(err) = self.append(&mut log, &line) {
            tracing::warn!(error = %err, "cannot record a finished task");
        }
    }

    /// The attempts the log says are running (what a crash left behind); unreadable lines are
    /// skipped.
    pub fn records(&self) -> Vec<Record> {
        let Ok(text) = fs::read_to_string(self.log_path()) else { return Vec::new() };
        let mut live: HashMap<(String, u64), Record> = HashMap::new();
        let mut skipped = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Line>(line) {
                Ok(Line::Started(record)) => {
                    live.insert((record.task_id.clone(), record.lease_generation), record);
                }
                Ok(Line::Finished { task_id, lease_generation }) => {
                    live.remove(&(task_id, lease_generation));
                }
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(skipped, path = %self.log_path().display(), "skipped unreadable run records");
        }
        live.into_values().collect()
    }

    /// Forgets every record (after their processes were killed).
    pub fn clear(&self) {
        let mut log = self.log.lock().expect("state log lock poisoned");
        log.live.clear();
        log.file = None;
        log.bytes = 0;
        let _ = fs::remove_file(self.log_path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        // A crash: the log is read back by a new process, torn last line and all.
        let again = StateDir::open(dir.path().join("state")).unwrap().for_sidecar("side/1").unwrap();
        state.started(&record).unwrap();
        let mut log =
            fs::OpenOptions::new().append(true).open(dir.path().join("state/running/side_1/runs.log")).unwrap();
        log.write_all(b"{\"op\":\"sta").unwrap();
        assert_eq!(again.records(), vec![record.clone()]);
        again.clear();
        assert!(again.records().is_empty());
    }

    #[test]
    fn the_log_compacts_to_what_runs() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap().for_sidecar("s").unwrap();
        let record = |n: u64| Record {
            task_id: format!("T{n}"),
            lease_generation: 1,
            pid: Some(1),
            pid_start_ticks: Some(n),
            cgroup: None,
        };
        state.started(&record(0)).unwrap();
        for n in 1..20_000 {
            state.started(&record(n)).unwrap();
            state.finished(&TaskKey { task_id: format!("T{n}"), lease_generation: 1 });
        }
        assert_eq!(state.records(), vec![record(0)]);
        let size = fs::metadata(dir.path().join("running/s/runs.log")).unwrap().len();
        assert!(size <= COMPACT_BYTES + 1024, "the log grew to {size} bytes");
    }

    #[test]
    fn the_sidecar_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.sidecar_id(|| "first".into()).unwrap(), "first");
        assert_eq!(state.sidecar_id(|| "second".into()).unwrap(), "first");
    }
}

/// A sidecar id's claim on this machine: an abstract Unix socket named after the id, bound for
/// as long as the sidecar runs and released by the kernel when it exits, `kill -9` included.
/// A second sidecar with the same id on the machine is refused before it touches anything
/// (it would otherwise kill the first one's tasks as an earlier run's leftovers).
#[derive(Debug)]
pub struct IdClaim {
    _socket: std::os::unix::net::UnixListener,
}

impl IdClaim {
    pub fn take(sidecar_id: &str) -> Result<IdClaim, String> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("agentcom-sidecar/{sidecar_id}");
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|err| format!("claiming the sidecar id {sidecar_id}: {err}"))?;
        match std::os::unix::net::UnixListener::bind_addr(&address) {
            Ok(socket) => Ok(IdClaim { _socket: socket }),
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => Err(format!(
                "another sidecar with the id {sidecar_id} is running on this machine; refusing to start \
                 (it would take that sidecar's tasks for leftovers of an earlier run): give this one its own --id"
            )),
            Err(err) => Err(format!("claiming the sidecar id {sidecar_id}: {err}")),
        }
    }
}
