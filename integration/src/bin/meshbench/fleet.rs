//! `meshbench fleet`: many simulated sidecars, each its own `AgentLink.Session` stream, spread
//! over a few HTTP/2 connections, against one hub running as its own process (so its CPU and
//! memory are its own). Each sidecar heartbeats every interval and reports resources every
//! three. Measured: the hub's CPU share at steady state (beside the same hub idle), its memory
//! per connected sidecar, and how long a sidecar that goes silent takes to be marked offline
//! (beside the heartbeat interval and a loopback round trip).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentcom_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Streams per HTTP/2 connection: under the server's default limit of 200 concurrent streams.
const STREAMS_PER_CONNECTION: usize = 150;

pub(crate) struct Options {
    pub(crate) sidecars: usize,
    pub(crate) heartbeat_ms: u64,
    pub(crate) measure_seconds: f64,
    /// Followers of `GET /api/v1/events` (dashboards) in the last window.
    pub(crate) watchers: usize,
}

struct Hub {
    child: Child,
    url: String,
    token: String,
    admin: String,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hub_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("agentcom-hub");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it beside meshbench (cargo build --release --bins)",
        path.display()
    );
    Ok(path)
}

async fn start_hub(dir: &Path, heartbeat_ms: u64) -> anyhow::Result<Hub> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let data_dir = dir.join("hub");
    let child = Command::new(hub_binary()?)
        // Plaintext: the figures are the hub's, not TLS's (the simulated sidecars dial h2c).
        .args(["serve", "--insecure-plaintext", "--listen", &format!("127.0.0.1:{port}"), "--backup-interval-ms", "0"])
        .args(["--heartbeat-interval-ms", &heartbeat_ms.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{url}/readyz")).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
        anyhow::ensure!(Instant::now() < deadline, "the hub did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = |name: &str| std::fs::read_to_string(data_dir.join(name)).map(|t| t.trim().to_owned());
    Ok(Hub { child, url, token: read("join.token")?, admin: read("admin.token")? })
}

/// User plus system CPU time of a process, in seconds (from `/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .map_or(Ok(0.0), |(u, s)| Ok::<_, anyhow::Error>(u.parse::<f64>()? + s.parse::<f64>()?))?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

fn rss_bytes(pid: u32) -> u64 {
    agentcom_integration::process::memory(pid).0
}

/// The hub's CPU use over `seconds`, as a percentage of one core.
async fn cpu_share(pid: u32, seconds: f64) -> anyhow::Result<f64> {
    Ok(cpu_windows(pid, seconds, 1).await?.0)
}

/// The hub's CPU use over `windows` consecutive windows of `seconds` each, as percentages of
/// one core: over the whole time, and per window (to show how much it moves between windows).
async fn cpu_windows(pid: u32, seconds: f64, windows: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let (cpu_start, start) = (cpu_seconds(pid)?, Instant::now());
    let mut shares = Vec::new();
    for _ in 0..windows {
        let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        shares.push(round2((cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64() * 100.0));
    }
    Ok(((cpu_seconds(pid)? - cpu_start) / start.elapsed().as_secs_f64() * 100.0, shares))
}

/// Windows the heartbeat-only CPU share is measured over: one window moves by up to a
/// percentage point between runs on a shared 2-core machine, so the figure is a minute's.
const HEARTBEAT_WINDOWS: usize = 3;

/// Loopback TCP round trip p50, the floor under any detection the hub does over the network.
async fn loopback_rtt_us() -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            let mut byte = [0u8; 1];
            while socket.read_exact(&mut byte).await.is_ok() {
                if socket.write_all(&byte).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let mut samples = Vec::new();
    let mut byte = [7u8; 1];
    for _ in 0..2000 {
        let start = Instant::now();
        socket.write_all(&byte).await?;
        socket.read_exact(&mut byte).await?;
        samples.push(start.elapsed());
    }
    drop(socket);
    echo.abort();
    samples.sort_unstable();
    Ok(samples[samples.len() / 2].as_secs_f64() * 1e6)
}

fn resource_report(n: usize) -> pb::ResourceReport {
    pb::ResourceReport {
        at_unix_ms: now_ms(),
        cpu_percent: (n % 100) as f64,
        cpu_per_core_percent: vec![12.5; 8],
        load1: 0.4,
        load5: 0.3,
        load15: 0.2,
        memory_total_bytes: 32 << 30,
        memory_used_bytes: 12 << 30,
        memory_available_bytes: 20 << 30,
        disks: vec![pb::Disk { mount: "/".into(), total_bytes: 512 << 30, available_bytes: 300 << 30 }],
        gpus: Vec::new(),
        gpus_simulated: false,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What one simulated sidecar needs.
struct Sim {
    channel: Channel,
    token: String,
    n: usize,
    heartbeat: Duration,
    joined: Arc<AtomicUsize>,
    reporting: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    last_beat: Arc<std::sync::Mutex<Instant>>,
}

/// One simulated sidecar: hello, then heartbeats (and, while `reporting`, a resource report
/// every third beat) until `silent` is set, after which it keeps its stream open and says
/// nothing (a hung machine).
async fn simulate(sim: Sim) -> anyhow::Result<()> {
    let Sim { channel, token, n, heartbeat, joined, reporting, silent, last_beat } = sim;
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::SidecarMessage>(8);
    let hello = pb::Hello {
        sidecar_id: format!("sim-{n:05}"),
        hostname: format!("sim-host-{n:05}"),
        os: "linux".into(),
        arch: "x86_64".into(),
        version: "meshbench".into(),
        slots: 1,
        capabilities: vec!["shell".into()],
        ..Default::default()
    };
    tx.send(pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Hello(hello)) }).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}"))?);
    let mut inbound = client.session(request).await?.into_inner();
    inbound.message().await?.ok_or_else(|| anyhow::anyhow!("no welcome"))?;
    joined.fetch_add(1, Ordering::Relaxed);
    // Spread the beats over the interval, as independent machines would be.
    tokio::time::sleep(heartbeat.mul_f64(rand::random::<f64>())).await;
    let mut ticker = tokio::time::interval(heartbeat);
    let mut beats = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            message = inbound.message() => {
                if message?.is_none() {
                    return Ok(());
                }
                continue;
            }
        }
        if silent.load(Ordering::Relaxed) {
            continue;
        }
        let beat = pb::Heartbeat { sent_unix_ms: now_ms(), running: Vec::new() };
        tx.send(pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Heartbeat(beat)) }).await?;
        *last_beat.lock().expect("lock") = Instant::now();
        beats += 1;
        if beats.is_multiple_of(3) && reporting.load(Ordering::Relaxed) {
            let report = resource_report(n);
            tx.send(pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Resources(report)) }).await?;
        }
    }
}

