//! Containment: every process a task starts lives and dies with the task, `setsid` descendants
//! included, and nothing of it survives the sidecar.
//!
//! One mechanism is chosen when the sidecar starts:
//! - **cgroup v2.** Each attempt gets its own cgroup under `agentcom-SIDECAR` in the sidecar's
//!   own cgroup (its delegated subtree under systemd `Delegate=yes`). The first process joins it
//!   before it execs, so every descendant is born inside. Ending the task is one write to
//!   `cgroup.kill`; `memory.max` and `pids.max` give limits where those controllers are
//!   delegated.
//! - **Subreaper.** Where no cgroup can be made, the sidecar is a child subreaper, so a
//!   descendant whose parent dies is re-parented to the sidecar instead of to init. At the end
//!   of a task the sidecar kills its process group, the tree under its first process, and every
//!   re-parented orphan: those carrying this task's marker variables, and those carrying none
//!   (a process that cleared its environment cannot be told apart, so it is not spared).
//!
//! In both, the first process gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the sidecar.
//! What outlives a `kill -9` of the sidecar is killed by the next start with the same id
//! ([`Containment::kill_leftovers`]), before that sidecar says hello.
//!
//! `cgroupfs` reads and writes the cgroup file system, `procfs` reads `/proc`, and `watchdog`
//! is the process that outlives a crashed sidecar.
//!
//! **Architecture Invariant:** this module decides and cleans up; only `shell` starts tasks.

use crate::attempt::TaskKey;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

mod cgroupfs;
mod procfs;
mod watchdog;

use cgroupfs::*;
pub use procfs::pid_start_ticks;
use procfs::*;
use watchdog::Watchdog;
pub use watchdog::watchdog_main_if_requested;

/// Variables every task process starts with; they mark its processes as the task's.
pub const MARK_SIDECAR: &str = "AGENTCOM_SIDECAR_ID";
pub const MARK_TASK: &str = "AGENTCOM_TASK_ID";
pub const MARK_GENERATION: &str = "AGENTCOM_LEASE_GENERATION";

/// How long a kill may take to empty a task's processes before the sidecar says so.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which mechanism to use (`--containment`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preference {
    /// cgroup v2 when a cgroup can be made, else the subreaper.
    #[default]
    Auto,
    /// cgroup v2 or refuse to start.
    Cgroup,
    /// The subreaper even where cgroups work.
    Subreaper,
}

impl std::str::FromStr for Preference {
    type Err = String;
    fn from_str(s: &str) -> Result<Preference, String> {
        match s {
            "auto" => Ok(Preference::Auto),
            "cgroup" => Ok(Preference::Cgroup),
            "subreaper" => Ok(Preference::Subreaper),
            other => Err(format!("containment {other:?} is not one of auto, cgroup, subreaper")),
        }
    }
}

/// Limits a task asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_memory_bytes: Option<u64>,
    pub max_pids: Option<u64>,
}

/// The mechanism in use, as `hubctl hosts ID` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// `cgroup-v2` or `subreaper`.
    pub mechanism: &'static str,
    /// Where task cgroups live, or why there are none.
    pub detail: String,
    pub memory_limit: bool,
    pub pids_limit: bool,
}

