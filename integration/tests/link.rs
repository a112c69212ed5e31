//! The link on real networks, with the real binaries: TLS by default, enrolment with a
//! one-use join token, revocation that cuts a sidecar off at once, pins that refuse the wrong
//! hub, QUIC beside TCP, a client that changes address mid-task, and both transports through a
//! relay that delays by 50 ms, drops 1 % of datagrams and every one over 1,232 bytes.

#![allow(clippy::disallowed_methods)] // Tests and benchmarks start the real binaries and tools.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentcom_integration::process::{HubProcess, binary};
use agentcom_integration::relay::{Impairment, TcpRelay, UdpRelay};
use agentcom_integration::{assert_eventually, shell};
use serde_json::Value;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())).permissions().mode() & 0o777
}

/// `hubctl ARGS` with the hub's own token file (which pins its CA).
fn hubctl(hub: &HubProcess, args: &[&str]) -> std::process::Output {
    Command::new(binary("hubctl"))
        .arg("--hub")
        .arg(&hub.url)
        .arg("--token-file")
        .arg(hub.data_dir.join("admin.token"))
        .args(args)
        .env_remove("AGENTCOM_TOKEN")
        .output()
        .expect("running hubctl")
}

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn join_token(hub: &HubProcess, extra: &[&str]) -> String {
    let mut args = vec!["join-token", "create"];
    args.extend_from_slice(extra);
    stdout(&hubctl(hub, &args))
}

