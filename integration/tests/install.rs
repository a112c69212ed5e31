//! `scripts/install-sidecar.sh`, run unprivileged with `--root` (the files it writes under a
//! staging directory; user creation, enrolment and systemctl printed instead of run).

#![allow(clippy::disallowed_methods)] // Tests start the real script.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-sidecar.sh")
}

fn token() -> String {
    format!("acj_{}_{}_{}", "a".repeat(12), "b".repeat(48), "c".repeat(32))
}

#[test]
fn the_installer_writes_a_hardened_unit_and_enrols_without_storing_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("agentcom-sidecar");
    std::fs::write(&binary, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    // As `hubctl join-token create --print-install` says to run it: the token on standard input.
    let mut child = Command::new("bash")
        .arg(script())
        .args(["--hub", "quic://hub.tail1234.ts.net:7421", "--join-file", "-", "--tag", "gpu", "--slots", "8"])
        .arg("--binary")
        .arg(&binary)
        .arg("--root")
        .arg(&root)
        .arg("--no-start")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{}\n", token()).as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(root.join("usr/local/bin/agentcom-sidecar").exists());
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/agentcom-sidecar.service")).unwrap();
    for line in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Delegate=yes",
        "RestartPreventExitStatus=78",
        "--hub quic://hub.tail1234.ts.net:7421",
        "--slots 8",
        "--run-as-range 61000-61999",
        "ExecStartPre=/usr/bin/install -d -m 0711",
        "--tag gpu",
    ] {
        assert!(unit.contains(line), "{line} in\n{unit}");
    }
    assert!(!said.contains("useradd"), "tasks need no account: {said}");
    // The token reaches the enrolment through the environment, never a command line.
    assert!(said.contains("AGENTCOM_JOIN=acj_..."), "{said}");
    assert!(said.contains("enroll --hub quic://hub.tail1234.ts.net:7421 --state-dir"), "{said}");
    assert!(!said.contains("--join"), "{said}");
    // The join token is written nowhere.
    for entry in walk(&root) {
        if entry.is_file() {
            let text = std::fs::read(&entry).unwrap();
            assert!(!String::from_utf8_lossy(&text).contains(&"b".repeat(48)), "{}", entry.display());
        }
    }
}

#[test]
fn the_installer_refuses_what_it_cannot_use() {
    let run = |args: &[&str]| {
        let output = Command::new("bash").arg(script()).args(args).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (ok, err) = run(&["--hub", "ftp://hub", "--join", &token(), "--root", "/tmp/x", "--no-start"]);
    assert!(!ok && err.contains("https://"), "{err}");
    let (ok, err) =
        run(&["--hub", "https://hub:7420", "--join", "agentcom_join_abc", "--root", "/tmp/x", "--no-start"]);
    assert!(!ok && err.contains("acj_"), "{err}");
    let (ok, _) = run(&["--help"]);
    assert!(ok);
    // A token on the command line still works, with a warning.
    let (_, err) =
        run(&["--hub", "https://hub:7420", "--join", &token(), "--root", "/nonexistent/\u{1}", "--no-start"]);
    assert!(err.contains("warning: --join puts the token on a command line"), "{err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_token_on_the_sidecar_command_line_is_warned_of_and_one_from_a_file_or_the_environment_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = agentcom_integration::binary("agentcom-sidecar");
    let token_file = dir.path().join("join.token");
    std::fs::write(&token_file, "agentcom_join_0123\n").unwrap();
    // No hub listens on port 1: each run stays up retrying until `timeout` ends it.
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new("timeout")
            .arg("2")
            .arg(&sidecar)
            .args(["run", "--hub", "http://127.0.0.1:1", "--no-ollama-discovery", "--log-format", "text"])
            .arg("--work-dir")
            .arg(dir.path())
            .args(args)
            .envs(env.iter().copied())
            .env_remove("AGENTCOM_JOIN")
            .env_remove("AGENTCOM_TOKEN")
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let said = run(&["--token", "agentcom_join_0123"], &[]);
    assert!(said.contains("--token on the command line is readable by every user"), "{said}");
    let said = run(&["--token-file", token_file.to_str().unwrap()], &[]);
    assert!(!said.contains("on the command line is readable"), "{said}");
    let said = run(&[], &[("AGENTCOM_TOKEN", "agentcom_join_0123")]);
    assert!(!said.contains("on the command line is readable"), "{said}");
}