impl Summary {
    /// One line: `cgroup-v2 (/sys/fs/cgroup/...; limits: memory, pids)`.
    pub fn describe(&self) -> String {
        let limits: Vec<&str> = [(self.memory_limit, "memory"), (self.pids_limit, "pids")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        let limits = if limits.is_empty() { "none".to_owned() } else { limits.join(", ") };
        format!("{} ({}; limits: {limits})", self.mechanism, self.detail)
    }
}

#[derive(Clone)]
pub struct Containment {
    inner: Arc<Inner>,
}

struct Inner {
    sidecar_id: String,
    kind: Kind,
    summary: Summary,
    durable: bool,
    /// Emptied task cgroups, kept for the next task: making and removing a cgroup costs more
    /// than running a small task.
    pool: Mutex<Vec<Pooled>>,
    next_cgroup: std::sync::atomic::AtomicU64,
    /// The watchdog's end of the pipe: closed without a word when this process dies.
    watchdog: Mutex<Option<Watchdog>>,
}

/// An empty task cgroup waiting for its next task.
struct Pooled {
    path: PathBuf,
    procs: File,
    /// Whether memory.max or pids.max were set (and must be reset before reuse).
    limited: bool,
}

/// Idle cgroups kept at most.
const POOL_MAX: usize = 64;

impl Drop for Inner {
    fn drop(&mut self) {
        // The pooled cgroups are empty: they go, and so does the sidecar's directory, unless a
        // task cgroup is left in it for the next start to find.
        let pooled = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for Pooled { path, procs, .. } in pooled {
            drop(procs);
            let _ = fs::remove_dir(&path);
        }
        if let Kind::Cgroup { dir, supervisor } = &self.kind {
            if supervisor.is_some()
                && let Some(base) = dir.parent()
            {
                // A clean stop: back to where the sidecar started, so its cgroups can go.
                if fs::write(base.join("cgroup.procs"), b"0").is_ok() {
                    let _ = fs::remove_dir(dir.join("supervisor"));
                }
            }
            // Task cgroups that emptied since (a scope dropped unfinished kills, but cannot wait);
            // one still holding processes keeps the directory for the next start.
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with("task-") {
                    let _ = fs::remove_dir(entry.path());
                }
            }
            let _ = fs::remove_dir(dir);
        }
    }
}

enum Kind {
    /// `supervisor` is the leaf cgroup a durable sidecar moves itself into: every process it
    /// spawns is born there and moved to its task's cgroup at once, so anything found there
    /// besides the sidecar is a task process that forked before the move.
    Cgroup {
        dir: PathBuf,
        supervisor: Option<Arc<Supervisor>>,
    },
    Subreaper,
}

/// The supervisor cgroup's `cgroup.procs`, kept open.
struct Supervisor {
    procs: File,
}

impl std::fmt::Debug for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.summary.describe())
    }
}

impl Containment {
    /// Chooses and prepares the mechanism for a sidecar. A `durable` sidecar (one with a state
    /// directory) keeps its cgroups under a name made from its id alone, so its next start finds
    /// what a crash left; any other gets a name of its own, so sidecars that share an id in one
    /// process (tests) never touch each other's tasks.
    pub fn setup(sidecar_id: &str, preference: Preference, durable: bool) -> Result<Containment, String> {
        let dir_name = if durable {
            format!("agentcom-{}", sanitize(sidecar_id))
        } else {
            // A prefix no durable name has ("agentcom-"), so a sweep can never take one for another.
            format!(
                "{EPHEMERAL_PREFIX}{}-{:06x}-{}",
                std::process::id(),
                rand::random::<u32>() & 0xff_ffff,
                sanitize(sidecar_id)
            )
        };
        let mut watchdog = None;
        let cgroup = match preference {
            Preference::Subreaper => Err("subreaper chosen by configuration".to_owned()),
            Preference::Auto | Preference::Cgroup => cgroup_setup(&dir_name),
        };
        let (kind, summary) = match cgroup {
            Ok((dir, memory, pids)) => {
                let summary = Summary {
                    mechanism: "cgroup-v2",
                    detail: dir.display().to_string(),
                    memory_limit: memory,
                    pids_limit: pids,
                };
                // The watchdog first, so it stays outside the supervisor cgroup.
                if durable {
                    watchdog = Watchdog::start(sidecar_id, Some(&dir));
                }
                let supervisor = if durable { supervisor_setup(&dir) } else { None };
                (Kind::Cgroup { dir, supervisor }, summary)
            }
            Err(why) if preference == Preference::Cgroup => {
                return Err(format!("cgroup containment is not available: {why}"));
            }
            Err(why) => {
                if durable {
                    watchdog = Watchdog::start(sidecar_id, None);
                }
                nix::sys::prctl::set_child_subreaper(true)
                    .map_err(|err| format!("cannot become a subreaper: {err}"))?;
                start_reaper();
                let detail = format!("no task cgroups: {why}");
                (Kind::Subreaper, Summary { mechanism: "subreaper", detail, memory_limit: false, pids_limit: false })
            }
        };
        info!(sidecar_id, containment = summary.describe(), "task containment");
        Ok(Containment {
            inner: Arc::new(Inner {
                sidecar_id: sidecar_id.to_owned(),
                kind,
                summary,
                durable,
                pool: Mutex::new(Vec::new()),
                next_cgroup: std::sync::atomic::AtomicU64::new(0),
                watchdog: Mutex::new(watchdog),
            }),
        })
    }

