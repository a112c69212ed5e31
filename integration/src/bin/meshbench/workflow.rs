//! `meshbench workflow`: what a workflow adds to the tasks it runs, beside the same tasks
//! submitted as plain tasks to the same hub and sidecar processes, in the same run.
//!
//! - **Chain**: a workflow of `steps` trivial shell steps (`true`), each `needs` the one before.
//!   The floor is the same number of plain tasks run one after another by a client that submits
//!   the next as soon as it sees the last one succeed (`SubmitTask`, then `WatchTask`): the
//!   fastest a script around `hubctl submit --wait` could go. The figure is the time per chained
//!   step (a run's time over its steps), p50 over the runs, and what the workflow adds to it.
//! - **Fan-out**: one `for_each` step over `items` items with no `max_parallel`, beside the same
//!   number of plain tasks submitted over one `SubmitStream` and drained (as `meshbench shell`
//!   does). The figure is items per second, from the run's submit to its end, p50 of five.
//!
//! Runs are followed by polling `GET /api/v1/workflows/runs?limit=1` (the newest run, without
//! its step rows) every millisecond, which adds at most a millisecond to a run, not to each step.

use std::time::{Duration, Instant};

use agentcom_proto::v1 as pb;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use crate::shell::{drain, start_mesh};

pub(crate) struct Options {
    pub(crate) steps: usize,
    pub(crate) runs: usize,
    pub(crate) items: usize,
    pub(crate) slots: u32,
}

/// Fan-outs measured (each beside the plain tasks); the figures are their p50.
const FAN_OUT_ROUNDS: usize = 5;

fn shell_step(id: String) -> Value {
    json!({ "id": id, "run": ["true"] })
}

/// A workflow of `steps` steps, each needing the one before.
fn chain(steps: usize) -> Value {
    let steps: Vec<Value> = (0..steps)
        .map(|n| {
            let mut step = shell_step(format!("s{n}"));
            if n > 0 {
                step["needs"] = json!([format!("s{}", n - 1)]);
            }
            step
        })
        .collect();
    json!({ "name": "meshbench-chain", "steps": steps })
}

/// A workflow of one step over `items` items, all at once.
fn fan_out(items: usize) -> Value {
    let mut step = shell_step("each".into());
    step["for_each"] = json!((0..items).collect::<Vec<_>>());
    json!({ "name": "meshbench-fan-out", "steps": [step] })
}

