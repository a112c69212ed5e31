//! `agentcom-sidecar repo ...`: the steps of the built-in `repo-up` workflow that need the
//! sidecar's own knowledge, run as ordinary tasks in a repository's kept environment (their
//! working directory): what the environment is and what was done in it, its setup, and a check
//! that its services come up.
//!
//! - `repo status` prints the environment's directory, commit and host, its plan
//!   ([`crate::detect`]) with each service's `command` (its run line, with its port variable set)
//!   and `probe` (`http PORT PATH`, `tcp PORT` or empty), and its phase records.
//! - `repo setup` runs the install commands (the plan's, or `AGENTCOM_INSTALL` as a JSON list)
//!   and records them once they succeed: a later run at the same commit finds the record and
//!   skips its setup; a fresh environment has none. One setup runs at a time in an environment.
//! - `repo check` starts every planned service on free ports, waits for each to answer its
//!   probe, says what it saw, and stops them: exit 0 when all were ready. An agent's fix is
//!   verified by it.
//!
//! The records are kept in `.git/agentcom/phases.json`, inside git's own directory, so they
//! are never part of a change or a commit.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::detect::{self, Health, Plan};

/// The phase records of an environment, by phase.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Phases {
    #[serde(default)]
    pub setup: Option<Record>,
}

/// A phase that succeeded: what it ran, when, and in which task.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
pub struct Record {
    pub commands: Vec<String>,
    pub at_unix_ms: i64,
    pub task: String,
    pub duration_ms: u64,
}

fn records_path(dir: &Path) -> PathBuf {
    dir.join(".git").join("agentcom").join("phases.json")
}

pub fn read_phases(dir: &Path) -> Phases {
    std::fs::read(records_path(dir)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

fn write_phases(dir: &Path, phases: &Phases) -> anyhow::Result<()> {
    let path = records_path(dir);
    std::fs::create_dir_all(path.parent().expect("a parent")).with_context(|| format!("{}", path.display()))?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(phases)?)?;
    std::fs::rename(&partial, &path)?;
    Ok(())
}

/// A planned service's run line with its port variable set, and its probe as a line.
fn service_lines(service: &detect::Service) -> (String, String) {
    let command = match &service.port_env {
        Some(name) => format!("export {name}=\"$PORT\"; exec {}", service.run),
        None => format!("exec {}", service.run),
    };
    let probe = match &service.health {
        Some(Health::Http { port, path, .. }) => format!("http {port} {path}"),
        Some(Health::Tcp { port }) => format!("tcp {port}"),
        None => String::new(),
    };
    (command, probe)
}

/// A variable of the environment example that points at another service (`WORKER_URL` at the
/// `worker` service): set, for each service started after that one, to its address.
#[derive(Debug, Serialize, PartialEq)]
pub struct Link {
    pub var: String,
    /// The other service's place in the start order (its ports are in the run's results there).
    pub index: usize,
    /// What comes before and after the port in the value (`http://127.0.0.1:` and `/`).
    pub prefix: String,
    pub suffix: String,
}

/// The example's variable that names service `target` (`WORKER_URL`, `WORKER_HOST`,
/// `WORKER_ADDR`, `WORKER_PORT`) and points at this machine: the value around its port.
fn link_of(var: &detect::EnvVar, target: &detect::Service) -> Option<(String, String)> {
    let upper = target.name.to_ascii_uppercase().replace('-', "_");
    let rest = var.name.strip_prefix(&upper)?.strip_prefix('_')?;
    if !matches!(rest, "URL" | "HOST" | "ADDR" | "ADDRESS" | "PORT" | "ENDPOINT") || target.ports.is_empty() {
        return None;
    }
    let example = var.example.as_deref()?;
    if rest == "PORT" {
        return example.trim().parse::<u16>().ok().map(|_| (String::new(), String::new()));
    }
    // `http://127.0.0.1:8001/x` or `localhost:8001`: the port after the last host's colon.
    let host_start = example.find("://").map_or(0, |i| i + 3);
    let after_host = &example[host_start..];
    let host_end = after_host.find('/').unwrap_or(after_host.len());
    let authority = &after_host[..host_end];
    let (host, port) = authority.rsplit_once(':')?;
    if !matches!(host, "127.0.0.1" | "localhost" | "0.0.0.0" | "[::1]") || port.parse::<u16>().is_err() {
        return None;
    }
    let prefix = format!("{}{host}:", &example[..host_start]);
    Some((prefix, after_host[host_end..].to_owned()))
}

/// The order services start in: those another's variables point at first, so their addresses
/// are known when the others start; file order otherwise.
fn start_order(plan: &Plan) -> Vec<usize> {
    let target = |j: &usize| plan.env.iter().any(|var| link_of(var, &plan.services[*j]).is_some());
    let (first, rest): (Vec<usize>, Vec<usize>) = (0..plan.services.len()).partition(target);
    first.into_iter().chain(rest).collect()
}

/// Each service's links (in start order): the variables that point at a service before it.
fn links(plan: &Plan, order: &[usize]) -> Vec<Vec<Link>> {
    order
        .iter()
        .enumerate()
        .map(|(position, _)| {
            let mut links = Vec::new();
            for var in &plan.env {
                for (index, &j) in order[..position].iter().enumerate() {
                    if let Some((prefix, suffix)) = link_of(var, &plan.services[j]) {
                        links.push(Link { var: var.name.clone(), index, prefix, suffix });
                    }
                }
            }
            links
        })
        .collect()
}

/// The install commands: `AGENTCOM_INSTALL` (a JSON list) when set, else the plan's.
fn install_commands(plan: &Plan) -> anyhow::Result<Vec<String>> {
    match std::env::var("AGENTCOM_INSTALL") {
        Ok(json) if !json.trim().is_empty() => {
            serde_json::from_str(&json).context("AGENTCOM_INSTALL must be a JSON list of shell lines")
        }
        _ => Ok(plan.install.iter().map(|step| step.run.clone()).collect()),
    }
}

/// `repo status` for the environment at `dir`.
pub fn status(dir: &Path) -> anyhow::Result<Value> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let plan = detect::detect(&dir)?;
    let commit = git(&dir, &["rev-parse", "HEAD"]).unwrap_or_default();
    // The commit the environment was made at (it names it); HEAD moves with fixes made there.
    let base = std::fs::read_to_string(dir.join(".git/agentcom/base")).unwrap_or_else(|_| commit.clone());
    let phases = read_phases(&dir);
    let commands = install_commands(&plan)?;
    let setup_done = phases.setup.as_ref().is_some_and(|record| record.commands == commands);
    let mut plan_json = serde_json::to_value(&plan)?;
    let order = start_order(&plan);
    let links = links(&plan, &order);
    if let Some(services) = plan_json["services"].as_array_mut() {
        for (json, service) in services.iter_mut().zip(&plan.services) {
            let (command, probe) = service_lines(service);
            json["command"] = json!(command);
            json["probe"] = json!(probe);
        }
        let mut ordered: Vec<Value> = order.iter().map(|&i| services[i].take()).collect();
        for (json, links) in ordered.iter_mut().zip(links) {
            json["links"] = json!(links);
        }
        *services = ordered;
    }
    let overview = if plan.needs_model { overview(&dir) } else { String::new() };
    Ok(json!({
        "overview": overview,
        "dir": dir.to_string_lossy(),
        "commit": commit.trim(),
        "base": base.trim(),
        "host": std::env::var("AGENTCOM_HOST").unwrap_or_else(|_| crate::hostname()),
        "plan": plan_json,
        "phases": {
            "setup": {
                "done": setup_done,
                "record": phases.setup,
            }
        }
    }))
}

