//! The store against real redb files: tasks, fleet settings and enrolment across a reopen,
//! checkpoints, the migration of format 1, and the refusals (a newer format, a second open).

use super::*;
use crate::domain::{SpecDefaults, TaskSpec, TaskState};
use std::sync::mpsc as std_mpsc;

fn task(n: i64) -> Task {
    Task::new(TaskId::new(n), TaskSpec::shell(vec!["echo".into(), n.to_string()], &SpecDefaults::default()), n)
}

/// A writer whose tickets are `u32`s, each batch reported on the receiver once committed (a
/// failed commit fails the test).
fn reporting_writer(store: &Store) -> (Writer<u32>, std_mpsc::Receiver<Vec<u32>>) {
    let (done_tx, done_rx) = std_mpsc::channel();
    let writer = store.start_writer(
        |_: &mut u32| {},
        move |tickets: Vec<u32>, result| {
            result.unwrap();
            done_tx.send(tickets).unwrap();
        },
    );
    (writer, done_rx)
}

#[test]
fn committed_tasks_are_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Store::open(&path).unwrap();
    // Every ticket is seen as durable before its commit is reported, and each exactly once.
    let (done_tx, done_rx) = std_mpsc::channel();
    let durable = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = durable.clone();
    let writer = store.start_writer(
        move |ticket: &mut u32| seen.lock().unwrap().push(*ticket),
        move |tickets: Vec<u32>, result| {
            result.unwrap();
            done_tx.send(tickets).unwrap();
        },
    );
    let mut tasks: Vec<Task> = (1..=50).map(task).collect();
    for (i, t) in tasks.iter().enumerate() {
        writer.write(vec![Op::PutTask(Box::new(t.clone()))], i as u32).unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < 50 {
        acked.extend(done_rx.recv().unwrap());
        // The writer may already be past the next sync, so what is durable starts with what
        // is committed.
        assert!(durable.lock().unwrap().starts_with(&acked), "durable before committed, in order");
    }
    assert_eq!(acked, (0..50).collect::<Vec<u32>>());
    tasks[3].set_state(TaskState::Cancelled, "test", 99);
    writer.write(vec![Op::PutTask(Box::new(tasks[3].clone()))], 99).unwrap();
    assert_eq!(done_rx.recv().unwrap(), vec![99]);
    writer.close();
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(store.load_tasks().unwrap().into_iter().map(|t| *t).collect::<Vec<_>>(), tasks);
    assert_eq!(store.get_task(tasks[3].id).unwrap().as_ref(), Some(&tasks[3]));
    assert_eq!(store.get_task(TaskId::new(7)).unwrap(), None);
}

#[test]
fn a_quiet_writer_checkpoints_what_its_log_holds_without_waiting_for_more_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("hub.redb")).unwrap();
    let (writer, done_rx) = reporting_writer(&store);
    let before = store.stats().checkpoints.load(Ordering::Relaxed);
    writer.write(vec![Op::PutTask(Box::new(task(1)))], 1).unwrap();
    assert_eq!(done_rx.recv().unwrap(), vec![1]);
    // No further change comes: the checkpoint runs in the quiet, within its interval and the
    // quiet after it (polled for up to ten seconds, for a loaded machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stats().checkpoints.load(Ordering::Relaxed) == before {
        assert!(std::time::Instant::now() < deadline, "no checkpoint while the writer was idle");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    writer.close();
}

