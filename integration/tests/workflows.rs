//! Workflows end to end, through the real binaries: `hubctl workflow run` against
//! `agentcom-hub serve` and an `agentcom-sidecar`, steps that leave markers on disk, and
//! `kill -9` of the hub in the middle of a run.
#![allow(clippy::disallowed_methods)] // Reason: tests start the real binaries.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use agentcom_integration::process::{HubProcess, SidecarProcess};
use agentcom_integration::workflows::{rows, workflow};
use serde_json::Value;

const FAST_BEATS: [&str; 4] = ["--heartbeat-interval-ms", "100", "--lease-ttl-ms", "1000"];

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Marker lines (`NAME START_NS END_NS`) by name.
fn spans(path: &Path) -> BTreeMap<String, (u128, u128)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            (parts[0].to_owned(), (parts[1].parse().unwrap(), parts[2].parse().unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_loops_fan_out_and_joins_run_through_the_real_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let _sidecar = SidecarProcess::start(&hub, "wf-branches", 8, &work);
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let marks = marks.to_string_lossy().into_owned();

    // A branch per input, and a join that needs two steps that ran side by side.
    let branching = write(
        dir.path(),
        "branching.yaml",
        r#"
name: branching
inputs:
  kind: {type: string}
  marks: {type: string}
steps:
  - id: classify
    run: "echo {{ inputs.kind }} report"
    outputs: {label: {regex: "^(\\w+)"}}
  - id: fix
    needs: [classify]
    if: steps.classify.outputs.label == "bug"
    run: "echo fixing"
  - id: build
    needs: [classify]
    if: steps.classify.outputs.label == "feature"
    run: "echo building"
  - id: left
    needs: [classify]
    run: "s=$(date +%s%N); sleep 0.4; echo left $s $(date +%s%N) >> {{ inputs.marks }}/join-{{ inputs.kind }}"
  - id: right
    needs: [classify]
    run: "s=$(date +%s%N); sleep 0.2; echo right $s $(date +%s%N) >> {{ inputs.marks }}/join-{{ inputs.kind }}"
  - id: both
    needs: [left, right, fix, build]
    run: "s=$(date +%s%N); echo both $s $s >> {{ inputs.marks }}/join-{{ inputs.kind }}"
"#,
    );
    for (kind, taken, skipped) in [("bug", "fix", "build"), ("feature", "build", "fix")] {
        let input_kind = format!("kind={kind}");
        let input_marks = format!("marks={marks}");
        let (code, run) =
            workflow(&hub, &["run", &branching, "--input", &input_kind, "--input", &input_marks, "--wait"]).await;
        assert_eq!(code, 0, "{run:#}");
        assert_eq!(run["run"]["state"], "succeeded");
        assert_eq!(rows(&run, taken)[0]["state"], "succeeded", "{kind} takes {taken}");
        assert_eq!(rows(&run, skipped)[0]["state"], "skipped", "{kind} skips {skipped}");
        assert!(rows(&run, skipped)[0]["task_id"].is_null(), "a skipped step has no task");
        assert_eq!(rows(&run, "classify")[0]["outputs"]["label"], kind);
        let marked = spans(&Path::new(&marks).join(format!("join-{kind}")));
        let (left, right, both) = (marked["left"], marked["right"], marked["both"]);
        assert!(left.0 < right.1 && right.0 < left.1, "left and right ran side by side: {marked:?}");
        assert!(both.0 >= left.1 && both.0 >= right.1, "both started after both its needs ended: {marked:?}");
    }

    // A loop that stops on its condition, and one that stops at max.
    let looping = write(
        dir.path(),
        "looping.yaml",
        r#"
name: looping
inputs:
  marks: {type: string}
steps:
  - id: green
    loop: {until: "steps.green.exit_code == 0", max: 5}
    run: "echo round {{ round }} >> {{ inputs.marks }}/green; test {{ round }} -ge 3"
  - id: never
    loop: {until: "steps.never.outputs.word == 'yes'", max: 2}
    run: "echo no; echo never {{ round }} >> {{ inputs.marks }}/never"
    outputs: {word: {regex: "(\\w+)"}}
"#,
    );
    let input_marks = format!("marks={marks}");
    let (code, run) = workflow(&hub, &["run", &looping, "--input", &input_marks, "--wait"]).await;
    assert_eq!(code, 1, "a step that ran out of rounds fails the run: {run:#}");
    assert_eq!(run["run"]["state"], "failed");
    let green = rows(&run, "green")[0];
    assert_eq!((green["state"].as_str(), green["round"].as_u64()), (Some("succeeded"), Some(3)), "{green}");
    let green_rounds = std::fs::read_to_string(Path::new(&marks).join("green")).unwrap();
    assert_eq!(green_rounds, "round 1\nround 2\nround 3\n", "stopped when its condition held");
    let never = rows(&run, "never")[0];
    assert_eq!((never["state"].as_str(), never["round"].as_u64()), (Some("failed"), Some(2)));
    assert!(never["reason"].as_str().unwrap().starts_with("loop_exhausted"), "{never}");
    assert_eq!(std::fs::read_to_string(Path::new(&marks).join("never")).unwrap(), "never 1\nnever 2\n");

    // A fan-out over 20 items, 4 at a time, collected in item order for the step after it.
    let fanning = write(
        dir.path(),
        "fanning.yaml",
        r#"
name: fanning
inputs:
  marks: {type: string}
  items: {type: list}
steps:
  - id: each
    for_each: inputs.items
    max_parallel: 4
    run: "s=$(date +%s%N); sleep 0.1; echo {{ index }} $s $(date +%s%N) >> {{ inputs.marks }}/fan; echo item-{{ item }}"
    outputs: {name: {regex: "item-(\\w+)"}}
  - id: gather
    needs: [each]
    run: "echo {{ steps.each.results | map(attribute='outputs.name') | join(',') }}"
    outputs: {all: output}
"#,
    );
    let items: Vec<String> = (0..20).map(|i| format!("i{i}")).collect();
    let input_items = format!("items={}", serde_json::to_string(&items).unwrap());
    let (code, run) =
        workflow(&hub, &["run", &fanning, "--input", &input_marks, "--input", &input_items, "--wait"]).await;
    assert_eq!(code, 0, "{run:#}");
    let each = rows(&run, "each");
    assert_eq!(each.len(), 20);
    for (index, row) in each.iter().enumerate() {
        assert_eq!(row["item"], index, "rows in item order");
        assert_eq!(row["outputs"]["name"], format!("i{index}"));
    }
    assert_eq!(rows(&run, "gather")[0]["outputs"]["all"], items.join(","), "results collected in item order");
    let fan = spans(&Path::new(&marks).join("fan"));
    assert_eq!(fan.len(), 20, "each item ran once");
    let mut most = 0;
    for (start, _) in fan.values() {
        let running = fan.values().filter(|(s, e)| s <= start && start < e).count();
        most = most.max(running);
    }
    assert!(most <= 4, "{most} items ran at once");
    assert!(most >= 2, "items ran side by side (at most {most})");

    // The run list shows all three, newest first.
    let (code, list) = workflow(&hub, &["ls"]).await;
    assert_eq!(code, 0);
    let names: Vec<&str> = list["runs"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names[..2], ["fanning", "looping"]);
}

/// Ten steps, a loop and a fan-out among them; each leaves `STEP:ROUND:ITEM` in a marker file.
const TEN_STEPS: &str = r#"
name: ten
inputs:
  marks: {type: string}
steps:
  - id: a
    run: "sleep 0.3; echo a:{{ round }}:- >> {{ inputs.marks }}"
  - id: b
    needs: [a]
    run: "sleep 0.3; echo b:{{ round }}:- >> {{ inputs.marks }}"
  - id: c
    needs: [b]
    loop: {until: "round >= 3", max: 5}
    run: "sleep 0.3; echo c:{{ round }}:- >> {{ inputs.marks }}"
  - id: d
    needs: [c]
    for_each: [1, 2, 3, 4, 5, 6]
    max_parallel: 2
    run: "sleep 0.3; echo d:{{ round }}:{{ index }} >> {{ inputs.marks }}"
  - id: e
    needs: [d]
    run: "sleep 0.3; echo e:{{ round }}:- >> {{ inputs.marks }}"
  - id: f
    needs: [d]
    run: "sleep 0.3; echo f:{{ round }}:- >> {{ inputs.marks }}"
  - id: g
    needs: [e, f]
    run: "sleep 0.3; echo g:{{ round }}:- >> {{ inputs.marks }}"
  - id: h
    needs: [g]
    run: "sleep 0.3; echo h:{{ round }}:- >> {{ inputs.marks }}"
  - id: i
    needs: [h]
    run: "sleep 0.3; echo i:{{ round }}:- >> {{ inputs.marks }}"
  - id: j
    needs: [i]
    run: "sleep 0.3; echo j:{{ round }}:- >> {{ inputs.marks }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_hub_mid_run_three_times_loses_nothing_and_runs_no_step_twice() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let _sidecar = SidecarProcess::start(&hub, "wf-kill", 4, &work);
    let marks = dir.path().join("marks");
    let file = write(dir.path(), "ten.yaml", TEN_STEPS);
    let input = format!("marks={}", marks.display());
    let (code, started) = workflow(&hub, &["run", &file, "--input", &input]).await;
    assert_eq!(code, 0, "{started:#}");
    let id = started["run"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/workflows/runs/{id}");
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the run did not end in time");
        let marked = std::fs::read_to_string(&marks).unwrap_or_default().lines().count();
        // Kill while it runs: after the 2nd, 8th and 14th marker (of 20).
        if kills < 3 && marked >= [2, 8, 14][kills] {
            hub.kill9();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            hub.restart().await;
            continue;
        }
        let (status, run) = hub.api.request(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "the run is there after every restart: {run}");
        match run["run"]["state"].as_str() {
            Some("running") => tokio::time::sleep(Duration::from_millis(50)).await,
            Some("succeeded") => break,
            other => panic!("the run ended {other:?}: {run:#}"),
        }
    }
    assert_eq!(kills, 3, "the hub was killed three times mid-run");
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        *counts.entry(line).or_default() += 1;
    }
    let mut expected: Vec<String> =
        ["a", "b", "e", "f", "g", "h", "i", "j"].iter().map(|s| format!("{s}:1:-")).collect();
    expected.extend((1..=3).map(|round| format!("c:{round}:-")));
    expected.extend((0..6).map(|index| format!("d:1:{index}")));
    expected.sort();
    assert_eq!(counts.keys().map(|k| k.to_string()).collect::<Vec<_>>(), expected, "every step, round and item ran");
    assert!(counts.values().all(|n| *n == 1), "a step ran twice: {counts:?}");
}

fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(secret).unwrap()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts a delivery to the hook: its status and JSON (null when the answer has none).
async fn deliver(hub: &HubProcess, name: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Value) {
    let mut request = agentcom_integration::http_client().post(format!("{}/api/v1/hooks/{name}", hub.url)).body(body);
    for (header, value) in headers {
        request = request.header(*header, value);
    }
    let response = request.send().await.expect("the hub answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn runs_of(hub: &HubProcess, name: &str) -> Vec<Value> {
    let (status, list) = hub.api.request(reqwest::Method::GET, "/api/v1/workflows/runs?limit=1000", None).await;
    assert_eq!(status, 200);
    list["runs"].as_array().unwrap().iter().filter(|r| r["name"] == name).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_starts_one_run_and_nothing_else_starts_any() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let _sidecar = SidecarProcess::start(&hub, "wf-hooks", 2, &work);
    let file = write(
        dir.path(),
        "on-push.yaml",
        r#"
name: on-push
inputs:
  payload: {type: object}
steps:
  - id: say
    run: "echo pushed {{ inputs.payload.ref }}"
    outputs: {ref: {regex: "pushed (\\S+)"}}
"#,
    );
    let (code, added) = workflow(&hub, &["hooks", "add", "push", "--workflow", &file]).await;
    assert_eq!(code, 0, "{added}");
    let secret = added["hook"]["secret"].as_str().unwrap().to_owned();
    assert_eq!(added["hook"]["path"], "/api/v1/hooks/push");
    let (_, listed) = workflow(&hub, &["hooks", "ls"]).await;
    assert!(listed["hooks"][0].get("secret").is_none(), "the secret is shown once, at add");

    let body = br#"{"ref": "refs/heads/main", "after": "abc"}"#.to_vec();
    let signed = |body: &[u8]| ("x-hub-signature-256", sign(&secret, body));
    let delivery = ("x-github-delivery", "d-1".to_owned());
    let (status, first) = deliver(&hub, "push", body.clone(), &[signed(&body), delivery.clone()]).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["run"]["trigger"], "hook:push");
    let (status, again) = deliver(&hub, "push", body.clone(), &[signed(&body), delivery.clone()]).await;
    assert_eq!(status, 200, "a redelivery: {again}");
    assert_eq!((again["existing"].as_bool(), &again["run"]["id"]), (Some(true), &first["run"]["id"]));

    let wrong = ("x-hub-signature-256", sign(&"00".repeat(32), &body));
    let other = ("x-github-delivery", "d-2".to_owned());
    let big = vec![b' '; 10 * 1024 * 1024];
    let not_json = b"ref=main".to_vec();
    let refused = [
        ("a wrong signature", deliver(&hub, "push", body.clone(), &[wrong, other.clone()]).await),
        ("no signature", deliver(&hub, "push", body.clone(), std::slice::from_ref(&other)).await),
        ("a 10 MiB body", deliver(&hub, "push", big.clone(), &[signed(&big), other.clone()]).await),
        ("a body that is not JSON", deliver(&hub, "push", not_json.clone(), &[signed(&not_json), other.clone()]).await),
        ("an unknown hook", deliver(&hub, "nope", body.clone(), &[signed(&body), other.clone()]).await),
    ];
    for (what, (status, answer)) in refused {
        assert!((400..500).contains(&status), "{what}: {status} {answer}");
        if status != 413 {
            assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what} says why: {answer}");
        }
    }
    let runs = runs_of(&hub, "on-push").await;
    assert_eq!(runs.len(), 1, "one run in all: {runs:?}");
    let id = first["run"]["id"].as_str().unwrap();
    let (code, run) = workflow(&hub, &["watch", id]).await;
    assert_eq!(code, 0, "{run}");
    assert_eq!(rows(&run, "say")[0]["outputs"]["ref"], "refs/heads/main", "the payload was the input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_on_time_and_once_for_the_slots_a_stopped_hub_missed() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let _sidecar = SidecarProcess::start(&hub, "wf-schedule", 2, &work);
    let file = write(
        dir.path(),
        "every-3s.yaml",
        "name: every-3s\non: {schedule: \"*/3 * * * * *\"}\nsteps:\n  - id: tick\n    run: \"true\"\n",
    );
    let (code, added) = workflow(&hub, &["schedules", "add", &file]).await;
    assert_eq!(code, 0, "{added}");
    let wait_for_runs = async |hub: &HubProcess, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let runs = runs_of(hub, "every-3s").await;
            if runs.len() >= n {
                return runs;
            }
            assert!(Instant::now() < deadline, "{} runs, not {n}", runs.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let runs = wait_for_runs(&hub, 2).await;
    for run in &runs {
        let (slot, created) = (run["slot_unix_ms"].as_i64().unwrap(), run["created_unix_ms"].as_i64().unwrap());
        assert_eq!(slot % 3_000, 0, "a slot of the schedule");
        assert!((0..1_500).contains(&(created - slot)), "started {} ms after its slot", created - slot);
    }
    // Stopped across at least two slots, then started: one run, for the latest missed slot.
    let before = runs.len();
    let last_slot = runs.iter().map(|r| r["slot_unix_ms"].as_i64().unwrap()).max().unwrap();
    hub.kill9();
    let stopped = agentcom_hub::domain::now_ms();
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    hub.restart().await;
    let started = agentcom_hub::domain::now_ms();
    let runs = wait_for_runs(&hub, before + 1).await;
    let missed: Vec<i64> = runs
        .iter()
        .map(|r| r["slot_unix_ms"].as_i64().unwrap())
        .filter(|slot| *slot > last_slot && *slot < started - 1_000)
        .collect();
    assert!(stopped < started - 6_000);
    assert_eq!(
        missed.len(),
        1,
        "one run for the missed slots, not one each: {missed:?} (stopped {stopped}, started {started})"
    );
    assert!(missed[0] > started - 4_000, "the latest missed slot: {} ms before the start", started - missed[0]);
    let (code, _) = workflow(&hub, &["schedules", "rm", "every-3s"]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_what_the_last_successful_run_kept() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let _sidecar = SidecarProcess::start(&hub, "wf-memory", 2, &work);
    let file = write(
        dir.path(),
        "counter.yaml",
        r#"
name: counter
remember: {count: "{{ steps.count.outputs.n }}"}
steps:
  - id: count
    run: "echo n={{ (memory.count | default('0') | int) + 1 }} after {{ previous.run or 'none' }}"
    outputs: {n: {regex: "n=(\\d+)"}, after: {regex: "after (\\S+)"}}
"#,
    );
    let (code, first) = workflow(&hub, &["run", &file, "--wait"]).await;
    assert_eq!(code, 0, "{first}");
    assert_eq!(rows(&first, "count")[0]["outputs"], serde_json::json!({"n": "1", "after": "none"}));
    let (code, second) = workflow(&hub, &["run", &file, "--wait"]).await;
    assert_eq!(code, 0, "{second}");
    assert_eq!(rows(&second, "count")[0]["outputs"]["n"], "2", "memory.count was 1");
    assert_eq!(rows(&second, "count")[0]["outputs"]["after"], first["run"]["id"], "previous.run");
    let (code, memory) = workflow(&hub, &["memory", "counter"]).await;
    assert_eq!(code, 0);
    assert_eq!(memory["memory"]["values"]["count"], "2");
    assert_eq!(memory["memory"]["last_run"], second["run"]["id"]);
    // And /metrics counts the runs and their steps.
    let metrics = hub.api.metrics().await;
    for line in [
        "agentcom_workflow_runs_started_total{trigger=\"api\"} 2",
        "agentcom_workflow_runs_finished_total{state=\"succeeded\"} 2",
        "agentcom_workflow_steps_total{state=\"succeeded\"} 2",
        "agentcom_workflow_run_seconds_count 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in /metrics:\n{metrics}");
    }
}