    pub fn summary(&self) -> &Summary {
        &self.inner.summary
    }

    /// Tells the watchdog this sidecar is stopping cleanly (its tasks are handled), so it
    /// leaves without killing anything.
    pub fn release_watchdog(&self) {
        if let Some(watchdog) = self.inner.watchdog.lock().expect("watchdog lock poisoned").take() {
            watchdog.release();
        }
    }

    pub fn sidecar_id(&self) -> &str {
        &self.inner.sidecar_id
    }

    /// Prepares the scope one attempt's processes will live in.
    pub fn scope(&self, key: &TaskKey, limits: Limits) -> Result<Scope, String> {
        let summary = &self.inner.summary;
        if limits.max_memory_bytes.is_some() && !summary.memory_limit {
            return Err(format!(
                "this sidecar cannot enforce limits.max_memory_bytes ({}: the cgroup v2 memory controller is not delegated to it)",
                summary.mechanism
            ));
        }
        if limits.max_pids.is_some() && !summary.pids_limit {
            return Err(format!(
                "this sidecar cannot enforce limits.max_pids ({}: the cgroup v2 pids controller is not delegated to it)",
                summary.mechanism
            ));
        }
        let kind = match &self.inner.kind {
            Kind::Cgroup { dir, supervisor } => {
                let pooled = self.inner.pool.lock().expect("pool lock poisoned").pop();
                let Pooled { path, procs, limited } = match pooled {
                    Some(pooled) => {
                        let limited = pooled.limited || limits != Limits::default();
                        set_limits(&pooled.path, limits, pooled.limited)
                            .map_err(|err| format!("cannot set limits on {}: {err}", pooled.path.display()))?;
                        Pooled { limited, ..pooled }
                    }
                    None => {
                        let n = self.inner.next_cgroup.fetch_add(1, Ordering::Relaxed);
                        let path = dir.join(format!("task-{n}"));
                        if path.exists() {
                            kill_cgroup(&path);
                        }
                        create_cgroup(&path, limits)
                            .map_err(|err| format!("cannot make the task cgroup {}: {err}", path.display()))?;
                        let procs = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(path.join("cgroup.procs"))
                            .map_err(|err| format!("cannot open {}/cgroup.procs: {err}", path.display()))?;
                        Pooled { path, procs, limited: limits != Limits::default() }
                    }
                };
                ScopeKind::Cgroup { path, procs, limited, supervisor: supervisor.clone() }
            }
            Kind::Subreaper => ScopeKind::Subreaper,
        };
        Ok(Scope { key: key.clone(), containment: self.inner.clone(), kind, root: None, finished: false })
    }

