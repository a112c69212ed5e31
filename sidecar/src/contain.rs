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
//! **Architecture Invariant:** this module decides and cleans up; only `shell` starts processes.

use std::collections::{BTreeSet, HashSet};
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

/// Which task attempt a scope belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub task_id: String,
    pub lease_generation: u64,
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

/// The argument that makes either binary a watchdog (see [`watchdog_main_if_requested`]).
const WATCHDOG_ARG: &str = "__agentcom-watchdog";

/// A small process that outlives a crashed sidecar long enough to kill its tasks: it waits on
/// a pipe the sidecar holds, and when the pipe closes without "stop" (the sidecar died, `kill -9`
/// included) it kills every task cgroup under the sidecar's directory and every process marked
/// with its id. The next start of the sidecar cleans up too; this makes a sidecar's death take
/// its tasks with it at once.
struct Watchdog {
    child: std::process::Child,
}

impl Watchdog {
    fn start(sidecar_id: &str, dir: Option<&Path>) -> Option<Watchdog> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().ok()?;
        let dir = dir.map_or("-".to_owned(), |d| d.display().to_string());
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned());
        // No environment: the sidecar's holds secrets, and the watchdog needs none of them. Its
        // own process group, so a Ctrl-C to the terminal does not end it first.
        #[allow(clippy::disallowed_methods)] // The watchdog is containment's own process.
        let spawned = std::process::Command::new(exe)
            .args([WATCHDOG_ARG, sidecar_id, &dir])
            .env_clear()
            .env("PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => Some(Watchdog { child }),
            Err(err) => {
                warn!(error = %err, "cannot start the watchdog; a crash's leftovers wait for the next start");
                None
            }
        }
    }

    fn release(mut self) {
        use std::io::Write;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"stop");
        }
        let _ = self.child.wait();
    }
}

/// Call first in `main` of a binary that runs a sidecar: when started as the watchdog, watch
/// and exit; otherwise return at once.
pub fn watchdog_main_if_requested() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(WATCHDOG_ARG) || args.len() != 4 {
        return;
    }
    use std::io::Read;
    let mut said = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut said);
    if said == b"stop" {
        std::process::exit(0);
    }
    let (sidecar_id, dir) = (&args[2], &args[3]);
    if dir != "-" {
        // The sidecar is gone, so whatever is left in its supervisor cgroup is a task's.
        for pid in read_pids(&Path::new(dir).join("supervisor").join("cgroup.procs")) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if dir != "-"
        && let Ok(entries) = fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("task-") {
                kill_cgroup(&entry.path());
            }
        }
    }
    kill_marked(sidecar_id);
    if dir != "-" {
        let dir = Path::new(dir);
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let _ = fs::remove_dir(entry.path());
        }
        let _ = fs::remove_dir(dir);
    }
    eprintln!("agentcom watchdog: sidecar {sidecar_id} died; its tasks were killed");
    std::process::exit(0);
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

/// Finds this process's cgroup v2 directory and makes the sidecar's own under it. Returns the
/// directory and whether memory and pids limits can be set in it.
fn cgroup_setup(dir_name: &str) -> Result<(PathBuf, bool, bool), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|err| format!("/proc/self/mountinfo: {err}"))?;
    let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|err| format!("/proc/self/cgroup: {err}"))?;
    let own = own_cgroup(&own).ok_or("this process is in no cgroup v2")?;
    let base = mount.join(own.trim_start_matches('/'));
    sweep_dead_processes_dirs(&base);
    let dir = base.join(dir_name);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(format!("cannot make {}: {err}", dir.display())),
    }
    if !dir.join("cgroup.kill").exists() {
        return Err(format!("{} has no cgroup.kill (Linux 5.14 or later is needed)", dir.display()));
    }
    // Controllers must be enabled in every parent's subtree_control. A non-root cgroup that
    // holds processes cannot enable them ("no internal processes"), so a delegated sidecar moves
    // itself into a leaf first.
    let wanted = ["memory", "pids"];
    let enable = |at: &Path| {
        for controller in wanted {
            let _ = fs::write(at.join("cgroup.subtree_control"), format!("+{controller}"));
        }
    };
    let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    if wanted.iter().any(|c| available.split_whitespace().any(|a| a == *c)) {
        enable(&base);
        let enabled = fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
        if enabled.split_whitespace().next().is_none() && base != mount {
            let leaf = base.join("agentcom-supervisor");
            if fs::create_dir(&leaf).is_ok() || leaf.is_dir() {
                if fs::write(leaf.join("cgroup.procs"), b"0").is_ok() {
                    info!(cgroup = %leaf.display(), "moved the sidecar into a leaf cgroup to delegate limits");
                }
                enable(&base);
            }
        }
    }
    enable(&dir);
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let has = |name: &str| enabled.split_whitespace().any(|c| c == name);
    Ok((dir.clone(), has("memory"), has("pids")))
}

