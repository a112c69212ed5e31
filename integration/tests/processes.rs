//! End-to-end tests with the real binaries as processes: what a user runs, `kill -9` included.

#![allow(clippy::disallowed_methods)] // Tests and benchmarks start the real binaries and tools.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use agentcom_integration::process::memory;
use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually, binary, shell};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(60);
/// Runs a command to its end, killing it if it is still running after `limit` (a hub that
/// wrongly starts must fail the test, not hang it).
fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let output = child.wait_with_output().unwrap();
    let _ = tx.send(());
    output
}

const FAST_BEATS: [&str; 4] = ["--heartbeat-interval-ms", "100", "--lease-ttl-ms", "1000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_tasks_on_two_sidecars_each_run_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let _a = SidecarProcess::start(&hub, "side-a", 4, &work);
    let _b = SidecarProcess::start(&hub, "side-b", 4, &work);
    assert_eventually!(hub.api.agents().await.len() == 8, PATIENCE, "both sidecars joined");

    let submits = (0..200).map(|n| {
        let api = hub.api.clone();
        tokio::spawn(async move {
            // Each run appends one line; a task run twice would leave two.
            let task = api.submit(shell(&format!("echo run-{n} >> runs.log; echo out-{n}"))).await;
            (n, task["id"].as_str().unwrap().to_owned())
        })
    });
    let ids: Vec<(usize, String)> =
        futures_util::future::join_all(submits).await.into_iter().map(Result::unwrap).collect();
    let mut sidecars_used = HashMap::new();
    for (n, id) in &ids {
        let task = hub.api.wait_final(id, PATIENCE).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(task["outcome"]["stdout"], format!("out-{n}\n"));
        assert_eq!(task["attempt"], 1, "{task}");
        *sidecars_used.entry(task["sidecar_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    let runs = std::fs::read_to_string(work.join("runs.log")).unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in runs.lines() {
        *counts.entry(line).or_default() += 1;
    }
    assert_eq!(counts.len(), 200, "every task ran");
    assert!(counts.values().all(|c| *c == 1), "a task ran more than once: {counts:?}");
    assert_eq!(sidecars_used.len(), 2, "work spread over both sidecars: {sidecars_used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_submits_survive_kill_9_of_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        // Submitters run on until the kill; every answer we got is an acknowledgement.
        let api = hub.api.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let submitters: Vec<_> = (0..8)
            .map(|worker| {
                let api = api.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let body = shell(&format!("echo {round}-{worker}-{n}"));
                        let response = api.request(reqwest::Method::POST, "/api/v1/tasks", Some(body)).await;
                        if response.0 != 201 || tx.send(response.1["task"]["id"].as_str().unwrap().to_owned()).is_err()
                        {
                            return;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        hub.kill9();
        for submitter in submitters {
            // Requests in flight at the kill fail; that is the point.
            let _ = tokio::time::timeout(Duration::from_secs(10), submitter).await;
        }
        drop(tx);
        let before = acknowledged.len();
        while let Some(id) = rx.recv().await {
            acknowledged.push(id);
        }
        assert!(acknowledged.len() > before, "round {round} acknowledged nothing");
        hub.restart().await;
    }
    for id in &acknowledged {
        let task = hub.api.try_get(id).await;
        assert!(task.is_some(), "acknowledged task {id} was lost");
        assert_eq!(task.unwrap()["state"], "queued");
    }
    eprintln!("{} acknowledged submits survived 3 kills", acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_mid_task_does_not_leave_it_running() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let mut doomed = SidecarProcess::start(&hub, "doomed", 1, &work);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "sidecar joined");
    let mut body = shell(
        r#"if [ "$AGENTCOM_ATTEMPT" = 1 ]; then echo $$ > first.pid; sleep 20; fi; echo "attempt $AGENTCOM_ATTEMPT""#,
    );
    body["limits"] = json!({ "max_attempts": 2 });
    let id = hub.api.submit(body).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(hub.api.get(&id).await["state"] == "running", PATIENCE, "task running");
    doomed.kill9();
    assert_eventually!(hub.api.get(&id).await["state"] == "queued", PATIENCE, "task requeued once the lease lapsed");
    let agents = hub.api.agents().await;
    assert!(agents.iter().all(|a| a["state"] == "offline"), "{agents:?}");
    let _rescuer = SidecarProcess::start(&hub, "rescuer", 1, &work);
    let task = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!((task["attempt"].as_u64(), task["sidecar_id"].as_str()), (Some(2), Some("rescuer")));
    // The killed sidecar's own child is an orphan now; do not leave it behind.
    if let Ok(pid) = std::fs::read_to_string(work.join("first.pid")) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_of_output_costs_the_cap_not_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let sidecar = SidecarProcess::start(&hub, "flood", 1, &work);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "sidecar joined");
    // Warm both up so one-time allocations are not counted against the flood.
    let warm = hub.api.submit(shell("head -c 2000000 /dev/zero | tr '\\0' x")).await;
    hub.api.wait_final(warm["id"].as_str().unwrap(), PATIENCE).await;
    let (hub_before, _) = memory(hub.pid());
    let (sidecar_before, _) = memory(sidecar.pid());

    let flood = hub.api.submit(shell("head -c 52428800 /dev/zero | tr '\\0' x")).await;
    let task = hub.api.wait_final(flood["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{}", task["state_reason"]);
    assert_eq!(task["outcome"]["stdout_total_bytes"], 52_428_800);
    assert_eq!(task["outcome"]["stdout"].as_str().unwrap().len(), 1024 * 1024);

    let (_, hub_peak) = memory(hub.pid());
    let (_, sidecar_peak) = memory(sidecar.pid());
    // The cap is 1 MiB a stream; allow a few copies of it in flight plus allocator slack.
    let allowance = 16 * 1024 * 1024;
    eprintln!(
        "hub rss {} MiB -> peak {} MiB; sidecar rss {} MiB -> peak {} MiB",
        hub_before >> 20,
        hub_peak >> 20,
        sidecar_before >> 20,
        sidecar_peak >> 20
    );
    assert!(hub_peak < hub_before + allowance, "hub grew from {hub_before} to a peak of {hub_peak} bytes");
    assert!(
        sidecar_peak < sidecar_before + allowance,
        "sidecar grew from {sidecar_before} to a peak of {sidecar_peak} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubctl_against_dev_prints_output_and_passes_exit_codes_through() {
    let dir = tempfile::tempdir().unwrap();
    // Run like a user: `agentcom-hub dev` in a directory, hubctl from the same directory, so it
    // finds ./.agentcom/admin.token by itself.
    let mut hub = HubProcess::dev(&dir.path().join(".agentcom"), dir.path(), &[]).await;
    assert_eventually!(!hub.api.agents().await.is_empty(), PATIENCE, "the dev sidecar joined");
    let hubctl = |args: &[&str]| {
        Command::new(binary("hubctl"))
            .args(args)
            .current_dir(dir.path())
            .env("AGENTCOM_HUB", &hub.url)
            .output()
            .unwrap()
    };
    let hello = hubctl(&["submit", "--wait", "--", "echo", "hello"]);
    assert_eq!(String::from_utf8_lossy(&hello.stdout), "hello\n");
    assert_eq!(hello.status.code(), Some(0), "{}", String::from_utf8_lossy(&hello.stderr));
    let three = hubctl(&["submit", "--wait", "--", "sh", "-c", "exit 3"]);
    assert_eq!(three.status.code(), Some(3));
    let timed = hubctl(&["submit", "--wait", "--timeout", "200ms", "--", "sleep", "10"]);
    assert_eq!(timed.status.code(), Some(124));

    let list = hubctl(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 3);
    let agents = hubctl(&["agents"]);
    assert!(String::from_utf8_lossy(&agents.stdout).contains("idle"), "{}", String::from_utf8_lossy(&agents.stdout));
    let unauthenticated = Command::new(binary("hubctl"))
        .args(["--token", "wrong", "list"])
        .env("AGENTCOM_HUB", &hub.url)
        .output()
        .unwrap();
    assert_eq!(unauthenticated.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unauthenticated.stderr).contains("unauthenticated"));

    // Ctrl-C with a task running: it is cancelled and recorded, and the hub exits cleanly.
    let running = hub.api.submit(shell("sleep 30")).await;
    let id = running["id"].as_str().unwrap().to_owned();
    assert_eventually!(hub.api.get(&id).await["state"] == "running", PATIENCE, "task running");
    let status = hub.interrupt();
    assert!(status.success(), "dev exited with {status}");
    hub.restart().await;
    let task = hub.api.get(&id).await;
    assert_eq!(task["state"], "cancelled", "{task}");
    assert_eq!(task["state_reason"], "hub shutting down");
    assert_eq!(task["outcome"]["exit"]["signal"], 15, "the sidecar's report of the killed process was recorded");
}

/// `dev`'s local sidecar is `agentcom-sidecar run`, started beside the hub: the flags `dev` takes
/// for it reach it, and one it refuses stops `dev` with the sidecar's own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_passes_its_sidecar_flags_on_and_a_flag_the_sidecar_refuses_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let flags = [
        "--slots",
        "2",
        "--simulate-gpus",
        "1",
        "--ollama",
        "http://127.0.0.1:9",
        "--openai-base-url",
        "http://127.0.0.1:8/v1",
        "--openai-model",
        "m1",
        "--openai-parallel",
        "3",
    ];
    let hub = HubProcess::dev(&dir.path().join("hub"), &work, &flags).await;
    assert_eventually!(hub.api.agents().await.len() == 2, PATIENCE, "the local sidecar joined with its 2 slots");
    let endpoints = || async { hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await.1 };
    assert_eventually!(
        endpoints().await["endpoints"].as_array().is_some_and(|e| e.len() == 2),
        PATIENCE,
        "both endpoints"
    );
    let endpoints = endpoints().await;
    let by_kind = |kind: &str| endpoints["endpoints"].as_array().unwrap().iter().find(|e| e["kind"] == kind).cloned();
    let openai = by_kind("openai").expect("the OpenAI-compatible server");
    assert_eq!(
        (openai["url"].as_str(), openai["parallel"].as_u64()),
        (Some("http://127.0.0.1:8/v1"), Some(3)),
        "{openai}"
    );
    assert_eq!(openai["models"][0]["name"], "m1", "{openai}");
    assert_eq!(by_kind("ollama").expect("the Ollama server")["url"], "http://127.0.0.1:9");
    let hosts = hub.api.request(reqwest::Method::GET, "/api/v1/hosts", None).await.1;
    let resources = &hosts["hosts"][0]["resources"];
    assert_eventually!(
        hub.api.request(reqwest::Method::GET, "/api/v1/hosts", None).await.1["hosts"][0]["resources"]["gpus_simulated"]
            == true,
        PATIENCE,
        "the simulated GPU is reported: {resources}"
    );
    drop(hub);

    let output = output_within(
        Command::new(binary("agentcom-hub"))
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("refused"))
            .args(["--openai-base-url", "ftp://127.0.0.1/v1"])
            .current_dir(dir.path()),
        PATIENCE,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "dev started with a flag its sidecar refuses: {stderr}");
    assert!(stderr.contains("\"ftp://127.0.0.1/v1\" must start with http:// or https://"), "{stderr}");
    assert!(stderr.contains("the local sidecar did not start"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_survives_kill_9_of_the_hub_and_finishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let beats = ["--heartbeat-interval-ms", "200", "--lease-ttl-ms", "3000"];
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &beats).await;
    let _sidecar = SidecarProcess::start(&hub, "steady", 1, &work);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "sidecar joined");
    let id =
        hub.api.submit(shell("echo started >> runs.log; sleep 2; echo done")).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(hub.api.get(&id).await["state"] == "running", PATIENCE, "task running");
    hub.kill9();
    hub.restart().await;
    // The sidecar reconnects, reports the task it still runs, and keeps its lease.
    let task = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempt"], 1, "the task was not retried: {task}");
    assert_eq!(task["outcome"]["stdout"], "done\n");
    assert_eq!(std::fs::read_to_string(work.join("runs.log")).unwrap(), "started\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_that_kills_its_sidecar_is_dead_lettered_after_exactly_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let flags = [&FAST_BEATS[..], &["--retry-backoff-base-ms", "50", "--retry-backoff-max-ms", "100"]].concat();
    let hub = HubProcess::serve(&dir.path().join("hub"), &flags).await;
    let mut body = shell("echo $AGENTCOM_ATTEMPT >> attempts.log; kill -9 $PPID; sleep 5");
    body["limits"] = json!({ "max_attempts": 3 });
    let id = hub.api.submit(body).await["id"].as_str().unwrap().to_owned();
    // A supervisor's job: restart the sidecar whenever it dies, until the task is settled.
    let mut restarts = 0;
    let task = loop {
        // Wait for the lease to lapse: the task is then either queued again or settled.
        assert_eventually!(
            matches!(hub.api.get(&id).await["state"].as_str(), Some("queued" | "dead_lettered")),
            PATIENCE,
            "task {id} requeued or settled"
        );
        let task = hub.api.get(&id).await;
        if agentcom_integration::is_final(&task) {
            break task;
        }
        assert!(restarts < 3, "a fourth attempt was made: {task}");
        let mut sidecar = SidecarProcess::start(&hub, &format!("victim-{restarts}"), 1, &work);
        restarts += 1;
        assert_eventually!(sidecar.child.try_wait().unwrap().is_some(), PATIENCE, "the poison task killed its sidecar");
    };
    assert_eq!(task["state"], "dead_lettered", "{task}");
    assert_eq!(task["attempt"], 3);
    assert!(task["state_reason"].as_str().unwrap().contains("attempt 3 of 3"), "{task}");
    assert_eq!(std::fs::read_to_string(work.join("attempts.log")).unwrap(), "1\n2\n3\n");
    assert_eq!(restarts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused_and_restore_from_the_latest_backup_brings_the_hub_back() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("hub");
    let mut hub = HubProcess::serve(&data_dir, &[]).await;
    let mut ids = Vec::new();
    for n in 0..300 {
        let mut body = shell(&format!("echo {n}"));
        body["name"] = json!(format!("{n:0>200}")); // Bulk, so damage lands on live pages.
        ids.push(hub.api.submit(body).await["id"].as_str().unwrap().to_owned());
    }
    // A backup through the running hub, as an operator would take it.
    let backup = Command::new(binary("agentcom-hub"))
        .args(["backup", "--hub", &hub.url])
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    let backup_path = String::from_utf8(backup.stdout).unwrap().trim().to_owned();
    assert!(std::path::Path::new(&backup_path).is_file(), "{backup_path}");

    // A clean stop: its final checkpoint puts every task into the database file itself, so the
    // damage below lands on live pages (after a kill -9 they could still be in the log only).
    assert!(hub.interrupt().success());
    let database = data_dir.join("hub.redb");
    // Damage every copy of every task's name, live or stale: where redb put the live pages
    // depends on how commits were grouped, so a fixed byte range may only hit free pages.
    let mut bytes = std::fs::read(&database).unwrap();
    let zeros = [b'0'; 150];
    let mut damaged = 0;
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(zeros.len()).position(|w| w == zeros) {
        let start = at + found;
        bytes[start..start + zeros.len()].fill(0xAB);
        damaged += 1;
        at = start + zeros.len();
    }
    assert!(damaged >= 300, "only {damaged} task names found in the database file");
    std::fs::write(&database, bytes).unwrap();

    let refused = output_within(
        Command::new(binary("agentcom-hub"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", hub.port)])
            .arg("--data-dir")
            .arg(&data_dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "the hub started on a damaged database: {stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(
        stderr.contains(&format!("agentcom-hub restore --data-dir {} --from {backup_path}", data_dir.display())),
        "{stderr}"
    );

    let restore = Command::new(binary("agentcom-hub"))
        .args(["restore", "--from", &backup_path])
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    hub.restart().await;
    for id in &ids {
        assert!(hub.api.try_get(id).await.is_some(), "task {id} is missing after the restore");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubctl_submits_a_jsonl_file_over_one_stream_and_prints_ids_in_line_order() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let mut lines: Vec<String> =
        (0..500).map(|n| json!({ "shell": { "argv": ["echo", n.to_string()] } }).to_string()).collect();
    lines.insert(100, "{\"shell\": {\"argv\": [\"x\"]}, \"priority\": \"sometime\"}".to_owned());
    lines.push(json!({ "shell": { "argv": ["true"] }, "idempotency_key": "k" }).to_string());
    lines.push(json!({ "shell": { "argv": ["true"] }, "idempotency_key": "k" }).to_string());
    let file = dir.path().join("tasks.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let output = Command::new(binary("hubctl"))
        .args(["submit", "--from-file"])
        .arg(&file)
        .env("AGENTCOM_HUB", &hub.url)
        .env("AGENTCOM_TOKEN", &hub.api.token)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "one line was refused: {stderr}");
    assert!(stderr.contains("line 101: invalid priority"), "{stderr}");
    assert!(stderr.contains("502 of 503 submitted durably"), "{stderr}");
    let acked: Vec<(u64, String)> = stdout
        .lines()
        .map(|l| {
            let (line, id) = l.split_once(' ').unwrap();
            (line.parse().unwrap(), id.to_owned())
        })
        .collect();
    assert_eq!(acked.len(), 502);
    assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "ids come in line order");
    assert_eq!(acked[500].1, acked[501].1, "one idempotency key, one task");
    for (line, id) in acked[..500].iter().step_by(50) {
        let task = hub.api.get(id).await;
        let n = if *line <= 100 { line - 1 } else { line - 2 };
        assert_eq!(task["spec"]["work"]["shell"]["command"]["argv"][1], n.to_string(), "line {line}");
    }
}

/// Submits keys until each is acknowledged, retrying through hub restarts as a careful client
/// would (the idempotency key makes a retry safe). Returns key -> every id the hub answered with.
async fn submit_through_crashes(
    api: agentcom_integration::Api,
    worker: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> HashMap<String, Vec<String>> {
    let mut answers: HashMap<String, Vec<String>> = HashMap::new();
    let (mut n, mut resubmitted) = (0, false);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let key = format!("w{worker}-{n}");
        let mut body = shell(r#"echo "$AGENTCOM_TASK_ID $AGENTCOM_LEASE_GENERATION" >> runs.log"#);
        body["idempotency_key"] = json!(key);
        // A hub killed between a dispatch's commit and its assignment's send costs that attempt
        // (after a restart the hub cannot tell it from work the sidecar abandoned): with twenty
        // kills, three can land on one task's dispatches, so give each room for more.
        body["limits"] = json!({ "max_attempts": 10 });
        let request = api.request_timeout(reqwest::Method::POST, "/api/v1/tasks", Some(body), Duration::from_secs(2));
        match request.await {
            Some((201 | 200, response)) => {
                answers.entry(key).or_default().push(response["task"]["id"].as_str().unwrap().to_owned());
                // Every seventh key is submitted twice: the second must answer with the same task.
                if n % 7 == 6 && !resubmitted {
                    resubmitted = true;
                } else {
                    resubmitted = false;
                    n += 1;
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await, // The hub is down: retry the key.
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_9s_under_load_lose_nothing_run_nothing_twice_and_keep_keys_unique() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let flags = [&FAST_BEATS[..], &["--retry-backoff-base-ms", "20", "--retry-backoff-max-ms", "200"]].concat();
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &flags).await;
    let _a = SidecarProcess::start(&hub, "crash-a", 4, &work);
    let _b = SidecarProcess::start(&hub, "crash-b", 4, &work);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let submitters: Vec<_> =
        (0..4).map(|worker| tokio::spawn(submit_through_crashes(hub.api.clone(), worker, stop.clone()))).collect();

    let mut rng_state = 0x9e3779b97f4a7c15u64;
    for _ in 0..20 {
        // A random moment: 50 to 400 ms of load between kills.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        tokio::time::sleep(Duration::from_millis(50 + rng_state % 350)).await;
        hub.kill9();
        hub.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers: HashMap<String, Vec<String>> = HashMap::new();
    for submitter in submitters {
        answers.extend(submitter.await.unwrap());
    }

    // Every key answered with one task, however often it was submitted.
    for (key, ids) in &answers {
        assert!(ids.iter().all(|id| id == &ids[0]), "key {key} produced several tasks: {ids:?}");
    }
    // Every acknowledged task survived, and every task eventually runs to success.
    let acknowledged: Vec<&String> = answers.values().map(|ids| &ids[0]).collect();
    assert!(acknowledged.len() > 100, "too little load: {}", acknowledged.len());
    for id in &acknowledged {
        let task = hub.api.wait_final(id, PATIENCE).await;
        assert_eq!(task["state"], "succeeded", "{task}");
    }
    // No key made a second task behind the answers' back: page through every task.
    let mut tasks_per_key: HashMap<String, usize> = HashMap::new();
    let mut path = "/api/v1/tasks?limit=1000".to_owned();
    loop {
        let (_, listed) = hub.api.request(reqwest::Method::GET, &path, None).await;
        let page = listed["tasks"].as_array().unwrap();
        for task in page {
            *tasks_per_key.entry(task["spec"]["idempotency_key"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        match page.last() {
            Some(last) => path = format!("/api/v1/tasks?limit=1000&before={}", last["id"].as_str().unwrap()),
            None => break,
        }
    }
    assert_eq!(tasks_per_key.len(), answers.len(), "one task per key, and no task without an acknowledged key");
    assert!(tasks_per_key.values().all(|n| *n == 1), "a key has two tasks: {tasks_per_key:?}");
    // No task ran twice under the same lease generation.
    let runs = std::fs::read_to_string(work.join("runs.log")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in runs.lines() {
        assert!(seen.insert(line.to_owned()), "ran twice under one generation: {line}");
    }
    eprintln!("{} tasks acknowledged across 20 kills; {} runs", acknowledged.len(), seen.len());
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sidecars_late_result_is_refused_and_the_task_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let flags = [&FAST_BEATS[..], &["--retry-backoff-base-ms", "20", "--retry-backoff-max-ms", "40"]].concat();
    let hub = HubProcess::serve(&dir.path().join("hub"), &flags).await;
    let stalled = SidecarProcess::start(&hub, "stalled", 1, &work);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "sidecar joined");
    // Attempt 1 finishes quickly, but its sidecar is frozen and cannot report it in time.
    let body =
        shell(r#"echo "attempt $AGENTCOM_ATTEMPT"; if [ "$AGENTCOM_ATTEMPT" = 1 ]; then sleep 0.5; else sleep 2; fi"#);
    let id = hub.api.submit(body).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(hub.api.get(&id).await["state"] == "running", PATIENCE, "attempt 1 running");
    signal(stalled.pid(), nix::sys::signal::Signal::SIGSTOP);
    assert_eventually!(hub.api.get(&id).await["state"] == "queued", PATIENCE, "the lease lapsed");

    let _rescuer = SidecarProcess::start(&hub, "rescuer-2", 1, &work);
    assert_eventually!(
        hub.api.get(&id).await["sidecar_id"] == "rescuer-2" && hub.api.get(&id).await["state"] == "running",
        PATIENCE,
        "attempt 2 running elsewhere"
    );
    // The frozen sidecar wakes up and reports attempt 1, under a lease it no longer holds.
    signal(stalled.pid(), nix::sys::signal::Signal::SIGCONT);
    let queue = |api: agentcom_integration::Api| async move {
        api.request(reqwest::Method::GET, "/api/v1/queue", None).await.1["queue"].clone()
    };
    assert_eventually!(
        queue(hub.api.clone()).await["stale_messages_refused"].as_u64().unwrap() >= 1,
        PATIENCE,
        "the late result was refused"
    );
    let task = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!((task["attempt"].as_u64(), task["lease_generation"].as_u64()), (Some(2), Some(2)));
    assert_eq!(task["sidecar_id"], "rescuer-2");
    assert_eq!(task["outcome"]["stdout"], "attempt 2\n", "the late result did not overwrite the current one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_cut_off_longer_than_its_lease_stops_the_work_and_the_task_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let flags = [&FAST_BEATS[..], &["--retry-backoff-base-ms", "20", "--retry-backoff-max-ms", "40"]].concat();
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &flags).await;
    let _sidecar = SidecarProcess::start(&hub, "cut-off", 1, &work);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "sidecar joined");
    let body = shell(
        r#"if [ "$AGENTCOM_ATTEMPT" = 1 ]; then echo $$ > first.pid; sleep 30; fi; echo "attempt $AGENTCOM_ATTEMPT""#,
    );
    let id = hub.api.submit(body).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(work.join("first.pid").exists(), PATIENCE, "attempt 1 running");
    let first: i32 = std::fs::read_to_string(work.join("first.pid")).unwrap().trim().parse().unwrap();

    hub.kill9(); // And it stays down past the 1 s lease.
    let gone = |pid: i32| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    };
    assert_eventually!(gone(first), Duration::from_secs(10), "the cut-off sidecar stopped attempt 1 ({first})");

    hub.restart().await;
    let task = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "the lost attempt was retried, not recorded as a kill: {task}");
    assert_eq!(task["attempt"], 2);
    assert_eq!(task["outcome"]["stdout"], "attempt 2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sidecar_with_a_used_id_is_refused_and_the_first_keeps_its_work() {
    use agentcom_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let (first_work, second_work) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir_all(&first_work).unwrap();
    std::fs::create_dir_all(&second_work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let _first = SidecarProcess::start(&hub, "dup-id", 1, &first_work);
    let id = hub.api.submit(shell("sleep 3; echo still here")).await["id"].as_str().unwrap().to_owned();
    assert_eventually!(hub.api.get(&id).await["state"] == "running", PATIENCE, "the first sidecar runs the task");

    // On the same machine: refused before it touches anything, with the reason.
    let mut second = SidecarProcess::start(&hub, "dup-id", 1, &second_work);
    assert_eventually!(second.child.try_wait().unwrap().is_some(), PATIENCE, "the second sidecar exits");
    assert!(!second.child.try_wait().unwrap().unwrap().success());
    let log = std::fs::read_to_string(hub.data_dir.with_extension("dup-id.log")).unwrap();
    assert!(log.contains("another sidecar with the id dup-id is running on this machine"), "{log}");

    // From elsewhere (another machine's sidecar, here a session opened by hand): the hub refuses
    // a hello with an id that is connected, and the first session stays.
    let token = agentcom_link::token_file::TokenFile::parse(&std::fs::read_to_string(hub.join_token_file()).unwrap())
        .unwrap()
        .token;
    let mut link = pb::agent_link_client::AgentLinkClient::connect(hub.url.clone()).await.unwrap();
    let hello = pb::Hello {
        sidecar_id: "dup-id".into(),
        hostname: "elsewhere".into(),
        slots: 1,
        capabilities: vec!["shell".into()],
        instance: 42,
        ..Default::default()
    };
    let messages = tokio_stream::iter(vec![pb::SidecarMessage { msg: Some(pb::sidecar_message::Msg::Hello(hello)) }]);
    let mut request = tonic::Request::new(messages);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let refused = match link.session(request).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.expect_err("no welcome for a second sidecar"),
    };
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("connected already"), "{}", refused.message());

    let task = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempt"], 1, "the first sidecar's task was never disturbed");
    assert_eq!(task["outcome"]["stdout"], "still here\n");
}

/// `hubctl workflow validate` needs no hub: every problem with its line, column and step, exit 1;
/// a good file, exit 0.
#[test]
fn hubctl_workflow_validate_reports_every_problem_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: w\nsteps:\n  - id: a\n    run: \"echo {{ inputs.missing }}\"\n  - id: b\n    needs: [a, nowhere]\n    prompt: hi\n").unwrap();
    let output = Command::new(binary("hubctl")).args(["workflow", "validate"]).arg(&bad).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let shown = bad.display();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{shown}:4:10: step a: run: no input named \"missing\""),
            format!("{shown}:6:16: step b: needs \"nowhere\", which is not a step of this workflow"),
        ]
    );
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "name: w\nsteps:\n  - id: a\n    run: [\"true\"]\n").unwrap();
    let output = Command::new(binary("hubctl")).args(["workflow", "validate"]).arg(&good).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
