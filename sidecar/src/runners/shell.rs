//! Runs one shell task inside its containment scope, and ends all of it.
//!
//! The child gets its own cgroup (or, without cgroups, its own process group under a subreaper;
//! see `contain`), an environment built only from an allowlist plus the task's own variables
//! and secrets, and a working directory that stays inside the work root. Output is read as it comes: the first
//! `max_output_bytes` of each stream are kept and streamed, the rest is counted and dropped,
//! so a task that writes gigabytes costs the sidecar no more than the cap.
//!
//! On timeout or cancel every process of the task gets SIGTERM, then SIGKILL after a grace
//! period. When the main process exits on its own, whatever it left behind is killed too (as
//! systemd does for a unit's control group), `setsid` descendants included, so no background
//! child outlives its task.
//!
//! **Architecture Invariant:** this is the only module that starts task processes.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use agentcom_types::domain::{Exit, Outcome, Stream};

use crate::attempt::TaskKey;
use crate::contain::{self, Containment};
use crate::job::Sink;
use crate::state::{Record, StateDir};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    Argv(Vec<String>),
    Script(String),
}

#[derive(Clone, Debug)]
pub struct ShellJob {
    /// The attempt this job is; it names the job's cgroup and marks its processes.
    pub key: TaskKey,
    pub program: Program,
    /// Relative paths are taken from the sidecar's work directory.
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// Variables whose values the sidecar fills in from its own `--secret NAME=FILE`.
    pub secret_env: Vec<String>,
    pub timeout: Option<Duration>,
    pub max_output_bytes: usize,
    pub limits: contain::Limits,
}

/// How the sidecar runs processes, as configured.
#[derive(Clone, Debug)]
pub struct Options {
    pub work_dir: PathBuf,
    /// Directories outside the work directory tasks may name as `cwd` (`--allow-cwd`).
    pub allow_cwd: Vec<PathBuf>,
    /// The allowlisted part of the sidecar's own environment.
    pub base_env: Vec<(String, String)>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Values for tasks' `secret_env`, read from these files when a task starts.
    pub secrets: BTreeMap<String, PathBuf>,
    /// Run tasks as this user instead of the sidecar's own.
    pub run_as: Option<RunAs>,
    /// Run each attempt as a uid of its own from this range (`--run-as-range`), in a private
    /// directory of its own.
    pub run_as_range: Option<crate::users::UidRange>,
    /// Repositories tasks may name as `context.repository` (`--repo-allow`): local paths or URL
    /// prefixes. Empty: none.
    pub repo_allow: Vec<String>,
    /// How long a failed attempt's workspace is kept (`--keep-failed-workspaces`).
    pub keep_failed_workspaces: Duration,
    /// Push each `agentcom/TASK_ID` branch to the repository it came from (`--push-branches`).
    pub push_branches: bool,
    /// The Claude Code CLI agent work runs (`--claude`, or `claude` on the PATH); `None`: this
    /// sidecar runs no agent work.
    pub claude: Option<PathBuf>,
    /// Variables every task gets from the sidecar, after its own (`AGENTCOM_SIDECAR`, the
    /// sidecar's binary; `AGENTCOM_HOST`, its host name as the hub knows it).
    pub task_vars: Vec<(String, String)>,
}

impl Options {
    /// Options for a work directory, taking the allowlisted part of `vars` as the base
    /// environment; nothing else allowed or configured.
    pub fn new(work_dir: PathBuf, vars: impl IntoIterator<Item = (String, String)>, allow: &[String]) -> Options {
        Options {
            work_dir,
            allow_cwd: Vec::new(),
            base_env: allowlisted_env(vars, allow),
            kill_grace: Duration::from_secs(5),
            secrets: BTreeMap::new(),
            run_as: None,
            run_as_range: None,
            repo_allow: Vec::new(),
            keep_failed_workspaces: Duration::from_secs(24 * 3600),
            push_branches: false,
            claude: None,
            task_vars: Vec::new(),
        }
    }
}

/// How the sidecar runs processes: the options plus what was set up at start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// As configured, with the work directory and `allow_cwd` made canonical.
    pub options: Options,
    pub containment: Containment,
    /// Where running attempts are recorded, so a later start can kill what a crash left.
    pub state: Option<StateDir>,
    pub programs: Programs,
    /// The uids attempts run as, with `--run-as-range`.
    pub users: Option<Arc<crate::users::Users>>,
}

