//! Results and storage against the real binaries: results of any allowed size committed before
//! anyone is told, a history of results through `kill -9`s of the hub, and a disk that fills up
//! and frees again (a tmpfs this test mounts; it needs root, as CI runs, and fails if it cannot).

#![allow(clippy::disallowed_methods)] // Tests start the real binaries and mount file systems.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually, binary, shell};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(120);
const MIB: u64 = 1024 * 1024;
const FAST_BEATS: [&str; 4] = ["--heartbeat-interval-ms", "100", "--lease-ttl-ms", "2000"];

/// A task printing `bytes` of `x` on stdout (and one line on stderr), appending its name to
/// `runs.log` in its working directory first, so a test can count how often it ran.
fn printing(name: &str, bytes: u64) -> Value {
    let script =
        format!("echo {name} >> runs.log; sleep 0.05; head -c {bytes} /dev/zero | tr '\\0' x; echo {name} >&2");
    let mut body = shell(&script);
    body["name"] = json!(name);
    body["limits"] = json!({ "max_output_bytes": bytes.max(64) });
    body
}

fn runs(work: &Path) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for line in std::fs::read_to_string(work.join("runs.log")).unwrap_or_default().lines() {
        *runs.entry(line.to_owned()).or_default() += 1;
    }
    runs
}

/// Whole: the length asked for, and nothing but `x`.
fn assert_whole(task: &Value, bytes: u64) {
    let stdout = task["outcome"]["stdout"].as_str().unwrap_or_default();
    assert_eq!(stdout.len() as u64, bytes, "task {} output length", task["id"]);
    assert!(stdout.bytes().all(|b| b == b'x'), "task {} output is what it printed", task["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_of_64_mib_per_stream_commits_reads_back_and_survives_a_restart_without_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The default lease: a debug build takes seconds to encode and send 128 MiB of results.
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let _sidecar = SidecarProcess::start(&hub, "big", 1, &work);
    let size = 64 * MIB;
    let mut body = shell(&format!(
        "echo once >> runs.log; head -c {size} /dev/zero | tr '\\0' x; head -c {size} /dev/zero | tr '\\0' y >&2"
    ));
    body["limits"] = json!({ "max_output_bytes": size });
    let id = hub.api.submit(body).await["id"].as_str().unwrap().to_owned();
    let task = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{}", task["state_reason"]);
    assert_whole(&task, size);
    assert_eq!(task["outcome"]["stderr"].as_str().map(str::len), Some(size as usize));
    // It streams back whole: `hubctl watch` writes both streams, byte for byte, into files.
    let (out_file, err_file) = (dir.path().join("watched.out"), dir.path().join("watched.err"));
    let watched = Command::new(binary("hubctl"))
        .args(["watch", &id])
        .env("AGENTCOM_HUB", &hub.url)
        .env("AGENTCOM_TOKEN", &hub.api.token)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .status()
        .unwrap();
    assert!(watched.success());
    let streamed = std::fs::read(&out_file).unwrap();
    assert!(streamed.len() as u64 == size && streamed.iter().all(|&b| b == b'x'), "stdout streamed back whole");
    let streamed = std::fs::read(&err_file).unwrap();
    assert!(streamed.len() as u64 >= size && streamed[..size as usize].iter().all(|&b| b == b'y'), "stderr too");

    hub.kill9();
    hub.restart().await;
    let task = hub.api.get(&id).await;
    assert_eq!(task["state"], "succeeded");
    assert_whole(&task, size);
    // Long enough for a rerun to have started had the hub lost the result.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_to_string(work.join("runs.log")).unwrap(), "once\n", "it ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_results_through_five_kill_9s_of_the_hub_end_once_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The default lease: a debug build takes seconds to send a 64 MiB result, heartbeats queued
    // behind it.
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    // Sizes from nothing to the largest cap: most small, some of a few MiB, two of 64 MiB.
    let size = |n: u64| match n {
        n if n % 500 == 7 => 64 * MIB,
        n if n % 50 == 3 => 3 * MIB + n,
        n if n % 10 == 0 => 0,
        n => (n * 7919) % (64 * 1024),
    };
    let mut ids = Vec::new();
    for n in 0..1000u64 {
        let id = hub.api.submit(printing(&format!("t{n}"), size(n))).await["id"].as_str().unwrap().to_owned();
        ids.push((id, n));
    }
    // The work starts once everything is queued, so the kills land while results come in.
    let _a = SidecarProcess::start(&hub, "hist-a", 4, &work);
    let _b = SidecarProcess::start(&hub, "hist-b", 4, &work);
    // What was seen succeeded, and how often it had run by then.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let started = Instant::now();
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(900 + 200 * round)).await;
        let (status, body) =
            hub.api.request(reqwest::Method::GET, "/api/v1/tasks?state=succeeded&limit=1000", None).await;
        assert_eq!(status, 200, "{body}");
        let ran = runs(&work);
        for task in body["tasks"].as_array().unwrap() {
            let name = task["spec"]["name"].as_str().unwrap().to_owned();
            seen.entry(name.clone()).or_insert_with(|| ran.get(&name).copied().unwrap_or(0));
        }
        hub.kill9();
        hub.restart().await;
    }
    for (id, _) in &ids {
        let task = hub.api.wait_final(id, PATIENCE).await;
        assert_eq!(task["state"], "succeeded", "{task}");
    }
    let ran = runs(&work);
    for (id, n) in &ids {
        let task = hub.api.get(id).await;
        let name = format!("t{n}");
        assert_whole(&task, size(*n));
        assert_eq!(task["outcome"]["stderr"].as_str(), Some(format!("{name}\n").as_str()));
        if let Some(before) = seen.get(&name) {
            assert_eq!(ran[&name], *before, "{name} ran again after it was reported succeeded");
        }
        assert!(ran[&name] >= 1);
    }
    let again: usize = ran.values().map(|n| n - 1).sum();
    assert!(seen.len() < ids.len(), "every task had ended before the first kill: the kills tested nothing");
    println!(
        "1,000 results through 5 kill -9s in {:.1} s: {} seen succeeded before a kill, {again} reruns of results never reported",
        started.elapsed().as_secs_f64(),
        seen.len()
    );
}

