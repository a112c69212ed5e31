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
    let output = Command::new("bash")
        .arg(script())
        .args(["--hub", "quic://hub.tail1234.ts.net:7421", "--join", &token(), "--tag", "gpu", "--slots", "8"])
        .arg("--binary")
        .arg(&binary)
        .arg("--root")
        .arg(&root)
        .arg("--no-start")
        .output()
        .unwrap();
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
        "--run-as agentcom",
        "--tag gpu",
    ] {
        assert!(unit.contains(line), "{line} in\n{unit}");
    }
    assert!(said.contains("would run: useradd --system"), "{said}");
    assert!(said.contains("enroll --hub quic://hub.tail1234.ts.net:7421 --join acj_..."), "{said}");
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