impl Settings {
    pub fn new(mut options: Options, containment: Containment, state: Option<StateDir>) -> Settings {
        // Canonical, so a task's resolved cwd can be checked against them by prefix.
        fn canonical(dir: PathBuf) -> PathBuf {
            std::fs::canonicalize(&dir).unwrap_or(dir)
        }
        options.work_dir = canonical(options.work_dir);
        options.allow_cwd = std::mem::take(&mut options.allow_cwd).into_iter().map(canonical).collect();
        Settings { options, containment, state, programs: Programs::default(), users: None }
    }
}

/// An unprivileged user tasks run as (`--run-as`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks a user up by name.
    pub fn lookup(name: &str) -> Result<RunAs, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => {
                Ok(RunAs { name: name.to_owned(), uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir })
            }
            Ok(None) => Err(format!("no user named {name:?}")),
            Err(err) => Err(format!("looking up user {name:?}: {err}")),
        }
    }
}

/// How long to keep reading pipes after the process group is gone. Only a descendant that
/// left the group (setsid) can hold them open that long.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const READ_BUFFER_BYTES: usize = 64 * 1024;

pub async fn run(job: &ShellJob, settings: &Settings, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Outcome {
    let (program, args): (&str, Vec<&str>) = match &job.program {
        Program::Argv(argv) => (&argv[0], argv[1..].iter().map(String::as_str).collect()),
        Program::Script(script) => ("sh", vec!["-c", script]),
    };
    // With --run-as-range the attempt runs as the uid lent to it, in its own directory.
    let task_user = match &settings.users {
        Some(users) => match users.of(&job.key) {
            Some(user) => Some(user),
            None => return super::failed_to_start("no uid was lent to this attempt (--run-as-range)".into()),
        },
        None => None,
    };
    let cwd = match (&task_user, &job.cwd) {
        (Some(user), None) => Ok(user.dir.clone()),
        _ => working_dir(job.cwd.as_deref(), &settings.options.work_dir, &settings.options.allow_cwd),
    };
    let cwd = match cwd {
        Ok(cwd) => cwd,
        Err(error) => return super::failed_to_start(error),
    };
    let secrets = match resolve_secrets(&job.secret_env, &settings.options.secrets) {
        Ok(secrets) => secrets,
        Err(error) => return super::failed_to_start(error),
    };
    let mut scope = match settings.containment.scope(&job.key, job.limits) {
        Ok(scope) => scope,
        Err(error) => return super::failed_to_start(error),
    };
    // An absolute program path lets the spawn take the fast way (posix_spawn, which does not
    // copy the sidecar's memory): with a PATH of its own and a bare name, std would fork.
    let env_path = job.env.iter().chain(&settings.options.base_env).find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let executable = match settings.programs.resolve(program, env_path, &cwd) {
        Ok(executable) => executable,
        Err(error) => {
            scope.finish().await;
            return super::failed_to_start(error);
        }
    };
    #[allow(clippy::disallowed_methods)] // This is where tasks start.
    let mut command = Command::new(&executable);
    command
        .arg0(program)
        .args(&args)
        .env_clear()
        .envs(settings.options.base_env.iter().map(|(k, v)| (k, v)))
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .envs(secrets.iter().map(|(k, v)| (k, v)))
        .envs(settings.options.task_vars.iter().map(|(k, v)| (k, v)))
        .env(contain::MARK_SIDECAR, settings.containment.sidecar_id())
        .env(contain::MARK_TASK, &job.key.task_id)
        .env(contain::MARK_GENERATION, job.key.lease_generation.to_string())
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &task_user {
        // No account: the uid's own name, and its private directory as its home.
        let name = format!("task-{}", user.uid);
        command.uid(user.uid).gid(user.uid).env("HOME", &user.dir).env("USER", &name).env("LOGNAME", &name);
    } else if let Some(user) = &settings.options.run_as {
        command.uid(user.uid).gid(user.gid).env("HOME", &user.home).env("USER", &user.name).env("LOGNAME", &user.name);
    }
    // Changing user forks anyway, so the child sets itself up then; without cgroups it must
    // (for PR_SET_PDEATHSIG).
    let in_child = scope.needs_child_setup() || settings.options.run_as.is_some() || task_user.is_some();
    if in_child {
        let setup = scope.child_setup();
        #[allow(unsafe_code)] // The hook only makes async-signal-safe calls; see `contain::ChildSetup::apply`.
        // SAFETY: `apply` allocates nothing, takes no locks and only calls prctl, getppid, write, _exit.
        unsafe {
            command.pre_exec(move || setup.apply());
        }
    }
    let started_at = Instant::now();
    let spawned = contain::register_root(|| {
        let mut child = command.spawn()?;
        let pid = child.id().expect("a child that was just spawned has a pid") as i32;
        if !in_child && let Err(err) = scope.adopt(pid) {
            let _ = child.start_kill();
            return Err(std::io::Error::new(err.kind(), format!("cannot move it into its cgroup: {err}")));
        }
        Ok((child, pid))
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            scope.finish().await;
            return super::failed_to_start(format!("cannot start {program}: {err}"));
        }
    };
    let pid = child.id().expect("a child that was just spawned has a pid");
    scope.started(pid as i32);
    if let Some(state) = &settings.state {
        let record = Record {
            task_id: job.key.task_id.clone(),
            lease_generation: job.key.lease_generation,
            pid: Some(pid as i32),
            // With a cgroup, the cgroup is what a later start kills; the pid alone needs its
            // start time to be told from a reuse.
            pid_start_ticks: if scope.cgroup().is_some() { None } else { contain::pid_start_ticks(pid as i32) },
            cgroup: scope.cgroup().map(Path::to_owned),
        };
        if let Err(err) = state.started(&record) {
            warn!(task_id = job.key.task_id, error = %err, "cannot record the running task");
        }
    }
    sink.started(pid);

    let cap = job.max_output_bytes;
    let stdout = Arc::new(Mutex::new(Capture::default()));
    let stderr = Arc::new(Mutex::new(Capture::default()));
    // Both pipes are read inside this task, polled beside the wait: no task spawned per stream.
    let readers = futures_util::future::join(
        read_stream(child.stdout.take().expect("piped"), Stream::Stdout, cap, stdout.clone(), sink.clone()),
        read_stream(child.stderr.take().expect("piped"), Stream::Stderr, cap, stderr.clone(), sink.clone()),
    );
    tokio::pin!(readers);
    let mut read_all = false;

    let timeout = async {
        match job.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    let mut timed_out = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            _ = &mut readers, if !read_all => read_all = true,
            _ = &mut timeout => { timed_out = true; break None }
            _ = cancel.cancelled() => break None,
        }
    };
    let status = match status {
        Some(status) => status,
        None => {
            scope.terminate();
            let grace = tokio::time::sleep(settings.options.kill_grace);
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    status = child.wait() => break status,
                    _ = &mut readers, if !read_all => read_all = true,
                    _ = &mut grace => {
                        scope.kill();
                        break child.wait().await;
                    }
                }
            }
        }
    };
    contain::unregister_root(pid as i32);
    let duration = started_at.elapsed();
    // The main process is done: whatever it left running dies with it, wherever it went.
    scope.finish().await;
    if let Some(state) = &settings.state {
        state.finished(&job.key);
    }
    // Nothing of the task is left to hold the pipes open, so this ends at once; the bound is
    // for a descendant that escaped containment.
    if !read_all {
        let _ = tokio::time::timeout(PIPE_DRAIN_TIMEOUT, &mut readers).await;
    }
    let (exit, error) = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (Exit::Code(code), None),
            (None, Some(signal)) => (Exit::Signal(signal), None),
            (None, None) => (Exit::Unknown, None),
        },
        Err(err) => (Exit::Unknown, Some(format!("waiting for the process failed: {err}"))),
    };
    let take = |capture: &Arc<Mutex<Capture>>| std::mem::take(&mut *capture.lock().expect("capture lock poisoned"));
    let (stdout, stderr) = (take(&stdout), take(&stderr));
    Outcome {
        exit,
        duration_ms: duration.as_millis() as u64,
        stdout: stdout.kept,
        stderr: stderr.kept,
        stdout_total_bytes: stdout.total,
        stderr_total_bytes: stderr.total,
        timed_out,
        error,
        ..Outcome::empty()
    }
}

