//! One identity per task (`--run-as-range FIRST-LAST`): each running attempt gets a uid of its
//! own from the range (its gid the same number; no account needed), and a private directory
//! owned by it, mode 0700, where it runs and which is its home. A task can then neither read
//! another's `/proc/PID/environ`, nor signal it, nor read its files, as systemd's
//! `DynamicUser=` gives each unit a fresh uid.
//!
//! The uid is held for the whole attempt (work, verification, the workspace), released when it
//! ends, and handed out again least recently used first. Its private directory is removed then;
//! files the task left anywhere else keep its uid (a later task with the same uid could read
//! them), which is why the range should be larger than the slots.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::attempt::TaskKey;

/// The uids tasks run as: `FIRST-LAST`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

/// The most uids a range may hold.
const MAX_RANGE: u32 = 1 << 20;

impl std::str::FromStr for UidRange {
    type Err = String;

    fn from_str(text: &str) -> Result<UidRange, String> {
        let bad = || format!("{text:?}: expected FIRST-LAST, two uids (e.g. 61000-61999)");
        let (first, last) = text.split_once('-').ok_or_else(bad)?;
        let (first, last): (u32, u32) =
            (first.trim().parse().map_err(|_| bad())?, last.trim().parse().map_err(|_| bad())?);
        if first == 0 || last < first {
            return Err(format!("{text:?}: the range must not hold uid 0, and FIRST must not be above LAST"));
        }
        if last - first >= MAX_RANGE || last == u32::MAX {
            return Err(format!("{text:?}: at most {MAX_RANGE} uids, below 4294967295"));
        }
        Ok(UidRange { first, last })
    }
}

impl UidRange {
    /// How many uids it holds (never none: the parse refuses an empty range).
    fn count(&self) -> u32 {
        self.last - self.first + 1
    }

    /// Refuses a range that cannot keep tasks apart: one smaller than the slots, or one that
    /// holds an account's uid or a group's gid (a task would act as that account).
    pub fn check(&self, slots: u32) -> Result<(), String> {
        if self.count() < slots {
            return Err(format!(
                "--run-as-range {}-{} holds {} uids for {slots} slots: each running task needs its own",
                self.first,
                self.last,
                self.count()
            ));
        }
        for id in self.first..=self.last {
            if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id)) {
                return Err(format!(
                    "--run-as-range {}-{}: uid {id} is the user {}; choose a range no account uses",
                    self.first, self.last, user.name
                ));
            }
            if let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id)) {
                return Err(format!(
                    "--run-as-range {}-{}: gid {id} is the group {}; choose a range no group uses",
                    self.first, self.last, group.name
                ));
            }
        }
        Ok(())
    }
}

/// The identity an attempt runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskUser {
    pub uid: u32,
    /// Its private directory (0700, its own): where it runs unless it names a cwd, and its HOME.
    pub dir: PathBuf,
}

/// The uids of a range, lent to attempts.
#[derive(Debug)]
pub struct Users {
    /// Where the private directories are made (`WORK_DIR/.agentcom/run`, 0711: traversable,
    /// not listable).
    root: PathBuf,
    state: Mutex<Lent>,
}

#[derive(Debug, Default)]
struct Lent {
    free: VecDeque<u32>,
    /// Each attempt's identity, and how many leases hold it.
    by_attempt: HashMap<TaskKey, (TaskUser, usize)>,
}