    /// Kills what earlier runs of this sidecar left: every task cgroup under its directory, the
    /// first processes named in `records`, and every process on the machine marked with this
    /// sidecar's id (what escaped while an earlier run had no cgroups). Returns how many
    /// processes or cgroups it ended. Only for a durable sidecar: the id must be its alone.
    pub fn kill_leftovers(&self, records: &[crate::state::Record]) -> usize {
        debug_assert!(self.inner.durable, "kill_leftovers needs an id no other sidecar uses");
        let mut ended = 0;
        for record in records {
            if let Some(pid) = record.pid
                && pid_start_ticks(pid) == record.pid_start_ticks
                && record.pid_start_ticks.is_some()
            {
                warn!(task_id = record.task_id, pid, "killing a process left by an earlier run");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                ended += 1;
            }
        }
        if let Kind::Cgroup { dir, .. } = &self.inner.kind {
            // A crash can leave a task's first process in the supervisor cgroup, spawned and not
            // yet moved: everything there but this process is such a leftover.
            let own = std::process::id() as i32;
            for pid in read_pids(&dir.join("supervisor").join("cgroup.procs")).into_iter().filter(|&p| p != own) {
                warn!(pid, "killing a process an earlier run left in its supervisor cgroup");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                ended += 1;
            }
        }
        if let Kind::Cgroup { dir, .. } = &self.inner.kind
            && let Ok(entries) = fs::read_dir(dir)
        {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() && entry.file_name().to_string_lossy().starts_with("task-") {
                    if !read_pids(&path.join("cgroup.procs")).is_empty() {
                        warn!(cgroup = %path.display(), "killing a task cgroup left by an earlier run");
                        ended += 1;
                    }
                    kill_cgroup(&path);
                }
            }
        }
        for pid in kill_marked(&self.inner.sidecar_id) {
            warn!(pid, "killed a task process left by an earlier run");
            ended += 1;
        }
        ended
    }
}