/// A sidecar process started with `--join`, its log beside the hub's.
struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn start(hub_url: &str, join: &str, state: &Path, work: &Path, name: &str) -> Sidecar {
        std::fs::create_dir_all(work).unwrap();
        let log = state.with_extension("log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(binary("agentcom-sidecar"))
            .args(["run", "--hub", hub_url, "--slots", "2", "--no-ollama-discovery", "--hostname"])
            .arg(name)
            .arg("--state-dir")
            .arg(state)
            .arg("--work-dir")
            .arg(work)
            .env("AGENTCOM_JOIN", join)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting agentcom-sidecar");
        Sidecar { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

async fn enrolled(hub: &HubProcess) -> Vec<Value> {
    let (status, body) = hub.api.request(reqwest::Method::GET, "/api/v1/sidecars", None).await;
    assert_eq!(status, 200, "{body}");
    body["sidecars"].as_array().cloned().unwrap_or_default()
}

/// `agentcom-sidecar enroll`'s exit status and stderr.
fn enroll(hub_url: &str, join: &str, state: &Path) -> (bool, String) {
    let output = Command::new(binary("agentcom-sidecar"))
        .args(["enroll", "--hub", hub_url, "--join", join])
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("running agentcom-sidecar enroll");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_enrols_over_tls_once_per_token_and_a_revoked_one_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let hub = HubProcess::serve_tls(&data, &[]).await;
    assert!(hub.url.starts_with("https://"), "serve is TLS by default");
    for key in ["ca.key", "hub.key", "admin.token", "join.token"] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    let ca = hub.ca().expect("admin.token pins the CA");

    // A plain HTTP request to a TLS port gets nothing useful; curl-like clients need the CA.
    assert!(
        agentcom_integration::http_client().get(format!("http://127.0.0.1:{}/healthz", hub.port)).send().await.is_err()
    );

    let token = join_token(&hub, &["--uses", "1", "--ttl", "10m", "--tag", "gpu"]);
    assert!(token.starts_with("acj_"), "{token}");

    // The wrong pin: the sidecar refuses the hub and says what to do.
    let mut wrong = token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let (ok, err) = enroll(&hub.url, &wrong, &dir.path().join("wrong-state"));
    assert!(!ok);
    assert!(err.contains("pins one whose SHA-256 starts") && err.contains("Get a new one"), "{err}");
    assert!(!dir.path().join("wrong-state/identity/key.pem").exists());

    // The first use enrols, and the sidecar runs work with its own certificate.
    let state = dir.path().join("gpu-1");
    let sidecar = Sidecar::start(&hub.url, &token, &state, &dir.path().join("work-1"), "gpu-1");
    assert_eventually!(
        enrolled(&hub).await.iter().any(|s| s["connected"] == true),
        Duration::from_secs(30),
        "enrolled(&hub).await.iter().any(|s| s['connected'] == true)"
    );
    let identity = enrolled(&hub).await.remove(0);
    let id = identity["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("gpu-1-"), "{identity}");
    assert_eq!(identity["tags"], serde_json::json!(["gpu"]));
    assert_eq!(mode(&state.join("identity/key.pem")), 0o600);
    assert_eq!(mode(&state.join("identity")), 0o700);
    let mut body = shell("echo over-tls");
    body["placement"] = serde_json::json!({ "tags": ["gpu"] });
    let task = hub.api.submit(body).await;
    let task = hub.api.wait_final(task["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["sidecar_id"], id.as_str());
    assert_eq!(task["outcome"]["stdout"], "over-tls\n");

    // A second use of the one-use token is refused.
    let (ok, err) = enroll(&hub.url, &token, &dir.path().join("second"));
    assert!(!ok);
    assert!(err.contains("used 1 of 1"), "{err}");

    // hubctl pins too: a wrong fingerprint, or none at all over https, is refused with advice.
    let other = agentcom_link::Fingerprint::of(b"another hub");
    let output = Command::new(binary("hubctl"))
        .args(["--hub", &hub.url, "--ca-fingerprint", &other.hex(), "list"])
        .arg("--token-file")
        .arg(data.join("admin.token"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains(&ca.hex()) && err.contains("pins one whose SHA-256 starts"), "{err}");
    let output = Command::new(binary("hubctl"))
        .args(["--hub", &hub.url, "--token", &hub.api.token, "list"])
        .env("AGENTCOM_TOKEN_FILE", dir.path().join("none"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("reading the token file") || err.contains("trusts only the hub's own CA"), "{err}");
    // A token file made by hubctl pins the hub as admin.token does: a viewer reads with it.
    let viewer_file = dir.path().join("viewer.token");
    let viewer_path = viewer_file.to_str().unwrap();
    stdout(&hubctl(&hub, &["tokens", "create", "--role", "viewer", "--name", "wall", "--out", viewer_path]));
    assert_eq!(mode(&viewer_file), 0o600);
    assert!(std::fs::read_to_string(&viewer_file).unwrap().contains(&format!("ca-sha256={}", ca.hex())));
    let output = Command::new(binary("hubctl"))
        .args(["--hub", &hub.url, "--token-file", viewer_path, "list"])
        .env_remove("AGENTCOM_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = stdout(&hubctl(&hub, &["sidecars", "ls"]));
    assert!(listed.contains(&id) && listed.contains("connected"), "{listed}");

    // Revocation: the live stream closes within 2 s, the task it held is retried elsewhere
    // once its lease lapses, and the sidecar stops (78) and cannot come back.
    let long = hub.api.submit(shell("sleep 60")).await;
    let long_id = long["id"].as_str().unwrap().to_owned();
    assert_eventually!(
        hub.api.get(&long_id).await["state"] == "running",
        Duration::from_secs(20),
        "hub.api.get(&long_id).await['state'] == 'running'"
    );
    let revoked_at = Instant::now();
    stdout(&hubctl(&hub, &["sidecars", "revoke", &id]));
    assert_eventually!(
        enrolled(&hub).await[0]["connected"] == false,
        Duration::from_secs(2),
        "enrolled(&hub).await[0]['connected'] == false"
    );
    let closed = revoked_at.elapsed();
    let mut sidecar = sidecar;
    let status = loop {
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            break status;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(15), "the revoked sidecar did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(78), "{}", sidecar.log());
    println!(
        "revocation: stream closed {} ms after the revoke answered; the sidecar exited 78 after {} ms",
        closed.as_millis(),
        revoked_at.elapsed().as_millis()
    );
    let again = Sidecar::start(&hub.url, &token, &state, &dir.path().join("work-1"), "gpu-1");
    let mut again = again;
    let status = again.child.wait().unwrap();
    assert_eq!(status.code(), Some(78));
    assert!(again.log().contains(agentcom_link::REVOKED), "{}", again.log());
    let audit = stdout(&hubctl(&hub, &["audit"]));
    for action in ["join_token.create", "sidecar.enrol", "sidecar.revoke"] {
        assert!(audit.contains(action), "{action} in {audit}");
    }

    // Canaries: neither the join token's secret nor the admin token is in any log.
    let secret = token.split('_').nth(2).unwrap().to_owned();
    let logs = [std::fs::read_to_string(data.with_extension("log")).unwrap(), sidecar.log(), again.log()];
    for log in &logs {
        assert!(!log.contains(&secret), "the join token's secret is in a log");
        assert!(!log.contains(&hub.api.token), "the admin token is in a log");
    }
    drop(hub);
}

/// A long task's output, through `hub`: 3,000 numbered lines, some of them long.
const LINES: usize = 3_000;
fn numbered_output() -> Value {
    shell(&format!("i=0; while [ $i -lt {LINES} ]; do echo \"line $i $(printf '%0200d' $i)\"; i=$((i+1)); done"))
}

fn check_numbered(stdout: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), LINES, "every line arrived");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("line {i} ")), "line {i} in order: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_tcp_carry_a_task_whole_through_an_impaired_relay_and_quic_follows_an_address_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let quic_port = free_udp_port();
    let quic_listen = format!("127.0.0.1:{quic_port}");
    let hub = HubProcess::serve_tls(&data, &["--quic-listen", &quic_listen]).await;
    let impairment = Impairment::tailnet_on_a_bad_day();

    // QUIC through the relay: enrolment and the session both go over it.
    let udp = UdpRelay::start(([127, 0, 0, 1], quic_port).into(), impairment).await;
    let token = join_token(&hub, &["--uses", "2", "--tag", "far"]);
    let quic_url = format!("quic://{}", udp.addr);
    let quic = Sidecar::start(&quic_url, &token, &dir.path().join("quic"), &dir.path().join("work-q"), "laptop");
    assert_eventually!(
        enrolled(&hub).await.iter().any(|s| s["connected"] == true),
        Duration::from_secs(60),
        "enrolled(&hub).await.iter().any(|s| s['connected'] == true)"
    );
    let quic_id = enrolled(&hub).await[0]["id"].as_str().unwrap().to_owned();

    let started = Instant::now();
    let mut body = numbered_output();
    body["placement"] = serde_json::json!({ "host": quic_id });
    let task = hub.api.submit(body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    // Mid-task, the client's address changes (a new source port at the relay).
    assert_eventually!(
        hub.api.get(&id).await["state"] == "running",
        Duration::from_secs(30),
        "hub.api.get(&id).await['state'] == 'running'"
    );
    let moved_to = udp.rebind().await;
    let task = hub.api.wait_final(&id, Duration::from_secs(120)).await;
    let quic_took = started.elapsed();
    assert_eq!(task["state"], "succeeded", "{task}");
    check_numbered(task["outcome"]["stdout"].as_str().unwrap());
    assert_eq!(quic.log().matches("joined the hub").count(), 1, "one session throughout: {}", quic.log());
    let counts = &udp.counts;
    let (lost, too_large) = (
        counts.lost.load(std::sync::atomic::Ordering::Relaxed),
        counts.too_large.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(too_large, 0, "no datagram over 1,232 bytes");

    // The same over TLS on TCP through a relay that delays as much.
    let tcp_relay = TcpRelay::start(([127, 0, 0, 1], hub.port).into(), impairment.delay).await;
    let tcp_url = format!("https://{}", tcp_relay.addr);
    let _tcp = Sidecar::start(&tcp_url, &token, &dir.path().join("tcp"), &dir.path().join("work-t"), "server");
    assert_eventually!(
        enrolled(&hub).await.iter().filter(|s| s["connected"] == true).count() == 2,
        Duration::from_secs(60),
        "enrolled(&hub).await.iter().filter(|s| s['connected'] == tru"
    );
    let tcp_id =
        enrolled(&hub).await.iter().find(|s| s["id"] != quic_id.as_str()).unwrap()["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let mut body = numbered_output();
    body["placement"] = serde_json::json!({ "host": tcp_id });
    let task = hub.api.submit(body).await;
    let task = hub.api.wait_final(task["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    let tcp_took = started.elapsed();
    assert_eq!(task["state"], "succeeded", "{task}");
    check_numbered(task["outcome"]["stdout"].as_str().unwrap());
    let bytes = task["outcome"]["stdout_total_bytes"].as_u64().unwrap_or(0);
    println!(
        "impaired relay (50 ms each way, 1 % loss on UDP, 1,232-byte cap): a task of {bytes} bytes of output from submit to final in {} ms over QUIC (moved to {moved_to} mid-task; {lost} datagrams lost, {too_large} too large) and {} ms over TLS on TCP",
        quic_took.as_millis(),
        tcp_took.as_millis()
    );
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_id_beside_a_join_token_is_refused_before_the_token_is_spent() {
    // No hub at all: the refusal comes before any enrolment is tried.
    let state = tempfile::tempdir().unwrap();
    let output = Command::new(binary("agentcom-sidecar"))
        .args(["run", "--hub", "https://127.0.0.1:9", "--join", "acj_abc_def_0123456789abcdef0123456789abcdef"])
        .args(["--id", "mine", "--no-ollama-discovery", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--id mine cannot be used with a join token"), "{stderr}");
    assert!(!state.path().join("identity").exists(), "nothing was written");
}