/// What a model is shown of a repository whose plan the rules could not make: its files (at
/// most 200 paths, two levels deep, `.git` left out), its README's start, and the start of each
/// small text file at its root.
fn overview(dir: &Path) -> String {
    let mut paths = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((at, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".git" || paths.len() >= 200 {
                continue;
            }
            let path = entry.path();
            let shown = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
            if path.is_dir() {
                paths.push(format!("{shown}/"));
                if depth < 1 {
                    stack.push((path, depth + 1));
                }
            } else {
                paths.push(shown);
            }
        }
    }
    let mut text = format!("Files:\n{}\n", paths.join("\n"));
    let mut shown = 0;
    for path in &paths {
        let full = dir.join(path);
        let small = std::fs::metadata(&full).is_ok_and(|m| m.is_file() && m.len() <= 64 * 1024);
        if path.contains('/') || !small || shown >= 6 {
            continue;
        }
        let Ok(body) = std::fs::read_to_string(&full) else { continue };
        let head: String =
            body.chars().take(if path.to_ascii_lowercase().starts_with("readme") { 2000 } else { 800 }).collect();
        text.push_str(&format!("\n--- {path} ---\n{head}\n"));
        shown += 1;
    }
    text
}

/// `repo setup` in the environment at `dir`: runs the install commands in order, each as
/// `sh -c`, its output on ours, and records them once all succeed. Skips what is recorded done.
pub fn setup(dir: &Path) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let plan = detect::detect(&dir)?;
    let commands = install_commands(&plan)?;
    let lock_path = records_path(&dir).with_file_name("setup.lock");
    std::fs::create_dir_all(lock_path.parent().expect("a parent"))?;
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    // One setup at a time in an environment: a second run waits, then finds the first's record.
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, err)| anyhow::anyhow!("locking {}: {err}", lock_path.display()))?;
    if let Some(record) = read_phases(&dir).setup.filter(|record| record.commands == commands) {
        println!("setup: done already by task {} ({} ms); nothing to do", record.task, record.duration_ms);
        return Ok(());
    }
    if commands.is_empty() {
        println!("setup: the plan has nothing to install");
    }
    let started = Instant::now();
    for (index, line) in commands.iter().enumerate() {
        println!("setup [{}/{}]: {line}", index + 1, commands.len());
        std::io::stdout().flush()?;
        #[allow(clippy::disallowed_methods)] // Reason: the task's own child, in its containment and sandbox.
        let status = Command::new("sh").args(["-c", line]).current_dir(&dir).stdin(Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "setup failed: {line:?} {}", describe(status));
    }
    let record = Record {
        commands,
        at_unix_ms: crate::now_ms(),
        task: std::env::var(crate::contain::MARK_TASK).unwrap_or_default(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let mut phases = read_phases(&dir);
    phases.setup = Some(record);
    write_phases(&dir, &phases)?;
    println!("setup: done in {} ms", started.elapsed().as_millis());
    Ok(())
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended without an exit status".to_owned(),
    }
}