#[test]
fn fleet_settings_survive_a_reopen_and_their_log_form_round_trips() {
    use crate::fleet::{EndpointKind, Model, Owner};
    let mut endpoint = Endpoint::new(Owner::Hub, "http://gpu-1:11434".into(), EndpointKind::Ollama);
    endpoint.models = vec![Model { loaded: true, expires_unix_ms: Some(9), ..Model::named("llama3.2:3b") }];
    endpoint.error = Some("not checked yet".into());
    let cordon = |since| Cordon { since_unix_ms: since, deadline_unix_ms: Some(since + 5) };
    let tally = crate::sched::Tally { passed: 3, failed: 2 };
    let model = "hf.co/org/model:Q4".to_owned(); // A model name with slashes.
    let verdicts =
        || Op::PutVerdicts { model: model.clone(), kind: "agent", tier: crate::domain::Tier::Complex, tally };
    let ops = vec![
        Op::PutCordon { sidecar_id: "a".into(), cordon: cordon(1) },
        Op::PutCordon { sidecar_id: "b".into(), cordon: cordon(2) },
        Op::PutEndpoint(Box::new(endpoint.clone())),
        Op::DeleteCordon { sidecar_id: "a".into() },
        verdicts(),
    ];
    let prepared = prepare(ops);
    let decoded = codec::decode_ops(&codec::encode_ops(&prepared)).expect("decodes");
    assert_eq!(codec::encode_ops(&decoded), codec::encode_ops(&prepared), "the log form round-trips");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Store::open(&path).unwrap();
    let (writer, done_rx) = reporting_writer(&store);
    writer.write(vec![Op::PutCordon { sidecar_id: "a".into(), cordon: cordon(1) }], 1).unwrap();
    writer.write(vec![Op::PutCordon { sidecar_id: "b".into(), cordon: cordon(2) }], 2).unwrap();
    let last =
        vec![Op::PutEndpoint(Box::new(endpoint.clone())), Op::DeleteCordon { sidecar_id: "a".into() }, verdicts()];
    writer.write(last, 3).unwrap();
    let mut acked = 0;
    while acked < 3 {
        acked += done_rx.recv().unwrap().len();
    }
    writer.close();
    drop(store);
    let fleet = Store::open(&path).unwrap().load_fleet().unwrap();
    assert_eq!(fleet.cordons, HashMap::from([("b".to_owned(), cordon(2))]));
    assert_eq!(fleet.registry.iter().cloned().collect::<Vec<_>>(), vec![endpoint]);
    assert_eq!(fleet.verdicts, vec![(model, "agent", crate::domain::Tier::Complex, tally)]);
}

/// Join tokens and sidecar identities (a revocation included) come back after a restart
/// through the writer's log, and the fleet settings do not take them for unknown keys.
#[test]
fn join_tokens_and_identities_survive_a_reopen() {
    let grant = JoinGrant {
        id: "3fa2c1d4e5f6".into(),
        secret_sha256: "ab".repeat(32),
        uses: 2,
        used: 1,
        expires_unix_ms: 9,
        tags: vec!["gpu".into()],
        created_unix_ms: 1,
        created_by: "tok-1".into(),
    };
    let gone = JoinGrant { id: "000000000000".into(), ..grant.clone() };
    let identity = |revoked_unix_ms| SidecarIdentity {
        sidecar_id: "gpu-1-9c0d1e2f".into(),
        cert_sha256: "cd".repeat(32),
        hostname: "gpu-1".into(),
        tags: vec!["gpu".into()],
        join_token_id: grant.id.clone(),
        enrolled_unix_ms: 2,
        revoked_unix_ms,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Store::open(&path).unwrap();
    let (writer, done_rx) = reporting_writer(&store);
    let first = vec![
        Op::PutJoinGrant(Box::new(grant.clone())),
        Op::PutJoinGrant(Box::new(gone.clone())),
        Op::PutIdentity(Box::new(identity(0))),
    ];
    writer.write(first, 1).unwrap();
    writer.write(vec![Op::DeleteJoinGrant { id: gone.id.clone() }, Op::PutIdentity(Box::new(identity(7)))], 2).unwrap();
    let mut acked = 0;
    while acked < 2 {
        acked += done_rx.recv().unwrap().len();
    }
    writer.close();
    drop(store);
    let store = Store::open(&path).unwrap();
    let enrolled = store.load_enrolled().unwrap();
    assert_eq!(enrolled.joins, vec![grant.clone()]);
    assert_eq!(enrolled.identities, vec![identity(7)], "the revocation is kept");
    let fleet = store.load_fleet().unwrap();
    assert!(fleet.cordons.is_empty() && fleet.registry.iter().next().is_none());
}

/// A data directory written by the hub before storage had its own format (format 1), kept
/// in `integration/fixtures/datadir-v1` (its README says how it was made).
fn v1_fixture() -> (tempfile::TempDir, PathBuf) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration/fixtures/datadir-v1/hub.redb");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    std::fs::copy(&fixture, &path).unwrap();
    (dir, path)
}