/// Directories of sidecars without a state directory: `agentcom.ephemeral-PID-RANDOM-ID`.
const EPHEMERAL_PREFIX: &str = "agentcom.ephemeral-";

/// Removes what sidecars without a state directory left when their process ended abruptly: a
/// directory whose PID is gone is nobody's.
fn sweep_dead_processes_dirs(base: &Path) {
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(EPHEMERAL_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid > 0 && !Path::new(&format!("/proc/{pid}")).exists() {
            for task in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                if task.file_name().to_string_lossy().starts_with("task-") {
                    kill_cgroup(&task.path());
                }
            }
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Makes `dir/supervisor` and moves this process into it; `None` (and a warning) if it cannot.
fn supervisor_setup(dir: &Path) -> Option<Arc<Supervisor>> {
    let path = dir.join("supervisor");
    let made = match fs::create_dir(&path) {
        Ok(()) => true,
        Err(err) => err.kind() == io::ErrorKind::AlreadyExists,
    };
    let procs = OpenOptions::new().read(true).write(true).open(path.join("cgroup.procs"));
    match procs {
        Ok(procs) if made && fs::write(path.join("cgroup.procs"), b"0").is_ok() => {
            info!(cgroup = %path.display(), "the sidecar runs in its supervisor cgroup");
            Some(Arc::new(Supervisor { procs }))
        }
        _ => {
            warn!(cgroup = %path.display(), "cannot move the sidecar into its supervisor cgroup");
            None
        }
    }
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The `0::PATH` line of `/proc/self/cgroup`.
fn own_cgroup(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

fn create_cgroup(path: &Path, limits: Limits) -> io::Result<()> {
    fs::create_dir(path)?;
    let result = set_limits(path, limits, false);
    if result.is_err() {
        let _ = fs::remove_dir(path);
    }
    result
}

/// Sets a task cgroup's limits; `reset` puts back "no limit" where `limits` sets none (for a
/// pooled cgroup an earlier task limited).
fn set_limits(path: &Path, limits: Limits, reset: bool) -> io::Result<()> {
    let set = |file: &str, value: String| {
        fs::write(path.join(file), value).map_err(|err| io::Error::new(err.kind(), format!("{file}: {err}")))
    };
    match limits.max_memory_bytes {
        Some(bytes) => {
            set("memory.max", bytes.to_string())?;
            // An out-of-memory kill takes the whole task, not one process of it.
            let _ = set("memory.oom.group", "1".to_owned());
            let _ = set("memory.swap.max", "0".to_owned());
        }
        None if reset => {
            let _ = set("memory.max", "max".to_owned());
            let _ = set("memory.swap.max", "max".to_owned());
        }
        None => {}
    }
    match limits.max_pids {
        Some(pids) => set("pids.max", pids.to_string())?,
        None if reset => {
            let _ = set("pids.max", "max".to_owned());
        }
        None => {}
    }
    Ok(())
}

/// Kills everything in a cgroup, waits (bounded) until it is empty, and removes it.
fn kill_cgroup(path: &Path) {
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    loop {
        if read_pids(&path.join("cgroup.procs")).is_empty() {
            break;
        }
        let _ = fs::write(path.join("cgroup.kill"), b"1");
        if Instant::now() >= deadline {
            warn!(cgroup = %path.display(), "processes still alive after cgroup.kill");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = fs::remove_dir(path);
}

/// Reads a cgroup's `cgroup.procs` through a descriptor kept open (no open and close per look).
fn read_pids_at(file: &File) -> Vec<i32> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let mut text = Vec::new();
    loop {
        match file.read_at(&mut buf, text.len() as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
    }
    parse_pids(&String::from_utf8_lossy(&text))
}

fn read_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path).map(|s| parse_pids(&s)).unwrap_or_default()
}

fn parse_pids(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The children of `pid`, across all its threads (`/proc/PID/task/TID/children`).
fn children(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else { return kids };
    for thread in threads.flatten() {
        if let Ok(text) = fs::read_to_string(thread.path().join("children")) {
            kids.extend(parse_pids(&text));
        }
    }
    kids
}

fn descendants(pid: i32, out: &mut Vec<i32>) {
    let mut stack = vec![pid];
    let mut seen = HashSet::new();
    while let Some(next) = stack.pop() {
        for child in children(next) {
            if seen.insert(child) {
                out.push(child);
                stack.push(child);
            }
        }
    }
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .is_some_and(|s| s.state == 'Z')
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`), which
/// tells a process from a later one that reused its pid.
pub fn pid_start_ticks(pid: i32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| parse_stat(&stat)).map(|s| s.start_ticks)
}

#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name sits in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the file, starttime field 22.
    let state = fields.first()?.chars().next()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some(Stat { state, start_ticks })
}

struct Marks {
    sidecar: String,
    task: String,
    generation: u64,
}

/// The marker variables a process started with, if it has them all.
fn marks(pid: i32) -> Option<Marks> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    parse_marks(&environ)
}

fn has_no_marks(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| !environ.split(|&b| b == 0).any(|var| var.starts_with(MARK_SIDECAR.as_bytes())))
}

fn parse_marks(environ: &[u8]) -> Option<Marks> {
    let (mut sidecar, mut task, mut generation) = (None, None, None);
    for var in environ.split(|&b| b == 0) {
        let Ok(var) = std::str::from_utf8(var) else { continue };
        let Some((key, value)) = var.split_once('=') else { continue };
        match key {
            MARK_SIDECAR => sidecar = Some(value.to_owned()),
            MARK_TASK => task = Some(value.to_owned()),
            MARK_GENERATION => generation = value.parse().ok(),
            _ => {}
        }
    }
    Some(Marks { sidecar: sidecar?, task: task?, generation: generation? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(Stat { state: 'S', start_ticks: 987654 }));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) Z 1"), None);
    }

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        // Recorded from a hybrid host: v1 controllers plus v2 at /sys/fs/cgroup/unified.
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 30 0:34 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), None);
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/agentcom.service\n"),
            Some("/system.slice/agentcom.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn marks_need_all_three_variables() {
        let env = b"PATH=/bin\0AGENTCOM_SIDECAR_ID=s1\0AGENTCOM_TASK_ID=t1\0AGENTCOM_LEASE_GENERATION=7\0";
        let marks = parse_marks(env).unwrap();
        assert_eq!((marks.sidecar.as_str(), marks.task.as_str(), marks.generation), ("s1", "t1", 7));
        assert!(parse_marks(b"AGENTCOM_SIDECAR_ID=s1\0AGENTCOM_TASK_ID=t1\0").is_none());
        assert!(parse_marks(b"").is_none());
    }

    #[test]
    fn only_ephemeral_directories_of_dead_processes_are_swept() {
        let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return };
        let (Some(mount), Ok(own)) = (cgroup2_mount(&mountinfo), fs::read_to_string("/proc/self/cgroup")) else {
            return; // No cgroup v2 here: nothing is swept, nothing to check.
        };
        let base = mount.join(own_cgroup(&own).unwrap_or("/").trim_start_matches('/'));
        #[allow(clippy::disallowed_methods)] // A process to be dead, for its pid.
        let dead = std::process::Command::new("true").spawn().and_then(|mut c| c.wait().map(|_| c.id())).unwrap();
        let ours = format!("{EPHEMERAL_PREFIX}{}-000000-sweep-test", std::process::id());
        let gone = format!("{EPHEMERAL_PREFIX}{dead}-000000-sweep-test");
        // A durable name whose id happens to end like a pid and a suffix.
        let durable = format!("agentcom-node-{dead}-3fa1b2");
        let made: Vec<PathBuf> = [&ours, &gone, &durable].iter().map(|n| base.join(n)).collect();
        if made.iter().any(|dir| fs::create_dir(dir).is_err()) {
            made.iter().for_each(|dir| drop(fs::remove_dir(dir)));
            return; // Not writable here (the subreaper case): nothing is swept.
        }
        sweep_dead_processes_dirs(&base);
        let exists: Vec<bool> = made.iter().map(|dir| dir.exists()).collect();
        made.iter().for_each(|dir| drop(fs::remove_dir(dir)));
        assert_eq!(exists, vec![true, false, true], "only the dead process's ephemeral directory goes");
    }

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