/// The directory a task runs in: the work directory, or `cwd` resolved against it (symlinks
/// and `..` included), which must stay inside the work directory or an allowed one.
pub fn working_dir(cwd: Option<&Path>, work_dir: &Path, allow: &[PathBuf]) -> Result<PathBuf, String> {
    // The work directory was checked at start; a spawn in a vanished one says so itself.
    let Some(cwd) = cwd else { return Ok(work_dir.to_owned()) };
    let joined = work_dir.join(cwd);
    let resolved =
        std::fs::canonicalize(&joined).map_err(|_| format!("working directory {} does not exist", joined.display()))?;
    if !resolved.is_dir() {
        return Err(format!("working directory {} is not a directory", joined.display()));
    }
    if resolved.starts_with(work_dir) || allow.iter().any(|dir| resolved.starts_with(dir)) {
        Ok(resolved)
    } else {
        Err(format!(
            "working directory {} is outside the sidecar's work directory {} (allow it with --allow-cwd)",
            cwd.display(),
            work_dir.display()
        ))
    }
}

/// Where bare program names were found on a PATH, so a task's spawn costs one `stat` of the
/// program rather than one per PATH entry.
#[derive(Clone, Debug, Default)]
pub struct Programs {
    found: Arc<Mutex<std::collections::HashMap<(String, String), PathBuf>>>,
}

