//! `meshbench`: benchmark programs that print figures, each beside the physical limit measured
//! in the same run. Not tests: nothing here fails on a slow machine.
//!
//! `meshbench queue` measures the durable queue: raw fdatasync on the data directory's disk,
//! durable submit latency, submit throughput in-process, over unary gRPC and over the streaming
//! path, fsyncs per commit, full durable cycles with sidecars over loopback gRPC, and start-up
//! time with a large stored queue. `meshbench retention` measures what finished tasks cost a hub
//! process in memory and start-up time. `meshbench fleet`, `meshbench shell`, `meshbench relay`,
//! `meshbench gateway` and `meshbench workflow` run the real binaries, `meshbench sched` times
//! placement decisions (see their modules). Build with `--release`.

#![allow(clippy::disallowed_methods)] // Tests and benchmarks start the real binaries and tools.

mod fleet;
mod gateway;
mod relay;
mod retention;
mod sched;
mod shell;
mod workflow;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentcom_hub::auth::Role;
use agentcom_hub::backup;
use agentcom_hub::core::{self, Core, Handle};
use agentcom_hub::domain::{SpecDefaults, Task, TaskId, TaskSpec};
use agentcom_hub::server::{self, DataDir};
use agentcom_hub::store::{Op, Store};
use agentcom_proto::v1 as pb;
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "meshbench", about = "AgentCom benchmarks: figures beside the limits measured in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The durable queue: fsync, submit latency and throughput, cycles, start-up.
    Queue {
        /// Directory on the disk to measure (a temporary directory is made inside it).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Seconds each throughput phase runs.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent submitters in the throughput phases.
        #[arg(long, default_value_t = 64)]
        submitters: usize,
        /// Stored tasks for the start-up phase (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        startup_tasks: usize,
        /// Export the hub's spans over OTLP to a receiver in this process (traces on), to
        /// measure what they cost against a run without.
        #[arg(long)]
        traces: bool,
    },
    /// The fleet: simulated sidecars against one hub process; its CPU, memory per sidecar, and
    /// how fast a silent sidecar is marked offline. Needs agentcom-hub built beside meshbench.
    Fleet {
        #[arg(long, default_value_t = 10_000)]
        sidecars: usize,
        /// Heartbeat interval; resources are reported every third beat.
        #[arg(long, default_value_t = 5_000)]
        heartbeat_ms: u64,
        /// Seconds each CPU measurement window runs (heartbeats alone are measured over three).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Dashboards following `GET /api/v1/events` in a last window (0 skips it).
        #[arg(long, default_value_t = 1)]
        watchers: usize,
    },
    /// Trivial shell tasks through a hub and a sidecar with containment on, at several slot
    /// counts, beside `xargs -P` spawning the same commands. Needs the binaries built beside it.
    Shell {
        /// Tasks per measurement.
        #[arg(long, default_value_t = 3_000)]
        tasks: usize,
        /// Slot counts to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        slots: Vec<u32>,
        /// Use `agentcom-hub dev` (the sidecar in the hub's process).
        #[arg(long)]
        dev: bool,
    },
    /// Workflows beside the same tasks submitted plainly: a chain of trivial shell steps (time
    /// added per step) and a `for_each` fan-out (items per second). Needs the binaries built
    /// beside it.
    Workflow {
        /// Steps in the chain.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Chain runs (each beside a plain chain); the figure is their p50.
        #[arg(long, default_value_t = 15)]
        runs: usize,
        /// Items in the fan-out.
        #[arg(long, default_value_t = 1_000)]
        items: usize,
        /// Sidecar slots.
        #[arg(long, default_value_t = 4)]
        slots: u32,
    },
    /// LLM tokens from an Ollama double through a sidecar and a hub to watching clients, beside
    /// the same chats sent to the double directly. Needs the binaries built beside meshbench.
    Relay {
        /// Concurrent streams per phase (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,100")]
        streams: Vec<usize>,
        /// Tokens per reply.
        #[arg(long, default_value_t = 2_000)]
        tokens: usize,
        /// Replies per stream in each phase.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Between tokens in the time-to-first-token phase, in milliseconds (10: 100 tokens/s).
        #[arg(long, default_value_t = 10)]
        pace_ms: u64,
        /// Directory for the hub's data (a temporary directory is made inside it).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The sidecar's link: plain (h2c), tls (TLS on TCP, enrolled) or quic.
        #[arg(long, value_enum, default_value = "plain")]
        link: relay::Link,
        /// Put the link behind the impairing relay: 50 ms each way; on UDP 1 % loss and no
        /// datagram over 1,232 bytes.
        #[arg(long)]
        impair: bool,
        /// With --impair: the share of UDP datagrams lost each way, in percent.
        #[arg(long, default_value_t = 1.0)]
        loss_percent: f64,
    },
    /// Finished tasks with output, stored: the hub process's memory and start-up time with them,
    /// beside an empty hub and beside reading the records in-process. Needs agentcom-hub beside it.
    Retention {
        /// Finished tasks stored.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Output of each, in bytes.
        #[arg(long, default_value_t = 64 * 1024)]
        output_bytes: usize,
        /// Directory on the disk to use (a temporary directory is made inside it).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Chats through the hub's gateway and a sidecar to an Ollama double, beside the same sent to
    /// the double directly and through a minimal Python proxy: the time to first token each adds,
    /// and requests per second, at each concurrency. Needs agentcom-hub and agentcom-sidecar
    /// built beside meshbench.
    Gateway {
        /// Concurrent streams, one phase each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,100")]
        streams: Vec<usize>,
        /// Requests each stream sends in each phase, one after another.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Tokens in each reply of the requests-per-second phase.
        #[arg(long, default_value_t = 20)]
        tokens: usize,
        /// Between tokens in the time-to-first-token phase.
        #[arg(long, default_value_t = 5)]
        pace_ms: u64,
        /// Directory on the disk to use (a temporary directory is made inside it).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Placement decisions for LLM work over 100 endpoints x 20 models, at several fleet sizes,
    /// beside a decision with one candidate.
    Sched {
        /// Fleet sizes, in agents (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        agents: Vec<usize>,
        /// Decisions timed per fleet.
        #[arg(long, default_value_t = 200_000)]
        decisions: usize,
    },
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn latency_summary(mut samples: Vec<Duration>) -> Value {
    samples.sort_unstable();
    json!({
        "samples": samples.len(),
        "p50_us": percentile(&samples, 0.50).round(),
        "p99_us": percentile(&samples, 0.99).round(),
    })
}

/// Raw fdatasync on the benchmark directory's disk: the floor under every durable commit.
fn fdatasync_latency(dir: &Path, seconds: f64) -> anyhow::Result<Value> {
    let path = dir.join("fdatasync.probe");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let page = [0x5au8; 4096];
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.min(2.0));
    let mut n = 0u64;
    while Instant::now() < deadline || samples.len() < 100 {
        file.write_at(&page, (n % 64) * 4096)?;
        let started = Instant::now();
        file.sync_data()?;
        samples.push(started.elapsed());
        n += 1;
    }
    std::fs::remove_file(&path)?;
    Ok(latency_summary(samples))
}

/// One small record committed durably by redb, without the hub around it: the floor under a
/// durable submit from storage alone.
fn redb_commit_latency(dir: &Path, seconds: f64) -> anyhow::Result<Value> {
    let store = Store::open(&dir.join("commit-probe.redb"))?;
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.min(2.0));
    let mut n = 0;
    while Instant::now() < deadline || samples.len() < 100 {
        let op = Op::PutTask(Box::new(queued_task(n)));
        let started = Instant::now();
        store.apply(vec![op])?;
        samples.push(started.elapsed());
        n += 1;
    }
    Ok(latency_summary(samples))
}