#[test]
fn a_database_of_format_1_is_migrated_once_and_reads_the_same() {
    use crate::domain::{Exit, TaskState, Work};
    let (_dir, path) = v1_fixture();
    let store = Store::open(&path).unwrap();
    let tasks = store.load_tasks().unwrap();
    let by_name = |name: &str| tasks.iter().find(|t| t.spec.name == name).unwrap_or_else(|| panic!("{name}"));
    let states: Vec<(&str, TaskState)> = tasks.iter().map(|t| (t.spec.name.as_str(), t.state)).collect();
    assert_eq!(
        states,
        vec![
            ("ok", TaskState::Succeeded),
            ("fails", TaskState::DeadLettered),
            ("llm", TaskState::Queued),
            ("long", TaskState::Cancelled),
            ("waits", TaskState::Cancelled),
            ("long2", TaskState::Running),
        ]
    );
    let ok = by_name("ok");
    let outcome = ok.outcome.as_ref().unwrap();
    assert_eq!((outcome.exit, outcome.stdout.as_slice()), (Exit::Code(0), &b"hello fixture\n"[..]));
    assert_eq!(ok.spec.idempotency_key.as_deref(), Some("fx-1"));
    assert_eq!(ok.spec.labels.get("team").map(String::as_str), Some("infra"));
    assert_eq!(ok.spec.limits.timeout_ms, Some(60_000));
    assert_eq!(ok.spec.verification.len(), 2);
    assert_eq!(by_name("fails").state_reason, "exit code 3 (attempt 1 of 1)");
    assert!(matches!(&by_name("llm").spec.work, Work::Llm(llm) if llm.model == "llama3.2:3b"));
    assert_eq!(by_name("waits").spec.depends_on, vec![by_name("long").id]);
    let running = by_name("long2");
    assert_eq!((running.lease_generation, running.sidecar_id.is_some()), (1, true));
    let fleet = store.load_fleet().unwrap();
    assert_eq!(fleet.cordons.len(), 1);
    let endpoints: Vec<_> = fleet.registry.iter().collect();
    assert_eq!(endpoints.len(), 1);
    assert_eq!((endpoints[0].url.as_str(), &endpoints[0].owner), ("http://127.0.0.1:9", &crate::fleet::Owner::Hub));
    assert_eq!(store.load_tokens().unwrap().len(), 2);
    let version = |store: &Store| {
        let txn = store.db().unwrap().begin_read().unwrap();
        txn.open_table(META).unwrap().get(SCHEMA_VERSION).unwrap().map(|v| v.value())
    };
    assert_eq!(version(&store), Some(FORMAT_VERSION));
    drop(store);
    // Opened again: nothing left to migrate, and the same records.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.load_tasks().unwrap(), tasks);
}

#[test]
fn a_database_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Store::open(&path).unwrap();
    let txn = store.db().unwrap().begin_write().unwrap();
    txn.open_table(META).unwrap().insert(SCHEMA_VERSION, FORMAT_VERSION + 1).unwrap();
    txn.commit().unwrap();
    drop(store);
    let err = Store::open(&path).err().expect("a newer format is refused");
    assert!(matches!(err, Error::Schema { found, .. } if found == FORMAT_VERSION + 1), "{err}");
}

#[test]
fn the_counting_backend_sees_one_sync_per_commit_and_keeps_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Store::open_counting_syncs(&path).unwrap();
    let (commits, syncs) = (store.stats().commits.load(Ordering::Relaxed), store.stats().syncs.load(Ordering::Relaxed));
    for n in 0..10 {
        store.apply(vec![Op::PutTask(Box::new(task(n)))]).unwrap();
    }
    let commits = store.stats().commits.load(Ordering::Relaxed) - commits;
    let syncs = store.stats().syncs.load(Ordering::Relaxed) - syncs;
    assert_eq!(commits, 10);
    assert!(syncs >= commits, "{syncs} syncs for {commits} commits");
    assert!(matches!(Store::open(&path).err(), Some(Error::InUse { .. })), "the file lock is forwarded");
}

#[test]
fn a_second_open_of_the_same_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let _first = Store::open(&path).unwrap();
    let err = Store::open(&path).err().expect("second open must fail");
    assert!(matches!(err, Error::InUse { .. }), "{err}");
}

/// A task whose outcome holds `stdout` and `stderr`.
fn finished(n: i64, stdout: Vec<u8>, stderr: Vec<u8>) -> Task {
    let mut task = task(n);
    let (stdout_total_bytes, stderr_total_bytes) = (stdout.len() as u64, stderr.len() as u64);
    task.outcome = Some(crate::domain::Outcome {
        exit: crate::domain::Exit::Code(0),
        stdout,
        stderr,
        stdout_total_bytes,
        stderr_total_bytes,
        ..crate::domain::Outcome::empty()
    });
    task.set_state(TaskState::Succeeded, "", n + 1);
    task
}