impl Programs {
    fn resolve(&self, program: &str, path: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
        let relative_path = path.is_some_and(|p| p.split(':').any(|dir| !dir.starts_with('/')));
        if program.contains('/') || relative_path {
            return resolve_program(program, path, cwd);
        }
        let key = (path.unwrap_or_default().to_owned(), program.to_owned());
        let cached = self.found.lock().expect("program cache poisoned").get(&key).cloned();
        if let Some(found) = cached
            && is_executable(&found)
        {
            return Ok(found);
        }
        let found = resolve_program(program, path, cwd)?;
        self.found.lock().expect("program cache poisoned").insert(key, found.clone());
        Ok(found)
    }
}

fn is_executable(candidate: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The executable `program` names: a path (relative ones from `cwd`) as it is, a bare name
/// looked up on `path` as `execvp` would.
fn resolve_program(program: &str, path: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
    if program.contains('/') {
        // Left to the spawn: it reports a missing or unrunnable file in its own words.
        return Ok(cwd.join(program));
    }
    let path = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .map(|dir| if dir.is_empty() { cwd.to_owned() } else { cwd.join(dir) })
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("cannot start {program}: not found on PATH ({path})"))
}

/// The values of a task's `secret_env`, read now from the files configured for them.
fn resolve_secrets(names: &[String], secrets: &BTreeMap<String, PathBuf>) -> Result<Vec<(String, String)>, String> {
    names
        .iter()
        .map(|name| {
            let path = secrets
                .get(name)
                .ok_or_else(|| format!("secret {name} is not configured on this sidecar (--secret {name}=FILE)"))?;
            let value =
                std::fs::read_to_string(path).map_err(|err| format!("secret {name}: cannot read its file: {err}"))?;
            let value = value.trim_end_matches(['\r', '\n']).to_owned();
            agentcom_process::logging::redact(&value); // No log line carries it.
            Ok((name.clone(), value))
        })
        .collect()
}

#[derive(Default)]
struct Capture {
    kept: Vec<u8>,
    total: u64,
}

async fn read_stream(
    mut pipe: impl AsyncRead + Unpin,
    stream: Stream,
    cap: usize,
    capture: Arc<Mutex<Capture>>,
    sink: Arc<dyn Sink>,
) {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (offset, fresh) = {
            let mut capture = capture.lock().expect("capture lock poisoned");
            capture.total += n as u64;
            let offset = capture.kept.len();
            let room = cap.saturating_sub(offset);
            let fresh = &buf[..n.min(room)];
            capture.kept.extend_from_slice(fresh);
            (offset, fresh)
        };
        if !fresh.is_empty() {
            sink.output(stream, offset as u64, fresh);
        }
    }
}

/// The allowlisted part of an environment.
pub fn allowlisted_env(vars: impl IntoIterator<Item = (String, String)>, allow: &[String]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vars.into_iter().filter(|(key, _)| allow.iter().any(|a| a == key)).collect();
    env.sort();
    env
}