/// Starts a run of `workflow` and follows it to its end; returns its wall time and its state.
async fn run_workflow(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    workflow: &Value,
) -> anyhow::Result<(Duration, Value)> {
    let started = Instant::now();
    let response = http
        .post(format!("{url}/api/v1/workflows/runs"))
        .bearer_auth(admin)
        .json(&json!({ "workflow": workflow, "inputs": {} }))
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "the run was refused: {}", response.text().await?);
    let id = response.json::<Value>().await?["run"]["id"].as_str().unwrap_or_default().to_owned();
    let deadline = started + Duration::from_secs(600);
    loop {
        // The newest run, without its step rows: cheap for the hub to answer however many
        // items the run has.
        let runs = http
            .get(format!("{url}/api/v1/workflows/runs?limit=1"))
            .bearer_auth(admin)
            .send()
            .await?
            .json::<Value>()
            .await?;
        let run = &runs["runs"][0];
        anyhow::ensure!(run["id"] == id.as_str(), "another run started beside {id}: {run}");
        if matches!(run["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            let took = started.elapsed();
            let run = http
                .get(format!("{url}/api/v1/workflows/runs/{id}"))
                .bearer_auth(admin)
                .send()
                .await?
                .json::<Value>()
                .await?["run"]
                .take();
            anyhow::ensure!(run["state"] == "succeeded", "run {id} ended {}: {run}", run["state"]);
            return Ok((took, run));
        }
        anyhow::ensure!(Instant::now() < deadline, "run {id} did not end: {run}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `steps` plain tasks one after another, each submitted when the one before succeeded.
async fn plain_chain(
    client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    admin: &str,
    steps: usize,
) -> anyhow::Result<Duration> {
    let bearer = MetadataValue::try_from(format!("Bearer {admin}"))?;
    let started = Instant::now();
    for _ in 0..steps {
        let mut request = tonic::Request::new(pb::SubmitTaskRequest { spec: Some(crate::shell_spec_pb()) });
        request.metadata_mut().insert("authorization", bearer.clone());
        let task = client.submit_task(request).await?.into_inner().task.unwrap_or_default();
        let mut request = tonic::Request::new(pb::WatchTaskRequest { id: task.id.clone() });
        request.metadata_mut().insert("authorization", bearer.clone());
        let mut events = client.watch_task(request).await?.into_inner();
        loop {
            let Some(event) = events.message().await? else {
                anyhow::bail!("the watch of {} ended before the task did", task.id);
            };
            let Some(pb::task_event::Kind::Snapshot(task)) = event.kind else { continue };
            match task.state() {
                pb::TaskState::Succeeded => break,
                pb::TaskState::Failed
                | pb::TaskState::Cancelled
                | pb::TaskState::Expired
                | pb::TaskState::DeadLettered => anyhow::bail!("task {} ended {:?}", task.id, task.state()),
                _ => {}
            }
        }
    }
    Ok(started.elapsed())
}

fn p50(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) async fn run(options: Options) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let (processes, url, admin) = start_mesh(dir.path(), options.slots, false, &[]).await?;
    let http = reqwest::Client::new();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.tcp_nodelay(true).connect().await?;
    let mut grpc = pb::admin_client::AdminClient::new(channel);

    // Warm both paths (and the page cache) before measuring.
    run_workflow(&http, &url, &admin, &chain(options.steps)).await?;
    plain_chain(&mut grpc, &admin, options.steps).await?;

    // Chains, alternated so that drift on the machine falls on both alike.
    let workflow = chain(options.steps);
    let (mut chained, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..options.runs {
        let (took, _) = run_workflow(&http, &url, &admin, &workflow).await?;
        chained.push(ms(took) / options.steps as f64);
        let took = plain_chain(&mut grpc, &admin, options.steps).await?;
        plain.push(ms(took) / options.steps as f64);
    }
    let (chained, plain) = (p50(&mut chained), p50(&mut plain));
    eprintln!(
        "  chain of {}: {chained:.2} ms per step as a workflow, {plain:.2} ms per step as plain tasks \
         (p50 of {} runs): {:+.2} ms per step",
        options.steps,
        options.runs,
        chained - plain
    );

    // Fan-out, alternated with the plain tasks as the chains are, after a small warm-up of each.
    run_workflow(&http, &url, &admin, &fan_out(50.min(options.items))).await?;
    drain(&url, &admin, 50.min(options.items)).await?;
    let workflow = fan_out(options.items);
    let (mut fanned, mut flat, mut results, mut dead) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..FAN_OUT_ROUNDS {
        let (took, run) = run_workflow(&http, &url, &admin, &workflow).await?;
        results = run["steps"].as_array().map_or(0, Vec::len);
        fanned.push(options.items as f64 / took.as_secs_f64());
        let (rate, failed) = drain(&url, &admin, options.items).await?;
        flat.push(rate);
        dead += failed;
    }
    let (fanned, flat) = (p50(&mut fanned), p50(&mut flat));
    eprintln!(
        "  for_each over {}: {fanned:.0} items/s as a workflow, {flat:.0} tasks/s as plain tasks ({:.0} %, \
         p50 of {FAN_OUT_ROUNDS})",
        options.items,
        fanned / flat * 100.0
    );
    drop(processes);

    Ok(json!({
        "benchmark": "workflow",
        "topology": "hub process + sidecar process, plaintext on loopback",
        "slots": options.slots,
        "chain": {
            "steps": options.steps,
            "runs": options.runs,
            "workflow_ms_per_step_p50": round2(chained),
            "floor_plain_ms_per_step_p50": round2(plain),
            "added_ms_per_step": round2(chained - plain),
            "target": "at most 2 ms added per chained step (p50)",
        },
        "fan_out": {
            "items": options.items,
            "rounds": FAN_OUT_ROUNDS,
            "step_rows": results,
            "workflow_items_per_s": fanned.round(),
            "floor_plain_tasks_per_s": flat.round(),
            "ratio": round2(fanned / flat),
            "plain_dead_lettered": dead,
            "target": "at least 0.9 of the plain rate",
        },
    }))
}