pub(crate) async fn run(options: Options) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let hub = start_hub(dir.path(), options.heartbeat_ms).await?;
    let pid = hub.child.id();
    let heartbeat = Duration::from_millis(options.heartbeat_ms);
    let rtt_us = loopback_rtt_us().await?;
    let idle_cpu = cpu_share(pid, options.measure_seconds).await?;
    let rss_before = rss_bytes(pid);

    let connections = options.sidecars.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let mut channels = Vec::new();
    for _ in 0..connections {
        let endpoint = Endpoint::from_shared(hub.url.clone())?.tcp_nodelay(true);
        channels.push(endpoint.connect().await?);
    }
    let joined = Arc::new(AtomicUsize::new(0));
    let reporting = Arc::new(AtomicBool::new(false));
    let silent: Vec<Arc<AtomicBool>> = (0..options.sidecars).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let last_beats: Vec<Arc<std::sync::Mutex<Instant>>> =
        (0..options.sidecars).map(|_| Arc::new(std::sync::Mutex::new(Instant::now()))).collect();
    let connecting = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..options.sidecars {
        let sim = Sim {
            channel: channels[n % connections].clone(),
            token: hub.token.clone(),
            n,
            heartbeat,
            joined: joined.clone(),
            reporting: reporting.clone(),
            silent: silent[n].clone(),
            last_beat: last_beats[n].clone(),
        };
        tasks.spawn(async move {
            if let Err(err) = simulate(sim).await {
                eprintln!("sidecar {n}: {err:#}");
            }
        });
        if n % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while joined.load(Ordering::Relaxed) < options.sidecars {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} sidecars joined in 120 s",
            joined.load(Ordering::Relaxed),
            options.sidecars
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let join_seconds = connecting.elapsed().as_secs_f64();
    // Heartbeats only, then heartbeats and resource reports (after one report interval, so
    // every host holds a report when memory is read).
    tokio::time::sleep(heartbeat * 2).await;
    let (beats_cpu, beats_windows) = cpu_windows(pid, options.measure_seconds, HEARTBEAT_WINDOWS).await?;
    reporting.store(true, Ordering::Relaxed);
    tokio::time::sleep(heartbeat * 4).await;
    let busy_cpu = cpu_share(pid, options.measure_seconds).await?;
    let rss_after = rss_bytes(pid);

    // The same with dashboards open: each follows the event stream (every agent and host sent
    // once when it starts, then what changes: resource reports here).
    let received = Arc::new(AtomicUsize::new(0));
    let mut followers = tokio::task::JoinSet::new();
    for _ in 0..options.watchers {
        let request = reqwest::Client::new().get(format!("{}/api/v1/events", hub.url)).bearer_auth(&hub.admin);
        let received = received.clone();
        followers.spawn(async move {
            let Ok(mut response) = request.send().await else { return };
            while let Ok(Some(chunk)) = response.chunk().await {
                // One `event:` line per event (one split across two chunks is missed: rare).
                received.fetch_add(chunk.windows(6).filter(|w| w == b"event:").count(), Ordering::Relaxed);
            }
        });
    }
    let watched_cpu = if options.watchers > 0 {
        tokio::time::sleep(heartbeat * 2).await;
        let before = received.load(Ordering::Relaxed);
        let cpu = cpu_share(pid, options.measure_seconds).await?;
        let events = (received.load(Ordering::Relaxed) - before) as f64 / options.measure_seconds;
        followers.abort_all();
        Some((cpu, events))
    } else {
        None
    };
    let per_sidecar = rss_after.saturating_sub(rss_before) as f64 / options.sidecars as f64;

    // A sidecar goes silent (its stream stays open: a hung machine, not a closed socket).
    let victim = options.sidecars / 2;
    silent[victim].store(true, Ordering::Relaxed);
    let client = reqwest::Client::new();
    let agent_url = format!("{}/api/v1/agents/sim-{victim:05}%2F0", hub.url);
    let offline_after = loop {
        let state = client.get(&agent_url).bearer_auth(&hub.admin).send().await?.json::<Value>().await?;
        if state["agent"]["state"] == "offline" {
            break last_beats[victim].lock().expect("lock").elapsed();
        }
        anyhow::ensure!(connecting.elapsed() < Duration::from_secs(600), "the silent sidecar was never marked offline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tasks.abort_all();

    let cpu_target = 5.0;
    let memory_target = 64.0 * 1024.0;
    Ok(json!({
        "sidecars": options.sidecars,
        "connections": connections,
        "heartbeat_interval_ms": options.heartbeat_ms,
        "resource_report_interval_ms": options.heartbeat_ms * 3,
        "join_all_seconds": round2(join_seconds),
        "loopback_rtt_p50_us": round2(rtt_us),
        "hub_cpu_percent_of_one_core": {
            "idle_hub": round2(idle_cpu),
            "heartbeats": round2(beats_cpu),
            "heartbeats_per_window": beats_windows,
            "window_seconds": options.measure_seconds,
            "heartbeats_and_resource_reports": round2(busy_cpu),
            "with_event_stream_followers": watched_cpu.map(|(cpu, events)| json!({
                "followers": options.watchers,
                "hub_cpu": round2(cpu),
                "events_per_s_per_follower": round2(events / options.watchers as f64),
            })),
            "target_for_heartbeats": cpu_target,
            "met": beats_cpu <= cpu_target,
        },
        "hub_memory": {
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "per_sidecar_bytes": per_sidecar.round(),
            "target_per_sidecar_bytes": memory_target,
            "met": per_sidecar <= memory_target,
        },
        "dead_sidecar_detection": {
            "silent_to_offline_ms": offline_after.as_millis() as u64,
            "heartbeat_intervals": round2(offline_after.as_secs_f64() / heartbeat.as_secs_f64()),
            "target_intervals": 3,
            "met": offline_after <= heartbeat * 3,
        },
    }))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