/// `repo check` in the environment at `dir`: every planned service started on free ports and
/// given `within` to answer its probe; true when all did. What each did is printed.
pub fn check(dir: &Path, within: Duration) -> anyhow::Result<bool> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let plan = detect::detect(&dir)?;
    anyhow::ensure!(!plan.services.is_empty(), "the plan has no service to check");
    let mut running = Vec::new();
    // Ports as a service task gets them: free, none twice, as PORT and PORT_<NAME>.
    let mut book = crate::service::PortBook::default();
    for service in &plan.services {
        let reserved = book.reserve(&service.ports).map_err(|err| anyhow::anyhow!("{}: {err}", service.name))?;
        let (command, _) = service_lines(service);
        #[allow(clippy::disallowed_methods)] // Reason: the task's own child, in its containment and sandbox.
        let mut child = Command::new("sh");
        child.args(["-c", &command]).current_dir(&dir).stdin(Stdio::null()).process_group(0).envs(reserved.env());
        let child = child.spawn().with_context(|| format!("starting {}", service.name))?;
        let ports: BTreeMap<String, u16> = reserved.0.into_iter().collect();
        running.push((service, ports, child));
    }
    let deadline = Instant::now() + within;
    let mut all_ready = true;
    for (service, ports, child) in &mut running {
        let verdict = loop {
            let probe = probe_once(service, ports);
            if probe.is_ok() {
                break Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                break Err(format!("it {} before it was ready", describe(status)));
            }
            if Instant::now() >= deadline {
                break probe.map_err(|why| format!("not ready after {} s: {why}", within.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        match verdict {
            Ok(()) => println!("{}: ready on {}", service.name, ports_text(ports)),
            Err(why) => {
                all_ready = false;
                println!("{}: {why}", service.name);
            }
        }
    }
    for (_, _, child) in &mut running {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
        let _ = child.wait();
    }
    Ok(all_ready)
}

fn ports_text(ports: &BTreeMap<String, u16>) -> String {
    ports.iter().map(|(name, port)| format!("{name}={port}")).collect::<Vec<_>>().join(" ")
}

/// One readiness probe of a planned service: its HTTP route answers 2xx or 3xx, or its port
/// takes a connection; a service with no port is ready once it runs.
fn probe_once(service: &detect::Service, ports: &BTreeMap<String, u16>) -> Result<(), String> {
    let port_of = |name: &str| ports.get(name).copied().ok_or_else(|| format!("no port {name}"));
    match &service.health {
        None => Ok(()),
        Some(Health::Tcp { port }) => {
            let port = port_of(port)?;
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map(|_| ()).map_err(|err| format!("connect {port}: {err}"))
        }
        Some(Health::Http { port, path, .. }) => {
            let port = port_of(port)?;
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .map_err(|err| format!("GET {path} on {port}: {err}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|err| err.to_string())?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").map_err(|err| err.to_string())?;
            let mut head = [0u8; 64];
            let read = stream.read(&mut head).map_err(|err| format!("GET {path} on {port}: {err}"))?;
            let line = String::from_utf8_lossy(&head[..read]);
            let code = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
            match code {
                200..=399 => Ok(()),
                _ => Err(format!("GET {path} on {port}: {}", line.lines().next().unwrap_or("no answer"))),
            }
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    #[allow(clippy::disallowed_methods)] // Reason: a read of the environment's own repository.
    let output = Command::new("git").arg("-C").arg(dir).args(args).stdin(Stdio::null()).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
