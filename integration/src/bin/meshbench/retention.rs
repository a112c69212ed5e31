//! `meshbench retention`: what finished tasks cost a hub process. A data directory is filled
//! with N finished tasks, each with `--output-bytes` of output (through the store, as the hub
//! writes them: the output apart from the record, in files when it is large), then the real `agentcom-hub serve`
//! starts on it. Printed: its resident memory beside the same hub on an empty data directory
//! (and so the bytes per finished task), its start-up time, and beside it the floor measured in
//! the same run: reading and decoding the stored records in this process (what any start reads).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentcom_hub::domain::{Exit, Outcome, SpecDefaults, Task, TaskId, TaskSpec, TaskState};
use agentcom_hub::store::{Op, Store};
use serde_json::{Value, json};

pub(crate) struct Options {
    pub(crate) tasks: usize,
    pub(crate) output_bytes: usize,
}

/// A finished shell task with `bytes` of output on stdout.
fn finished(n: u64, bytes: usize) -> Task {
    let defaults = SpecDefaults::default();
    let mut spec = TaskSpec::shell(vec!["sh".into(), "-c".into(), format!("produce {n}")], &defaults);
    spec.limits.max_output_bytes = bytes.max(1) as u64;
    let created = 1_800_000_000_000 + n as i64;
    let mut task = Task::new(TaskId::new(created), spec, created);
    task.attempt = 1;
    task.lease_generation = 1;
    task.set_state(TaskState::Succeeded, "", created + 5);
    task.outcome = Some(Outcome {
        exit: Exit::Code(0),
        duration_ms: 4,
        stdout: vec![b'x'; bytes],
        stdout_total_bytes: bytes as u64,
        ..Outcome::empty()
    });
    task
}

/// Starts `agentcom-hub serve` on `data_dir`; returns it with the time it took to answer
/// `/readyz`, and its resident memory once it has settled.
async fn serve(data_dir: &Path) -> anyhow::Result<(super::shell::Processes, Duration, u64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let started = Instant::now();
    let child = Command::new(super::shell::binary("agentcom-hub")?)
        .args(["serve", "--insecure-plaintext", "--listen", &format!("127.0.0.1:{port}"), "--backup-interval-ms", "0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let hub = super::shell::Processes(vec![child]);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(600);
    while client.get(&url).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
        anyhow::ensure!(Instant::now() < deadline, "the hub did not become ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    // Let the start's transient allocations go (and the first checkpoint run).
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((hub, ready, agentcom_integration::process::memory(pid).0))
}

pub(crate) async fn run(options: Options, dir: &Path) -> anyhow::Result<Value> {
    let root = tempfile::tempdir_in(dir)?;
    let (empty_dir, full_dir) = (root.path().join("empty"), root.path().join("full"));

    let (hub, empty_ready, empty_rss) = serve(&empty_dir).await?;
    drop(hub);

    // The stored history, written as the hub writes it.
    let written = Instant::now();
    std::fs::create_dir_all(&full_dir)?;
    let database = full_dir.join("hub.redb");
    {
        let store = Store::open(&database)?;
        let batch = (64 << 20) / options.output_bytes.max(1024);
        for start in (0..options.tasks).step_by(batch.max(1)) {
            let end = (start + batch).min(options.tasks);
            let ops = (start..end).map(|n| Op::PutTask(Box::new(finished(n as u64, options.output_bytes)))).collect();
            store.apply(ops)?;
        }
    }
    let write_s = written.elapsed().as_secs_f64();
    let file_bytes = std::fs::metadata(&database)?.len();
    // Outputs of more than `IN_FILE_FROM` bytes are files beside the database.
    let output_files_bytes: u64 = match std::fs::read_dir(full_dir.join("hub.redb.output")) {
        Ok(entries) => entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum(),
        Err(_) => 0,
    };

    // The floor: reading and decoding every stored record in this process.
    let reading = Instant::now();
    let loaded = {
        let store = Store::open(&database)?;
        store.load_tasks()?.len()
    };
    let read_floor = reading.elapsed();
    anyhow::ensure!(loaded == options.tasks, "stored {} tasks, read back {loaded}", options.tasks);

    let (hub, full_ready, full_rss) = serve(&full_dir).await?;
    drop(hub);
    let per_task = full_rss.saturating_sub(empty_rss) as f64 / options.tasks.max(1) as f64;
    eprintln!(
        "retention: {} finished tasks of {} B output (database {:.2} GiB, output files {:.2} GiB): hub RSS {:.1} MiB beside {:.1} MiB empty = {:.0} B per finished task; ready in {:.2} s beside {:.2} s empty (reading the records alone: {:.2} s)",
        options.tasks,
        options.output_bytes,
        file_bytes as f64 / (1u64 << 30) as f64,
        output_files_bytes as f64 / (1u64 << 30) as f64,
        full_rss as f64 / (1u64 << 20) as f64,
        empty_rss as f64 / (1u64 << 20) as f64,
        per_task,
        full_ready.as_secs_f64(),
        empty_ready.as_secs_f64(),
        read_floor.as_secs_f64(),
    );
    Ok(json!({
        "tasks": options.tasks,
        "output_bytes_each": options.output_bytes,
        "database_bytes": file_bytes,
        "output_files_bytes": output_files_bytes,
        "write_s": (write_s * 100.0).round() / 100.0,
        "rss_empty_bytes": empty_rss,
        "rss_with_tasks_bytes": full_rss,
        "rss_per_finished_task_bytes": per_task.round(),
        "ready_empty_s": (empty_ready.as_secs_f64() * 1000.0).round() / 1000.0,
        "ready_with_tasks_s": (full_ready.as_secs_f64() * 1000.0).round() / 1000.0,
        "floor_read_records_s": (read_floor.as_secs_f64() * 1000.0).round() / 1000.0,
    }))
}