#[test]
fn large_output_goes_to_files_reads_back_whole_and_stays_out_of_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let files = dir.path().join("hub.redb.output");
    let store = Store::open(&path).unwrap();
    let (writer, done_rx) = reporting_writer(&store);
    // 40 MiB and 64 MiB per stream go to files; beside them a small one that goes through the
    // log, and one with no output at all.
    let big = b"0123456789abcdef".repeat(40 * 1024 * 1024 / 16);
    let huge = vec![b'x'; 64 * 1024 * 1024];
    let tasks = [
        finished(1, big.clone(), b"warning\n".to_vec()),
        finished(2, b"small\n".to_vec(), Vec::new()),
        finished(3, huge.clone(), huge.clone()),
        finished(4, Vec::new(), Vec::new()),
    ];
    for (i, t) in tasks.iter().enumerate() {
        writer.write(vec![Op::PutTask(Box::new(t.clone()))], i as u32).unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < tasks.len() {
        acked.extend(done_rx.recv().unwrap());
    }
    assert_eq!(store.stats().direct_commits.load(Ordering::Relaxed), 0, "the log holds only the records");
    let file = |n: usize, stream: &str| files.join(format!("{}.{stream}", tasks[n].id));
    assert_eq!(std::fs::metadata(file(0, "stdout")).unwrap().len(), big.len() as u64);
    assert!(file(0, "stderr").exists() && file(2, "stderr").exists());
    assert!(!file(1, "stdout").exists(), "a small output stays in the database");
    for t in &tasks {
        assert_eq!(store.get_task(t.id).unwrap().as_ref(), Some(t), "readable before a reopen");
    }
    // A later change of the record without its output (as the core keeps it) leaves the stored
    // output alone; a new output replaces it whole.
    let mut changed = tasks[0].clone();
    changed.outcome.as_mut().unwrap().stdout.clear();
    changed.outcome.as_mut().unwrap().stderr.clear();
    changed.state_reason = "noted".into();
    writer.write(vec![Op::PutTask(Box::new(changed.clone()))], 10).unwrap();
    writer.write(vec![Op::PutOutput { id: tasks[1].id, stdout: b"second".to_vec(), stderr: Vec::new() }], 11).unwrap();
    writer.write(vec![Op::DeleteTask(tasks[3].id)], 12).unwrap();
    while !acked.contains(&12) {
        acked.extend(done_rx.recv().unwrap());
    }
    writer.close();
    drop(store);
    // What a crash can leave: a file written before the commit naming it never came, and a
    // partial one.
    let orphan = files.join(format!("{}.stdout", crate::domain::TaskId::new(99)));
    std::fs::write(&orphan, b"never committed").unwrap();
    std::fs::write(files.join(format!("{}.stdout.partial", tasks[1].id)), b"half").unwrap();

    let store = Store::open(&path).unwrap();
    assert!(!orphan.exists(), "a file no task names is removed at open");
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 4, "the partial file went too");
    let loaded = store.load_tasks().unwrap();
    assert_eq!(loaded.len(), 3);
    assert!(
        loaded.iter().all(|t| t.outcome.as_ref().is_some_and(|o| o.stdout.is_empty() && o.stderr.is_empty())),
        "loading the queue reads no output"
    );
    let first = store.get_task(tasks[0].id).unwrap().unwrap();
    assert_eq!(first.state_reason, "noted");
    assert!(first.outcome.as_ref().unwrap().stdout == big, "40 MiB back whole after a reopen");
    assert_eq!(store.output(tasks[1].id).unwrap(), (b"second".to_vec(), Vec::new()));
    let third = store.output(tasks[2].id).unwrap();
    assert!(third.0 == huge && third.1 == huge, "64 MiB per stream back whole");
    assert_eq!(store.get_task(tasks[3].id).unwrap(), None);
    assert_eq!(store.output(tasks[3].id).unwrap(), (Vec::new(), Vec::new()));
    store.apply(vec![Op::DropOutput(tasks[2].id)]).unwrap();
    assert_eq!(store.output(tasks[2].id).unwrap(), (Vec::new(), Vec::new()), "retention drops the output");
    assert!(!file(2, "stdout").exists() && !file(2, "stderr").exists(), "and its files");
    assert!(store.get_task(tasks[2].id).unwrap().is_some(), "and keeps the record");
}

