//! Keeping the sidecar's secrets out of its tasks' reach.
//!
//! Two things let a task read its sidecar's secrets through `/proc`: a same-user process can
//! read `/proc/PID/environ` and `/proc/PID/mem` of a dumpable process, and root can read
//! `environ` of any process. [`isolate`] closes both, first thing in `main`:
//! - the process marks itself non-dumpable (`PR_SET_DUMPABLE 0`), which makes those files
//!   root's;
//! - `/proc/PID/environ` shows the block the process was started with, and changing variables
//!   later does not change it. So a process whose environment holds anything beyond the task
//!   allowlist re-executes itself once with only the allowlisted variables, and hands the full
//!   environment to its new self through an inherited memfd, which the new self reads and closes
//!   before any thread starts.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;

/// The variables a process's environment block may show: harmless to read, and what a task
/// inherits from its sidecar unless configured otherwise.
pub const DEFAULT_ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Names the memfd the re-executed process reads its environment from.
const ENV_FD: &str = "AGENTCOM_ENV_FD";

/// What [`isolate`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Isolation {
    /// The environment held only allowlisted variables: nothing to hide.
    Clean,
    /// This process was re-executed with a clean environment block and got its variables back.
    Restored { variables: usize },
    /// Re-executing failed; the variables stay readable by root through `/proc`.
    Failed(String),
}

/// Call first in `main`, before any thread starts (it may replace the process, and it sets
/// variables). `allow` is the task environment allowlist: those variables may stay visible.
pub fn isolate(allow: &[String]) -> Isolation {
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        return Isolation::Failed(format!("cannot mark the process non-dumpable: {err}"));
    }
    if let Some(fd) = std::env::var_os(ENV_FD) {
        return restore(&fd);
    }
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let allowed = |key: &OsString| allow.iter().any(|a| a.as_bytes() == key.as_bytes());
    if vars.iter().all(|(key, _)| allowed(key)) {
        return Isolation::Clean;
    }
    match reexec(&vars, allow) {
        // `exec` only returns on failure.
        Err(err) => Isolation::Failed(format!("cannot re-execute with a clean environment: {err}")),
    }
}

fn reexec(vars: &[(OsString, OsString)], allow: &[String]) -> Result<std::convert::Infallible, io::Error> {
    let memfd =
        nix::sys::memfd::memfd_create(c"agentcom-env", nix::sys::memfd::MFdFlags::empty()).map_err(io::Error::from)?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(&encode(vars))?;
    // Kept open (no close-on-exec) for the new image to read.
    let fd = file.into_raw_fd();
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "agentcom".into());
    // The binary's own path rather than /proc/self/exe, so the process keeps its name in ps.
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    #[allow(clippy::disallowed_methods)] // The re-exec of this very binary.
    let mut command = std::process::Command::new(exe);
    command.arg0(argv0).args(args).env_clear().env(ENV_FD, fd.to_string());
    for (key, value) in vars {
        if allow.iter().any(|a| a.as_bytes() == key.as_bytes()) {
            command.env(key, value);
        }
    }
    let err = command.exec();
    let _ = nix::unistd::close(fd);
    Err(err)
}

fn restore(fd: &std::ffi::OsStr) -> Isolation {
    let Some(fd) = fd.to_str().and_then(|f| f.parse::<i32>().ok()) else {
        return Isolation::Failed(format!("{ENV_FD} is not a descriptor"));
    };
    let bytes = std::fs::read(format!("/proc/self/fd/{fd}"));
    let _ = nix::unistd::close(fd);
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(err) => return Isolation::Failed(format!("reading the environment back: {err}")),
    };
    let vars = decode(&bytes);
    #[allow(unsafe_code, clippy::disallowed_methods)] // Sound here: no other thread exists yet.
    // SAFETY: `isolate` is documented to run first in `main`, before any thread is started, so
    // nothing reads the environment concurrently.
    unsafe {
        std::env::remove_var(ENV_FD);
        for (key, value) in &vars {
            std::env::set_var(key, value);
        }
    }
    Isolation::Restored { variables: vars.len() }
}

/// `KEY=VALUE` pairs, each ended by a NUL (the layout of `/proc/PID/environ`).
fn encode(vars: &[(OsString, OsString)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in vars {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fn decode(bytes: &[u8]) -> Vec<(OsString, OsString)> {
    bytes
        .split(|&b| b == 0)
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((OsString::from_vec(pair[..eq].to_vec()), OsString::from_vec(pair[eq + 1..].to_vec())))
        })
        .filter(|(key, _)| !key.is_empty() && key.as_bytes() != ENV_FD.as_bytes())
        .collect()
}

/// Reads a key from a file: the whole file, trailing newlines removed.
pub fn read_key_file(path: &std::path::Path) -> Result<String, String> {
    let key = std::fs::read_to_string(path).map_err(|err| format!("reading the key file {}: {err}", path.display()))?;
    let key = key.trim_end_matches(['\r', '\n']).to_owned();
    if key.trim().is_empty() {
        return Err(format!("the key file {} is empty", path.display()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_survive_the_trip_through_the_memfd() {
        let vars: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/bin:/usr/bin".into()),
            ("ANTHROPIC_API_KEY".into(), "sk-ant-x=y".into()),
            ("EMPTY".into(), "".into()),
            (OsString::from_vec(b"RAW".to_vec()), OsString::from_vec(vec![0xff, b'='])),
        ];
        assert_eq!(decode(&encode(&vars)), vars);
        // The descriptor variable itself never comes back.
        assert!(decode(b"AGENTCOM_ENV_FD=3\0A=1\0").iter().all(|(k, _)| k != ENV_FD));
        assert_eq!(decode(b"\0=bad\0noequals\0"), Vec::new());
    }

    #[test]
    fn key_files_lose_their_newline_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-test\n").unwrap();
        assert_eq!(read_key_file(&path).unwrap(), "sk-test");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_key_file(&path).unwrap_err().contains("is empty"));
        assert!(read_key_file(&dir.path().join("missing")).unwrap_err().contains("reading the key file"));
    }
}
