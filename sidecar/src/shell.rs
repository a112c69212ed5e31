//! Runs one shell task as its own process group, and ends the whole group.
//!
//! The child gets a new process group, an environment built only from an allowlist plus the
//! task's own variables, and its working directory. Output is read as it comes: the first
//! `max_output_bytes` of each stream are kept and streamed, the rest is counted and dropped,
//! so a task that writes gigabytes costs the sidecar no more than the cap.
//!
//! On timeout or cancel the group gets SIGTERM, then SIGKILL after a grace period. When the
//! main process exits on its own, whatever it left behind in its group is killed too (as
//! systemd does for a unit's control group), so no background child outlives its task.
//!
//! **Architecture Invariant:** this is the only module that starts processes.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    Argv(Vec<String>),
    Script(String),
}

#[derive(Clone, Debug)]
pub struct ShellJob {
    pub program: Program,
    /// Relative paths are taken from the sidecar's work directory.
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub max_output_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    pub duration: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_total_bytes: u64,
    pub stderr_total_bytes: u64,
    pub timed_out: bool,
    pub cancelled: bool,
    pub error: Option<String>,
}

impl Outcome {
    /// The work never ran as a process.
    pub fn failed_to_start(error: String) -> Outcome {
        Outcome {
            exit: Exit::Unknown,
            duration: Duration::ZERO,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_total_bytes: 0,
            stderr_total_bytes: 0,
            timed_out: false,
            cancelled: false,
            error: Some(error),
        }
    }
}

/// Where a running job reports. Output chunks may be dropped by the sink (the final outcome
/// carries the retained output in full), so reporting never blocks the job.
pub trait Sink: Send + Sync + 'static {
    fn started(&self, pid: u32);
    fn output(&self, stream: Stream, offset: u64, data: &[u8]);
}

/// How the sidecar runs processes.
#[derive(Clone, Debug)]
pub struct Settings {
    pub work_dir: PathBuf,
    /// The allowlisted part of the sidecar's own environment.
    pub base_env: Vec<(String, String)>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
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
    let cwd = match &job.cwd {
        Some(dir) => settings.work_dir.join(dir),
        None => settings.work_dir.clone(),
    };
    if !cwd.is_dir() {
        return Outcome::failed_to_start(format!("working directory {} does not exist", cwd.display()));
    }
    let mut command = Command::new(program);
    command
        .args(&args)
        .env_clear()
        .envs(settings.base_env.iter().map(|(k, v)| (k, v)))
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started_at = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return Outcome::failed_to_start(format!("cannot start {program}: {err}")),
    };
    let pid = child.id().expect("a child that was just spawned has a pid");
    let group = Pid::from_raw(pid as i32);
    sink.started(pid);

    let cap = job.max_output_bytes;
    let stdout = Arc::new(Mutex::new(Capture::default()));
    let stderr = Arc::new(Mutex::new(Capture::default()));
    let readers = [
        tokio::spawn(read_stream(
            child.stdout.take().expect("piped"),
            Stream::Stdout,
            cap,
            stdout.clone(),
            sink.clone(),
        )),
        tokio::spawn(read_stream(
            child.stderr.take().expect("piped"),
            Stream::Stderr,
            cap,
            stderr.clone(),
            sink.clone(),
        )),
    ];

    let timeout = async {
        match job.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let (mut timed_out, mut cancelled) = (false, false);
    let status = tokio::select! {
        status = child.wait() => Some(status),
        _ = timeout => { timed_out = true; None }
        _ = cancel.cancelled() => { cancelled = true; None }
    };
    let status = match status {
        Some(status) => {
            // The main process is done; take anything it left running with it.
            let _ = killpg(group, Signal::SIGKILL);
            status
        }
        None => {
            let _ = killpg(group, Signal::SIGTERM);
            match tokio::time::timeout(settings.kill_grace, child.wait()).await {
                Ok(status) => {
                    let _ = killpg(group, Signal::SIGKILL);
                    status
                }
                Err(_) => {
                    let _ = killpg(group, Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    let duration = started_at.elapsed();
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(PIPE_DRAIN_TIMEOUT, reader).await.is_err() {
            abort.abort();
        }
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
        duration,
        stdout: stdout.kept,
        stderr: stderr.kept,
        stdout_total_bytes: stdout.total,
        stderr_total_bytes: stderr.total,
        timed_out,
        cancelled,
        error,
    }
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

    fn settings(dir: &Path) -> Settings {
        Settings {
            work_dir: dir.to_owned(),
            base_env: allowlisted_env(std::env::vars(), &["PATH".to_owned()]),
            kill_grace: Duration::from_millis(500),
        }
    }

    fn script(s: &str) -> ShellJob {
        ShellJob {
            program: Program::Script(s.into()),
            cwd: None,
            env: Vec::new(),
            timeout: None,
            max_output_bytes: 1 << 20,
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
    async fn the_environment_is_only_the_allowlist_and_the_task_env() {
        let mut job = script("env | sort");
        job.env = vec![("TASK_VAR".into(), "1".into())];
        let (outcome, _) = run_job(job, CancellationToken::new()).await;
        let out = String::from_utf8(outcome.stdout).unwrap();
        let names: Vec<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
        // sh may add PWD, SHLVL and `_` itself.
        let unexpected: Vec<&&str> =
            names.iter().filter(|n| !["PATH", "TASK_VAR", "PWD", "SHLVL", "_", "OLDPWD"].contains(n)).collect();
        assert!(unexpected.is_empty(), "leaked variables: {unexpected:?}");
        assert!(names.contains(&"TASK_VAR"));
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
        let job = ShellJob {
            program: Program::Argv(vec!["/nonexistent/program".into()]),
            cwd: None,
            env: Vec::new(),
            timeout: None,
            max_output_bytes: 10,
        };
        let (outcome, _) = run_job(job, CancellationToken::new()).await;
        assert!(outcome.error.unwrap().contains("cannot start /nonexistent/program"));
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    async fn background_sleep_dies(job_script: &str, cancel: CancellationToken, timeout: Option<Duration>) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut job = script(&job_script.replace("PIDFILE", pidfile.to_str().unwrap()));
        job.timeout = timeout;
        let outcome = run(&job, &settings(dir.path()), Arc::new(Recorder::default()), cancel).await;
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild was killed; give the kernel a moment to reap it (it is re-parented).
        let mut dead = false;
        for _ in 0..100 {
            if !alive(pid) || is_zombie(pid) {
                dead = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(dead, "background sleep {pid} survived");
        outcome
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let outcome = background_sleep_dies(
            "sleep 300 & echo $! > PIDFILE; sleep 300",
            CancellationToken::new(),
            Some(Duration::from_millis(300)),
        )
        .await;
        assert!(outcome.timed_out);
        assert_eq!(outcome.exit, Exit::Signal(15));
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            trigger.cancel();
        });
        let outcome = background_sleep_dies("sleep 300 & echo $! > PIDFILE; sleep 300", cancel, None).await;
        assert!(outcome.cancelled);
    }

    #[tokio::test]
    async fn leftovers_die_when_the_main_process_exits() {
        let outcome =
            background_sleep_dies("sleep 300 & echo $! > PIDFILE; exit 0", CancellationToken::new(), None).await;
        assert_eq!(outcome.exit, Exit::Code(0));
    }
}