impl Users {
    /// The range's uids, all free, with their private directories under `work_dir`, which
    /// must let other users through (its mode has o+x).
    pub fn new(range: UidRange, work_dir: &Path) -> Result<Users, String> {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(work_dir).map_err(|err| format!("{}: {err}", work_dir.display()))?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "--run-as-range: tasks cannot reach the work directory {} (mode {:o}): let others through it (chmod o+x)",
                work_dir.display(),
                mode & 0o7777
            ));
        }
        let root = work_dir.join(".agentcom").join("run");
        for dir in [work_dir.join(".agentcom"), root.clone()] {
            std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|err| format!("{}: {err}", dir.display()))?;
        }
        let free = (range.first..=range.last).collect();
        Ok(Users { root, state: Mutex::new(Lent { free, by_attempt: HashMap::new() }) })
    }

    /// Lends an attempt a uid and makes its private directory; the returned lease gives both
    /// back when dropped. An attempt that holds one already gets the same.
    pub fn lend(self: &Arc<Users>, key: &TaskKey) -> Result<Lease, String> {
        let user = {
            let mut lent = self.state.lock().expect("users lock poisoned");
            if let Some((_, holders)) = lent.by_attempt.get_mut(key) {
                *holders += 1;
                return Ok(Lease { users: self.clone(), key: key.clone() });
            }
            let uid = lent.free.pop_front().ok_or("every uid of --run-as-range is in use")?;
            let user = TaskUser { uid, dir: self.root.join(format!("{}-{}", key.task_id, key.lease_generation)) };
            lent.by_attempt.insert(key.clone(), (user.clone(), 1));
            user
        };
        if let Err(err) = make_private(&user) {
            self.give_back(key);
            return Err(format!("making the task's own directory {}: {err}", user.dir.display()));
        }
        Ok(Lease { users: self.clone(), key: key.clone() })
    }

    /// The identity lent to an attempt.
    pub fn of(&self, key: &TaskKey) -> Option<TaskUser> {
        self.state.lock().expect("users lock poisoned").by_attempt.get(key).map(|(user, _)| user.clone())
    }

    fn give_back(&self, key: &TaskKey) {
        let user = {
            let mut lent = self.state.lock().expect("users lock poisoned");
            match lent.by_attempt.get_mut(key) {
                Some((_, holders)) if *holders > 1 => {
                    *holders -= 1;
                    None
                }
                Some(_) => lent.by_attempt.remove(key).map(|(user, _)| user),
                None => None,
            }
        };
        if let Some(user) = user {
            if let Err(err) = std::fs::remove_dir_all(&user.dir)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %user.dir.display(), error = %err, "cannot remove a task's own directory");
            }
            self.state.lock().expect("users lock poisoned").free.push_back(user.uid);
        }
    }
}

/// A fresh private directory: whatever an earlier attempt left there is gone first.
fn make_private(user: &TaskUser) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if user.dir.exists() {
        std::fs::remove_dir_all(&user.dir)?;
    }
    std::fs::create_dir(&user.dir)?;
    std::fs::set_permissions(&user.dir, std::fs::Permissions::from_mode(0o700))?;
    nix::unistd::chown(
        &user.dir,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.uid)),
    )
    .map_err(std::io::Error::from)
}

/// An attempt's hold on its identity.
#[derive(Debug)]
pub struct Lease {
    users: Arc<Users>,
    key: TaskKey,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.users.give_back(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_what_cannot_work() {
        assert_eq!("61000-61999".parse::<UidRange>(), Ok(UidRange { first: 61000, last: 61999 }));
        assert_eq!("61000-61999".parse::<UidRange>().unwrap().count(), 1000);
        for bad in ["", "61000", "0-10", "20-10", "a-b", "1-4294967295", "1-2000000"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad}");
        }
        let small = "61000-61001".parse::<UidRange>().unwrap();
        assert!(small.check(4).unwrap_err().contains("each running task needs its own"));
        // A range over an account's uid: this machine's own, whoever runs the test.
        let own = nix::unistd::getuid().as_raw().max(1);
        if nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(own)).ok().flatten().is_some() {
            let range = UidRange { first: own, last: own };
            assert!(range.check(1).unwrap_err().contains("choose a range no"), "uid {own}");
        }
    }

    #[test]
    fn uids_are_lent_once_per_attempt_and_come_back_least_recently_used_first() {
        assert!(nix::unistd::geteuid().is_root(), "handing directories to other uids needs root, as CI runs");
        let work = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let users = Arc::new(Users::new(UidRange { first: 61000, last: 61001 }, work.path()).unwrap());
        let key = |n: u64| TaskKey { task_id: format!("t{n}"), lease_generation: 1 };
        let a = users.lend(&key(1)).unwrap();
        let again = users.lend(&key(1)).unwrap();
        assert_eq!(users.of(&key(1)).unwrap().uid, 61000);
        let b = users.lend(&key(2)).unwrap();
        assert_eq!(users.of(&key(2)).unwrap().uid, 61001);
        assert!(users.lend(&key(3)).unwrap_err().contains("in use"));
        let dir = users.of(&key(2)).unwrap().dir;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        drop(b);
        assert!(!dir.exists(), "its directory goes with it");
        drop(again);
        drop(a);
        let _c = users.lend(&key(3)).unwrap();
        assert_eq!(users.of(&key(3)).unwrap().uid, 61001, "least recently used first");
    }
}