struct BenchHub {
    hub: server::Hub,
    store: Store,
    url: String,
    admin_token: String,
    join_token: String,
}

async fn start_hub(dir: &Path) -> anyhow::Result<BenchHub> {
    let data_dir = DataDir::new(dir.join("hub"));
    std::fs::create_dir_all(&data_dir.root)?;
    let store = Store::open_counting_syncs(&data_dir.database())?;
    let tokens = server::ensure_tokens(&data_dir, &store, None)?;
    let read = |role| std::fs::read_to_string(data_dir.token_file(role)).map(|t| t.trim().to_owned());
    let (admin_token, join_token) = (read(Role::Admin)?, read(Role::Join)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = core::Config {
        heartbeat_interval: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(30),
        ..core::Config::default()
    };
    let backups = backup::Policy { dir: data_dir.backups(), every: None, keep: 1 };
    // The queue is measured, not the per-token rate policy: that is off here.
    let options = server::ServeOptions { rate_per_token: None, ..server::ServeOptions::default() };
    let hub = server::Hub::start_with(listener, store.clone(), tokens, config, backups, options).await?;
    Ok(BenchHub { hub, store, url, admin_token, join_token })
}

fn shell_spec() -> TaskSpec {
    TaskSpec::shell(vec!["true".into()], &SpecDefaults::default())
}

fn shell_spec_pb() -> pb::TaskSpec {
    pb::TaskSpec {
        work: Some(pb::Work {
            kind: Some(pb::work::Kind::Shell(pb::ShellWork { argv: vec!["true".into()], ..Default::default() })),
        }),
        ..Default::default()
    }
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"));
    request
}

/// Commits and syncs during `run`.
struct Counted<T> {
    value: T,
    commits: u64,
    syncs: u64,
}

async fn counted<T>(store: &Store, run: impl std::future::Future<Output = T>) -> Counted<T> {
    let stats = store.stats();
    // Every fsync: the log's (one per group commit) and redb's (checkpoints).
    let syncs = || stats.syncs.load(Ordering::Relaxed) + stats.wal_syncs.load(Ordering::Relaxed);
    let (commits_before, syncs_before) = (stats.commits.load(Ordering::Relaxed), syncs());
    let value = run.await;
    Counted { value, commits: stats.commits.load(Ordering::Relaxed) - commits_before, syncs: syncs() - syncs_before }
}

async fn single_submitter(handle: &Handle, seconds: f64) -> Value {
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        let started = Instant::now();
        handle.submit(shell_spec()).await.expect("submit");
        samples.push(started.elapsed());
    }
    latency_summary(samples)
}

