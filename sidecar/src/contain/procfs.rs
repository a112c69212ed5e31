//! What `/proc` says about processes: children, descendants, state, start time, and the marker
//! variables a task's processes start with. Parsing is separate from reading and tested with
//! recorded text.

use std::collections::HashSet;
use std::fs;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::{MARK_GENERATION, MARK_SIDECAR, MARK_TASK, parse_pids};

/// The children of `pid`, across all its threads (`/proc/PID/task/TID/children`).
pub(super) fn children(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else { return kids };
    for thread in threads.flatten() {
        if let Ok(text) = fs::read_to_string(thread.path().join("children")) {
            kids.extend(parse_pids(&text));
        }
    }
    kids
}

pub(super) fn descendants(pid: i32, out: &mut Vec<i32>) {
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

pub(super) fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

pub(super) fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

pub(super) fn is_zombie(pid: i32) -> bool {
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
pub(super) struct Stat {
    pub(super) state: char,
    pub(super) start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name sits in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub(super) fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the file, starttime field 22.
    let state = fields.first()?.chars().next()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some(Stat { state, start_ticks })
}

pub(super) struct Marks {
    pub(super) sidecar: String,
    pub(super) task: String,
    pub(super) generation: u64,
}

/// The marker variables a process started with, if it has them all.
pub(super) fn marks(pid: i32) -> Option<Marks> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    parse_marks(&environ)
}

pub(super) fn has_no_marks(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| !environ.split(|&b| b == 0).any(|var| var.starts_with(MARK_SIDECAR.as_bytes())))
}

pub(super) fn parse_marks(environ: &[u8]) -> Option<Marks> {
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
    fn marks_need_all_three_variables() {
        let env = b"PATH=/bin\0AGENTCOM_SIDECAR_ID=s1\0AGENTCOM_TASK_ID=t1\0AGENTCOM_LEASE_GENERATION=7\0";
        let marks = parse_marks(env).unwrap();
        assert_eq!((marks.sidecar.as_str(), marks.task.as_str(), marks.generation), ("s1", "t1", 7));
        assert!(parse_marks(b"AGENTCOM_SIDECAR_ID=s1\0AGENTCOM_TASK_ID=t1\0").is_none());
        assert!(parse_marks(b"").is_none());
    }
}
