//! The real binaries as child processes: start, wait for health, `kill -9`, measure memory.
//!
//! The binaries are built on first use with the same cargo and profile as the running test,
//! so `cargo test --workspace` alone is enough.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Api;

/// The target directory of the running test (`target/debug` or `target/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("the test lives in target/<profile>/deps").to_owned()
}

/// `hubctl ARGS` against the hub at `url` with `token`, run off the async workers.
pub async fn hubctl(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    let (url, token) = (url.to_owned(), token.to_owned());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(binary("hubctl"))
            .args(&args)
            .env("AGENTCOM_HUB", url)
            .env("AGENTCOM_TOKEN", token)
            .output()
            .expect("running hubctl")
    })
    .await
    .expect("the hubctl thread")
}

/// `git ARGS` in `dir` with a test identity and `main` as the default branch; its trimmed
/// stdout. Panics when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The path of a workspace binary, building the binaries once if needed.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--bins", "-p", "agentcom-hub-cli", "-p", "agentcom-sidecar", "-p", "hubctl"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cargo.env("CARGO_TARGET_DIR", target);
        }
        let status = cargo.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let path = profile_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A free loopback port. Another process could take it before we use it; on loopback in a
/// test run that does not happen in practice, and a restart needs the same port.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("binding loopback").local_addr().expect("bound address").port()
}

/// Resident and peak resident memory of a process, in bytes (from /proc).
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

pub struct HubProcess {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub api: Api,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dev: bool,
    cwd: PathBuf,
}

impl HubProcess {
    /// `agentcom-hub serve --insecure-plaintext` on a free port with `data_dir`, plus extra flags.
    pub async fn serve(data_dir: &Path, extra: &[&str]) -> HubProcess {
        HubProcess::serve_with_env(data_dir, extra, &[]).await
    }

    /// `agentcom-hub serve --insecure-plaintext` with extra environment variables (kept for restarts).
    pub async fn serve_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> HubProcess {
        let extra: Vec<&str> = ["--insecure-plaintext"].into_iter().chain(extra.iter().copied()).collect();
        HubProcess::start(data_dir, &extra, env, false, data_dir.parent().unwrap_or(data_dir), free_port()).await
    }

    /// `agentcom-hub serve` as it runs by default: TLS with its own CA. `api` pins that CA.
    pub async fn serve_tls(data_dir: &Path, extra: &[&str]) -> HubProcess {
        HubProcess::start(data_dir, extra, &[], false, data_dir.parent().unwrap_or(data_dir), free_port()).await
    }

    /// The admin token file's CA pin (a hub that serves TLS).
    pub fn ca(&self) -> Option<agentcom_link::Fingerprint> {
        read_token_file(&self.data_dir).ca
    }

    /// `agentcom-hub dev` run from `cwd` (its sidecar works there).
    /// Its local sidecar runs tasks in `cwd` too (`--work-dir`).
    pub async fn dev(data_dir: &Path, cwd: &Path, extra: &[&str]) -> HubProcess {
        HubProcess::dev_with_env(data_dir, cwd, extra, &[]).await
    }

    /// `agentcom-hub dev` as a user starts it: run from `cwd`, its sidecar in its default work
    /// directory (`DATA_DIR/work`).
    pub async fn dev_as_given(data_dir: &Path, cwd: &Path, extra: &[&str]) -> HubProcess {
        HubProcess::start(data_dir, extra, &[], true, cwd, free_port()).await
    }

    /// `agentcom-hub dev` with extra environment variables (kept for restarts).
    pub async fn dev_with_env(data_dir: &Path, cwd: &Path, extra: &[&str], env: &[(&str, &str)]) -> HubProcess {
        let work_dir = cwd.to_string_lossy().into_owned();
        let mut args = vec!["--work-dir", work_dir.as_str()];
        args.extend_from_slice(extra);
        HubProcess::start(data_dir, &args, env, true, cwd, free_port()).await
    }