#[test]
fn a_batch_larger_than_the_log_commits_straight_to_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Store::open(&path).unwrap();
    let (writer, done_rx) = reporting_writer(&store);
    // Outputs just small enough to stay in the database, more of them in one commit than the
    // log holds.
    let each = vec![b'y'; crate::store::IN_FILE_FROM];
    let tasks: Vec<Task> = (0..2_500).map(|n| finished(n, each.clone(), Vec::new())).collect();
    let writes = tasks.iter().enumerate().map(|(i, t)| (vec![Op::PutTask(Box::new(t.clone()))], i as u32)).collect();
    writer.write_together(writes).unwrap();
    let mut acked = Vec::new();
    while acked.len() < tasks.len() {
        acked.extend(done_rx.recv().unwrap());
    }
    assert_eq!(store.stats().direct_commits.load(Ordering::Relaxed), 1);
    writer.close();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.load_tasks().unwrap().len(), tasks.len());
    assert_eq!(store.output(tasks[1_234].id).unwrap().0, each);
    assert!(!dir.path().join("hub.redb.output").exists(), "nothing went to files");
}

/// A workflow run and its events come back after a reopen, in order, through the writer's log;
/// their log form round-trips.
#[test]
fn workflow_runs_and_their_events_survive_a_reopen() {
    use agentcom_workflow::run::{Ended, StepKey};
    let run = |id: u128, state: &str| StoredRun {
        id: ulid::Ulid(id),
        name: "fix".into(),
        source: "name: fix\nsteps: []\n".into(),
        inputs: serde_json::json!({"kind": "bug"}),
        created_unix_ms: 5,
        trigger: "api".into(),
        state: state.into(),
        ended_unix_ms: (state != "running").then_some(9),
        delivery: Some("d-1".into()),
        slot_unix_ms: Some(60_000),
        given: serde_json::json!({"memory": {"x": "1"}}).as_object().unwrap().clone(),
    };
    let mut ended = Ended { succeeded: true, exit_code: Some(0), output: "bug\n".into(), ..Ended::default() };
    ended.outputs.insert("label".into(), serde_json::json!("bug"));
    ended.usage = serde_json::json!({"model": "m", "input_tokens": 3});
    let events = vec![
        RunEvent { at_unix_ms: 6, kind: RunEventKind::Start },
        RunEvent {
            at_unix_ms: 7,
            kind: RunEventKind::Ended {
                key: StepKey { step: "classify".into(), round: 2, item: Some(3) },
                ended: Box::new(ended),
                task_id: Some(TaskId(ulid::Ulid(77))),
            },
        },
        RunEvent { at_unix_ms: 8, kind: RunEventKind::Cancel },
        RunEvent { at_unix_ms: 9, kind: RunEventKind::Retry },
    ];
    let mut ops = vec![Op::PutRun(Box::new(run(1, "running"))), Op::PutRun(Box::new(run(2, "running")))];
    for (seq, event) in events.iter().enumerate() {
        ops.push(Op::PutRunEvent { run: ulid::Ulid(1), seq: seq as u32 + 1, event: Box::new(event.clone()) });
    }
    ops.push(Op::PutRun(Box::new(run(1, "failed"))));
    let prepared = prepare(ops);
    let decoded = codec::decode_ops(&codec::encode_ops(&prepared)).expect("decodes");
    assert_eq!(codec::encode_ops(&decoded), codec::encode_ops(&prepared), "the log form round-trips");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let store = Store::open(&path).unwrap();
    let (writer, done_rx) = reporting_writer(&store);
    let mut ops = vec![Op::PutRun(Box::new(run(1, "running"))), Op::PutRun(Box::new(run(2, "running")))];
    for (seq, event) in events.iter().enumerate() {
        ops.push(Op::PutRunEvent { run: ulid::Ulid(1), seq: seq as u32 + 1, event: Box::new(event.clone()) });
    }
    writer.write(ops, 1).unwrap();
    writer.write(vec![Op::PutRun(Box::new(run(1, "failed")))], 2).unwrap();
    let mut acked = 0;
    while acked < 2 {
        acked += done_rx.recv().unwrap().len();
    }
    writer.close();
    drop(store);
    let loaded = Store::open(&path).unwrap().load_workflows().unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].run, run(1, "failed"), "the record as last written");
    assert_eq!(loaded[0].events, events, "every event, in order");
    assert!(loaded[1].events.is_empty());
}