/// A tmpfs of `size` at `at`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "mounting a {size} tmpfs at {} failed: this test needs root (CI runs as root)",
            at.display()
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with `filler` until it refuses more.
fn fill(filler: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(filler).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submits_serves_reads_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "96m");
    let hub = HubProcess::serve(&disk.0, &FAST_BEATS).await;
    let _sidecar = SidecarProcess::start(&hub, "filler", 2, &work);
    let mut done = Vec::new();
    for n in 0..10 {
        let id = hub.api.submit(printing(&format!("before{n}"), 1000)).await["id"].as_str().unwrap().to_owned();
        done.push(id);
    }
    for id in &done {
        let task = hub.api.wait_final(id, PATIENCE).await;
        assert_eq!(task["state"], "succeeded");
        assert_whole(&task, 1000);
    }
    // Their results are checkpointed into the database by now (reads during the failure see
    // what its last checkpoint holds; a newer result's output waits for the recovery).
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A task that ends while the disk is full, watched as `submit --wait` would: it waits for a
    // gate the test opens once the hub refuses submits.
    let gate = dir.path().join("gate");
    let mut slow = shell(&format!("while [ ! -e {} ]; do sleep 0.1; done; echo slow done", gate.display()));
    slow["name"] = json!("slow");
    let slow = hub.api.submit(slow).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(hub.api.get(&slow).await["state"] == "running", PATIENCE, "the slow task runs");
    let mut watcher = Command::new(binary("hubctl"))
        .args(["watch", &slow])
        .env("AGENTCOM_HUB", &hub.url)
        .env("AGENTCOM_TOKEN", &hub.api.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Tasks taken while there is room, whose results (512 KiB each, so output files) come once
    // the disk is full: storing them fails.
    let late_gate = dir.path().join("late-gate");
    let mut accepted = Vec::new();
    for n in 0..2 {
        let mut late = printing(&format!("late{n}"), 512 * 1024);
        let script = late["shell"]["argv"][2].as_str().unwrap().to_owned();
        late["shell"]["argv"][2] =
            json!(format!("while [ ! -e {} ]; do sleep 0.1; done; {script}", late_gate.display()));
        accepted.push(hub.api.submit(late).await["id"].as_str().unwrap().to_owned());
    }
    fill(&disk.0.join("filler"));
    std::fs::write(&late_gate, "").unwrap();
    // Storage fails with their results; from then on every submit is refused, naming the disk.
    assert_eventually!(
        hub.api.request(reqwest::Method::GET, "/readyz", None).await.0 == 503,
        PATIENCE,
        "storage failed once results could not be stored"
    );
    let (status, refusal) =
        hub.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(printing("during", 512 * 1024))).await;
    assert_eq!(status, 503, "{refusal}");
    assert_eq!(refusal["error"]["code"], "resource_exhausted", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("free on the file system holding") && message.contains(&*disk.0.to_string_lossy()),
        "{message}"
    );
    let (status, ready) = hub.api.request(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!(status, 503);
    assert!(ready["reason"].as_str().unwrap().contains("free on the file system"), "{ready}");
    // Refused at once, every time, while the disk is full.
    for _ in 0..5 {
        let (status, _) = hub.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(shell("true"))).await;
        assert_eq!(status, 503);
    }
    // The watched task ends now: its result cannot be stored, and the watcher is told so at once
    // instead of waiting in silence.
    std::fs::write(&gate, "").unwrap();
    let waited = Instant::now();
    while watcher.try_wait().unwrap().is_none() {
        assert!(waited.elapsed() < PATIENCE, "hubctl watch still waits for a result the hub cannot store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watched = watcher.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&watched.stderr);
    assert!(!watched.status.success(), "{said}");
    assert!(said.contains("could not store the result") && said.contains("ends once storage works again"), "{said}");
    assert_ne!(hub.api.get(&slow).await["state"], "succeeded", "not shown ended before its end is stored");
    accepted.push(slow);
    // Reads go on: the tasks done before, with their output.
    for id in &done {
        let task = hub.api.get(id).await;
        assert_eq!(task["state"], "succeeded");
        assert_whole(&task, 1000);
    }
    let (status, _) = hub.api.request(reqwest::Method::GET, "/api/v1/tasks?limit=100", None).await;
    assert_eq!(status, 200);

    // Space comes back: the hub takes submits again by itself, and nothing acknowledged is lost.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    assert_eventually!(
        hub.api.request(reqwest::Method::GET, "/readyz", None).await.0 == 200,
        Duration::from_secs(30),
        "the hub recovered once space came back"
    );
    let after = hub.api.submit(printing("after", 1000)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(hub.api.wait_final(&after, PATIENCE).await["state"], "succeeded");
    for id in accepted.iter().chain(&done) {
        let task = hub.api.wait_final(id, PATIENCE).await;
        assert_eq!(task["state"], "succeeded", "an acknowledged task was lost: {task}");
    }
    println!(
        "{} submits accepted on the full disk before the first refusal; all succeeded after recovery",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_16_mib_disk_runs_or_fails_clearly_leaving_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("small"), "16m");
    // As it comes: enough room for a smaller log.
    let hub = HubProcess::serve(&disk.0.join("hub"), &[]).await;
    let id = hub.api.submit(shell("true")).await["id"].as_str().unwrap().to_owned();
    assert!(hub.api.try_get(&id).await.is_some());
    // A task whose output could not fit the disk is refused at submit, saying why.
    let mut big = shell("true");
    big["limits"] = json!({ "max_output_bytes": 64 * MIB });
    let (status, refused) = hub.api.request(reqwest::Method::POST, "/api/v1/tasks", Some(big)).await;
    assert_eq!(status, 503, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.max_output_bytes") && message.contains("free"), "{message}");
    drop(hub);

    // Nearly full: refused with the reason, and no partial database or log left behind.
    fill(&disk.0.join("filler"));
    let data = disk.0.join("second");
    let output = Command::new(binary("agentcom-hub"))
        .args(["serve", "--insecure-plaintext", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a start on a full disk must fail: {stderr}");
    assert!(stderr.contains("free on the file system holding") || stderr.contains("No space left"), "{stderr}");
    let left: Vec<_> =
        std::fs::read_dir(&data).map(|entries| entries.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(!left.iter().any(|name| name.to_string_lossy().contains("redb")), "a failed start left {left:?} behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_outputs_by_bytes_and_age_then_forgets_tasks_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let retention = ["--retain-output", "4s", "--retain-output-bytes", "1MiB", "--retain-tasks", "9s"];
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &retention).await;
    let _sidecar = SidecarProcess::start(&hub, "keeper", 1, &work);
    let size = 600 * 1024;
    let first = hub.api.submit(printing("first", size)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(hub.api.wait_final(&first, PATIENCE).await["state"], "succeeded");
    let started = Instant::now();
    let second = hub.api.submit(printing("second", size)).await["id"].as_str().unwrap().to_owned();
    assert_eq!(hub.api.wait_final(&second, PATIENCE).await["state"], "succeeded");

    // Over the byte budget: the oldest output goes at once, the record stays and says so.
    assert_eventually!(
        hub.api.get(&first).await["outcome"]["output_dropped_unix_ms"].is_i64(),
        Duration::from_secs(3),
        "the older output was dropped for room"
    );
    let dropped = hub.api.get(&first).await;
    assert_eq!(dropped["state"], "succeeded");
    assert_eq!(dropped["outcome"]["stdout"], "", "{dropped}");
    assert_eq!(dropped["outcome"]["stdout_total_bytes"], size);
    let kept = hub.api.get(&second).await;
    assert!(started.elapsed() < Duration::from_secs(4), "checked before the age limit");
    assert_whole(&kept, size);
    let said = agentcom_integration::process::hubctl(&hub.url, &hub.api.token, &["get", &first]).await;
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(said.contains("output:    dropped") && said.contains("retention"), "{said}");

    // A restart keeps what was dropped dropped, and counts the rest again.
    hub.kill9();
    hub.restart().await;
    assert!(hub.api.get(&first).await["outcome"]["output_dropped_unix_ms"].is_i64());
    // Past the age limit: the newer output goes too.
    assert_eventually!(
        hub.api.get(&second).await["outcome"]["output_dropped_unix_ms"].is_i64(),
        Duration::from_secs(10),
        "the output past --retain-output was dropped"
    );
    // Past --retain-tasks: the tasks themselves are forgotten.
    assert_eventually!(
        hub.api.try_get(&first).await.is_none() && hub.api.try_get(&second).await.is_none(),
        Duration::from_secs(15),
        "the tasks past --retain-tasks were forgotten"
    );
    let metrics = hub.api.metrics().await;
    for line in ["agentcom_storage_ok 1", "agentcom_tasks_retained 0", "agentcom_output_retained_bytes 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}
