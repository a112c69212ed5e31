//! `meshbench shell`: trivial shell tasks (`argv: ["true"]`) drained through a hub process and
//! a sidecar process with containment on, at several slot counts, beside the floor measured in
//! the same run: `xargs -P SLOTS -n 1 true` spawning the same commands with nothing around them.
//!
//! Every task is the whole path: a durable submit over `SubmitStream` (as `hubctl submit
//! --from-file` sends it), a durable dispatch, the process in its own cgroup (or under the
//! subreaper), and a durable result.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentcom_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;

pub(crate) struct Options {
    pub(crate) tasks: usize,
    pub(crate) slots: Vec<u32>,
    /// Run the dev hub (sidecar in the hub's process) instead of a hub and a sidecar process.
    pub(crate) dev: bool,
}

pub(crate) struct Processes(pub(crate) Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it beside meshbench (cargo build --release --bins)",
        path.display()
    );
    Ok(path)
}

/// Spawns `seq N | xargs -P slots -n 1 true` and returns commands per second.
fn spawn_floor(tasks: usize, slots: u32) -> anyhow::Result<f64> {
    let input: String = (0..tasks).map(|n| format!("{n}\n")).collect();
    let started = Instant::now();
    let mut xargs = Command::new("xargs")
        .args(["-P", &slots.to_string(), "-n", "1", "true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = xargs.stdin.take().expect("piped");
        stdin.write_all(input.as_bytes())?;
    }
    let status = xargs.wait()?;
    anyhow::ensure!(status.success(), "xargs failed: {status}");
    Ok(tasks as f64 / started.elapsed().as_secs_f64())
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    Ok(client.get(url).bearer_auth(token).send().await?.json().await?)
}

/// Starts a hub and a sidecar (or a dev hub) with `slots`, and waits until its agents are idle.
pub(crate) async fn start_mesh(
    dir: &Path,
    slots: u32,
    dev: bool,
    sidecar_flags: &[&str],
) -> anyhow::Result<(Processes, String, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = dir.join("hub");
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let mut hub = Command::new(binary("agentcom-hub")?);
    hub.arg(if dev { "dev" } else { "serve" })
        .args(["--listen", &format!("127.0.0.1:{port}"), "--backup-interval-ms", "0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .current_dir(&work)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if dev {
        hub.args(["--slots", &slots.to_string()]);
    } else {
        // Plaintext on loopback, as `dev` is: the figures compare with `xargs -P`, not TLS.
        hub.arg("--insecure-plaintext");
    }
    let mut processes = Processes(vec![hub.spawn()?]);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{url}/readyz")).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
        anyhow::ensure!(Instant::now() < deadline, "the hub did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))?.trim().to_owned();
    if !dev {
        let sidecar = Command::new(binary("agentcom-sidecar")?)
            .args(["run", "--hub", &url, "--slots", &slots.to_string(), "--no-ollama-discovery"])
            .arg("--token-file")
            .arg(data_dir.join("join.token"))
            .arg("--work-dir")
            .arg(&work)
            .args(sidecar_flags)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        processes.0.push(sidecar);
    }
    loop {
        let agents = get(&client, &format!("{url}/api/v1/agents"), &admin).await?;
        let idle = agents["agents"].as_array().map_or(0, |a| a.iter().filter(|a| a["state"] == "idle").count());
        if idle == slots as usize {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the sidecar did not join");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((processes, url, admin))
}

/// Submits `tasks` trivial tasks over one stream and waits until every one has finished.
/// Returns tasks per second from the first submit to the last result.
pub(crate) async fn drain(url: &str, admin: &str, tasks: usize) -> anyhow::Result<(f64, u64)> {
    let http = reqwest::Client::new();
    let before = get(&http, &format!("{url}/api/v1/queue"), admin).await?["queue"].take();
    let (tasks_before, dead_before) =
        (before["tasks"].as_u64().unwrap_or(0), before["dead_lettered"].as_u64().unwrap_or(0));
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let (tx, rx) = mpsc::channel(1024);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {admin}"))?);
    let started = Instant::now();
    let mut acks = client.submit_stream(request).await?.into_inner();
    let sender = tokio::spawn(async move {
        for sequence in 1..=tasks as u64 {
            let spec = pb::TaskSpec {
                work: Some(pb::Work {
                    kind: Some(pb::work::Kind::Shell(pb::ShellWork {
                        argv: vec!["true".into()],
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            };
            if tx.send(pb::SubmitStreamRequest { sequence, spec: Some(spec) }).await.is_err() {
                break;
            }
        }
    });
    let mut acknowledged = 0;
    while acknowledged < tasks {
        match acks.message().await? {
            Some(_) => acknowledged += 1,
            None => anyhow::bail!("the submit stream ended after {acknowledged} acknowledgements"),
        }
    }
    sender.await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = get(&http, &format!("{url}/api/v1/queue"), admin).await?["queue"].take();
        let open = ["ready", "delayed", "waiting_on_dependencies", "leased"]
            .iter()
            .map(|k| stats[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        if stats["tasks"].as_u64() == Some(tasks_before + tasks as u64) && open == 0 {
            let failed = stats["dead_lettered"].as_u64().unwrap_or(0) - dead_before;
            return Ok((tasks as f64 / started.elapsed().as_secs_f64(), failed));
        }
        anyhow::ensure!(Instant::now() < deadline, "tasks did not finish: {stats}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn run(options: Options) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    let mut containment = String::new();
    for &slots in &options.slots {
        let dir = tempfile::tempdir()?;
        let (processes, url, admin) = start_mesh(dir.path(), slots, options.dev, &[]).await?;
        let hosts = get(&reqwest::Client::new(), &format!("{url}/api/v1/hosts"), &admin).await?;
        if let Some(host) = hosts["hosts"].as_array().and_then(|h| h.first()) {
            containment = host["containment"].as_str().unwrap_or_default().to_owned();
        }
        // Warm up the path (and the page cache) before measuring.
        drain(&url, &admin, 50.min(options.tasks)).await?;
        let (mesh, failed) = drain(&url, &admin, options.tasks).await?;
        drop(processes);
        let floor = spawn_floor(options.tasks, slots)?;
        eprintln!("  {slots:>2} slots: {mesh:.0} tasks/s through the mesh, {floor:.0}/s spawned by xargs -P {slots}");
        rows.push(json!({
            "slots": slots,
            "mesh_tasks_per_s": mesh.round(),
            "floor_xargs_per_s": floor.round(),
            "ratio": (mesh / floor * 100.0).round() / 100.0,
            "dead_lettered": failed,
        }));
    }
    Ok(json!({
        "benchmark": "shell",
        "tasks_per_run": options.tasks,
        "topology": if options.dev { "dev hub (sidecar in process)" } else { "hub process + sidecar process" },
        "containment": containment,
        "target": "at 4 slots, at least 0.7 of the floor",
        "runs": rows,
    }))
}