    async fn start(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        dev: bool,
        cwd: &Path,
        port: u16,
    ) -> HubProcess {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = spawn_hub(data_dir, &args, &env, dev, cwd, port);
        let tls = !dev && !args.iter().any(|a| a == "--insecure-plaintext");
        let url = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        wait_healthy(&url, data_dir).await;
        let file = read_token_file(data_dir);
        let api = match file.ca {
            Some(ca) => Api::pinned(url.clone(), file.token, ca),
            None => Api::new(url.clone(), file.token),
        };
        HubProcess { child, api, url, port, data_dir: data_dir.to_owned(), args, env, dev, cwd: cwd.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn join_token_file(&self) -> PathBuf {
        self.data_dir.join("join.token")
    }

    /// `kill -9`, no goodbye.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Starts the hub again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.child = spawn_hub(&self.data_dir, &self.args, &self.env, self.dev, &self.cwd, self.port);
        wait_healthy(&self.url, &self.data_dir).await;
    }

    /// SIGINT (Ctrl-C), then waits for the process to exit; returns its exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("sending SIGINT");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the hub") {
                return status;
            }
            assert!(Instant::now() < deadline, "the hub did not exit within 20 s of SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        kill9(&mut self.child);
        // A failing test is easier to read with what the hub said: the end of its log.
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.data_dir.with_extension("log"))
        {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!("--- the last {} lines of the hub's log ---\n{}\n---", tail.len(), tail.join("\n"));
        }
    }
}

fn spawn_hub(data_dir: &Path, args: &[String], env: &[(String, String)], dev: bool, cwd: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.with_extension("log"))
        .expect("opening the hub log");
    Command::new(binary("agentcom-hub"))
        .arg(if dev { "dev" } else { "serve" })
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting agentcom-hub")
}

/// The data directory's admin token file.
pub fn read_token_file(data_dir: &Path) -> agentcom_link::token_file::TokenFile {
    let text = std::fs::read_to_string(data_dir.join("admin.token")).expect("admin.token");
    agentcom_link::token_file::TokenFile::parse(&text).expect("a token file")
}

async fn wait_healthy(url: &str, data_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A hub that serves TLS writes its pinned token file before it listens.
        let client = match url.starts_with("https://") {
            false => Some(crate::http_client()),
            true => std::fs::read_to_string(data_dir.join("admin.token"))
                .ok()
                .and_then(|text| agentcom_link::token_file::TokenFile::parse(&text).ok())
                .and_then(|file| file.ca)
                .map(|ca| Api::pinned(url, "", ca).http.clone()),
        };
        if let Some(client) = client
            && let Ok(response) = client.get(format!("{url}/healthz")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the hub at {url} did not become healthy within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct SidecarProcess {
    pub child: Child,
}

impl SidecarProcess {
    /// `agentcom-sidecar run` against `hub`, working in `work_dir`.
    pub fn start(hub: &HubProcess, id: &str, slots: u32, work_dir: &Path) -> SidecarProcess {
        SidecarProcess::start_with(hub, id, slots, work_dir, &[])
    }

    /// Like [`SidecarProcess::start`], with extra flags.
    pub fn start_with(hub: &HubProcess, id: &str, slots: u32, work_dir: &Path, extra: &[&str]) -> SidecarProcess {
        SidecarProcess::start_with_env(hub, id, slots, work_dir, extra, &[])
    }

    /// Like [`SidecarProcess::start_with`], with extra environment variables.
    pub fn start_with_env(
        hub: &HubProcess,
        id: &str,
        slots: u32,
        work_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> SidecarProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(hub.data_dir.with_extension(format!("{id}.log")))
            .expect("opening the sidecar log");
        let child = Command::new(binary("agentcom-sidecar"))
            .args(["run", "--hub", &hub.url, "--id", id, "--slots", &slots.to_string()])
            .arg("--token-file")
            .arg(hub.join_token_file())
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--no-ollama-discovery")
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting agentcom-sidecar");
        SidecarProcess { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}