/// Kills every process on the machine marked with `sidecar_id`, looking again (bounded) for what
/// they fork meanwhile. Returns the pids killed.
fn kill_marked(sidecar_id: &str) -> Vec<i32> {
    let own = std::process::id() as i32;
    let mut killed = Vec::new();
    for _ in 0..20 {
        let marked: Vec<i32> = all_pids()
            .into_iter()
            .filter(|&pid| pid != own && !is_zombie(pid) && marks(pid).is_some_and(|m| m.sidecar == sidecar_id))
            .collect();
        if marked.is_empty() {
            break;
        }
        for pid in marked {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            reap_if_ours(pid);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// Where one attempt's processes live. Dropped without [`Scope::finish`] (the job's future
/// dropped, as when its sidecar is torn down), it kills what is in it.
pub struct Scope {
    key: TaskKey,
    containment: Arc<Inner>,
    kind: ScopeKind,
    root: Option<i32>,
    finished: bool,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if !self.finished {
            self.kill();
        }
    }
}

enum ScopeKind {
    Cgroup { path: PathBuf, procs: File, limited: bool, supervisor: Option<Arc<Supervisor>> },
    Subreaper,
}

/// What the child does between fork and exec; see [`Scope::child_setup`].
pub struct ChildSetup {
    /// `cgroup.procs` of the task's cgroup, opened by the sidecar (so the write is checked
    /// against the sidecar's credentials, also when the task runs as another user).
    cgroup_procs: Option<i32>,
    parent: i32,
}

impl ChildSetup {
    /// Runs in the forked child before exec: only async-signal-safe calls, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        use nix::libc;
        #[allow(unsafe_code)] // The raw calls the child makes before exec; each is async-signal-safe.
        // SAFETY: prctl, getppid, write and _exit are async-signal-safe and touch no memory the
        // parent owns; the fd is open in the parent for the whole spawn.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The sidecar may have died between fork and prctl: then no signal would come.
            if libc::getppid() != self.parent {
                libc::_exit(137);
            }
            if let Some(fd) = self.cgroup_procs
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Scope {
    /// Whether the first process must be set up between fork and exec ([`Scope::child_setup`]):
    /// without cgroups (for `PR_SET_PDEATHSIG`), and without a supervisor cgroup to catch what
    /// forks before a move. With both, the process is spawned the fast way (`posix_spawn`, which
    /// does not fork the sidecar's memory) and moved into its cgroup by [`Scope::adopt`].
    pub fn needs_child_setup(&self) -> bool {
        !matches!(self.kind, ScopeKind::Cgroup { supervisor: Some(_), .. })
    }

    /// Moves a just-spawned first process into the task's cgroup, then moves (or kills) any
    /// process it forked before the move: those are in the supervisor cgroup, where nothing but
    /// the sidecar belongs. Call with the root registry locked ([`register_root`]), so no other
    /// spawn is between its spawn and its move. The kernel orders fork against cgroup
    /// migration, so whatever forks after the move is born in the task's cgroup.
    pub fn adopt(&self, pid: i32) -> io::Result<()> {
        let ScopeKind::Cgroup { procs, supervisor, .. } = &self.kind else { return Ok(()) };
        use std::io::Write;
        (&*procs).write_all(pid.to_string().as_bytes())?;
        let Some(supervisor) = supervisor else { return Ok(()) };
        // Whatever is in the supervisor cgroup besides the sidecar is this process's: every
        // earlier spawn was followed by a sweep like this one under the same lock, and what its
        // processes fork since is born in their own cgroups. So a stray goes where its first
        // process went, with no need to read anything of it (a process in the middle of exec
        // has no readable environment). A stray being moved may fork meanwhile, its child born
        // where it was: look again until nothing is left, and kill what a fork bomb keeps making.
        let own = std::process::id() as i32;
        for round in 0..64 {
            let strays: Vec<i32> = read_pids_at(&supervisor.procs).into_iter().filter(|&p| p != own).collect();
            if strays.is_empty() {
                break;
            }
            for stray in strays {
                let moved = round < 63 && (&*procs).write_all(stray.to_string().as_bytes()).is_ok();
                if !moved {
                    warn!(pid = stray, "killing a process that kept forking before its task was contained");
                    let _ = kill(Pid::from_raw(stray), Signal::SIGKILL);
                }
            }
        }
        Ok(())
    }

    /// What the child must do before exec.
    pub fn child_setup(&self) -> ChildSetup {
        ChildSetup {
            cgroup_procs: match &self.kind {
                ScopeKind::Cgroup { procs, .. } => Some(procs.as_raw_fd()),
                ScopeKind::Subreaper => None,
            },
            parent: std::process::id() as i32,
        }
    }

    /// The cgroup, if the attempt has one.
    pub fn cgroup(&self) -> Option<&Path> {
        match &self.kind {
            ScopeKind::Cgroup { path, .. } => Some(path),
            ScopeKind::Subreaper => None,
        }
    }

    /// Records the first process.
    pub fn started(&mut self, pid: i32) {
        self.root = Some(pid);
    }

    /// Asks every process to stop (SIGTERM).
    pub fn terminate(&self) {
        self.signal_all(Signal::SIGTERM);
    }

    /// Kills every process now.
    pub fn kill(&self) {
        match &self.kind {
            ScopeKind::Cgroup { path, .. } => {
                if fs::write(path.join("cgroup.kill"), b"1").is_err() {
                    self.signal_all(Signal::SIGKILL);
                }
            }
            ScopeKind::Subreaper => self.signal_all(Signal::SIGKILL),
        }
    }

    fn signal_all(&self, signal: Signal) {
        match &self.kind {
            ScopeKind::Cgroup { path, .. } => {
                for pid in read_pids(&path.join("cgroup.procs")) {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
            }
            ScopeKind::Subreaper => {
                if let Some(root) = self.root {
                    let _ = killpg(Pid::from_raw(root), signal);
                }
                for pid in self.subreaper_members() {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
            }
        }
    }

    /// Without cgroups: the live processes of this attempt, found from the first process down and
    /// among the orphans re-parented to the sidecar.
    fn subreaper_members(&self) -> Vec<i32> {
        let mut members = Vec::new();
        if let Some(root) = self.root {
            descendants(root, &mut members);
        }
        let roots = ROOTS.lock().expect("roots lock poisoned");
        for child in children(std::process::id() as i32) {
            if roots.contains(&child) {
                continue;
            }
            let belongs = match marks(child) {
                Some(mark) => {
                    mark.sidecar == self.containment.sidecar_id
                        && mark.task == self.key.task_id
                        && mark.generation == self.key.lease_generation
                }
                // Zombies read as unmarked; they are reaped, not killed.
                None => !is_zombie(child) && has_no_marks(child),
            };
            if belongs {
                ORPHANS.lock().expect("orphans lock poisoned").insert(child);
                members.push(child);
                descendants(child, &mut members);
            }
        }
        members
    }

    /// Ends whatever is left of the attempt and waits until nothing of it runs, then removes
    /// its cgroup. Returns false if something was still alive after the wait.
    pub async fn finish(mut self) -> bool {
        let deadline = Instant::now() + EMPTY_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        let mut empty = false;
        while Instant::now() < deadline {
            let alive = match &self.kind {
                ScopeKind::Cgroup { procs, .. } => !read_pids_at(procs).is_empty(),
                ScopeKind::Subreaper => {
                    reap_orphans();
                    let members = self.subreaper_members();
                    !members.iter().all(|&pid| is_zombie(pid) || !alive(pid))
                }
            };
            if !alive {
                empty = true;
                break;
            }
            self.kill();
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        if !empty {
            warn!(task_id = self.key.task_id, "task processes still alive after being killed");
        }
        if let ScopeKind::Subreaper = self.kind {
            reap_orphans();
        }
        self.finished = true;
        if let ScopeKind::Cgroup { path, procs, limited, .. } = std::mem::replace(&mut self.kind, ScopeKind::Subreaper)
        {
            let mut pool = self.containment.pool.lock().expect("pool lock poisoned");
            if empty && pool.len() < POOL_MAX {
                pool.push(Pooled { path, procs, limited });
            } else {
                drop(pool);
                drop(procs);
                if let Err(err) = fs::remove_dir(&path) {
                    debug!(cgroup = %path.display(), error = %err, "cannot remove the task cgroup yet");
                }
            }
        }
        empty
    }
}

/// The first processes of running tasks in this process (subreaper mode): these are tokio's to
/// reap, never the reaper's. Held while spawning so a fresh child is never mistaken for an orphan.
static ROOTS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Orphans seen alive and attributed to a task: the only processes the reaper waits for, so it
/// never takes an exit status another part of this process is waiting on.
static ORPHANS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Runs `spawn` with the root registry locked, then records the pid it returns; `spawn` adopts
/// the process into its cgroup before it returns (see [`Scope::adopt`]).
pub fn register_root<T>(spawn: impl FnOnce() -> io::Result<(T, i32)>) -> io::Result<T> {
    let mut roots = ROOTS.lock().expect("roots lock poisoned");
    let (value, pid) = spawn()?;
    roots.push(pid);
    Ok(value)
}

/// Forgets a first process once tokio has reaped it.
pub fn unregister_root(pid: i32) {
    ROOTS.lock().expect("roots lock poisoned").retain(|&p| p != pid);
}

/// Waits for attributed orphans that have exited.
fn reap_orphans() {
    ORPHANS.lock().expect("orphans lock poisoned").retain(|&pid| !reap_one(pid));
}

fn reap_if_ours(pid: i32) {
    let mut orphans = ORPHANS.lock().expect("orphans lock poisoned");
    if orphans.contains(&pid) && reap_one(pid) {
        orphans.remove(&pid);
    }
}

/// True when `pid` is gone (reaped now, or not our child).
fn reap_one(pid: i32) -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) | Err(_) => true,
    }
}

/// A background thread that reaps attributed orphans now and then, for those that exit on their
/// own while their task still runs.
fn start_reaper() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = std::thread::Builder::new().name("agentcom-reaper".into()).spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                reap_orphans();
            }
        });
    });
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .take(120)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_as_one_line() {
        let summary = Summary {
            mechanism: "cgroup-v2",
            detail: "/sys/fs/cgroup/x".into(),
            memory_limit: true,
            pids_limit: false,
        };
        assert_eq!(summary.describe(), "cgroup-v2 (/sys/fs/cgroup/x; limits: memory)");
        let summary = Summary {
            mechanism: "subreaper",
            detail: "no task cgroups: x".into(),
            memory_limit: false,
            pids_limit: false,
        };
        assert_eq!(summary.describe(), "subreaper (no task cgroups: x; limits: none)");
    }
}
