//! The cgroup v2 file system: finding this process's cgroup, making and limiting task cgroups,
//! killing one whole, and reading who is in one.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{EMPTY_TIMEOUT, Limits, Supervisor};

/// Finds this process's cgroup v2 directory and makes the sidecar's own under it. Returns the
/// directory and whether memory and pids limits can be set in it.
pub(super) fn cgroup_setup(dir_name: &str) -> Result<(PathBuf, bool, bool), String> {
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
pub(super) const EPHEMERAL_PREFIX: &str = "agentcom.ephemeral-";

/// Removes what sidecars without a state directory left when their process ended abruptly: a
/// directory whose PID is gone is nobody's.
pub(super) fn sweep_dead_processes_dirs(base: &Path) {
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
pub(super) fn supervisor_setup(dir: &Path) -> Option<Arc<Supervisor>> {
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
pub(super) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The `0::PATH` line of `/proc/self/cgroup`.
pub(super) fn own_cgroup(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

pub(super) fn create_cgroup(path: &Path, limits: Limits) -> io::Result<()> {
    fs::create_dir(path)?;
    let result = set_limits(path, limits, false);
    if result.is_err() {
        let _ = fs::remove_dir(path);
    }
    result
}

/// Sets a task cgroup's limits; `reset` puts back "no limit" where `limits` sets none (for a
/// pooled cgroup an earlier task limited).
pub(super) fn set_limits(path: &Path, limits: Limits, reset: bool) -> io::Result<()> {
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
pub(super) fn kill_cgroup(path: &Path) {
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
pub(super) fn read_pids_at(file: &File) -> Vec<i32> {
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

pub(super) fn read_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path).map(|s| parse_pids(&s)).unwrap_or_default()
}

pub(super) fn parse_pids(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::EPHEMERAL_PREFIX;
    use super::*;

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
}
