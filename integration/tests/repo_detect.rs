//! `agentcom-sidecar detect` on the fixture repositories, through the real binary: the plan it
//! prints, and that plan carried out by hand (its install, its service with a free port, its
//! health check answered), so a plan is checked against the program it describes.

#![allow(clippy::disallowed_methods)] // The test runs the real binary and the plan's commands.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentcom_integration::process::{binary, free_port};
use agentcom_integration::repos;
use serde_json::{Value, json};

fn detect(root: &Path) -> Value {
    let output = Command::new(binary("agentcom-sidecar")).arg("detect").arg(root).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs the plan's install, starts its first service on a free port and waits for its health
/// check (an HTTP GET answered 200); the service is killed after.
fn bring_up(root: &Path, plan: &Value) {
    for step in plan["install"].as_array().unwrap() {
        let status = Command::new("sh").args(["-c", step["run"].as_str().unwrap()]).current_dir(root).status().unwrap();
        assert!(status.success(), "install {step}");
    }
    let service = &plan["services"][0];
    let port = free_port();
    let mut command = Command::new("sh");
    command.args(["-c", service["run"].as_str().unwrap()]).current_dir(root).env("PORT", port.to_string());
    if let Some(var) = service["port_env"].as_str() {
        command.env(var, port.to_string());
    }
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).process_group(0).spawn().unwrap();
    let path = service["health"]["path"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answered = loop {
        let code = http_status(port, path);
        if code == Some(200) || Instant::now() > deadline {
            break code;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The whole group: `make run` and `sh -c` start the server as a child.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
    let _ = child.wait();
    assert_eq!(answered, Some(200), "GET {path} on the service's port");
}

/// The status of `GET path` on loopback `port`, if it answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_fixture_repositories_are_detected_and_their_plans_bring_them_up() {
    let dir = tempfile::tempdir().unwrap();

    let stdlib = repos::write(dir.path(), "stdlib-web", repos::STDLIB_WEB);
    let plan = detect(&stdlib);
    assert_eq!(plan["services"][0]["run"], "python3 app.py", "{plan:#}");
    assert_eq!(plan["services"][0]["health"]["path"], "/health");
    assert_eq!(plan["install"], json!([]));
    bring_up(&stdlib, &plan);

    let two = repos::write(dir.path(), "two-services", repos::TWO_SERVICES);
    let plan = detect(&two);
    let services: Vec<(&str, &Value)> =
        plan["services"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), &s["ports"])).collect();
    assert_eq!(services, [("web", &json!(["web"])), ("worker", &json!(["worker"]))], "{plan:#}");
    assert_eq!(plan["services"][0]["port_env"], "APP_PORT");
    assert_eq!(plan["services"][0]["health"]["path"], "/healthz");
    assert_eq!(plan["install"][0]["evidence"], "requirements.txt");
    let secret = plan["env"].as_array().unwrap().iter().find(|e| e["name"] == "SECRET_KEY").unwrap();
    assert_eq!(secret["secret"], true);

    let make = repos::write(dir.path(), "makefile", repos::MAKEFILE);
    let plan = detect(&make);
    assert_eq!(plan["install"][0]["run"], "make install", "{plan:#}");
    assert_eq!(plan["services"][0]["run"], "make run");
    assert_eq!(plan["services"][0]["health"]["path"], "/ready");
    bring_up(&make, &plan);
    assert!(make.join("build-out/marker").exists(), "the install ran");
}

#[test]
fn detect_refuses_what_is_not_a_directory() {
    let output = Command::new(binary("agentcom-sidecar")).args(["detect", "/nonexistent/at/all"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a directory"));
}
