//! The watchdog: a small process that kills a sidecar's tasks the moment the sidecar dies.

use std::fs;
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::warn;

use super::cgroupfs::{kill_cgroup, read_pids};
use super::kill_marked;

/// The argument that makes either binary a watchdog (see [`watchdog_main_if_requested`]).
const WATCHDOG_ARG: &str = "__agentcom-watchdog";

/// A small process that outlives a crashed sidecar long enough to kill its tasks: it waits on
/// a pipe the sidecar holds, and when the pipe closes without "stop" (the sidecar died, `kill -9`
/// included) it kills every task cgroup under the sidecar's directory and every process marked
/// with its id. The next start of the sidecar cleans up too; this makes a sidecar's death take
/// its tasks with it at once.
pub(super) struct Watchdog {
    child: std::process::Child,
}

impl Watchdog {
    pub(super) fn start(sidecar_id: &str, dir: Option<&Path>) -> Option<Watchdog> {
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

    pub(super) fn release(mut self) {
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