/// Resolves the work directory once at start, so relative task directories mean one thing.
pub fn resolve_work_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contain::Preference;
    use nix::unistd::Pid;

    #[derive(Default)]
    struct Recorder {
        chunks: Mutex<Vec<(Stream, u64, Vec<u8>)>>,
        pid: Mutex<Option<u32>>,
    }

    impl Sink for Recorder {
        fn started(&self, pid: u32) {
            *self.pid.lock().unwrap() = Some(pid);
        }
        fn output(&self, stream: Stream, offset: u64, data: &[u8]) {
            self.chunks.lock().unwrap().push((stream, offset, data.to_vec()));
        }
    }

    fn settings_with(dir: &Path, preference: Preference) -> Settings {
        let sidecar_id = format!("shell-test-{:08x}", rand::random::<u32>());
        let mut options = Options::new(dir.to_owned(), std::env::vars(), &["PATH".to_owned()]);
        options.kill_grace = Duration::from_millis(500);
        Settings::new(options, Containment::setup(&sidecar_id, preference, false).unwrap(), None)
    }

    fn settings(dir: &Path) -> Settings {
        settings_with(dir, Preference::Auto)
    }

    fn script(s: &str) -> ShellJob {
        ShellJob {
            key: TaskKey { task_id: format!("T{:016x}", rand::random::<u64>()), lease_generation: 1 },
            program: Program::Script(s.into()),
            cwd: None,
            env: Vec::new(),
            secret_env: Vec::new(),
            timeout: None,
            max_output_bytes: 1 << 20,
            limits: contain::Limits::default(),
        }
    }

    async fn run_job(job: ShellJob, cancel: CancellationToken) -> (Outcome, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::default());
        let outcome = run(&job, &settings(dir.path()), recorder.clone(), cancel).await;
        (outcome, recorder)
    }

    #[tokio::test]
    async fn exit_codes_and_output_are_reported() {
        let (outcome, recorder) = run_job(script("echo out; echo err >&2; exit 3"), CancellationToken::new()).await;
        assert_eq!(outcome.exit, Exit::Code(3));
        assert_eq!((outcome.stdout.as_slice(), outcome.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
        assert!(recorder.pid.lock().unwrap().is_some());
        let chunks = recorder.chunks.lock().unwrap();
        assert!(chunks.contains(&(Stream::Stdout, 0, b"out\n".to_vec())));
    }

    #[tokio::test]
    async fn the_environment_is_only_the_allowlist_the_task_env_and_the_marks() {
        let mut job = script("env | sort");
        job.env = vec![("TASK_VAR".into(), "1".into())];
        let (outcome, _) = run_job(job, CancellationToken::new()).await;
        let out = String::from_utf8(outcome.stdout).unwrap();
        let names: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
        // sh may add PWD, SHLVL and `_` itself.
        let expected = [
            "PATH",
            "TASK_VAR",
            "PWD",
            "SHLVL",
            "_",
            "OLDPWD",
            contain::MARK_SIDECAR,
            contain::MARK_TASK,
            contain::MARK_GENERATION,
        ];
        let unexpected: Vec<&&str> = names.iter().filter(|n| !expected.contains(n)).collect();
        assert!(unexpected.is_empty(), "leaked variables: {unexpected:?}");
        assert!(names.contains(&"TASK_VAR"));
    }

    #[tokio::test]
    async fn secrets_come_from_the_sidecars_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let mut settings = settings(dir.path());
        settings.options.secrets.insert("API_TOKEN".into(), file);
        let mut job = script("test \"$API_TOKEN\" = s3cret-value && echo matched");
        job.secret_env = vec!["API_TOKEN".into()];
        let outcome = run(&job, &settings, Arc::new(Recorder::default()), CancellationToken::new()).await;
        assert_eq!((outcome.exit, outcome.stdout.as_slice()), (Exit::Code(0), &b"matched\n"[..]));

        job.secret_env = vec!["MISSING".into()];
        let outcome = run(&job, &settings, Arc::new(Recorder::default()), CancellationToken::new()).await;
        assert!(outcome.error.unwrap().contains("secret MISSING is not configured"));
    }

    #[test]
    fn working_directories_stay_inside_the_work_root() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(work.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        let work = work.canonicalize().unwrap();
        let outside = outside.canonicalize().unwrap();
        let check = |cwd: &str, allow: &[PathBuf]| working_dir(Some(Path::new(cwd)), &work, allow);
        assert_eq!(check("sub", &[]), Ok(work.join("sub")));
        assert_eq!(check("sub/../sub", &[]), Ok(work.join("sub")));
        for escape in ["../../../../etc", "/etc", "link", "sub/../../outside"] {
            let err = check(escape, &[]).unwrap_err();
            assert!(err.contains("outside the sidecar's work directory"), "{escape}: {err}");
        }
        assert_eq!(check("link", std::slice::from_ref(&outside)), Ok(outside.clone()));
        assert!(check("missing", &[]).unwrap_err().contains("does not exist"));
        assert_eq!(working_dir(None, &work, &[]), Ok(work.clone()));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_counted_not_kept() {
        let mut job = script("head -c 300000 /dev/zero");
        job.max_output_bytes = 1000;
        let (outcome, recorder) = run_job(job, CancellationToken::new()).await;
        assert_eq!(outcome.stdout.len(), 1000);
        assert_eq!(outcome.stdout_total_bytes, 300_000);
        let streamed: usize = recorder.chunks.lock().unwrap().iter().map(|c| c.2.len()).sum();
        assert_eq!(streamed, 1000);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_not_a_panic() {
        let mut job = script("");
        job.program = Program::Argv(vec!["/nonexistent/program".into()]);
        let (outcome, _) = run_job(job, CancellationToken::new()).await;
        assert!(outcome.error.unwrap().contains("cannot start /nonexistent/program"));
    }

    #[tokio::test]
    async fn limits_are_enforced_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut job = script("echo ran");
        job.limits = contain::Limits { max_memory_bytes: Some(64 << 20), max_pids: Some(16) };
        let outcome = run(&job, &settings, Arc::new(Recorder::default()), CancellationToken::new()).await;
        let summary = settings.containment.summary();
        if summary.memory_limit && summary.pids_limit {
            assert_eq!(outcome.exit, Exit::Code(0));
        } else {
            // This host cannot enforce them: the task is refused, not run without them.
            assert!(outcome.error.unwrap().contains("cannot enforce limits."), "{}", summary.describe());
        }
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    /// Runs `job_script` (which writes the pids of what it leaves behind to PIDFILE) and checks
    /// that every one of them is dead once the job's outcome is in.
    async fn leftovers_die(
        preference: Preference,
        job_script: &str,
        cancel: CancellationToken,
        timeout: Option<Duration>,
    ) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut job = script(&job_script.replace("PIDFILE", pidfile.to_str().unwrap()));
        job.timeout = timeout;
        let settings = settings_with(dir.path(), preference);
        let outcome = run(&job, &settings, Arc::new(Recorder::default()), cancel).await;
        let pids: Vec<i32> =
            std::fs::read_to_string(&pidfile).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert!(!pids.is_empty());
        // No waiting: once the outcome is in, nothing of the task may run.
        for pid in pids {
            assert!(
                !alive(pid) || is_zombie(pid),
                "{} left {pid} alive: {:?} {:?} {:?}",
                settings.containment.summary().describe(),
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")),
                outcome
            );
        }
        outcome
    }

    const BACKGROUND: &str =
        "sleep 300 & echo $! >> PIDFILE; setsid sh -c 'echo $$ >> PIDFILE; sleep 300' & sleep 0.2;";

    async fn everything_dies(preference: Preference) {
        let outcome = leftovers_die(
            preference,
            &format!("{BACKGROUND} sleep 300"),
            CancellationToken::new(),
            Some(Duration::from_millis(400)),
        )
        .await;
        assert!(outcome.timed_out);
        assert_eq!(outcome.exit, Exit::Signal(15));

        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            trigger.cancel();
        });
        let outcome = leftovers_die(preference, &format!("{BACKGROUND} sleep 300"), cancel, None).await;
        assert!(!outcome.timed_out);
        assert_eq!(outcome.exit, Exit::Signal(15), "cancelled: terminated");

        let outcome = leftovers_die(preference, &format!("{BACKGROUND} exit 0"), CancellationToken::new(), None).await;
        assert_eq!(outcome.exit, Exit::Code(0));
    }

    #[tokio::test]
    async fn setsid_descendants_die_on_timeout_cancel_and_exit() {
        everything_dies(Preference::Auto).await;
    }

    #[tokio::test]
    async fn without_cgroups_the_subreaper_catches_setsid_descendants() {
        everything_dies(Preference::Subreaper).await;
    }
}