/// `submitters` loops, each waiting for its own acknowledgement; returns acknowledgements per second.
async fn in_process_throughput(handle: &Handle, submitters: usize, seconds: f64) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|_| {
            let (handle, acked) = (handle.clone(), acked.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    handle.submit(shell_spec()).await.expect("submit");
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("submitter");
    }
    acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..n {
        channels.push(tonic::transport::Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await?);
    }
    Ok(channels)
}

async fn unary_grpc_throughput(url: &str, token: &str, submitters: usize, seconds: f64) -> anyhow::Result<f64> {
    let channels = channels(url, 4).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|i| {
            let mut client = pb::admin_client::AdminClient::new(channels[i % channels.len()].clone());
            let (acked, token) = (acked.clone(), token.to_owned());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let request = pb::SubmitTaskRequest { spec: Some(shell_spec_pb()) };
                    client.submit_task(authorized(request, &token)).await.expect("unary submit");
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    Ok(acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Streams that keep submitting for `seconds`; returns acknowledgements per second in that time.
async fn streaming_throughput(url: &str, token: &str, streams: usize, seconds: f64) -> anyhow::Result<f64> {
    let channels = channels(url, streams).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for channel in channels {
        let mut client = pb::admin_client::AdminClient::new(channel);
        let (tx, rx) = mpsc::channel(8192);
        let mut acks = client.submit_stream(authorized(ReceiverStream::new(rx), token)).await?.into_inner();
        tasks.push(tokio::spawn(async move {
            for sequence in 0.. {
                if Instant::now() >= deadline {
                    break;
                }
                if tx.send(pb::SubmitStreamRequest { sequence, spec: Some(shell_spec_pb()) }).await.is_err() {
                    break;
                }
            }
        }));
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(ack)) = acks.message().await {
                assert!(ack.error_code.is_empty(), "refused: {}", ack.error_message);
                if Instant::now() < deadline {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(acked.load(Ordering::Relaxed) as f64 / seconds)
}

/// A sidecar that finishes every assignment at once, over the real AgentLink protocol.
async fn instant_sidecar(
    url: String,
    token: String,
    id: String,
    slots: u32,
    finished: Arc<AtomicU64>,
    room: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut client = pb::agent_link_client::AgentLinkClient::new(
        tonic::transport::Endpoint::from_shared(url)?.tcp_nodelay(true).connect().await?,
    );
    let (tx, rx) = mpsc::channel(65_536);
    let hello = pb::Hello { sidecar_id: id, slots, capabilities: vec!["shell".into()], ..Default::default() };
    tx.send(pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Hello(hello)) }).await?;
    let mut inbound = client.session(authorized(ReceiverStream::new(rx), &token)).await?.into_inner();
    while let Some(message) = inbound.message().await? {
        if let Some(pb::hub_message::Msg::Assign(assign)) = message.msg {
            let outcome = pb::TaskOutcome { exit: Some(pb::task_outcome::Exit::ExitCode(0)), ..Default::default() };
            let finished_msg = pb::TaskFinished {
                task_id: assign.task_id,
                lease_generation: assign.lease_generation,
                outcome: Some(outcome),
            };
            if tx
                .send(pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Finished(finished_msg)) })
                .await
                .is_err()
            {
                break;
            }
            finished.fetch_add(1, Ordering::Relaxed);
            room.notify_one();
        }
    }
    Ok(())
}

async fn full_cycles(bench: &BenchHub, seconds: f64) -> anyhow::Result<Value> {
    let finished = Arc::new(AtomicU64::new(0));
    // Submitters sleep here while the window is full: spinning would take the hub's cores.
    let room = Arc::new(tokio::sync::Notify::new());
    let mut sidecars = Vec::new();
    for n in 0..4 {
        sidecars.push(tokio::spawn(instant_sidecar(
            bench.url.clone(),
            bench.join_token.clone(),
            format!("bench-{n}"),
            256,
            finished.clone(),
            room.clone(),
        )));
    }
    // Wait for the agents.
    let handle = bench.hub.handle();
    let wait = Instant::now();
    while handle.agents().await.map(|a| a.len()).unwrap_or(0) < 1024 {
        anyhow::ensure!(wait.elapsed() < Duration::from_secs(10), "bench sidecars did not join");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Closed loop: submitters hold back while CYCLE_WINDOW submitted tasks are unfinished, so
    // what is measured is the rate the whole cycle sustains, not a growing backlog.
    const CYCLE_WINDOW: u64 = 4096;
    let submitted = Arc::new(AtomicU64::new(0));
    let base = finished.load(Ordering::Relaxed);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut streams = Vec::new();
    for channel in channels(&bench.url, 2).await? {
        let mut client = pb::admin_client::AdminClient::new(channel);
        let (tx, rx) = mpsc::channel(1024);
        let mut acks =
            client.submit_stream(authorized(ReceiverStream::new(rx), &bench.admin_token)).await?.into_inner();
        let (submitted, finished, room) = (submitted.clone(), finished.clone(), room.clone());
        streams.push(tokio::spawn(async move {
            let mut sequence = 0;
            while Instant::now() < deadline {
                if submitted.load(Ordering::Relaxed) - (finished.load(Ordering::Relaxed) - base) >= CYCLE_WINDOW {
                    let _ = tokio::time::timeout(Duration::from_millis(10), room.notified()).await;
                    continue;
                }
                submitted.fetch_add(1, Ordering::Relaxed);
                sequence += 1;
                if tx.send(pb::SubmitStreamRequest { sequence, spec: Some(shell_spec_pb()) }).await.is_err() {
                    break;
                }
            }
        }));
        streams.push(tokio::spawn(async move { while let Ok(Some(_)) = acks.message().await {} }));
    }
    tokio::time::sleep_until(deadline.into()).await;
    let cycles = (finished.load(Ordering::Relaxed) - base) as f64 / started.elapsed().as_secs_f64();
    for stream in streams {
        stream.abort();
    }
    for sidecar in sidecars {
        sidecar.abort();
    }
    Ok(json!({ "cycles_per_s": cycles.round(), "window": CYCLE_WINDOW }))
}

fn queued_task(n: u64) -> Task {
    let spec = shell_spec();
    Task::new(TaskId(ulid::Ulid::from_parts(1_700_000_000_000 + n / 1000, n as u128)), spec, 1_700_000_000_000)
}

/// Writes `n` queued tasks, then times opening (integrity check included) and loading them.
async fn startup(dir: &Path, n: usize) -> anyhow::Result<Value> {
    let path = dir.join("startup.redb");
    let written = Instant::now();
    {
        let store = Store::open(&path)?;
        let batch = 50_000;
        for start in (0..n).step_by(batch) {
            let ops = (start..(start + batch).min(n)).map(|i| Op::PutTask(Box::new(queued_task(i as u64)))).collect();
            store.apply(ops)?;
        }
    }
    let write_s = written.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path)?.len();
    let started = Instant::now();
    let store = Store::open(&path)?;
    let opened = started.elapsed();
    let (handle, core_task) = Core::start(core::Config::default(), &store)?;
    let queued = handle.list(Some(agentcom_hub::domain::TaskState::Queued), 1).await?.len();
    let ready = started.elapsed();
    anyhow::ensure!(queued == 1, "the loaded hub has no queued task");
    handle.shutdown().await;
    core_task.await?;
    Ok(json!({
        "tasks": n,
        "file_bytes": bytes,
        "write_s": (write_s * 100.0).round() / 100.0,
        "open_and_integrity_check_ms": opened.as_millis(),
        "ready_ms": ready.as_millis(),
    }))
}

async fn queue(dir: PathBuf, seconds: f64, submitters: usize, startup_tasks: usize) -> anyhow::Result<()> {
    let work =
        tempfile::Builder::new().prefix("meshbench-").tempdir_in(&dir).context("making a temporary directory")?;
    eprintln!("meshbench queue: measuring in {}", work.path().display());
    // First, while the process is fresh, as a hub's start is.
    let startup_figures = if startup_tasks > 0 {
        let figures = startup(work.path(), startup_tasks).await?;
        eprintln!("  start-up: {figures}");
        figures
    } else {
        Value::Null
    };
    let fdatasync = fdatasync_latency(work.path(), seconds)?;
    eprintln!("  fdatasync: {fdatasync}");
    let redb_commit = redb_commit_latency(work.path(), seconds)?;
    eprintln!("  redb commit of one record: {redb_commit}");

    let bench = start_hub(work.path()).await?;
    let handle = bench.hub.handle().clone();
    let single = counted(&bench.store, single_submitter(&handle, seconds.min(2.0))).await;
    eprintln!("  single submitter: {}", single.value);
    let in_process = counted(&bench.store, in_process_throughput(&handle, submitters, seconds)).await;
    eprintln!("  {submitters} in-process submitters: {:.0}/s", in_process.value);
    let unary = counted(&bench.store, unary_grpc_throughput(&bench.url, &bench.admin_token, submitters, seconds)).await;
    let unary_rate = unary.value?;
    eprintln!("  {submitters} unary gRPC submitters: {unary_rate:.0}/s");
    let streaming = counted(&bench.store, streaming_throughput(&bench.url, &bench.admin_token, 2, seconds)).await;
    let streaming_rate = streaming.value?;
    eprintln!("  streaming submit: {streaming_rate:.0}/s");
    let cycles = counted(&bench.store, full_cycles(&bench, seconds)).await;
    let cycles_value = cycles.value?;
    eprintln!("  full durable cycles: {cycles_value}");
    bench.hub.stop().await;

    let per_commit = |c: u64, s: u64| if c == 0 { 0.0 } else { s as f64 / c as f64 };
    let report = json!({
        "benchmark": "queue",
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "dir": dir.display().to_string() },
        "limit_fdatasync": fdatasync,
        "limit_redb_commit_one_record": redb_commit,
        "durable_submit_single": single.value,
        "submits_per_s": {
            "submitters": submitters,
            "in_process": in_process.value.round(),
            "unary_grpc": unary_rate.round(),
            "streaming_grpc": streaming_rate.round(),
        },
        "commits": {
            "in_process": { "commits": in_process.commits, "syncs": in_process.syncs, "tasks_per_commit": if in_process.commits == 0 { 0.0 } else { (in_process.value * seconds / in_process.commits as f64).round() } },
            "fsyncs_per_commit": {
                "single": per_commit(single.commits, single.syncs),
                "in_process": per_commit(in_process.commits, in_process.syncs),
                "unary_grpc": per_commit(unary.commits, unary.syncs),
                "streaming_grpc": per_commit(streaming.commits, streaming.syncs),
                "cycles": per_commit(cycles.commits, cycles.syncs),
            },
        },
        "full_cycles": cycles_value,
        "startup": startup_figures,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    agentcom_process::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match Cli::parse().command {
        Command::Queue { dir, seconds, submitters, startup_tasks, traces } => runtime.block_on(async {
            // The receiver and the guard live until the figures are printed.
            let (receiver, guard) = if traces {
                let receiver = agentcom_integration::otlp::OtlpReceiver::start().await?;
                let guard =
                    agentcom_metrics::trace::init("agentcom-hub", &receiver.endpoint()).map_err(anyhow::Error::msg)?;
                (Some(receiver), Some(guard))
            } else {
                (None, None)
            };
            queue(dir, seconds, submitters, startup_tasks).await?;
            if let Some(receiver) = receiver {
                drop(tokio::task::spawn_blocking(move || drop(guard)).await);
                eprintln!("  spans received by the OTLP receiver: {}", receiver.spans().len());
            }
            Ok(())
        }),
        Command::Fleet { sidecars, heartbeat_ms, seconds, watchers } => {
            anyhow::ensure!(sidecars >= 2, "--sidecars must be at least 2");
            anyhow::ensure!(watchers <= 100, "--watchers must be at most 100");
            let options = fleet::Options { sidecars, heartbeat_ms, measure_seconds: seconds, watchers };
            let figures = runtime.block_on(fleet::run(options))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Relay { streams, tokens, rounds, pace_ms, dir, link, impair, loss_percent } => {
            anyhow::ensure!((0.0..=50.0).contains(&loss_percent), "--loss-percent must be 0 to 50");
            anyhow::ensure!(streams.iter().all(|&s| (1..=1_000).contains(&s)), "--streams must be 1 to 1000 each");
            anyhow::ensure!((1..=100_000).contains(&tokens), "--tokens must be 1 to 100000");
            anyhow::ensure!((1..=10_000).contains(&rounds), "--rounds must be 1 to 10000");
            anyhow::ensure!((1..=1_000).contains(&pace_ms), "--pace-ms must be 1 to 1000");
            let impair = impair.then(|| agentcom_integration::relay::Impairment {
                loss: loss_percent / 100.0,
                ..agentcom_integration::relay::Impairment::tailnet_on_a_bad_day()
            });
            let options =
                relay::Options { link, impair, streams, tokens, rounds, pace: Duration::from_millis(pace_ms) };
            let figures = runtime.block_on(relay::run(options, &dir))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Gateway { streams, rounds, tokens, pace_ms, dir } => {
            anyhow::ensure!(streams.iter().all(|&s| (1..=1_000).contains(&s)), "--streams must be 1 to 1000 each");
            anyhow::ensure!((1..=10_000).contains(&rounds), "--rounds must be 1 to 10000");
            anyhow::ensure!((1..=10_000).contains(&tokens), "--tokens must be 1 to 10000");
            anyhow::ensure!((1..=1_000).contains(&pace_ms), "--pace-ms must be 1 to 1000");
            let options = gateway::Options { streams, rounds, tokens, pace: Duration::from_millis(pace_ms) };
            let figures = runtime.block_on(gateway::run(options, &dir))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Sched { agents, decisions } => {
            anyhow::ensure!(decisions >= 1_000, "--decisions must be at least 1000");
            anyhow::ensure!(agents.iter().all(|&a| a >= 100), "--agents must be at least 100 (one per endpoint)");
            let figures = sched::run(sched::Options { agents, decisions })?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Retention { tasks, output_bytes, dir } => {
            anyhow::ensure!(tasks >= 1, "--tasks must be at least 1");
            anyhow::ensure!(output_bytes <= 64 << 20, "--output-bytes must be at most 64 MiB");
            let figures = runtime.block_on(retention::run(retention::Options { tasks, output_bytes }, &dir))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Shell { tasks, slots, dev } => {
            anyhow::ensure!(tasks >= 100, "--tasks must be at least 100");
            anyhow::ensure!(slots.iter().all(|s| (1..=1024).contains(s)), "--slots must be between 1 and 1024");
            let figures = runtime.block_on(shell::run(shell::Options { tasks, slots, dev }))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Workflow { steps, runs, items, slots } => {
            anyhow::ensure!((2..=1_000).contains(&steps), "--steps must be 2 to 1000");
            anyhow::ensure!((1..=1_000).contains(&runs), "--runs must be 1 to 1000");
            anyhow::ensure!((10..=100_000).contains(&items), "--items must be 10 to 100000");
            anyhow::ensure!((1..=1024).contains(&slots), "--slots must be between 1 and 1024");
            let options = workflow::Options { steps, runs, items, slots };
            let figures = runtime.block_on(workflow::run(options))?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
    }
}
