//! What `hubctl` puts on a terminal: control characters from a task's output, its name and a
//! sidecar's host name arrive escaped, on a real pseudo-terminal (`script` gives `hubctl` one);
//! piped output stays byte for byte; a reader that goes away ends `hubctl` quietly.

#![allow(clippy::disallowed_methods)] // Tests start the real binaries.

use std::process::Command;
use std::time::Duration;

use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually, binary, shell};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(60);

/// `hubctl ARGS` through `sh -c`, on a pseudo-terminal when `tty` (through `script`).
fn hubctl_sh(hub: &HubProcess, line: &str, tty: bool) -> std::process::Output {
    let hubctl = binary("hubctl");
    let line = line.replace("hubctl", &hubctl.to_string_lossy());
    let mut command = if tty {
        let mut script = Command::new("script");
        script.args(["-qefc", &line, "/dev/null"]);
        script
    } else {
        let mut bash = Command::new("bash");
        bash.args(["-o", "pipefail", "-c", &line]);
        bash
    };
    command.env("AGENTCOM_HUB", &hub.url).env("AGENTCOM_TOKEN", &hub.api.token).output().expect("running hubctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_reach_the_terminal_escaped_and_pipes_get_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let evil_host = "x\u{1b}]0;PWN\u{7}";
    let _sidecar = SidecarProcess::start_with(&hub, "evil", 1, &work, &["--hostname", evil_host]);
    let mut body = shell(r"printf 'title\033]0;PWN\007 clear\033[2J c1\302\233 end\n'; printf 'err\033[31m\n' >&2");
    body["name"] = json!("name\u{1b}[2Jwiped");
    let id = hub.api.submit(body).await["id"].as_str().unwrap().to_owned();
    assert_eq!(hub.api.wait_final(&id, PATIENCE).await["state"], "succeeded");
    assert_eventually!(!hub.api.agents().await.is_empty(), PATIENCE, "the sidecar joined");

    // On a terminal: no ESC, BEL or C1 control reaches it; each is shown escaped.
    for line in
        [format!("hubctl get {id}"), format!("hubctl watch {id}"), "hubctl hosts".to_owned(), "hubctl list".to_owned()]
    {
        let output = hubctl_sh(&hub, &line, true);
        let shown = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{line}: {shown}");
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}') && !shown.contains('\u{9b}'),
            "{line} put control characters on the terminal: {shown:?}"
        );
        if line.contains("get") {
            assert!(shown.contains("title\\x1b]0;PWN\\x07 clear\\x1b[2J c1\\u{9b} end"), "{shown}");
            assert!(shown.contains("err\\x1b[31m"), "{shown}");
        }
        if line.contains("watch") {
            assert!(shown.contains("\\x1b]0;PWN\\x07"), "{shown}");
        }
        if line.contains("hosts") {
            assert!(shown.contains("x\\x1b]0;PWN\\x07"), "{shown}");
        }
    }

    // Into a pipe, `watch` writes what the task printed, byte for byte.
    let piped = hubctl_sh(&hub, &format!("hubctl watch {id} 2>/dev/null | cat"), false);
    assert!(piped.status.success());
    assert_eq!(piped.stdout, b"title\x1b]0;PWN\x07 clear\x1b[2J c1\xc2\x9b end\n");

    // A reader that stops after one line while hubctl has far more to write (more than a pipe
    // holds): hubctl exits 0, quietly.
    let long = hub.api.submit(shell("seq 1 200000")).await["id"].as_str().unwrap().to_owned();
    assert_eq!(hub.api.wait_final(&long, PATIENCE).await["state"], "succeeded");
    let head = hubctl_sh(&hub, &format!("hubctl get {long} | head -1"), false);
    let stderr = String::from_utf8_lossy(&head.stderr);
    assert!(head.status.success(), "hubctl get | head -1 exited {:?}: {stderr}", head.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&head.stdout).lines().count(), 1);
}
